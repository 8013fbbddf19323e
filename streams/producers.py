"""The worker's own aiokafka producers, beside Faust's.

Two kinds of records are bulk, and go through a producer of their own instead of
Faust's per-message ``Topic.send``:

* **patient states** (the table's changelog): most of what a worker produces, every
  state changed since the last commit (~3 KB each, thousands per commit). Sent through
  Faust's producer they shared its per-partition batches and its one-request-at-a-time
  connection with the alerts, so a commit's megabytes of states held every alert sent
  meanwhile back by up to 1.6 s (bench/bench_latency.py).
* **minute aggregates and dead letters**: about one minute aggregate per six readings.
  Faust's send path (futures, callbacks and sensors per message, on top of aiokafka's)
  cost the worker about a fifth of its time for them: 20,550 → 26,183 readings/s at
  1,000 patients when they left it (bench/bench_throughput.py).

Alerts stay on Faust's producer: few, and nothing else queues in front of them there.

Nothing about durability changes: the offset commit still waits for every state record
sent for it (:attr:`streams.offsets.SafeOffsetsConsumer.pending_writes`), the batch
waits for its minute aggregates and dead letters before its state may be written, and a
failed send stops the worker before anything is committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from wearwatch.config import Settings
from wearwatch.errors import StackUnavailable
from wearwatch.transport import aiokafka_client_config

__all__ = ["DirectProducer"]

log = logging.getLogger(__name__)


class DirectProducer:
    """An aiokafka producer (acks=all, idempotent) started on first use, in the worker's loop.

    Records are partitioned by key with Kafka's default partitioner (murmur2), the
    same partition the gateway puts the patient's readings in, so e.g. the table's
    changelog partition *n* holds the states of the patients of ``vitals.raw`` *n*.

    Parameters
    ----------
    settings
        Where Kafka is, and the app id (the client id is ``<app id>-<name>``).
    name
        What it sends (``states``, ``records``): the client id's suffix, for the broker's logs.
    linger_ms
        How long a partition's batch waits for more records. 0 where a caller awaits
        the acknowledgement; the states (awaited only by the commit) take 5 ms.
    """

    def __init__(self, settings: Settings, name: str, linger_ms: int = 0) -> None:
        self.settings = settings
        self.name = name
        self.linger_ms = linger_ms
        self._producer: Any = None
        self._lock = asyncio.Lock()

    async def _ensure(self) -> Any:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    **aiokafka_client_config(self.settings),
                    client_id=f"{self.settings.app_id}-{self.name}",
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=self.linger_ms,
                    # states are ~3 KB: 1 MB batches keep a commit's states to a few requests
                    max_batch_size=1_048_576,
                    request_timeout_ms=30_000,
                )
                try:
                    await producer.start()
                except KafkaError as exc:
                    await producer.stop()
                    raise StackUnavailable(f"Kafka at {self.settings.kafka_bootstrap}: {exc}") from exc
                self._producer = producer
        return self._producer

    @property
    def started(self) -> bool:
        """The producer is connected (it starts on first use, or with :meth:`start`)."""
        return self._producer is not None

    async def start(self) -> None:
        """Connect now rather than on the first send (:class:`StackUnavailable` when Kafka does not answer)."""
        await self._ensure()

    async def send(self, topic: str, records: list[tuple[bytes, bytes]]) -> list[asyncio.Future[Any]]:
        """Append ``records`` (key, value) in order; the futures resolve when Kafka has them.

        Returns as soon as every record is in the producer's batches (waiting only
        when a partition's batch is full), not when they are acknowledged.
        """
        producer = await self._ensure()
        return [await producer.send(topic, value, key=key) for key, value in records]

    async def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` has (from the producer's metadata; the topic must exist)."""
        producer = await self._ensure()
        return len(await producer.partitions_for(topic))

    async def send_packed(
        self, topic: str, items: Sequence[tuple[bytes, Any]], pack: Callable[[list[Any]], bytes], per_record: int,
    ) -> list[asyncio.Future[Any]]:
        """Send keyed ``items`` packed together: each partition's items (in order, at most ``per_record``
        to a record) become one record ``pack(items)``, sent to that partition without a key.

        Every item lands in the partition its key would (Kafka's default partitioner), so one key's
        items stay in order, and a consumer of a partition sees them all; but a batch of items costs
        a few records instead of one each.
        """
        if not items:
            return []
        producer = await self._ensure()
        partitions = sorted(await producer.partitions_for(topic))
        partition_of = DefaultPartitioner()
        groups: dict[int, list[Any]] = {}
        for key, item in items:
            groups.setdefault(partition_of(key, partitions, partitions), []).append(item)
        futures = []
        for partition, group in groups.items():
            for i in range(0, len(group), per_record):
                futures.append(await producer.send(topic, pack(group[i:i + per_record]), partition=partition))
        return futures

    async def stop(self) -> None:
        """Flush and close (records already sent are delivered first)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.stop()
            except Exception as exc:  # shutting down: the commit that needed them has not happened
                log.warning("%s producer did not stop cleanly: %r", self.name, exc)
