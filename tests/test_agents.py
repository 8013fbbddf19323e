"""The Faust agents on in-memory channels (``Agent.test_context()``, store memory://).

Kafka is not involved: the output topics are replaced by recorders and the
table's changelog send is switched off; the agent code, the batch processor,
the patient state and the real detectors all run as in the worker.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import orjson
import pytest

from alerts.influx import minute_docs
from alerts.models import AlertEvent
from ingest.contract import decode_record
from streams.app import Pipeline
from streams.processing import BatchProcessor, Outputs
from streams.state_codec import decode_state, encode_state
from wearwatch.config import load_settings
from wearwatch.metrics import exposition
from wearwatch.partitioning import patient_partition

T0 = 1_780_000_000_000


class Recorder:
    """Stands in for an output topic: keeps what the agent sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.partitions: list[int | None] = []

    async def send(self, *, key: bytes, value: bytes, partition: int | None = None,
                   force: bool = False) -> asyncio.Future[None]:
        self.sent.append((key, value))
        self.partitions.append(partition)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class DirectRecorder:
    """Stands in for a :class:`streams.producers.DirectProducer`: keeps (topic, key, value)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, records: list[tuple[bytes, bytes]]) -> list[asyncio.Future[None]]:
        done: list[asyncio.Future[None]] = []
        for key, value in records:
            self.sent.append((topic, key, value))
            done.append(asyncio.get_running_loop().create_future())
            done[-1].set_result(None)
        return done

    async def partition_count(self, topic: str) -> int:
        return 8

    async def send_packed(self, topic: str, items: list[tuple[bytes, object]], pack: Callable[[list[object]], bytes],
                          per_record: int) -> list[asyncio.Future[None]]:
        """All items in one record, key ``b""`` (the real one packs per partition: stack tests)."""
        return await self.send(topic, [(b"", pack([item for _, item in items]))]) if items else []

    async def stop(self) -> None:
        pass


def reading(pid: str, signal: str, value: float, ts_ms: int) -> bytes:
    unit = {"heart_rate": "bpm", "glucose": "mg/dL", "steps": "steps"}[signal]
    return orjson.dumps({"schema_version": 1, "patient_id": pid, "signal": signal, "value": value, "unit": unit,
                         "ts_ms": ts_ms, "vendor": "v", "device_id": "d", "received_ms": ts_ms})


@pytest.fixture
def pipeline() -> Pipeline:
    p = Pipeline(load_settings(influx_token="u:p", worker_store="memory", pseudonym_key="k" * 16,
                               worker_batch_window_s=0.01, alerts_mqtt=False))
    p.alerts = Recorder()  # type: ignore[assignment]
    p.records_out = DirectRecorder()  # type: ignore[assignment]
    p.table.on_key_set = lambda key, value: None  # type: ignore[method-assign]
    p.processor.keys = None  # records in clear text (sealed ones: tests/test_sealed_transit.py)
    return p


def test_detect_agent_emits_exact_alerts_state_and_dead_letters(pipeline: Pipeline) -> None:
    async def scenario() -> None:
        async with pipeline.agents[0].test_context() as agent:
            # patient p1: glucose normal, then urgent low; p2 normal; one garbage record
            for i, g in enumerate([110, 100, 90, 80, 70, 60, 50, 48, 47]):
                await agent.put(key=b"p1", value=reading("p1", "glucose", g, T0 + i * 300_000))
                await agent.put(key=b"p2", value=reading("p2", "glucose", 110, T0 + i * 300_000))
            await agent.put(key=b"p1", value=reading("p1", "glucose", 47, T0 + 8 * 300_000))  # duplicate
            await agent.put(key=b"x", value=b"\xffnot json")
            for _ in range(50):
                await asyncio.sleep(0.05)
                if pipeline.processor.stats["readings"] + pipeline.processor.stats["duplicates"] >= 19:
                    break
        # states are stored when the consumer commits, not per batch
        assert set(pipeline.table.keys()) == set()
        await pipeline.write_states()  # what SafeOffsetsConsumer.force_commit runs first
        assert pipeline.processor.dirty == set()

    asyncio.run(scenario())
    stats = pipeline.processor.stats
    assert stats["readings"] == 18 and stats["duplicates"] == 1 and stats["dlq:bad_record"] == 1
    events = [AlertEvent.from_json(v) for _, v in pipeline.alerts.sent]  # type: ignore[attr-defined]
    urgent = [e for e in events if e.kind == "glucose_urgent_low"]
    assert [(e.patient_id, e.state, e.ts_ms) for e in urgent] == [("p1", "open", T0 + 6 * 300_000)]
    # one key per event, in the partition of the patient's key (8 partitions in the recorder)
    assert [k for k, _ in pipeline.alerts.sent] == [e.event_id.encode() for e in events]  # type: ignore[attr-defined]
    assert pipeline.alerts.partitions == [patient_partition(e.patient_id, 8) for e in events]  # type: ignore[attr-defined]
    assert [e for e in events if e.patient_id == "p2"] == []
    direct = pipeline.records_out.sent  # type: ignore[attr-defined]
    assert [(k, orjson.loads(v)["reason"]) for t, k, v in direct if t == "vitals.dlq"] == [(b"worker", "bad_record")]
    # each patient's glucose minutes 0, 5, …, 35 closed (stream time passed them by 3 min); minute 40 is open
    minutes = sorted((m["patient_id"], m["minute_ms"]) for t, _, v in direct if t == "vitals.1m"
                     for m in minute_docs(v))
    assert minutes == sorted((p, (T0 + i * 300_000) // 60_000 * 60_000) for p in ("p1", "p2") for i in range(8))
    assert set(pipeline.table.keys()) == {b"p1", b"p2"}
    restored = decode_state(pipeline.table[b"p1"])
    assert restored.admit("glucose", T0 + 8 * 300_000) == "duplicate"


def test_rebalance_forgets_cached_state(pipeline: Pipeline) -> None:
    proc = pipeline.processor
    proc.state_for("p9")
    assert "p9" in proc.cache
    proc.forget()
    assert proc.cache == {}


def test_read_only_views_never_fill_the_cache(pipeline: Pipeline) -> None:
    # the console and the FHIR views may run mid-recovery; what they load must not become
    # the state the agent continues from
    proc = pipeline.processor
    stored = proc.state_for("p7")
    stored.admit("glucose", T0)
    pipeline.table[b"p7"] = encode_state(stored)
    proc.forget()
    seen = proc.view("p7")
    assert seen.admit("glucose", T0) == "duplicate"
    assert proc.cache == {}
    assert proc.view("p8").newest_ms == 0 and proc.cache == {}


def test_tick_waits_until_the_table_is_recovered(pipeline: Pipeline) -> None:
    proc = pipeline.processor
    assert pipeline.serving is False  # until Faust reports the rebalance (recovery) complete
    proc.state_for("p5")  # e.g. loaded while the changelog was still being replayed
    asyncio.run(pipeline.app.on_rebalance_complete.send())
    assert pipeline.serving is True and proc.cache == {}
    asyncio.run(pipeline.app.on_partitions_revoked.send(set()))
    assert pipeline.serving is False


def test_states_are_written_in_chunks_and_a_batch_between_chunks_is_included(pipeline: Pipeline) -> None:
    proc = pipeline.processor
    pipeline.STATE_SLICE_S = 0.0  # one chunk per hold of the lock
    chunk = pipeline.STATE_CHUNK
    for i in range(2 * chunk + 10):
        proc.state_for(f"p{i}").admit("heart_rate", T0)
        proc.dirty.add(f"p{i}")
    written: list[bytes] = []
    pipeline.table.on_key_set = lambda key, value: written.append(key)  # type: ignore[method-assign]
    sizes: list[int] = []
    seen: list[str] = []

    async def send_changelog(records: list[tuple[bytes, bytes]]) -> None:
        sizes.append(len(written) - sum(sizes))

    pipeline._send_changelog = send_changelog  # type: ignore[method-assign]

    async def batch_between_chunks() -> None:
        # a batch waiting for the lock gets it after the first chunk and changes a written
        # patient and a new one: both must be in the same commit's states
        async with pipeline.state_lock:
            assert sizes == [chunk]  # it runs right after the first chunk
            again = written[0].decode()
            proc.state_for(again).admit("heart_rate", T0 + 5_000)
            proc.state_for("late").admit("heart_rate", T0)
            proc.dirty |= {again, "late"}
            seen.append(again)

    async def scenario() -> None:
        pipeline.state_lock = asyncio.Lock()
        await asyncio.gather(pipeline.write_states(), batch_between_chunks())

    asyncio.run(scenario())
    assert sizes[0] == chunk and len(sizes) == 3 and sum(sizes) == 2 * chunk + 10 + 2
    assert proc.dirty == set()
    assert set(written) == {f"p{i}".encode() for i in range(2 * chunk + 10)} | {b"late"}
    again = seen[0].encode()
    assert written.count(again) == 2 and written.index(again) == 0  # the newer state is written last
    assert decode_state(pipeline.table[again]).admit("heart_rate", T0 + 5_000) == "duplicate"


def test_take_dirty_with_a_limit_leaves_the_rest_dirty(pipeline: Pipeline) -> None:
    proc = pipeline.processor
    for i in range(5):
        proc.state_for(f"q{i}")
        proc.dirty.add(f"q{i}")
    first = proc.take_dirty(3)
    assert len(first) == 3 and len(proc.dirty) == 2 and proc.dirty.isdisjoint(first)
    rest = proc.take_dirty()
    assert set(first) | set(rest) == {f"q{i}" for i in range(5)} and proc.dirty == set()


def test_a_rebalance_between_chunks_skips_the_commit(pipeline: Pipeline) -> None:
    # the revocation drops the cached states and the list of changed ones: committing the
    # offsets acknowledged so far would skip readings whose states were never written
    proc = pipeline.processor
    pipeline.STATE_SLICE_S = 0.0  # one chunk per hold of the lock
    for i in range(pipeline.STATE_CHUNK + 50):
        proc.state_for(f"r{i}").admit("heart_rate", T0)
        proc.dirty.add(f"r{i}")

    async def send_changelog(records: list[tuple[bytes, bytes]]) -> None:
        return None

    pipeline._send_changelog = send_changelog  # type: ignore[method-assign]

    async def rebalance_between_chunks() -> None:
        await pipeline.app.on_partitions_revoked.send(set())

    async def scenario() -> tuple[bool, None]:
        pipeline.state_lock = asyncio.Lock()
        return await asyncio.gather(pipeline.write_states(), rebalance_between_chunks())

    done, _ = asyncio.run(scenario())
    assert done is False and proc.dirty == set() and proc.cache == {}
    assert asyncio.run(pipeline.write_states()) is True  # the next commit goes ahead


def test_a_late_reading_is_dead_lettered_as_itself_whether_it_came_alone_or_in_a_batch(pipeline: Pipeline) -> None:
    from ingest.contract import encode_batch

    proc = pipeline.processor
    fresh = reading("pl", "heart_rate", 70, T0 + 3_600_000)
    late = reading("pl", "heart_rate", 71, T0)  # an hour behind: beyond the lateness tolerance
    out = proc.process([(b"pl", fresh), (b"pl", late), (b"pl", encode_batch([late.replace(b"71", b"72")]))])
    dead = [orjson.loads(v) for _, v in out.dead]
    assert [d["reason"] for d in dead] == ["too_late", "too_late"]
    assert orjson.loads(dead[0]["payload"]) == orjson.loads(late)
    assert orjson.loads(dead[1]["payload"])["value"] == 72.0 and orjson.loads(dead[1]["payload"])["ts_ms"] == T0


def _resync_records(pids: list[str], hours: float, per_record: int = 12) -> list[bytes]:
    """Heart rate every 5 s over ``hours`` for each patient, time-ordered, packed like the gateway packs
    a partition's readings (several patients in one record)."""
    from ingest.contract import encode_batch

    readings = [reading(pid, "heart_rate", 60 + (i % 40), T0 + i * 5_000)
                for i in range(int(hours * 720)) for pid in pids]
    return [encode_batch(readings[i:i + per_record]) for i in range(0, len(readings), per_record)]


def _final_minutes(outputs: list[Outputs]) -> dict[tuple[str, str, int], tuple[float, int]]:
    """(patient, signal, minute) -> (sum, count) as InfluxDB ends up with it (a re-written point overwrites)."""
    final: dict[tuple[str, str, int], tuple[float, int]] = {}
    for out in outputs:
        for _, m in out.minutes:
            final[(m["patient_id"], m["signal"], m["minute_ms"])] = (m["sum"], m["count"])
    return final


def test_records_read_again_after_a_crash_are_replays_never_late_or_duplicates(pipeline: Pipeline) -> None:
    # A device re-sync: two hours of readings reach the worker within a few seconds, so one commit
    # interval spans far more than the 10-minute lateness window. The worker commits (states stored)
    # at record k, processes up to m and dies; its successor resumes at an older committed offset j
    # (the state was stored, the offsets commit had not caught up). Readings j..k are in the stored
    # state: replays, not too late (2 hours behind the state's newest) and not duplicates.
    records = _resync_records(["pa", "pb"], hours=2.0)
    n = len(records)
    j, k, m = n // 4, n // 2, 3 * n // 4
    per_record = [len(decode_record(v)) for v in records]
    keyed = [(b"pa", v) for v in records]
    positions = [(3, 1000 + i) for i in range(n)]

    reference = pipeline.processor
    ref_out = reference.process(keyed, positions)

    stored: dict[str, bytes] = {}
    first = BatchProcessor(pipeline._new_state, stored.get, lambda: T0)
    before = [first.process(keyed[:k], positions[:k])]
    stored.update(first.take_dirty())  # the commit's state write
    first.process(keyed[k:m], positions[k:m])  # then killed: these effects were sent, never stored

    second = BatchProcessor(pipeline._new_state, stored.get, lambda: T0)
    after = second.process(keyed[j:], positions[j:])
    st = second.stats
    assert st["replayed"] == sum(per_record[j:k])
    assert st["readings"] == sum(per_record[k:])
    assert st["too_late"] == 0 and st["duplicates"] == 0 and after.dead == []
    assert reference.stats["readings"] == sum(per_record) and reference.stats["replayed"] == 0
    # what InfluxDB holds in the end is what an uninterrupted worker wrote
    assert _final_minutes([*before, after]) == _final_minutes([ref_out])
    assert [e.event_id for e in after.events] == [e.event_id for e in ref_out.events
                                                  if e.event_id not in {x.event_id for x in before[0].events}]
    # read a third time, everything is a replay (the state now holds all of it)
    stored.update(second.take_dirty())
    third = BatchProcessor(pipeline._new_state, stored.get, lambda: T0)
    again = third.process(keyed, positions)
    assert third.stats["replayed"] == sum(per_record) and third.stats["readings"] == 0 and again.dead == []


def test_a_reading_sent_twice_is_a_duplicate_and_a_record_read_twice_a_replay(pipeline: Pipeline) -> None:
    proc = pipeline.processor
    one = reading("pd", "heart_rate", 70, T0)
    out = proc.process([(b"pd", one), (b"pd", one)], [(0, 5), (0, 6)])  # MQTT redelivery: a second record
    assert proc.stats["readings"] == 1 and proc.stats["duplicates"] == 1 and proc.stats["replayed"] == 0
    out.extend(proc.process([(b"pd", one)], [(0, 5)]))  # the first record read again
    assert proc.stats["replayed"] == 1 and proc.stats["duplicates"] == 1
    # a late reading is dead-lettered once: read again, its record is a replay
    late = reading("pd", "heart_rate", 71, T0 - 3_600_000)
    out.extend(proc.process([(b"pd", late)], [(0, 7)]))
    out.extend(proc.process([(b"pd", late)], [(0, 7)]))
    assert proc.stats["too_late"] == 1 and proc.stats["replayed"] == 2 and len(out.dead) == 1
    # another partition (the topic grew): its offsets are its own
    proc.process([(b"pd", reading("pd", "heart_rate", 72, T0 + 5_000))], [(1, 0)])
    assert proc.stats["readings"] == 2


def test_worker_metrics_count_what_the_detect_agent_did(pipeline: Pipeline) -> None:
    async def scenario() -> None:
        async with pipeline.agents[0].test_context() as agent:
            for i, g in enumerate([110, 100, 90, 80, 70, 60, 50, 48, 47]):
                await agent.put(key=b"p1", value=reading("p1", "glucose", g, T0 + i * 300_000))
            await agent.put(key=b"p1", value=reading("p1", "heart_rate", 70, T0))
            await agent.put(key=b"p1", value=reading("p1", "heart_rate", 70, T0))  # duplicate: not counted
            await agent.put(key=b"x", value=b"\xffnot json")
            for _ in range(50):
                await asyncio.sleep(0.05)
                if sum(pipeline.processor.stats[k] for k in ("readings", "duplicates", "dlq:bad_record")) >= 12:
                    break

    asyncio.run(scenario())
    telemetry = pipeline.telemetry
    telemetry.refresh()
    telemetry.refresh()  # a second scrape adds nothing
    body = exposition(telemetry.registry, "")[0].decode()
    assert 'wearwatch_readings_total{signal="glucose"} 9.0' in body
    assert 'wearwatch_readings_total{signal="heart_rate"} 1.0' in body
    assert 'wearwatch_readings_total{signal="steps"} 0.0' in body
    assert 'wearwatch_dead_letters_total{reason="bad_record"} 1.0' in body
    opened = [e for _, v in pipeline.alerts.sent  # type: ignore[attr-defined]
              if (e := AlertEvent.from_json(v)).kind == "glucose_urgent_low"]
    assert len(opened) == 1
    assert (f'wearwatch_alert_events_total{{kind="glucose_urgent_low",priority="{opened[0].priority}",state="open"}} '
            '1.0') in body
    batches = re.search(r"^wearwatch_processing_seconds_count (\S+)$", body, re.M)
    assert batches is not None and float(batches.group(1)) >= 1
    assert "p1" not in body
    assert not re.search(r"^wearwatch_worker_state_cache_total", body, re.M)  # no cap: nothing packed
    # the states packed past WEARWATCH_WORKER_LIVE_STATES and decoded again, counted from the processor's stats
    pipeline.processor.stats.update({"states_packed": 5, "states_unpacked": 2})
    telemetry.refresh()
    body = exposition(telemetry.registry, "")[0].decode()
    assert 'wearwatch_worker_state_cache_total{event="packed"} 5.0' in body
    assert 'wearwatch_worker_state_cache_total{event="unpacked"} 2.0' in body
    # no partition assigned, table not recovered (the agent ran in a test context, no consumer group)
    ready, checks = telemetry.readiness.status()
    assert ready is False and checks["partitions"]["ready"] is False and checks["tables"]["ready"] is False
