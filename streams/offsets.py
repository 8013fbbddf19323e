"""Offset bookkeeping that never commits, and never silently skips, a record nobody processed.

faust-streaming 0.15 loses records around a rebalance, including the first
assignment of a fresh worker while its table is recovered (seen on this
project's stack in about one worker-kill test in four):

* a stream drops records that reach it while flow control is paused, or that
  were fetched in an older consumer generation, and *acknowledges* them
  ("ack the filtered out message");
* its commit logic treats the committed offset as the last record processed
  instead of the next one to read (``Consumer._new_offset``: a head gap of one
  record passes), so the record at the resume point can be committed unread;
* its fetch loop books any jump between two offsets it hands over as a "gap" to
  commit as if processed (meant for holes in compacted or transactional topics),
  including the jumps it sees itself after a seek back to the committed offset:
  records never processed could be committed, and offsets already acknowledged
  were listed twice, after which each commit advanced a single offset (a worker
  restarted under load left thousands of records uncommitted when idle).

Seen from the agent, offsets of a partition jump forward. Two defences:

:class:`SafeOffsetsConsumer`
    refuses to count an acknowledgement made while the flow is paused or for a
    record of an older generation (the record is marked done, nothing waits for
    it, but its offset is not committed); books no gaps (this project's input
    topics have no holes: a jump means skipped records, which GapGuard reads);
    commits nothing for a partition whose first acknowledged offset is past the
    committed one; remembers where each partition resumed (the committed offset
    it seeked to).
:class:`GapGuard`
    runs over every batch in the agent: when a partition's offsets jump forward
    (past its resume point or the last record seen), it reads the missing records
    itself with a plain consumer of its own (no group, no seek on Faust's
    consumer, whose fetch position and read offsets are shared with its fetcher)
    and hands them to the agent *before* the rest of that partition's records;
    then it marks them processed so the commit can pass them. A jump shows only
    when a later record comes: when the dropped records are a partition's last
    ones (a quiet partition: one patient's urgent low, a tick's minute aggregates),
    nothing would come to show it. So the worker also asks, every few seconds, how
    far each partition's log goes (:meth:`GapGuard.stalled`): a partition whose
    log holds records past the next one the agent expects, and whose agent got
    none of them for ``stall_s``, has them read the same way (:meth:`GapGuard.reread`).

Processing is at-least-once with idempotent effects, so a record that is read
twice (Faust re-delivers it after all) is harmless: the patient state drops the
duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NamedTuple

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as _AIOKafkaConsumer
from faust.types.tuples import ack_lock

from streams.stage_timing import Laps, StageTimes
from wearwatch.errors import StackUnavailable

__all__ = ["GapGuard", "PartitionReader", "Record", "SafeOffsetsConsumer", "install"]

log = logging.getLogger(__name__)


class Record(NamedTuple):
    """One record to process, with where it was read (the patient state tells replays by it)."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int
    offset: int


#: reads the records of ``tp`` in [start, end): the side channel GapGuard uses
Fetch = Callable[[Any, int, int], Awaitable[list[tuple[int, Record]]]]
#: the end offset (the next offset to be written) of each of the given partitions
Ends = Callable[[list[Any]], Awaitable[dict[Any, int]]]
#: a partition's records the agent did not get: (partition, first offset, end offset)
Stalled = tuple[Any, int, int]


class SafeOffsetsConsumer(_AIOKafkaConsumer):
    """Faust's aiokafka consumer, minus commits of records that were dropped, not processed."""

    #: awaited before every offset commit (the worker stores its changed patient states);
    #: returning False skips that commit (a rebalance interrupted the write)
    before_commit: Callable[[], Awaitable[bool | None]] | None = None
    #: where fetch and commit durations are recorded (the worker puts its own in, see streams.agents)
    stage_times: StageTimes

    def __post_init__(self) -> None:
        super().__post_init__()
        self.stage_times = StageTimes()
        #: partition -> the offset the last seek-to-committed put it at (where reading resumed)
        self.resume_points: dict[Any, int] = {}
        #: acknowledgements refused (see the module docs)
        self.refused_acks = 0
        #: offset jumps Faust wanted to commit past as holes in the topic (see :meth:`_add_gap`)
        self.gaps_ignored = 0
        #: commits of a partition held back because the record at its committed offset is unprocessed
        self.held_commits = 0
        #: (topic, partition) -> the offset its commit must not pass (set by ``before_commit``: the first
        #: record a patient state not written yet lacks; see streams.processing.BatchProcessor.plan_writes)
        self.commit_limits: dict[tuple[str, int], int] = {}
        #: commits of a partition kept at such a limit
        self.limited_commits = 0
        #: delivery futures of records that must be in Kafka before the next offset commit
        #: (the patient states ``before_commit`` wrote)
        self.pending_writes: list[asyncio.Future[Any]] = []

    def ack(self, message: Any) -> bool:
        generation = getattr(message, "generation_id", None)
        stale = generation is not None and generation != self.app.consumer_generation_id
        if stale or not self.app.flow_control.is_active():
            with ack_lock:
                if not message.acked:
                    message.acked = True
                    self._unacked_messages.discard(message)
                    self.refused_acks += 1
            return False
        return bool(super().ack(message))

    def mark_processed(self, tp: Any, offsets: Iterable[int]) -> None:
        """Count records as acknowledged that were processed outside Faust's streams (GapGuard)."""
        with ack_lock:
            committed = self._committed_offset[tp]
            index, acked = self._acked_index[tp], self._acked[tp]
            for off in offsets:
                if (committed is None or off >= committed) and off not in index:
                    index.add(off)
                    acked.append(off)

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        """Faust's fetch loop calls this when an offset follows the last one read by more than one,
        to commit the offsets in between as if acknowledged (holes in compacted or transactional
        topics). This worker's input topics have none (no compaction, no transactions), so such a
        jump means records were skipped, and GapGuard reads them; and the jump Faust sees is often
        no jump at all: a seek to the committed offset resets its read offset while records of an
        earlier fetch are still being handed over. Booked as a gap, those offsets (acknowledged
        already, and one past the range: ``offset_to`` is included) went into the acknowledged list
        a second time, and Faust's commit advanced one offset per commit from then on (a worker
        restarted under load left thousands of records uncommitted while idle). Nothing is booked.
        """
        self.gaps_ignored += 1

    def _new_offset(self, tp: Any) -> int | None:
        acked, committed = self._acked[tp], self._committed_offset[tp]
        if acked:
            # each offset once, none below the committed one: Faust's commit takes the first run of
            # consecutive offsets and a repeated offset ends a run
            kept = sorted({off for off in acked if committed is None or off >= committed})
            if len(kept) != len(acked):
                acked[:] = kept
                index = self._acked_index[tp]
                index.intersection_update(kept)
        if acked and committed is not None and min(acked) > committed:
            self.held_commits += 1
            return None  # the record at the committed offset itself is not processed yet
        limit = self.commit_limits.get((tp.topic, tp.partition))
        first = min(acked) if acked else None
        if limit is not None and first is not None and limit <= first:
            self.limited_commits += 1
            return None  # a state not written yet lacks the first record not committed
        result: int | None = super()._new_offset(tp)
        if limit is not None and first is not None and result is not None and result > limit:
            # processed, but some patient state holding them is not written yet: acknowledged still,
            # committed once those states are
            back = range(limit, result)
            acked[:0] = back
            self._acked_index[tp].update(back)
            self.limited_commits += 1
            return limit
        return result

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        # the offsets to commit are taken right after the hook returns, without yielding in
        # between: every record acknowledged by then has its state in the producer, which
        # the commit flushes before it commits
        lap = Laps(self.stage_times)
        if self.before_commit is not None and await self.before_commit() is False:
            return False
        lap("commit_hook")
        done = bool(await super().force_commit(topics, start_new_transaction=start_new_transaction))
        lap("commit_faust")
        return done

    async def _commit_offsets(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        # the offsets are fixed by now; the states written for them must be durable first
        pending, self.pending_writes = self.pending_writes, []
        if pending:
            results = await asyncio.gather(*pending, return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                log.error("%d of %d state records not written (%r); offsets not committed, stopping",
                          len(failed), len(pending), failed[0])
                await self.crash(failed[0])
                return False
        return bool(await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction))

    async def _wait_next_records(self, timeout: float) -> Any:
        lap = Laps(self.stage_times)
        result = await super()._wait_next_records(timeout)
        records = result[0]
        if records:
            lap("fetch_wait")
            # how old the newest record of a partition is when the fetch hands it over
            self.stage_times.add("fetch_age",
                                 time.time() * 1000 - min(recs[-1].timestamp for recs in records.values() if recs))
        return result

    def _new_consumer_thread(self) -> Any:
        return _PromptFetchThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        points = {tp: off for tp, off in self._committed_offset.items() if off is not None}
        # a partition this group never committed resumes at its beginning (auto_offset_reset
        # earliest): without a resume point there, a record Faust drops right at the start
        # (seen: the only vitals.1m record of a partition, after a worker was killed before
        # its first commit) would go unnoticed and later be committed past
        fresh = [tp for tp in self.assignment() if tp not in points]
        if fresh:
            try:
                earliest = await self.earliest_offsets(*fresh)
            except Exception as exc:  # best effort: without it such a skip is not detected
                log.warning("could not read the start offsets of %d partitions: %r", len(fresh), exc)
                earliest = {}
            points.update({tp: off for tp, off in earliest.items() if off is not None})
        self.resume_points = points


class _PromptFetchThread(AIOKafkaConsumerThread):
    """Faust's consumer thread, with a shorter long-poll than Faust's fixed 1,500 ms.

    aiokafka keeps one fetch request in flight per broker and leaves out partitions
    whose last fetched records the worker has not taken yet. When the worker is busy
    (a commit's state write), the next request often holds only quiet partitions
    (commands, sinks), and the broker holds it for the whole ``fetch_max_wait_ms``:
    readings that arrive meanwhile waited up to 1.5 s (p99 1.6 s from ``vitals.raw``
    to ``alerts`` at 2,000 readings/s, measured by bench/bench_latency.py).
    """

    fetch_max_wait_ms = 50

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads it when it starts (creating its Fetcher); Faust passes no way to set it
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class GapGuard:
    """Finds partitions whose records were skipped and gets those records read (see module docs).

    Parameters
    ----------
    consumer
        The app's consumer (``resume_points``, ``mark_processed``).
    topics
        The topics to watch.
    fetch
        Reads the records of a partition in an offset range.
    """

    #: the most records :meth:`reread` reads of one partition at a time (a stalled partition with a long
    #: backlog is read on by Faust or by the next rounds)
    REREAD_MOST = 5_000

    def __init__(self, consumer: Any, topics: Sequence[str], fetch: Fetch, retry_for_s: float = 30.0,
                 ends: Ends | None = None, stall_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.consumer = consumer
        self.topics = frozenset(topics)
        self.fetch = fetch
        #: how long reading skipped records is retried before :meth:`admit` gives up (raises)
        self.retry_for_s = retry_for_s
        #: the end offsets of partitions (:meth:`stalled`); None: stalls are not looked for
        self.ends = ends
        #: how long a partition's records may stay away from the agent, its log holding some, before
        #: :meth:`stalled` names it
        self.stall_s = stall_s
        self.clock = clock
        #: partition -> the offset expected next
        self.expected: dict[Any, int] = {}
        self.stats: Counter[str] = Counter()
        self._marks: list[tuple[Any, range]] = []
        #: partition -> (the offset expected next, when it was first seen behind its log's end at it)
        self._behind: dict[Any, tuple[int, float]] = {}
        #: whether the agent is processing records it was handed (from :meth:`admit` to :meth:`done`): its
        #: other partitions' records wait meanwhile (a sink waiting for InfluxDB), which is no stall
        self._busy = False

    def reset(self) -> None:
        """After a rebalance: reading resumes at the committed offsets (``resume_points``)."""
        self.expected.clear()
        self._marks.clear()
        self._behind.clear()
        self._busy = False

    def next_offset(self, tp: Any) -> int | None:
        """The offset of ``tp`` the agent is to get next (None: not known yet)."""
        nxt = self.expected.get(tp)
        return nxt if nxt is not None else getattr(self.consumer, "resume_points", {}).get(tp)

    async def stalled(self) -> list[Stalled]:
        """The partitions (of the watched topics this worker holds) whose log has records past the one the
        agent expects next, while the agent got none for :attr:`stall_s`: (partition, first, end) ranges of at
        most :attr:`REREAD_MOST` records, for :meth:`reread`. Asks the broker for the end offsets (raises what
        the ``ends`` call raises). Under a backlog the agent gets records of every partition all along, so a
        partition named here is one whose records Faust dropped (or holds paused)."""
        if self.ends is None:
            return []
        held = [tp for tp in self.consumer.assignment() if tp.topic in self.topics]
        if not held:
            self._behind.clear()
            return []
        ends = await self.ends(held)
        now = self.clock()
        out: list[Stalled] = []
        behind: dict[Any, tuple[int, float]] = {}
        for tp in held:
            nxt, end = self.next_offset(tp), ends.get(tp)
            if nxt is None or end is None or end <= nxt:
                continue
            seen = self._behind.get(tp)
            if seen is None or seen[0] != nxt or self._busy:  # first seen behind, the agent got records since,
                seen = (nxt, now)  # or it is busy with some: counted from when it is free again
            behind[tp] = seen
            if now - seen[1] >= self.stall_s:
                out.append((tp, nxt, min(end, nxt + self.REREAD_MOST)))
        self._behind = behind
        return out

    async def reread(self, stalled: Iterable[Stalled]) -> list[Record]:
        """The records of :meth:`stalled`'s ranges, read directly, of the partitions the agent still expects
        them for (call it where the agent processes its batches: under the same lock); :meth:`done` once
        they are processed lets them commit. Faust handing some of them over later is harmless: the patient
        states drop replays, the InfluxDB points are written again alike."""
        out: list[Record] = []
        for tp, start, end in stalled:
            if self.next_offset(tp) != start or tp not in self.consumer.assignment():
                continue  # the agent got records since, or the partition moved
            self.stats["stalled"] += 1
            self._busy = True
            out.extend(await self._recover(tp, start, end))
            self.expected[tp] = max(end, self.expected.get(tp, 0))
            self._behind.pop(tp, None)
        return out

    async def admit(self, events: Sequence[Any]) -> list[Record]:
        """The records to process, in offset order per partition, skipped ones included.

        Raises :class:`~wearwatch.errors.StackUnavailable` when skipped records stay unreadable for
        :attr:`retry_for_s`: the records after them are not handed over without them."""
        out: list[Record] = []
        self._busy = True
        for ev in events:
            msg = ev.message
            tp, off = msg.tp, msg.offset
            if tp.topic in self.topics:
                nxt = self.next_offset(tp)
                if nxt is not None and off > nxt:
                    out.extend(await self._recover(tp, nxt, off))
                self.expected[tp] = max(off + 1, self.expected.get(tp, 0))
            out.append(Record(msg.topic, ev.key, ev.value, tp.partition, off))
        return out

    async def _recover(self, tp: Any, start: int, end: int) -> list[Record]:
        t0 = time.monotonic()
        delay = 0.5
        while True:
            try:
                found = await self.fetch(tp, start, end)
                break
            except Exception as exc:
                # the later records of the partition must not be processed first: a patient state that
                # has folded in a later record takes every record before it for a replay
                self.stats["skipped_read_failures"] += 1
                if time.monotonic() - t0 + delay > self.retry_for_s:
                    log.error("partition %s:%d skipped offsets %d..%d and reading them failed for %.0f s: %r",
                              tp.topic, tp.partition, start, end - 1, time.monotonic() - t0, exc)
                    raise StackUnavailable(f"skipped records of {tp.topic}:{tp.partition} not readable") from exc
                log.warning("partition %s:%d skipped offsets %d..%d; reading them failed (%r), retrying in %.1f s",
                            tp.topic, tp.partition, start, end - 1, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.stats["skipped_offsets"] += end - start
        self.stats["recovered"] += len(found)
        log.warning("partition %s:%d: Faust skipped offsets %d..%d; read %d of them directly in %.0f ms",
                    tp.topic, tp.partition, start, end - 1, len(found), (time.monotonic() - t0) * 1000)
        # counted as processed by done(), once the caller has processed them (a missing
        # offset inside the range counts as read: the input topics have none, except ``alerts``,
        # compacted for erasure, where a record an erasure tombstoned is gone)
        self._marks.append((tp, range(start, end)))
        if len(found) < end - start:
            log.warning("partition %s:%d has no records at %d of offsets %d..%d", tp.topic, tp.partition,
                        end - start - len(found), start, end - 1)
        return [rec for _, rec in found]

    def done(self) -> None:
        """The records :meth:`admit` returned are processed and their effects stored: let them commit."""
        marks, self._marks = self._marks, []
        self._busy = False
        mark = getattr(self.consumer, "mark_processed", None)
        if mark is not None:
            for tp, offsets in marks:
                mark(tp, offsets)


class PartitionReader:
    """A plain aiokafka consumer (no group) that reads given offset ranges: GapGuard's ``fetch``."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self._consumer: Any = None

    async def _started(self) -> Any:
        from aiokafka import AIOKafkaConsumer

        if self._consumer is None:
            consumer = AIOKafkaConsumer(enable_auto_commit=False, group_id=None, **self.config)
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def __call__(self, tp: Any, start: int, end: int) -> list[tuple[int, Record]]:
        from aiokafka import TopicPartition

        c = await self._started()
        atp = TopicPartition(tp.topic, tp.partition)
        c.assign([atp])
        c.seek(atp, start)
        out: list[tuple[int, Record]] = []
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            batch = await c.getmany(atp, timeout_ms=500)
            for rec in batch.get(atp, []):
                if rec.offset >= end:
                    return out
                if rec.offset >= start:
                    out.append((rec.offset, Record(rec.topic, rec.key, rec.value, rec.partition, rec.offset)))
            if await c.position(atp) >= end:
                return out
        raise TimeoutError(f"offsets {start}..{end - 1} of {tp.topic}:{tp.partition} not read within 30 s")

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        """The end offset (the next offset to be written) of each of ``tps``: GapGuard's ``ends``."""
        from aiokafka import TopicPartition

        c = await self._started()
        ends = await c.end_offsets([TopicPartition(tp.topic, tp.partition) for tp in tps])
        by_name = {(atp.topic, atp.partition): off for atp, off in ends.items()}
        return {tp: by_name[(tp.topic, tp.partition)] for tp in tps if (tp.topic, tp.partition) in by_name}

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


def install(app: Any) -> None:
    """Make ``app`` create its consumer as a :class:`SafeOffsetsConsumer` (call before it starts)."""
    app.transport.Consumer = SafeOffsetsConsumer
