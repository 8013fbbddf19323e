"""The worker's own producer for patient-state records (the table's changelog).

Patient states are most of what a worker produces: every state changed since
the last commit (~3.5 KB each, thousands per commit at 2,000 readings/s).
Sent through Faust's producer they shared its per-partition batches and its
one-request-at-a-time connection with the alerts, so a commit's megabytes of
states held every alert sent meanwhile back by up to 1.6 s (bench/README.md,
session 4). A separate producer has its own batches and connection: alerts
no longer queue behind states.

Nothing about durability changes: the offset commit still waits for every
state record sent for it (:attr:`streams.offsets.SafeOffsetsConsumer.pending_writes`),
and a failed one stops the worker before anything is committed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from wearwatch.config import Settings
from wearwatch.errors import StackUnavailable
from wearwatch.transport import aiokafka_client_config

__all__ = ["ChangelogProducer"]

log = logging.getLogger(__name__)


class ChangelogProducer:
    """An aiokafka producer (acks=all, idempotent) started on first use, in the worker's loop.

    Records are partitioned by key with Kafka's default partitioner (murmur2), the
    same partition the gateway puts the patient's readings in, so the table's
    changelog partition *n* holds the states of the patients of ``vitals.raw`` *n*.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Any = None
        self._lock = asyncio.Lock()

    async def _ensure(self) -> Any:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                from aiokafka import AIOKafkaProducer
                from aiokafka.errors import KafkaError

                producer = AIOKafkaProducer(
                    **aiokafka_client_config(self.settings),
                    client_id=f"{self.settings.app_id}-states",
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=5,
                    # states are ~3.5 KB: 1 MB batches keep a commit's states to a few requests
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

    async def send(self, topic: str, records: list[tuple[bytes, bytes]]) -> list[asyncio.Future[Any]]:
        """Append ``records`` (key, value) in order; the futures resolve when Kafka has them.

        Returns as soon as every record is in the producer's batches (waiting only
        when a partition's batch is full), not when they are acknowledged.
        """
        producer = await self._ensure()
        return [await producer.send(topic, value, key=key) for key, value in records]

    async def stop(self) -> None:
        """Flush and close (records already sent are delivered first)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.stop()
            except Exception as exc:  # shutting down: the commit that needed them has not happened
                log.warning("state producer did not stop cleanly: %r", exc)
