"""The worker's direct producer on the real Kafka: packed records land where their keys would."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from kafka.partitioner.default import murmur2

from tests.integration.conftest import consume_all
from wearwatch.config import Settings
from wearwatch.transport import ensure_topics

pytestmark = pytest.mark.stack


def test_send_packed_keeps_each_keys_items_in_its_partition_and_order(settings: Settings) -> None:
    from streams.producers import DirectProducer

    topic = f"{settings.topic_prefix}packed"
    ensure_topics(settings, [topic], partitions=4)
    keys = [f"patient-{i}".encode() for i in range(23)]
    # 3 rounds (one send_packed each, like three batches) of 40 items over 23 keys
    rounds = [[(keys[(r * 40 + j) % 23], {"k": keys[(r * 40 + j) % 23].decode(), "seq": r * 40 + j})
               for j in range(40)] for r in range(3)]

    async def send() -> None:
        producer = DirectProducer(settings, "test")
        try:
            for items in rounds:
                futures = await producer.send_packed(topic, items, lambda docs: orjson.dumps(docs), per_record=7)
                await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(send())
    records = consume_all(settings, topic, expect=120, count=lambda r: len(orjson.loads(r.value)), idle_s=1.0)
    per_partition = {p: [k for k in keys if (murmur2(k) & 0x7FFFFFFF) % 4 == p] for p in range(4)}
    seen: dict[str, list[int]] = {}
    for rec in records:
        docs = orjson.loads(rec.value)
        assert rec.key is None and 1 <= len(docs) <= 7
        assert {d["k"].encode() for d in docs} <= set(per_partition[rec.partition])
        for d in docs:
            seen.setdefault(d["k"], []).append(d["seq"])
    assert sum(len(v) for v in seen.values()) == 120
    for k in keys:  # every item once, each key's in the order sent
        assert seen[k.decode()] == [s for s in range(120) if keys[s % 23] == k]
    # packed: per round, ceil(that round's items in a partition / 7) records per partition, not one per item
    partition_of = {k: p for p, ks in per_partition.items() for k in ks}
    want = sum(-(-sum(1 for k, _ in items if partition_of[k] == p) // 7) for items in rounds for p in range(4))
    assert len(records) == want < 120
