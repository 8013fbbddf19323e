"""Notes on alerts: part of the alert's lifecycle (applied by the worker from ``alerts.commands``)."""

from __future__ import annotations

import pickle

from alerts.lifecycle import NOTES_KEPT, AlertBook, _Alert
from alerts.models import AlertEvent
from detectors.base import Audience, Finding, Priority
from streams.processing import BatchProcessor
from streams.state import PatientState
from wearwatch.contract.commands import InvalidCommand, Note, command_record, parse_command_record

T0 = 1_800_000_000_000
MIN = 60_000


def low(onset: int, cleared: bool = False) -> Finding:
    return Finding("glucose_low", "glucose", Priority.MEDIUM, Audience.CLINICAL, ts_ms=onset + (MIN if cleared else 0),
                   onset_ms=onset, source="rule", message="low", value=60.0, cleared=cleared)


def test_a_note_is_kept_with_the_alert_and_emits_one_informational_event() -> None:
    book = AlertBook("p-1", ward="3B")
    (opened,) = book.on_finding(low(T0))
    (ev,) = book.note(opened.alert_id, "nurse.kim", "  called the patient, eating  ", T0 + MIN)
    assert (ev.cause, ev.state, ev.notify, ev.revision) == ("note", "open", False, 1)
    assert [(n.by, n.ts_ms, n.text) for n in ev.notes] == [("nurse.kim", T0 + MIN, "called the patient, eating")]
    # later events and the open alerts carry the notes
    (acked,) = book.ack(opened.alert_id, "nurse.kim", T0 + 2 * MIN)
    assert acked.state == "acknowledged" and len(acked.notes) == 1
    assert book.open_alerts()[0].notes == ev.notes
    # unknown alerts and empty text: nothing
    assert book.note("al-" + "0" * 20, "kim", "x", T0 + 3 * MIN) == []
    assert book.note(opened.alert_id, "kim", "   ", T0 + 3 * MIN) == []


def test_notes_on_a_resolved_alert_within_its_holdoff_are_not_lost() -> None:
    book = AlertBook("p-1", ward="3B")
    (opened,) = book.on_finding(low(T0))
    (resolved,) = book.on_finding(low(T0, cleared=True))
    assert resolved.state == "resolved"
    (ev,) = book.note(opened.alert_id, "kim", "written as it resolved", T0 + 2 * MIN)
    assert (ev.state, ev.cause, ev.notes[0].text) == ("resolved", "note", "written as it resolved")
    assert book.open_alerts() == []


def test_only_the_most_recent_notes_are_kept_in_the_state() -> None:
    book = AlertBook("p-1")
    (opened,) = book.on_finding(low(T0))
    for i in range(NOTES_KEPT + 5):
        book.note(opened.alert_id, "kim", f"note {i}", T0 + i)
    notes = book.open_alerts()[0].notes
    assert len(notes) == NOTES_KEPT and notes[0].text == "note 5" and notes[-1].text == f"note {NOTES_KEPT + 4}"


def test_notes_survive_pickling_and_old_states_load() -> None:
    book = AlertBook("p-1")
    (opened,) = book.on_finding(low(T0))
    book.note(opened.alert_id, "kim", "kept", T0 + 1)
    again = pickle.loads(pickle.dumps(book))
    assert again.open_alerts() == book.open_alerts()
    # a state written before notes existed: 18 fields per alert
    old = book._alerts["glucose_low"].dump_state()[:18]
    assert _Alert.from_state(old).notes == []


def test_note_command_round_trip_and_validation() -> None:
    n = Note(ward="3B", patient_id="p-1", alert_id="al-" + "a" * 20, text="x" * 1000, by="nurse.kim", ts_ms=T0)
    assert parse_command_record(command_record(n)) == n
    for bad in (b'{"type": "note", "body": {"text": ""}}', b'{"type": "memo", "body": {}}', b"[]", b"\xff"):
        try:
            parse_command_record(bad)
        except InvalidCommand as exc:
            assert exc.reason == "bad_command"
        else:
            raise AssertionError(bad)


def test_the_worker_applies_note_commands_on_the_patients_state() -> None:
    states: dict[str, PatientState] = {}

    def new_state(pid: str) -> PatientState:
        from detectors import PatientMonitor

        return PatientState(PatientMonitor(), AlertBook(pid, ward="3B"))

    proc = BatchProcessor(new_state, lambda pid: None, lambda: T0 + 5 * MIN)
    st = proc.state_for("p-1")
    states["p-1"] = st
    (opened,) = st.book.on_finding(low(T0))
    note = Note(ward="3B", patient_id="p-1", alert_id=opened.alert_id, text="called", by="nurse.kim", ts_ms=T0)
    out = proc.commands([(b"p-1", command_record(note)), (b"p-1", b"garbage")])
    assert [(e.cause, e.notes[0].text, e.notes[0].by) for e in out.events] == [("note", "called", "nurse.kim")]
    assert proc.stats["notes"] == 1 and proc.stats["dlq:bad_command"] == 1 and len(out.dead) == 1
    assert "p-1" in proc.dirty
    assert AlertEvent.from_json(out.alerts[0][1]).notes == out.events[0].notes
