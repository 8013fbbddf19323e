"""The live enrolment without Kafka: the roster's rules, the worker applying a change to a patient it holds,
the gateway refusing readings of patients not enrolled, the ``patients`` command's input checks."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from alerts.enrollment import Enrollment
from alerts.models import AlertEvent
from ingest.contract import DeadLetter, parse_payload, vitals_topic
from ingest.gateway import Gateway
from streams.app import Pipeline
from tests.test_agents import T0, DirectRecorder, Recorder, reading
from tools.patients import parse_overrides
from tools.subject_access import episode_of_care
from wearwatch.config import load_settings
from wearwatch.contract.enrollment import NOT_ENROLLED, EnrollmentRecord
from wearwatch.errors import ConfigError


def record(pid: str, ward: str, status: str = "enrolled", **overrides: float) -> EnrollmentRecord:
    return EnrollmentRecord(patient_id=pid, ward=ward, overrides=overrides, status=status,  # type: ignore[arg-type]
                            since_ms=T0)


def test_the_roster_applies_records_and_tombstones() -> None:
    e = Enrollment()
    e.apply("p-1", record("p-1", "3B", glucose_low_mgdl=75))
    assert (e.ward_for("p-1"), e.overrides_for("p-1"), e.status_for("p-1")) == ("3B", {"glucose_low_mgdl": 75},
                                                                              "enrolled")
    e.apply("p-1", record("p-1", "ICU", "discharged"))
    assert (e.ward_for("p-1"), e.overrides_for("p-1"), e.status_for("p-1")) == ("ICU", {}, "discharged")
    assert e.wards() == {}  # discharged patients are not counted in a ward
    assert not e.admits("p-1") and e.admits("p-2") and not e.admits("p-2", require_enrollment=True)
    e.apply("p-1", None)
    assert (e.status_for("p-1"), e.ward_for("p-1"), len(e)) == (None, "unassigned", 0)
    with pytest.raises(ConfigError, match="unknown detector setting"):
        e.apply("p-3", record("p-3", "3B", glucose_lowest=1))
    assert "p-3" not in e


def test_patients_enrolled_alike_share_one_standing_and_read_as_before() -> None:
    import alerts.enrollment as enrollment
    from alerts.enrollment import PatientEnrollment

    e = Enrollment()
    for i in range(6):
        e.apply(f"p-{i}", EnrollmentRecord.from_json(record(f"p-{i}", "3B" if i < 4 else "ICU").to_json()))
    e.apply("p-6", record("p-6", "3B", glucose_low_mgdl=75))
    standings = [e._patients[f"p-{i}"] for i in range(7)]
    assert len({id(st) for st in standings}) == 3  # 3B, ICU, and the one with overrides
    assert standings[0] is standings[3] and standings[4] is standings[5] and standings[6] is not standings[0]
    assert e["p-6"] == PatientEnrollment("p-6", "3B", {"glucose_low_mgdl": 75}, "enrolled", T0)
    assert e["p-1"] == PatientEnrollment("p-1", "3B", {}, "enrolled", T0) and e.get("p-9") is None
    assert [p.patient_id for p in e.values()] == [f"p-{i}" for i in range(7)] and e.wards() == {"3B": 5, "ICU": 2}
    e.apply("p-1", record("p-1", "3B", "discharged"))  # one patient changes: the others keep theirs
    assert (e.status_for("p-1"), e.status_for("p-0"), e.status_for("p-3")) == ("discharged", "enrolled", "enrolled")
    assert e.records(1)[1] == record("p-1", "3B", "discharged")
    # the standings remembered for sharing are bounded; those already given stay as they are
    for i in range(enrollment._SHARED_MAX + 1):
        e.apply(f"q-{i}", record(f"q-{i}", "3B").model_copy(update={"since_ms": i}))
    assert len(e._shared) <= enrollment._SHARED_MAX and len(e) == 7 + enrollment._SHARED_MAX + 1
    assert e["p-0"] == PatientEnrollment("p-0", "3B", {}, "enrolled", T0) and e["q-7"].since_ms == 7


def test_an_enrollment_file_becomes_records() -> None:
    e = Enrollment.from_text('patient_id,ward,overrides_json\np-1,3B,"{""glucose_low_mgdl"": 75}"\np-2,ICU,\n')
    recs = e.records(T0)
    assert [(r.patient_id, r.ward, r.overrides, r.status, r.since_ms) for r in recs] == [
        ("p-1", "3B", {"glucose_low_mgdl": 75}, "enrolled", T0), ("p-2", "ICU", {}, "enrolled", T0)]
    assert [EnrollmentRecord.from_json(r.to_json()) for r in recs] == recs


def test_overrides_from_the_command_line_are_checked() -> None:
    assert parse_overrides('{"glucose_urgent_low_mgdl": 80}') == {"glucose_urgent_low_mgdl": 80}
    with pytest.raises(ConfigError, match="unknown detector setting"):
        parse_overrides('{"glucose_lowish": 80}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_overrides("{oops")


@pytest.fixture
def pipeline() -> Pipeline:
    p = Pipeline(load_settings(influx_token="u:p", worker_store="memory", pseudonym_key="k" * 16, alerts_mqtt=False))
    p.alerts = Recorder()  # type: ignore[assignment]
    p.records_out = DirectRecorder()  # type: ignore[assignment]
    p.table.on_key_set = lambda key, value: None  # type: ignore[method-assign]
    p.processor.keys = None  # records in clear text (sealed ones: tests/test_sealed_transit.py)
    p.serving = True
    return p


def test_the_worker_applies_ward_overrides_and_discharge_to_a_patient_it_holds(pipeline: Pipeline) -> None:
    proc, sync = pipeline.processor, pipeline.enrollment_sync
    alerts: Recorder = pipeline.alerts  # type: ignore[assignment]
    records_out: DirectRecorder = pipeline.records_out  # type: ignore[assignment]

    async def scenario() -> None:
        out = proc.process([(b"pw", reading("pw", "glucose", v, T0 + i * 300_000))
                            for i, v in enumerate([120.0, 110.0])])
        assert out.events == [] and proc.state_for("pw").book.ward == "unassigned"
        # enrolled live: ward 3B, urgent low from 110 mg/dL
        sync._on_record("pw", record("pw", "3B", glucose_urgent_low_mgdl=110))
        await sync.apply_changes()
        assert sync.applied == 1 and alerts.sent == []
        out = proc.process([(b"pw", reading("pw", "glucose", 100.0, T0 + 2 * 300_000))])
        await pipeline.emit(out)
        opened = [AlertEvent.from_json(v) for _, v in alerts.sent]
        assert [(e.kind, e.state, e.ward) for e in opened] == [("glucose_urgent_low", "open", "3B")]
        # discharged: the open alert resolves, later readings are dead letters
        sync._on_record("pw", record("pw", "3B", "discharged", glucose_urgent_low_mgdl=110))
        await sync.apply_changes()
        closed = [AlertEvent.from_json(v) for _, v in alerts.sent[1:]]
        assert [(e.alert_id, e.state, e.cause, e.notify) for e in closed] == [
            (opened[0].alert_id, "resolved", "discharged", False)]
        assert proc.state_for("pw").book.open_alerts() == []
        states = [(k, v) for t, k, v in records_out.sent if t == pipeline.settings.topic_alert_state]
        assert states[-1] == (b"pw", None)  # alerts.state: tombstone, nothing open
        # the same records read again (a restarted worker reads the whole roster): nothing changes, nothing is written
        proc.take_dirty()
        sync._on_record("pw", record("pw", "3B", "discharged", glucose_urgent_low_mgdl=110))
        await sync.apply_changes()
        assert sync.applied == 2 and proc.dirty == set() and len(alerts.sent) == 2
        out = proc.process([(b"pw", reading("pw", "glucose", 40.0, T0 + 3 * 300_000))])
        assert out.events == []
        assert [orjson.loads(v)["reason"] for _, v in out.dead] == [NOT_ENROLLED]
        assert proc.stats["dlq:not_enrolled"] == 1

    asyncio.run(scenario())


def test_changes_for_patients_the_worker_does_not_hold_wait_for_their_first_reading(pipeline: Pipeline) -> None:
    sync = pipeline.enrollment_sync

    async def scenario() -> None:
        sync._on_record("pn", record("pn", "ICU", glucose_urgent_low_mgdl=110))
        sync.pipeline.table.get = lambda key, default=None: None  # type: ignore[method-assign]
        await sync.apply_changes()
        assert sync.applied == 0 and "pn" not in pipeline.processor.cache
        st = pipeline.processor.state_for("pn")  # created with the enrolment
        assert st.book.ward == "ICU" and st.monitor.config.glucose_urgent_low_mgdl == 110

    asyncio.run(scenario())


def test_the_gateway_dead_letters_readings_of_patients_not_enrolled() -> None:
    gw = Gateway(load_settings({}, topic_prefix="t."))
    payload = orjson.dumps([{"patient_id": p, "signal": "heart_rate", "value": 70, "unit": "bpm", "ts": T0}
                            for p in ("in", "out", "new")])
    topic = vitals_topic("acme", "w-1")
    readings, dead = parse_payload(topic, payload, T0, gw.limits)
    gw._on_enrollment("in", record("in", "3B"))
    gw._on_enrollment("out", record("out", "3B", "discharged"))
    ok, refused = gw._enrolled(readings, dead, topic, T0)
    assert [r.patient_id for r in ok] == ["in", "new"]
    assert [(d.reason, d.mqtt_topic, orjson.loads(d.payload)["patient_id"]) for d in refused] == [
        (NOT_ENROLLED, topic, "out")]
    strict = Gateway(load_settings({}, topic_prefix="t.", require_enrollment=True))
    strict._on_enrollment("in", record("in", "3B"))
    ok, refused = strict._enrolled(readings, [], topic, T0)
    assert [r.patient_id for r in ok] == ["in"]
    assert all(isinstance(d, DeadLetter) and d.reason == NOT_ENROLLED for d in refused) and len(refused) == 2
    gw._on_enrollment("out", None)  # erased: no longer known, so like a patient never enrolled
    assert gw.admits("out") and not strict.admits("out")


def test_the_enrolment_as_an_episode_of_care() -> None:
    enrolled = episode_of_care(record("p-1", "3B", glucose_low_mgdl=75))
    assert (enrolled["status"], enrolled["period"], enrolled["patient"]) == (
        "active", {"start": "2026-05-28T20:26:40.000Z"}, {"reference": "Patient/p-1"})
    assert "ward 3B" in enrolled["type"][0]["text"] and "glucose_low_mgdl=75" in enrolled["text"]["div"]
    finished = episode_of_care(record("p-1", "3B", "discharged"))
    assert (finished["status"], finished["period"]) == ("finished", {"end": "2026-05-28T20:26:40.000Z"})
    assert "detector overrides: none" in finished["text"]["div"]
