"""The worker's ``alerts.state`` records (what the console reads), on in-memory channels without Kafka."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from alerts.models import AlertEvent
from streams.app import Pipeline
from tests.test_agents import T0, DirectRecorder, Recorder, reading
from wearwatch.config import load_settings


@pytest.fixture
def pipeline() -> Pipeline:
    p = Pipeline(load_settings(influx_token="u:p", worker_store="memory", pseudonym_key="k" * 16,
                               worker_batch_window_s=0.01, alerts_mqtt=False))
    p.alerts = Recorder()
    p.records_out = DirectRecorder()  # type: ignore[assignment]
    p.table.on_key_set = lambda key, value: None  # type: ignore[method-assign]
    p.processor.keys = None  # records in clear text (sealed ones: tests/test_sealed_transit.py)
    return p


def state_records(pipeline: Pipeline) -> list[tuple[bytes, dict | None]]:
    sent = pipeline.records_out.sent  # type: ignore[attr-defined]
    return [(k, orjson.loads(v) if v is not None else None) for t, k, v in sent if t == "alerts.state"]


def test_alert_events_come_with_the_patients_open_alerts(pipeline: Pipeline) -> None:
    async def scenario() -> None:
        async with pipeline.agents[0].test_context() as agent:
            for i, g in enumerate([110, 100, 90, 80, 70, 60, 50, 48]):
                await agent.put(key=b"p1", value=reading("p1", "glucose", g, T0 + i * 300_000))
                await agent.put(key=b"p2", value=reading("p2", "glucose", 110, T0 + i * 300_000))
            for _ in range(50):
                await asyncio.sleep(0.05)
                if pipeline.processor.stats["readings"] >= 16:
                    break

    asyncio.run(scenario())
    events = [AlertEvent.from_json(v) for _, v in pipeline.alerts.sent]
    assert events and {e.patient_id for e in events} == {"p1"}
    records = state_records(pipeline)
    # one record per emit that had events, only for the patients of those events; the last is the book's now
    assert records and {k for k, _ in records} == {b"p1"}
    last = records[-1][1]
    assert last is not None and (last["schema_version"], last["patient_id"], last["ward"]) == (1, "p1", "unassigned")
    book = pipeline.processor.state_for("p1").book
    assert [AlertEvent.model_validate(a) for a in last["alerts"]] == book.open_alerts()
    assert {a["kind"] for a in last["alerts"]} >= {"glucose_urgent_low"}


def test_resolved_patient_gets_a_tombstone(pipeline: Pipeline) -> None:
    proc = pipeline.processor
    book = proc.state_for("p3").book
    from detectors.base import Audience, Finding, Priority

    f = Finding("glucose_low", "glucose", Priority.MEDIUM, Audience.CLINICAL, T0, T0, "rule", "low", value=60.0)
    opened = book.on_finding(f)
    assert [(k, v is not None) for k, v in pipeline.alert_states(opened)] == [(b"p3", True)]
    cleared = book.on_finding(Finding("glucose_low", "glucose", Priority.MEDIUM, Audience.CLINICAL, T0 + 60_000, T0,
                                      "rule", "resolved", value=80.0, cleared=True))
    assert [e.state for e in cleared] == ["resolved"]
    assert pipeline.alert_states(cleared) == [(b"p3", None)]


def test_every_patient_with_open_alerts_is_rewritten_once_after_the_worker_gets_it(pipeline: Pipeline) -> None:
    from detectors.base import Audience, Finding, Priority

    proc = pipeline.processor
    for pid in ("p4", "p5"):
        proc.state_for(pid).book.on_finding(
            Finding("glucose_low", "glucose", Priority.MEDIUM, Audience.CLINICAL, T0, T0, "rule", "low", value=60.0))
    proc.state_for("p6")  # nothing open: no record

    async def sync() -> list[tuple[bytes, dict | None]]:
        pipeline.records_out.sent.clear()  # type: ignore[attr-defined]
        await pipeline.sync_alert_states(["p4", "p5", "p6"], [])
        return state_records(pipeline)

    lag = [10_000]
    pipeline.consumer_lag = lambda: lag[0]  # type: ignore[method-assign]
    assert asyncio.run(sync()) == []  # still replaying: states may be older than their records
    lag[0] = 0
    first = asyncio.run(sync())
    assert sorted(k for k, _ in first) == [b"p4", b"p5"]
    assert all(v is not None and len(v["alerts"]) == 1 for _, v in first)
    assert asyncio.run(sync()) == []  # once
    pipeline.forget_synced_alert_states()  # what a revocation does
    assert sorted(k for k, _ in asyncio.run(sync())) == [b"p4", b"p5"]


def test_whether_a_patient_is_synced_lives_in_their_bookkeeping(pipeline: Pipeline) -> None:
    from detectors.base import Audience, Finding, Priority

    proc = pipeline.processor
    pids = [f"p{i}" for i in range(10, 15)]
    for pid in pids:
        proc.state_for(pid).book.on_finding(
            Finding("glucose_low", "glucose", Priority.MEDIUM, Audience.CLINICAL, T0, T0, "rule", "low", value=60.0))
    pipeline.consumer_lag = lambda: 0  # type: ignore[method-assign]
    pipeline.STATE_SYNC_PER_TICK = 2  # type: ignore[misc]

    def sync(keys: list[str]) -> list[bytes]:
        pipeline.records_out.sent.clear()  # type: ignore[attr-defined]
        asyncio.run(pipeline.sync_alert_states(keys, []))
        return sorted(k for k, _ in state_records(pipeline))

    assert sync(pids) == [b"p10", b"p11"] and [proc.synced(p) for p in pids] == [True, True, False, False, False]
    assert sync([]) == [b"p12", b"p13"] and sync([]) == [b"p14"] and all(proc.synced(p) for p in pids)
    assert pipeline._state_unsynced == {} and sync(pids) == []  # written once, and the queue let go
    pipeline.resync_alert_state("p11")  # a new ward
    assert not proc.synced("p11") and sync([]) == [b"p11"] and proc.synced("p11")
    proc.cache.pop("p12")
    proc.discard("p12")  # erased: nothing of the patient is kept, their flag with it
    assert not proc.synced("p12") and "p12" not in proc._patients
    assert not any(isinstance(v, set) and "p10" in v for v in vars(pipeline).values())  # no set of patients
    pipeline.forget_synced_alert_states()
    assert not any(proc.synced(p) for p in pids) and sync(pids) == [b"p10", b"p11"]
