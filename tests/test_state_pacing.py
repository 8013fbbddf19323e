"""Write pacing of patient states (``BatchProcessor.plan_writes``): with many changed states a state
changed by readings only waits for more readings, and the committed offsets stay behind its first
unwritten record, so a worker that dies in between continues exactly where an uninterrupted one would."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.lifecycle import AlertBook
from detectors import PatientMonitor
from ingest.contract import encode_batch
from streams.processing import BatchProcessor, Outputs
from streams.state import PatientState
from streams.state_codec import encode_state
from wearwatch.contract.commands import Note, command_record

T0 = 1_780_000_000_000
PIDS = [f"p{i}" for i in range(6)]


def _new_state(pid: str) -> PatientState:
    return PatientState(PatientMonitor(), AlertBook(pid))


def _reading(pid: str, signal: str, value: float, ts_ms: int) -> dict[str, object]:
    unit = {"heart_rate": "bpm", "glucose": "mg/dL", "steps": "steps"}[signal]
    return {"schema_version": 1, "patient_id": pid, "signal": signal, "value": value, "unit": unit,
            "ts_ms": ts_ms, "vendor": "v", "device_id": "d", "received_ms": ts_ms}


def _records(minutes: int = 90, per_record: int = 4) -> list[tuple[bytes, bytes]]:
    """Heart rate every 10 s and glucose every 5 min for each patient (two send steps every 10 s too),
    time-ordered, packed several patients to a record; the odd patients fall to an urgent low and race
    to 150 bpm half-way."""
    readings = []
    for s in range(0, minutes * 60, 10):
        ts = T0 + s * 1000
        for i, pid in enumerate(PIDS):
            ill = i % 2 == 1 and s > minutes * 30
            readings.append(_reading(pid, "heart_rate", 150.0 + i if ill else 70.0 + (s // 10) % 7, ts))
            if i < 2:  # two patients send steps too: their states fill up faster than the others'
                readings.append(_reading(pid, "steps", float(s % 40), ts))
            if s % 300 == 0:
                readings.append(_reading(pid, "glucose", max(40.0, 120.0 - (s - minutes * 30) / 20) if ill
                                         else 110.0 + i, ts))
    return [(b"k", encode_batch([orjson.dumps(r) for r in readings[j:j + per_record]]))
            for j in range(0, len(readings), per_record)]


def _processor(stored: dict[str, bytes], clock: list[int], **pacing: int) -> BatchProcessor:
    return BatchProcessor(_new_state, stored.get, lambda: clock[0], **pacing)


def _commit(proc: BatchProcessor, stored: dict[str, bytes], processed_to: int) -> int:
    """A commit: the state write, then the offset the consumer may commit (next record to read)."""
    proc.plan_writes()
    stored.update(proc.take_dirty())
    limits = proc.commit_limits()
    return min(processed_to, limits.get(0, processed_to))


def _run_with_crash(records: list[tuple[bytes, bytes]], honour_limits: bool = True
                    ) -> tuple[BatchProcessor, list[Outputs], dict[str, int]]:
    """Batches of 10 records with a commit after every third; killed after the 11th batch (2 batches
    processed since the last commit); a second worker resumes at the committed offset."""
    stored: dict[str, bytes] = {}
    clock = [T0]
    first = _processor(stored, clock, write_readings=25, write_max_ms=3_600_000, write_eager=0)
    outs: list[Outputs] = []
    committed = 0
    waited = 0
    for b in range(11):
        lo, hi = b * 10, (b + 1) * 10
        outs.append(first.process(records[lo:hi], [(0, o) for o in range(lo, hi)]))
        if b % 3 == 2:
            done = _commit(first, stored, hi)
            waited += hi - done
            committed = done if honour_limits else hi
    second = _processor(stored, clock, write_readings=25, write_max_ms=3_600_000, write_eager=0)
    outs.append(second.process(records[committed:], [(0, o) for o in range(committed, len(records))]))
    return second, outs, {"committed": committed, "waited": waited, "replayed": second.stats["replayed"]}


def test_a_worker_killed_between_paced_writes_continues_as_an_uninterrupted_one() -> None:
    records = _records()
    reference = _processor({}, [T0])
    ref_out = reference.process(records, [(0, o) for o in range(len(records))])
    assert any(e.kind == "glucose_urgent_low" for e in ref_out.events)

    second, outs, figures = _run_with_crash(records)
    # the pacing held the commits back (else this test would not test it) and the successor's stored
    # states told the records they hold (replays) from those they lack
    assert figures["waited"] > 0 and figures["replayed"] > 0
    assert second.stats["too_late"] == 0 and second.stats["duplicates"] == 0
    # every patient ends in exactly the state of the uninterrupted worker ...
    for pid in PIDS:
        assert encode_state(second.cache[pid]) == encode_state(reference.cache[pid]), pid
    # ... and the alerts are the same (a re-emitted event has the same id: at-least-once, idempotent)
    got = {e.event_id: e.model_dump(exclude={"emitted_ms"}) for out in outs for e in out.events}
    want = {e.event_id: e.model_dump(exclude={"emitted_ms"}) for e in ref_out.events}
    assert got == want


def test_committing_past_the_waiting_states_would_lose_readings() -> None:
    # the same run, committing every processed record: the successor misses what the unwritten states held
    records = _records()
    reference = _processor({}, [T0])
    reference.process(records, [(0, o) for o in range(len(records))])
    second, _, _ = _run_with_crash(records, honour_limits=False)
    assert any(encode_state(second.cache[pid]) != encode_state(reference.cache[pid]) for pid in PIDS)


def _touch(proc: BatchProcessor, pid: str, n: int, offset: int, ts: int) -> int:
    """``n`` heart-rate readings of ``pid``, one record each from ``offset``; the next offset."""
    recs = [(pid.encode(), orjson.dumps(_reading(pid, "heart_rate", 70.0, ts + i * 1000))) for i in range(n)]
    proc.process(recs, [(2, offset + i) for i in range(n)])
    return offset + n


def test_states_wait_for_enough_readings_or_time_and_commands_do_not_wait() -> None:
    stored: dict[str, bytes] = {}
    clock = [T0]
    proc = _processor(stored, clock, write_readings=3, write_max_ms=60_000, write_eager=1)
    off = _touch(proc, "a", 3, 100, T0)        # 3 readings: due
    off = _touch(proc, "b", 2, off, T0)        # 2: waits
    off = _touch(proc, "c", 1, off, T0)        # 1: waits
    assert proc.plan_writes() == 2
    assert set(proc.take_dirty()) == {"a"}
    assert proc.commit_limits() == {2: 103}    # b's first record
    assert proc.dirty == {"b", "c"}

    # a nurse command for c: written at the next commit, however few readings it holds
    ack = Note(ward="3B", patient_id="c", alert_id="al-" + "0" * 20, text="called", by="kim", ts_ms=T0)
    proc.commands([(b"c", command_record(ack))])
    assert proc.plan_writes() == 1
    assert set(proc.take_dirty()) == {"c"}
    assert proc.commit_limits() == {2: 103}

    # b's oldest unwritten reading is a minute old (wall time): written
    clock[0] += 60_000
    assert proc.plan_writes() == 0
    assert set(proc.take_dirty()) == {"b"}
    assert proc.commit_limits() == {}


def test_few_changed_states_are_all_written_and_readings_during_a_paced_write_wait() -> None:
    stored: dict[str, bytes] = {}
    clock = [T0]
    proc = _processor(stored, clock, write_readings=10, write_max_ms=60_000, write_eager=2)
    off = _touch(proc, "a", 1, 0, T0)
    off = _touch(proc, "b", 1, off, T0)
    assert proc.plan_writes() == 0            # two changed states: no more than write_eager
    assert set(proc.take_dirty()) == {"a", "b"} and proc.commit_limits() == {}

    off = _touch(proc, "a", 1, off, T0 + 10_000)
    off = _touch(proc, "b", 1, off, T0 + 10_000)
    off = _touch(proc, "c", 10, off, T0)
    assert proc.plan_writes() == 2             # three: a and b wait, c has its 10
    assert set(proc.take_dirty(1)) == {"c"}
    # a batch between two slices of the write: its patient waits with the others
    late = _touch(proc, "d", 1, off, T0)
    assert proc.take_dirty() == {}
    assert proc.commit_limits() == {2: 2}      # a's first unwritten record
    assert proc.dirty == {"a", "b", "d"} and proc.unwritten["d"][1] == late - 1


def test_once_the_input_is_drained_every_state_is_written() -> None:
    clock = [T0]
    proc = _processor({}, clock, write_readings=10, write_max_ms=60_000, write_eager=0, write_quiet_ms=2_000)
    _touch(proc, "a", 1, 0, T0)
    assert proc.plan_writes() == 1 and proc.take_dirty() == {} and proc.commit_limits() == {2: 0}
    clock[0] += 1_999
    assert proc.plan_writes() == 1 and proc.take_dirty() == {} and proc.commit_limits() == {2: 0}
    clock[0] += 1                              # no readings for a commit interval
    assert proc.plan_writes() == 0 and set(proc.take_dirty()) == {"a"} and proc.commit_limits() == {}


def test_pacing_off_writes_every_changed_state() -> None:
    proc = _processor({}, [T0], write_readings=0)
    _touch(proc, "a", 1, 0, T0)
    assert proc.plan_writes() == 0 and set(proc.take_dirty()) == {"a"} and proc.commit_limits() == {}


def _queued(proc: BatchProcessor) -> list[tuple[int, list[str]]]:
    return [(ms, list(group)) for ms, group in sorted(proc._by_age.heap)]


@pytest.mark.parametrize("pacing", [{"write_eager": 10}, {"write_readings": 0}], ids=["small ward", "pacing off"])
def test_a_worker_that_writes_every_changed_state_keeps_no_age_queue(pacing: dict[str, int]) -> None:
    # a ward below write_eager (or pacing off) writes every changed state at each commit, so nothing waits by
    # age; the queue of first unwritten readings must not keep one entry per patient and commit for as long as
    # the worker runs (it did: ~225 B per patient per million readings of a 1,000-patient ward)
    clock = [T0]
    proc = _processor({}, clock, write_max_ms=60_000, **pacing)
    off = 0
    for r in range(300):
        clock[0] += 2_000
        for pid in PIDS:
            off = _touch(proc, pid, 1, off, T0 + r * 2_000)
        assert proc.plan_writes() == 0 and set(proc.take_dirty()) == set(PIDS)
        # a batch between two slices of the write: its patient's first unwritten reading is the one queued
        clock[0] += 1
        between = PIDS[r % len(PIDS)]
        off = _touch(proc, between, 1, off, T0 + r * 2_000 + 1_000)
        assert proc.commit_limits() == {2: off - 1}
        assert _queued(proc) == [(clock[0], [between])]
        assert proc.states_unwritten == 1
    assert proc.plan_writes() == 0 and set(proc.take_dirty()) == {PIDS[299 % len(PIDS)]}
    assert proc.commit_limits() == {} and _queued(proc) == [] and proc.states_unwritten == 0


def test_one_commit_writes_a_bounded_number_of_states() -> None:
    clock = [T0]
    proc = _processor({}, clock, write_readings=1, write_max_ms=60_000, write_eager=0)
    proc.write_most = 3
    off = 0
    for pid in "abcde":
        off = _touch(proc, pid, 1, off, T0)   # each is due (1 reading)
    assert proc.plan_writes() == 2
    first = set(proc.take_dirty())
    assert len(first) == 3
    assert proc.commit_limits() == {2: min(proc.unwritten[p][1] for p in "abcde" if p not in first)}
    assert proc.plan_writes() == 0 and set(proc.take_dirty()) == set("abcde") - first
    assert proc.commit_limits() == {}


def test_a_slow_state_write_spreads_a_burst_of_due_states_over_more_commits() -> None:
    clock = [T0]
    proc = _processor({}, clock, write_readings=1, write_max_ms=60_000, write_eager=0)
    # 16,384 states took 8 s: 2,048 would fit in the 1-s budget, under the floor; halfway there each time
    assert proc.fit_writes(16_384, 8.0, 1.0) == (16_384 + 4_096) // 2 == 10_240
    assert proc.fit_writes(16_384, 8.0, 1.0) == (10_240 + 4_096) // 2 == 7_168
    assert proc.fit_writes(1_000, 100.0, 1.0) == 7_168  # too few states to tell
    pids = [f"p{i:05d}" for i in range(10_000)]
    off = 0
    for pid in pids:
        off = _touch(proc, pid, 1, off, T0)  # each is due (1 reading)
    assert proc.plan_writes() == 10_000 - 7_168
    first = set(proc.take_dirty())
    assert len(first) == 7_168
    assert proc.commit_limits() == {2: min(proc.unwritten[p][1] for p in pids if p not in first)}
    assert proc.plan_writes() == 0
    second = set(proc.take_dirty())
    assert len(second) == 2_832 and not first & second and first | second == set(pids)
    assert proc.commit_limits() == {} and proc.states_unwritten == 0
    # a fast write brings the cap back up, never past WRITE_MOST
    assert proc.fit_writes(8_000, 0.1, 1.0) == (7_168 + 16_384 + 1) // 2
    for _ in range(20):
        proc.fit_writes(8_000, 0.1, 1.0)
    assert proc.write_most == BatchProcessor.WRITE_MOST


def test_a_fleet_that_started_together_is_written_at_a_steady_rate() -> None:
    # 600 patients whose first readings came within 5 s of each other, each sending every 5 s, a commit every
    # 2 s: by age alone all 600 states would fall due together once a minute; the steady share writes ~20 at
    # every commit (600 states x 2 s / 60 s) from the start, each within the minute and a commit
    clock = [T0]
    proc = _processor({}, clock, write_readings=1_000, write_max_ms=60_000, write_eager=0, write_quiet_ms=5_000)
    pids = [f"s{i:03d}" for i in range(600)]
    off, counts, oldest = 0, [], 0
    for sec in range(600):
        clock[0] += 1_000
        for pid in pids[(sec % 5) * 120:(sec % 5 + 1) * 120]:
            off = _touch(proc, pid, 1, off, T0 + sec * 1_000)
        if sec % 2:
            unwritten = proc.unwritten
            proc.plan_writes()
            written = proc.take_dirty()
            proc.commit_limits()
            counts.append(len(written))
            oldest = max([oldest, *(clock[0] - unwritten[pid][3] for pid in written)])
    assert counts[0] == 0  # the first commit has no time since the one before
    assert all(16 <= n <= 24 for n in counts[1:]), counts
    assert sum(counts) == pytest.approx(600 * 600 / 60, rel=0.05)
    assert oldest <= 61_000


def _naive_waiting(proc: BatchProcessor, now: int) -> set[str]:
    """What plan_writes sets aside, by walking every changed state (as it did before its bookkeeping was
    kept incrementally)."""
    changed = proc.dirty | proc.waiting
    if not proc.write_readings or len(changed) <= proc.write_eager or now - proc.last_batch_ms >= proc.write_quiet_ms:
        return set()
    oldest = now - proc.write_max_ms
    return {pid for pid in changed
            if (held := proc.unwritten.get(pid)) is not None and held[2] < proc.write_readings and held[3] > oldest
            and pid not in proc.urgent}


def _naive_limits(proc: BatchProcessor) -> dict[int, int]:
    limits: dict[int, int] = {}
    for partition, offset, _n, _ms in proc.unwritten.values():
        limits[partition] = min(offset, limits.get(partition, offset))
    return limits


_PACING_STEP = st.one_of(
    st.tuples(st.just("readings"), st.lists(st.tuples(st.integers(0, 11), st.integers(0, 2)), min_size=1, max_size=12)),
    st.tuples(st.just("wait"), st.sampled_from([500, 1_000, 1_000, 1_500, 2_500, 20_000])),
    st.tuples(st.just("note"), st.integers(0, 11)),
    st.tuples(st.just("commit"), st.tuples(st.integers(0, 3), st.lists(st.tuples(st.integers(0, 11), st.integers(0, 2)),
                                                                        max_size=3))),
)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(_PACING_STEP, min_size=1, max_size=50), need=st.sampled_from([1, 3, 8]),
       eager=st.sampled_from([0, 2, 5]))
def test_the_incremental_bookkeeping_sets_aside_and_limits_as_walking_every_state_would(
        steps: list[tuple[str, Any]], need: int, eager: int) -> None:
    # readings of 12 patients on 3 partitions, nurse notes (written at once), wall time passing, and commits
    # whose state write is sliced (a batch between two slices waits for the next commit)
    clock = [T0]
    proc = _processor({}, clock, write_readings=need, write_max_ms=4_000, write_eager=eager, write_quiet_ms=2_000)
    offsets = [0, 0, 0]
    ts = [T0]
    planned = 0  # wall ms of the last plan_writes

    def batch(items: list[tuple[int, int]]) -> None:
        recs, positions = [], []
        for patient, partition in items:
            pid = f"q{patient * 3 + partition}"  # a patient's records all go to one partition
            ts[0] += 1_000
            recs.append((pid.encode(), orjson.dumps(_reading(pid, "heart_rate", 70.0 + ts[0] % 5, ts[0]))))
            positions.append((partition, offsets[partition]))
            offsets[partition] += 1
        proc.process(recs, positions)

    for kind, arg in steps:
        if kind == "readings":
            batch(arg)
        elif kind == "wait":
            clock[0] += arg
        elif kind == "note":
            note = Note(ward="3B", patient_id=f"q{arg}", alert_id="al-" + "0" * 20, text="x", by="kim", ts_ms=T0)
            proc.commands([(f"q{arg}".encode(), command_record(note))])
        else:
            slices, between = arg
            want = _naive_waiting(proc, clock[0])
            unwritten = proc.unwritten
            changed = proc.dirty | proc.waiting
            # the steady share: the states due anyway topped up with the oldest of those that may wait
            share = len(unwritten) * (clock[0] - planned) // 4_000 - (len(changed) - len(want)) if planned else 0
            planned = clock[0]
            assert proc.plan_writes() == len(proc.waiting)
            assert proc.waiting <= want
            extra = want - proc.waiting
            assert len(extra) == (min(max(share, 0), len(want)) if want else 0)
            if extra and proc.waiting:
                assert max(unwritten[p][3] for p in extra) <= min(unwritten[p][3] for p in proc.waiting)
            written = set(proc.take_dirty(slices or None))
            assert written.isdisjoint(proc.waiting)
            batch(between)
            written |= set(proc.take_dirty())
            assert proc.commit_limits() == _naive_limits(proc)
            assert proc.dirty.isdisjoint(written) or between
            # the age queue's front is an unwritten state's first reading: what the commit wrote is not kept
            if proc._by_age.heap:
                ms, group = min(proc._by_age.heap)
                assert group and (held := proc.unwritten.get(group[0])) is not None and held[3] == ms


def test_the_bookkeeping_holds_one_string_per_patient_and_counts_the_unwritten_states() -> None:
    # every reading decodes its own patient id string: the structures keyed by patient share one (the cached
    # state's key), not one per reading that reached them
    stored: dict[str, bytes] = {}
    clock = [T0]
    proc = _processor(stored, clock, write_readings=4, write_max_ms=60_000, write_eager=0, write_quiet_ms=10_000)
    records = _records(minutes=3)
    for i in range(0, len(records), 5):
        clock[0] += 1_000
        proc.process(records[i:i + 5], [(1, j) for j in range(i, min(i + 5, len(records)))])
        proc.tick(proc.begin_round(list(proc.cache) if proc.full_round else None))
        if i % 15 == 0:
            _commit(proc, stored, i + 5)
    ids = {pid: pid for pid in proc.cache}
    held = [*proc.dirty, *proc.waiting, *proc.last_received, *proc.unwritten, *proc._patients]
    held += [pid for _, group in proc._by_age.heap for pid in group]
    held += [pid for q in proc._by_offset.values() for _, group in q.heap for pid in group]
    held += [pid for _, group in proc._heap.heap for pid in group]
    assert len(held) > 3 * len(PIDS) and all(pid is ids[pid] for pid in held)
    assert proc.states_unwritten == len(proc.unwritten) > 0
    assert all(st._more is None for st in proc.cache.values())  # one partition: its position is a pair, no dict
    clock[0] += 10_000  # the input is drained: every changed state is written
    proc.plan_writes()
    stored.update(proc.take_dirty())
    proc.commit_limits()
    assert proc.states_unwritten == len(proc.unwritten) == 0
    proc.discard("p0")
    assert "p0" not in proc.cache and "p0" not in proc.last_received and proc.states_unwritten == 0
    proc.forget()
    assert proc.states_unwritten == 0 and proc.last_received == {} and proc._heap.heap == []
