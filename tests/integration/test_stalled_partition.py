"""A partition whose last records never reach the agent (Faust dropped them around a rebalance, and nothing
came after them to show a jump) is found by asking the real broker how far its log goes, and its records
are read with the guard's own consumer: exactly the missing ones, in order, once they have waited
``stall_s``; a partition the agent got everything of is left alone."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from streams.offsets import GapGuard, PartitionReader
from wearwatch.config import Settings
from wearwatch.transport import aiokafka_client_config, ensure_topics, kafka_producer

pytestmark = pytest.mark.stack


class _Consumer:
    """Faust's consumer as the guard sees it: the partitions held, where they resumed, what may commit."""

    def __init__(self, resume: dict[TP, int]) -> None:
        self.resume_points = resume
        self.marked: list[tuple[TP, list[int]]] = []

    def assignment(self) -> set[TP]:
        return set(self.resume_points)

    def mark_processed(self, tp: TP, offsets: range) -> None:
        self.marked.append((tp, list(offsets)))


def test_the_last_records_of_a_quiet_partition_are_read_directly(settings: Settings) -> None:
    topic = settings.topic_vitals
    ensure_topics(settings, [topic], partitions=2)
    producer = kafka_producer(settings)
    for i in range(5):
        producer.send(topic, key=b"quiet", value=b"q%d" % i, partition=0)
    for i in range(3):
        producer.send(topic, key=b"busy", value=b"b%d" % i, partition=1)
    producer.flush(30)
    producer.close()
    quiet, busy = TP(topic, 0), TP(topic, 1)
    consumer = _Consumer({quiet: 0, busy: 0})

    async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
        reader = PartitionReader(aiokafka_client_config(settings))
        now = [0.0]
        guard = GapGuard(consumer, [topic], reader, ends=reader.end_offsets, stall_s=5.0,
                         clock=lambda: now[0])
        try:
            # the agent was handed the quiet partition's first two records and all of the busy one's
            handed = [(tp, o) for tp, n in ((quiet, 2), (busy, 3)) for o in range(n)]
            events = [SimpleNamespace(message=SimpleNamespace(tp=tp, offset=o, topic=topic), key=b"k", value=b"v")
                      for tp, o in handed]
            await guard.admit(events)
            guard.done()  # the agent processed them
            first = await guard.stalled()
            now[0] = 5.0
            due = await guard.stalled()
            records = await guard.reread(due)
            guard.done()
            now[0] = 30.0
            return first, due, [(r.partition, r.offset, r.key, r.value) for r in records] + await guard.stalled()
        finally:
            await reader.close()

    first, due, records = asyncio.run(scenario())
    assert first == []  # not before it waited stall_s
    assert due == [(quiet, 2, 5)]
    assert records == [(0, 2, b"quiet", b"q2"), (0, 3, b"quiet", b"q3"), (0, 4, b"quiet", b"q4")]
    assert consumer.marked == [(quiet, [2, 3, 4])]  # once processed, they may commit
