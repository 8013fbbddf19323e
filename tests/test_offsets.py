"""Records Faust drops around a rebalance are never committed and are read again."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from streams.offsets import GapGuard, Record, SafeOffsetsConsumer, install
from wearwatch.errors import StackUnavailable

VITALS = TP("vitals", 0)


def _message(tp: TP, offset: int, generation: int) -> ConsumerMessage:
    return ConsumerMessage(tp.topic, tp.partition, offset, 0.0, None, None, b"k", b"v", None, 1, 1,
                           tp=tp, generation_id=generation)


def _consumer() -> tuple[faust.App, SafeOffsetsConsumer]:
    app = faust.App("offsets-test", broker="kafka://127.0.0.1:1", store="memory://", autodiscover=False)
    install(app)
    app.topics.add(app.topic("vitals", value_type=bytes))
    asyncio.run(app.topics._update_indices())  # what subscribing does when the worker starts
    consumer = app.consumer
    assert isinstance(consumer, SafeOffsetsConsumer)
    app.consumer_generation_id = 7
    return app, consumer


def test_stale_generation_and_paused_flow_acks_are_not_committed() -> None:
    app, consumer = _consumer()
    app.flow_control.resume()
    stale = [_message(VITALS, off, generation=6) for off in (10, 11, 12)]  # fetched before the rebalance
    assert [consumer.ack(m) for m in stale] == [False, False, False]
    assert all(m.acked for m in stale)  # done: nothing waits for them
    assert consumer._new_offset(VITALS) is None  # ...but nothing to commit: the group re-delivers 10..12
    app.flow_control.suspend()  # mid-rebalance: a stream drops (and acks) what reaches it now
    assert consumer.ack(_message(VITALS, 10, generation=7)) is False
    assert consumer._new_offset(VITALS) is None
    app.flow_control.resume()
    fresh = [_message(VITALS, off, generation=7) for off in (10, 11, 12)]  # read again, processed
    assert [consumer.ack(m) for m in fresh] == [True, True, True]
    assert consumer._new_offset(VITALS) == 13


def test_a_skipped_record_at_the_resume_point_blocks_the_commit() -> None:
    # Faust's own _new_offset lets one unprocessed record at the committed offset pass
    app, consumer = _consumer()
    app.flow_control.resume()
    consumer._committed_offset[VITALS] = 20  # resumed here (next record to read)
    assert [consumer.ack(_message(VITALS, off, generation=7)) for off in (21, 22)] == [True, True]
    assert consumer._new_offset(VITALS) is None  # 20 itself was never processed
    consumer.mark_processed(VITALS, range(20, 21))  # GapGuard read it directly
    assert consumer._new_offset(VITALS) == 23


def test_a_read_offset_reset_by_a_seek_does_not_hold_commits_back() -> None:
    # After a restart Faust seeks to the committed offset (194) while records of an earlier fetch are
    # still being handed over; its fetch loop then sees 276 right after 194 and books 195..276 as a
    # "gap" (offsets that do not exist, to be committed as if acknowledged), although 195..225 were
    # delivered and acknowledged and 226..275 are read by GapGuard. Merged into the acknowledged
    # offsets, that gap doubled each of them, and Faust's commit then advanced one offset per commit:
    # seen on the stack as a restarted worker leaving 3,700 records uncommitted once idle.
    app, consumer = _consumer()
    app.flow_control.resume()
    consumer._committed_offset[VITALS] = 194
    assert all(consumer.ack(_message(VITALS, off, generation=7)) for off in range(194, 226))
    asyncio.run(consumer._add_gap(VITALS, 195, 276))  # what Faust's fetch loop does on the jump
    consumer.mark_processed(VITALS, range(226, 276))  # GapGuard read and processed them
    assert consumer.ack(_message(VITALS, 276, generation=7))
    assert consumer._new_offset(VITALS) == 277  # everything processed commits at once
    consumer._committed_offset[VITALS] = 277
    assert consumer._new_offset(VITALS) is None  # and nothing is left over to creep forward


def test_an_offset_never_processed_is_not_committed_as_a_gap() -> None:
    # Faust books offsets missing between two fetched records as a gap and commits past them; on
    # these topics offsets have no holes, so a jump means skipped records, which GapGuard reads:
    # until they are processed the commit stops before them
    app, consumer = _consumer()
    app.flow_control.resume()
    consumer._committed_offset[VITALS] = 10
    assert all(consumer.ack(_message(VITALS, off, generation=7)) for off in (10, 11, 15))
    asyncio.run(consumer._add_gap(VITALS, 12, 14))
    assert consumer._new_offset(VITALS) == 12
    consumer._committed_offset[VITALS] = 12
    assert consumer._new_offset(VITALS) is None  # 12..14 were never processed
    consumer.mark_processed(VITALS, range(12, 15))
    assert consumer._new_offset(VITALS) == 16


class _Reader:
    """Stands in for PartitionReader: the partition's log, read by offset range."""

    def __init__(self, log: dict[int, bytes]) -> None:
        self.log = log
        self.calls: list[tuple[int, int]] = []

    async def __call__(self, tp: TP, start: int, end: int) -> list[tuple[int, Record]]:
        self.calls.append((start, end))
        return [(o, Record(tp.topic, b"k", self.log[o], tp.partition, o)) for o in range(start, end) if o in self.log]


class _Marks:
    def __init__(self, resume: dict[TP, int]) -> None:
        self.resume_points = resume
        self.marked: list[tuple[TP, list[int]]] = []
        self.held: set[TP] = set(resume)

    def assignment(self) -> set[TP]:
        return set(self.held)

    def mark_processed(self, tp: TP, offsets: range) -> None:
        self.marked.append((tp, list(offsets)))


def _events(tp: TP, offsets: list[int]) -> list[Any]:
    return [SimpleNamespace(message=SimpleNamespace(tp=tp, offset=o, topic=tp.topic), key=b"k",
                            value=b"v%d" % o) for o in offsets]


def test_gap_guard_reads_skipped_records_first_and_lets_them_commit_once_processed() -> None:
    other = TP("vitals", 1)
    consumer = _Marks({VITALS: 100, other: 5})
    reader = _Reader({o: b"v%d" % o for o in range(100, 200)})
    guard = GapGuard(consumer, ["vitals"], reader)

    def admit(evs: list[Any]) -> list[bytes]:
        return [r.value for r in asyncio.run(guard.admit(evs))]

    # Faust handed over 100..103 then 108..: 104..107 were skipped
    got = admit(_events(VITALS, [100, 101, 102, 103, 108, 109]) + _events(other, [5, 6]))
    assert got == [b"v%d" % o for o in (100, 101, 102, 103, 104, 105, 106, 107, 108, 109)] + [b"v5", b"v6"]
    # each record says where it was read: the patient state tells replays by it
    records = asyncio.run(GapGuard(_Marks({VITALS: 100}), ["vitals"], _Reader(reader.log)).admit(
        _events(VITALS, [100, 102])))
    assert [(r.partition, r.offset) for r in records] == [(0, 100), (0, 101), (0, 102)]
    assert reader.calls == [(104, 108)]
    assert consumer.marked == []  # not before the caller processed them
    guard.done()
    assert consumer.marked == [(VITALS, [104, 105, 106, 107])]
    assert guard.stats["skipped_offsets"] == 4 and guard.stats["recovered"] == 4
    # Faust re-delivering some of them later is harmless (the state drops duplicates)
    assert admit(_events(VITALS, [105, 110])) == [b"v105", b"v110"]
    assert reader.calls == [(104, 108)]

    # a partition first seen past its resume point was skipped too
    guard.reset()
    consumer.resume_points = {VITALS: 150}
    assert admit(_events(VITALS, [152])) == [b"v150", b"v151", b"v152"]


def test_gap_guard_retries_a_failed_read_and_never_hands_over_later_records_without_it() -> None:
    calls: list[int] = []

    async def flaky(tp: TP, start: int, end: int) -> list[Any]:
        calls.append(start)
        if len(calls) < 3:
            raise TimeoutError("broker gone")
        return [(o, Record(tp.topic, b"k", b"v%d" % o, tp.partition, o)) for o in range(start, end)]

    consumer = _Marks({VITALS: 10})
    guard = GapGuard(consumer, ["vitals"], flaky, retry_for_s=5.0)
    assert [r.value for r in asyncio.run(guard.admit(_events(VITALS, [12])))] == [b"v10", b"v11", b"v12"]
    assert calls == [10, 10, 10] and guard.stats["skipped_read_failures"] == 2

    async def broken(tp: TP, start: int, end: int) -> list[Any]:
        raise TimeoutError("broker gone")

    # unreadable for good: 12 is not handed over without 10 and 11 (a state that folded in 12 would take
    # them for replays); the worker restarts and reads from the committed offset
    guard = GapGuard(_Marks({VITALS: 10}), ["vitals"], broken, retry_for_s=0.4)
    with pytest.raises(StackUnavailable):
        asyncio.run(guard.admit(_events(VITALS, [12])))
    guard.done()
    assert guard.consumer.marked == []


def test_a_partition_whose_last_records_never_reach_the_agent_is_read_directly() -> None:
    """Faust dropped a quiet partition's last records (nothing after them shows a jump): once the log has
    held them for stall_s with none handed over, they are read directly, processed, and let commit."""
    other, commands = TP("vitals", 1), TP("commands", 0)
    consumer = _Marks({VITALS: 100, other: 7, commands: 3})
    log_ = {o: b"v%d" % o for o in range(100, 104)}
    reader = _Reader(log_)
    ends = {VITALS: 104, other: 7, commands: 9}
    asked: list[set[TP]] = []

    async def end_offsets(tps: list[TP]) -> dict[TP, int]:
        asked.append(set(tps))
        return {tp: ends[tp] for tp in tps}

    now = [0.0]
    guard = GapGuard(consumer, ["vitals"], reader, ends=end_offsets, stall_s=10.0, clock=lambda: now[0])

    def stalled() -> list[tuple[TP, int, int]]:
        return asyncio.run(guard.stalled())

    # the agent got 100 and 101; 102 and 103 went missing, and nothing came after them
    assert [r.value for r in asyncio.run(guard.admit(_events(VITALS, [100, 101])))] == [b"v100", b"v101"]
    # while the agent is busy with those (a sink waiting for InfluxDB), the others waiting is no stall
    for t in (0.0, 10.0, 20.0):
        now[0] = t
        assert stalled() == []
    assert asked == [{VITALS, other}] * 3  # the watched topics' partitions only
    guard.done()
    assert stalled() == []  # first seen behind with the agent free at t=20
    now[0] = 29.9
    assert stalled() == []
    now[0] = 30.0
    due = stalled()
    assert due == [(VITALS, 102, 104)] and reader.calls == []
    records = asyncio.run(guard.reread(due))
    assert [(r.offset, r.value) for r in records] == [(102, b"v102"), (103, b"v103")]
    assert consumer.marked == []  # not before they are processed
    guard.done()
    assert consumer.marked == [(VITALS, [102, 103])]
    assert guard.stats["stalled"] == 1 and guard.stats["recovered"] == 2
    assert guard.next_offset(VITALS) == 104
    now[0] = 50.0
    assert stalled() == []  # caught up with the log
    # Faust handing them over after all changes nothing for the guard
    assert [r.offset for r in asyncio.run(guard.admit(_events(VITALS, [103])))] == [103]
    assert reader.calls == [(102, 104)]


def test_a_partition_the_agent_makes_progress_on_is_never_read_directly() -> None:
    consumer = _Marks({VITALS: 0})
    reader = _Reader({o: b"v%d" % o for o in range(0, 20_000)})
    end = [12_000]

    async def end_offsets(tps: list[TP]) -> dict[TP, int]:
        return {tp: end[0] for tp in tps}

    now = [0.0]
    guard = GapGuard(consumer, ["vitals"], reader, ends=end_offsets, stall_s=10.0, clock=lambda: now[0])
    # a backlog the agent works through: every check finds it behind, but never at the same offset
    for step in range(1, 6):
        assert asyncio.run(guard.stalled()) == []
        now[0] += 8.0
        asyncio.run(guard.admit(_events(VITALS, list(range((step - 1) * 100, step * 100)))))
        guard.done()
    assert reader.calls == [] and guard.stats["stalled"] == 0
    # the agent stops getting records at 500: after stall_s, at most REREAD_MOST of them are read at a time
    assert asyncio.run(guard.stalled()) == []
    now[0] += 10.0
    due = asyncio.run(guard.stalled())
    assert due == [(VITALS, 500, 500 + GapGuard.REREAD_MOST)]
    # the agent got a batch meanwhile (its lock is taken before reread): nothing is read twice
    asyncio.run(guard.admit(_events(VITALS, [500])))
    guard.done()
    assert asyncio.run(guard.reread(due)) == [] and reader.calls == []
    # a partition taken away by a rebalance is not read either
    now[0] += 10.0
    asyncio.run(guard.stalled())
    now[0] += 10.0
    due = asyncio.run(guard.stalled())
    assert due == [(VITALS, 501, 501 + GapGuard.REREAD_MOST)]
    consumer.held = set()
    assert asyncio.run(guard.reread(due)) == [] and reader.calls == []
    assert asyncio.run(guard.stalled()) == []
    # without an ``ends`` call nothing is looked for
    assert asyncio.run(GapGuard(consumer, ["vitals"], reader).stalled()) == []


def test_commit_stores_changed_states_first() -> None:
    _app, consumer = _consumer()
    calls: list[str] = []

    async def write_states() -> None:
        calls.append("states")

    consumer.before_commit = write_states
    assert asyncio.run(consumer.force_commit()) is False  # nothing acknowledged: nothing to commit
    assert calls == ["states"]


def test_offsets_are_committed_only_once_the_written_states_are_in_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    _app, consumer = _consumer()
    order: list[str] = []

    async def parent_commit(self: Any, offsets: Any, start_new_transaction: bool = True) -> bool:
        order.append("commit")
        return True

    async def scenario(fail: bool) -> bool:
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[Any] = loop.create_future()
        consumer.pending_writes = [acked]

        async def broker() -> None:
            await asyncio.sleep(0.01)
            order.append("state acked")
            if fail:
                acked.set_exception(TimeoutError("no broker"))
            else:
                acked.set_result(None)

        crashed: list[BaseException] = []

        async def crash(exc: BaseException) -> None:
            crashed.append(exc)

        consumer.crash = crash  # type: ignore[method-assign]
        acker = asyncio.ensure_future(broker())
        done = await consumer._commit_offsets({VITALS: 5})
        await acker
        assert consumer.pending_writes == []
        assert len(crashed) == int(fail)
        return done

    # Faust's own commit (flush + commit to the broker) stands in as a recorder
    monkeypatch.setattr(SafeOffsetsConsumer.__mro__[1], "_commit_offsets", parent_commit)
    assert asyncio.run(scenario(fail=False)) is True
    assert order == ["state acked", "commit"]
    order.clear()
    assert asyncio.run(scenario(fail=True)) is False  # a lost state record: no commit, the worker stops
    assert order == ["state acked"]


def test_commit_is_skipped_when_the_state_write_says_so() -> None:
    _app, consumer = _consumer()

    async def interrupted() -> bool:
        return False

    async def never(*args: Any, **kwargs: Any) -> bool:
        raise AssertionError("Faust's commit must not run")

    consumer.before_commit = interrupted
    consumer._commit_tps = never  # type: ignore[method-assign]
    assert asyncio.run(consumer.force_commit()) is False


def test_the_commit_stays_at_the_first_record_an_unwritten_state_lacks() -> None:
    # write pacing (streams.processing.BatchProcessor.plan_writes): records 10..19 are processed, but the
    # state holding record 14 is not written yet; the commit stops there and the rest commits later
    app, consumer = _consumer()
    app.flow_control.resume()
    consumer._committed_offset[VITALS] = 10
    assert all(consumer.ack(_message(VITALS, off, generation=7)) for off in range(10, 20))
    consumer.commit_limits = {("vitals", 0): 14}
    assert consumer._new_offset(VITALS) == 14
    consumer._committed_offset[VITALS] = 14
    assert consumer._new_offset(VITALS) is None  # still waiting: nothing new to commit
    assert consumer.limited_commits == 2
    consumer.commit_limits = {("vitals", 0): 17}  # that state was written; another waits for 17
    assert consumer._new_offset(VITALS) == 17
    consumer._committed_offset[VITALS] = 17
    consumer.commit_limits = {}  # every state written
    assert consumer._new_offset(VITALS) == 20
    consumer._committed_offset[VITALS] = 20
    assert consumer._new_offset(VITALS) is None  # nothing acknowledged is left over
    consumer.commit_limits = {("vitals", 1): 0}  # another partition's limit does not hold this one back
    assert consumer.ack(_message(VITALS, 20, generation=7))
    assert consumer._new_offset(VITALS) == 21


def test_reread_runs_the_agents_handler_under_its_lock_and_lets_the_records_commit() -> None:
    from streams.agents import Reread

    consumer = _Marks({VITALS: 5})
    now = [0.0]

    async def end_offsets(tps: list[TP]) -> dict[TP, int]:
        return dict.fromkeys(tps, 7)

    guard = GapGuard(consumer, ["vitals"], _Reader({5: b"a", 6: b"b"}), ends=end_offsets, stall_s=1.0,
                     clock=lambda: now[0])
    handled: list[list[bytes]] = []

    async def scenario() -> tuple[int, int, int]:
        lock = asyncio.Lock()

        async def handle(records: list[Record]) -> None:
            assert lock.locked()
            handled.append([r.value for r in records])

        reread = Reread(guard, lock, handle)
        first = await reread.run(lambda: True)  # first seen behind
        now[0] = 1.0
        moved = await reread.run(lambda: False)  # a rebalance came: left to the committed offsets
        now[0] = 2.0
        return first, moved, await reread.run(lambda: True)

    assert asyncio.run(scenario()) == (0, 0, 2)
    assert handled == [[b"a", b"b"]]
    assert consumer.marked == [(VITALS, [5, 6])]
