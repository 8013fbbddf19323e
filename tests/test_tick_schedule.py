"""The tick walks only the patients with something due (``BatchProcessor.begin_round``), and gives exactly
the events, minute aggregates and states of ticking every patient at every round."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts.lifecycle import DUE_NOW, AlertBook, LifecyclePolicy
from detectors import PatientMonitor
from detectors.config import DetectorConfig
from ingest.contract import encode_batch
from streams.processing import BatchProcessor, Outputs
from streams.state import PatientState
from streams.state_codec import decode_state, encode_state
from wearwatch.contract.commands import Ack, Note, Snooze, command_record

T0 = 1_780_000_000_000
PIDS = ["p0", "p1", "p2", "p3"]
# short timers, so that a scenario of a few hours sees them all: stale devices, reminders, escalations,
# hold-offs, snoozes (capped), idle minutes
# (heart rate and steps go stale sooner than idle minutes close: their due times come first)
CONFIG = DetectorConfig(hr_stale_s=90.0, glucose_stale_s=600.0, steps_stale_s=150.0, stale_clear_s=180.0,
                        hr_flatline_s=120.0)
POLICY = LifecyclePolicy(renotify_high_ms=60_000, renotify_medium_ms=150_000, renotify_low_ms=400_000,
                         escalate_high_after_ms=200_000, holdoff_high_ms=300_000, holdoff_medium_ms=300_000,
                         holdoff_low_ms=300_000, snooze_cap_high_ms=90_000, snooze_max_ms=900_000)
UNITS = {"heart_rate": "bpm", "glucose": "mg/dL", "steps": "steps"}
VALUES = {"heart_rate": [62.0, 72.0, 72.0, 155.0, 300.0], "glucose": [45.0, 52.0, 110.0, 110.0, 250.0],
          "steps": [0.0, 12.0, 900.0]}


def _new_state(pid: str) -> PatientState:
    return PatientState(PatientMonitor(CONFIG), AlertBook(pid, ward="3B", policy=POLICY))


def _reading(pid: str, signal: str, value: float, ts_ms: int, received_ms: int) -> bytes:
    return orjson.dumps({"schema_version": 1, "patient_id": pid, "signal": signal, "value": value,
                         "unit": UNITS[signal], "ts_ms": ts_ms, "vendor": "v", "device_id": "d",
                         "received_ms": received_ms})


class Twin:
    """Two workers fed the same input: ``every`` ticks every patient at every round (as the worker did),
    ``due`` only the patients its rounds name (and keeps at most ``live_states`` states between commits, if
    given: ``test_live_states.py``)."""

    def __init__(self, write_readings: int, live_states: int = 0) -> None:
        self.now = T0
        self.stored: dict[str, dict[str, bytes]] = {"every": {}, "due": {}}
        pacing = {"write_readings": write_readings, "write_max_ms": 90_000, "write_eager": 1,
                  "write_quiet_ms": 2_000}
        self.every = BatchProcessor(_new_state, self.stored["every"].get, lambda: self.now, **pacing)
        self.due = BatchProcessor(_new_state, self.stored["due"].get, lambda: self.now, live_states=live_states,
                                  **pacing)
        self.offset = 0
        self.device = dict.fromkeys(PIDS, T0)  # each device's newest measurement time
        self.events: dict[str, list[Any]] = {"every": [], "due": []}
        self.ticked = {"every": 0, "due": 0}

    def both(self) -> tuple[tuple[str, BatchProcessor], ...]:
        return (("every", self.every), ("due", self.due))

    def readings(self, items: list[tuple[int, str, int, int]]) -> None:
        records = []
        for pid_i, signal, value_i, step in items:
            pid = PIDS[pid_i]
            values = VALUES[signal]
            ts = self.device[pid] + step
            self.device[pid] = max(self.device[pid], ts)
            records.append((pid.encode(), encode_batch([_reading(pid, signal, values[value_i % len(values)], ts,
                                                                 self.now)])))
        positions = [(0, self.offset + i) for i in range(len(records))]
        self.offset += len(records)
        outs = [proc.process(records, positions) for _, proc in self.both()]
        assert outs[0] == outs[1]
        self._keep(outs)

    #: ``every`` ticks every patient at every round (else it too ticks the patients due) ...
    EVERY_TICKS_ALL = True
    #: ... and writes the same states at every commit as ``due``
    SAME_WRITES = True

    def round_keys(self, name: str, proc: BatchProcessor) -> list[str]:
        """The patients one round ticks: every one (``every``, with :attr:`EVERY_TICKS_ALL`), or those due."""
        held = dict.fromkeys(list(self.stored[name]) + proc.held())
        if name == "every" and self.EVERY_TICKS_ALL:
            return list(held)
        return proc.begin_round(held if proc.full_round else None)

    def tick(self) -> None:
        per: dict[str, dict[str, list[Any]]] = {}
        outs = []
        for name, proc in self.both():
            keys = self.round_keys(name, proc)
            self.ticked[name] += len(keys)
            out = proc.tick(keys)
            outs.append(out)
            by_patient: dict[str, list[Any]] = defaultdict(list)
            for ev in out.events:
                by_patient[ev.patient_id].append(ev.model_dump())
            for key, doc in out.minutes:
                by_patient[key.decode()].append(doc)
            per[name] = dict(by_patient)
        assert per["every"] == per["due"]  # within a round the order of patients may differ
        self._keep(outs)

    def command(self, pid_i: int, what: int, pick: int, until_s: int) -> None:
        pid = PIDS[pid_i]
        ids = sorted({ev.alert_id for ev in self.events["every"] if ev.patient_id == pid})
        if what == 2:
            kinds = sorted({ev.kind for ev in self.events["every"] if ev.patient_id == pid}) or ["glucose_low"]
            cmd: Ack | Note | Snooze = Snooze(ward="3B", patient_id=pid, kind=kinds[pick % len(kinds)],
                                              until_ms=self.now + until_s * 1000, by="kim", ts_ms=self.now)
        elif not ids:
            return
        elif what == 0:
            cmd = Ack(ward="3B", patient_id=pid, alert_id=ids[pick % len(ids)], by="kim", ts_ms=self.now)
        else:
            cmd = Note(ward="3B", patient_id=pid, alert_id=ids[pick % len(ids)], text="called", by="kim",
                       ts_ms=self.now)
        outs = [proc.commands([(pid.encode(), command_record(cmd))]) for _, proc in self.both()]
        assert outs[0] == outs[1]
        self._keep(outs)

    def commit(self) -> None:
        for name, proc in self.both():
            proc.plan_writes()
            self.stored[name].update(proc.take_dirty())
            proc.commit_limits()
            proc.pack(len(proc.cache))  # past a live-state bound, as the worker does after its commit
        if self.SAME_WRITES:
            assert self.stored["every"] == self.stored["due"]

    def restart(self) -> None:
        self.commit()
        for _, proc in self.both():
            proc.forget()

    def _keep(self, outs: list[Outputs]) -> None:
        self.events["every"] += outs[0].events
        self.events["due"] += outs[1].events

    def check_states(self) -> None:
        every, due = self.every, self.due
        assert set(every.cache) == set(due.cache)
        assert every.dirty | every.waiting == due.dirty | due.waiting and every.urgent == due.urgent
        assert every.last_received == due.last_received
        for pid in due.cache:
            # on a copy (checking must not change what the next step meets): the round that skipped the
            # patient applied to its book's clock, as its next use or write does
            copy = decode_state(encode_state(due.cache[pid]))
            if due.round_seen(pid) != due.rounds and pid in due.last_received:
                assert copy.book.tick(copy.newest_ms + due._round_ms - due.last_received[pid]) == []  # not due
            assert encode_state(every.cache[pid]) == encode_state(copy), pid


STEP = st.one_of(
    st.tuples(st.just("readings"), st.lists(
        st.tuples(st.integers(0, len(PIDS) - 1), st.sampled_from(["heart_rate", "heart_rate", "glucose", "steps"]),
                  st.integers(0, 4), st.sampled_from([-700_000, -30_000, 0, 1_000, 5_000, 5_000, 60_000, 900_000])),
        min_size=1, max_size=8)),
    # silence: rounds of the tick every few seconds, or one round at its end (rounds in between would change
    # nothing more there: the one round is the same for both)
    st.tuples(st.just("wait"), st.tuples(st.integers(1, 40), st.sampled_from([5_000, 5_000, 20_000, 61_000]))),
    st.tuples(st.just("wait"), st.tuples(st.just(1), st.sampled_from([121_000, 300_000, 1_200_000]))),
    st.tuples(st.just("tick"), st.none()),
    st.tuples(st.just("command"), st.tuples(st.integers(0, len(PIDS) - 1), st.integers(0, 2), st.integers(0, 3),
                                            st.sampled_from([-10, 30, 200, 2_000]))),
    st.tuples(st.just("commit"), st.none()),
    st.tuples(st.just("restart"), st.none()),
)


def _run(steps: list[tuple[str, Any]], write_readings: int, twin: Twin | None = None, end_rounds: int = 1) -> Twin:
    """``steps`` through ``twin`` (a new :class:`Twin` by default), checked after each; then ``end_rounds``
    rounds an hour apart, each with a commit."""
    twin = twin if twin is not None else Twin(write_readings)
    for kind, arg in steps:
        if kind == "readings":
            twin.readings(arg)
        elif kind == "wait":
            rounds, every_ms = arg
            for _ in range(rounds):
                twin.now += every_ms
                twin.tick()
        elif kind == "tick":
            twin.tick()
        elif kind == "command":
            twin.command(*arg)
        elif kind == "commit":
            twin.commit()
        else:
            twin.restart()
        twin.now += 500
        twin.check_states()
    for _ in range(end_rounds):
        twin.now += 3_600_000
        twin.tick()
        twin.commit()
        twin.check_states()
    return twin


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=5, max_size=60), write_readings=st.sampled_from([0, 4]))
def test_ticking_the_due_patients_gives_what_ticking_every_patient_gives(steps: list[tuple[str, Any]],
                                                                          write_readings: int) -> None:
    _run(steps, write_readings)


def _silence_then_data(rounds: int, wait_ms: int) -> list[tuple[str, Any]]:
    steps: list[tuple[str, Any]] = []
    for i in range(3):
        steps.append(("readings", [(p, "heart_rate", 3, 5_000) for p in range(len(PIDS))]
                      + [(p, "glucose", i % 2, 60_000) for p in range(len(PIDS))]))
        steps += [("wait", (rounds, wait_ms))]
    return steps


def test_the_scenario_exercises_every_kind_of_time_driven_work_and_skips_the_rest() -> None:
    # urgent lows (reminders, escalations), a racing heart with a stuck value (flatline), silences long
    # enough for stale sensors and idle minutes, an acknowledgement and a snooze, a restart from the table
    steps = _silence_then_data(8, 30_000)
    steps[1:1] = [("command", (0, 0, 0, 0)), ("command", (1, 2, 0, 200)), ("commit", None)]
    steps.append(("restart", None))
    steps += _silence_then_data(4, 121_000)
    twin = _run(steps, write_readings=4)
    causes = {(ev.kind, ev.cause) for ev in twin.events["due"]}
    for want in [("glucose_urgent_low", "onset"), ("glucose_urgent_low", "renotify"),
                 ("glucose_urgent_low", "escalated"), ("glucose_urgent_low", "acknowledged"),
                 ("sensor_stale", "onset")]:
        assert want in causes, want
    assert any(ev.cause in ("snoozed", "snooze_ended") for ev in twin.events["due"])
    for pid in PIDS:  # each patient's events in the same order
        assert [e for e in twin.events["every"] if e.patient_id == pid] == [
            e for e in twin.events["due"] if e.patient_id == pid]
    # the rounds named fewer patients than ticking every one at every round did (these short timers keep
    # most of them busy: test_a_round_names_only_the_patients_due has a quieter fleet)
    assert twin.ticked["due"] < twin.ticked["every"], twin.ticked


def test_a_round_names_only_the_patients_due() -> None:
    clock = [T0]
    proc = BatchProcessor(_new_state, {}.get, lambda: clock[0], idle_close_ms=120_000)
    pids = [f"q{i}" for i in range(1000)]
    records = [(p.encode(), encode_batch([_reading(p, "heart_rate", 70.0, T0, T0)])) for p in pids]
    proc.process(records, [(0, i) for i in range(len(records))])
    assert proc.begin_round(list(proc.cache)) == list(proc.cache)  # the first round after a start: all
    proc.tick(proc.cache)
    clock[0] += 5_000
    assert proc.begin_round() == []  # nothing due: nothing walked
    # the heart-rate sensor goes stale after CONFIG.hr_stale_s of silence (stream-equivalent time)
    clock[0] = T0 + int(CONFIG.hr_stale_s * 1000) + 1
    due = proc.begin_round()
    assert sorted(due) == sorted(pids)
    assert {ev.kind for ev in proc.tick(due).events} == {"sensor_stale"}
    stale_at = clock[0]
    clock[0] += 5_000
    assert proc.begin_round() == []
    clock[0] = T0 + 120_000  # the open minutes of a patient silent for idle_close_ms are written out
    due = proc.begin_round()
    assert sorted(due) == sorted(pids)
    out = proc.tick(due)
    assert len(out.minutes) == 1000 and out.events == []
    clock[0] += 5_000
    assert proc.begin_round() == []
    # an open stale finding whose low alert reminds after POLICY.renotify_low_ms: nothing before that
    clock[0] = stale_at + POLICY.renotify_low_ms - 1
    assert proc.begin_round() == []
    clock[0] = stale_at + POLICY.renotify_low_ms
    due = proc.begin_round()
    assert sorted(due) == sorted(pids)
    assert {ev.cause for ev in proc.tick(due).events} == {"renotify"}


def test_a_reading_that_moves_stream_time_far_makes_a_patient_due_at_once() -> None:
    # a device delivering a backlog: stream-equivalent time jumps with its readings, not with the wall clock
    clock = [T0]
    proc = BatchProcessor(_new_state, {}.get, lambda: clock[0])
    proc.process([(b"p", encode_batch([_reading("p", "glucose", 45.0, T0, T0)]))], [(0, 0)])
    proc.begin_round(["p"])
    assert [e.cause for e in proc.tick(["p"]).events] == []
    clock[0] += 1_000
    assert proc.begin_round() == []
    proc.process([(b"p", encode_batch([_reading("p", "heart_rate", 70.0, T0 + POLICY.renotify_high_ms, clock[0])]))],
                 [(0, 1)])
    clock[0] += 1_000
    assert proc.begin_round() == ["p"]
    assert [e.cause for e in proc.tick(["p"]).events] == ["renotify"]


def test_next_due_ms_is_never_late() -> None:
    book = AlertBook("p", policy=POLICY)
    assert book.next_due_ms() is None
    monitor = PatientMonitor(CONFIG)
    for i in range(3):
        for f in monitor.update("glucose", T0 + i * 1000, 45.0) + monitor.update("heart_rate", T0 + i * 1000, 70.0):
            book.on_finding(f)
    due_book, due_monitor = book.next_due_ms(), monitor.next_due_ms()
    assert due_book is not None and due_monitor is not None
    assert book.tick(due_book - 1) == [] and book.tick(due_book) != []
    assert monitor.tick(due_monitor - 1) == []
    assert monitor.tick(due_monitor + 2) != []
    # the book acts at its own clock: once that is past something due, it is due whatever time is given
    book.tick(T0 + 10 * 3_600_000)
    assert book.next_due_ms() in (None, DUE_NOW) or book.next_due_ms() > T0 + 10 * 3_600_000  # type: ignore[operator]


def test_a_book_whose_clock_passed_a_reminder_is_due_whatever_time_the_tick_gives() -> None:
    from detectors.base import Audience, Finding, Priority

    book = AlertBook("p", policy=POLICY)
    book.on_finding(Finding("glucose_urgent_low", "glucose", Priority.HIGH, Audience.CLINICAL,
                            ts_ms=600_000, onset_ms=600_000, source="rule", message="low"))
    assert book.next_due_ms() == 600_000 + POLICY.renotify_high_ms
    # a finding of another kind, stamped after the reminder: the book's clock is past it, the reminder unsent
    book.on_finding(Finding("tachycardia_at_rest", "heart_rate", Priority.MEDIUM, Audience.CLINICAL,
                            ts_ms=700_000, onset_ms=700_000, source="rule", message="fast"))
    assert book.next_due_ms() == DUE_NOW
    assert [e.cause for e in book.tick(0) if e.kind == "glucose_urgent_low"] == ["renotify"]


def test_a_finding_on_a_signal_seen_before_schedules_what_it_opens() -> None:
    # glucose known and normal, the patient's time-driven work far off; then an urgent low: its reminder comes
    # POLICY.renotify_high_ms later, before anything else the patient had due
    steps: list[tuple[str, Any]] = [("readings", [(0, "glucose", 2, 5_000)]), ("wait", (3, 5_000)),
                                    ("readings", [(0, "glucose", 0, 5_000)]), ("wait", (30, 5_000))]
    twin = _run(steps, write_readings=0)
    assert [e.cause for e in twin.events["due"] if e.kind == "glucose_urgent_low"][:2] == ["onset", "renotify"]


def test_a_signals_first_reading_schedules_its_device_check() -> None:
    # a patient known by glucose only; the first heart-rate reading starts a check that comes due (after
    # CONFIG.hr_stale_s of silence) before anything else the patient had due
    steps: list[tuple[str, Any]] = [("readings", [(1, "glucose", 2, 5_000)]), ("wait", (3, 5_000)),
                                    ("readings", [(1, "heart_rate", 1, 0)]), ("wait", (25, 5_000))]
    twin = _run(steps, write_readings=0)
    assert [(e.kind, e.signal) for e in twin.events["due"]][:1] == [("sensor_stale", "heart_rate")]
