"""Kafka in and out for one console replica: the follower that keeps :class:`ConsoleView` current,
and the producer for commands, audit records, preferences and logouts.

The follower is one aiokafka consumer without a consumer group (every replica reads every
partition; nothing is committed): the compacted topics from their beginning, ``audit``
from one login window ago. It records each partition's end offset when it starts; the
replica is *ready* (``/readyz``) once it has read up to them, so a restarted replica
never answers from a half-read view. Then it follows new records as they come
(``fetch_max_wait_ms`` 50: an alert reaches the event streams within ~0.1 s of Kafka).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from console.state import ConsoleView
from wearwatch.config import Settings
from wearwatch.errors import StackUnavailable
from wearwatch.transport import aiokafka_client_config

__all__ = ["Follower", "Publisher"]

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Follower:
    """Reads the console's topics into ``view`` (see the module docs)."""

    def __init__(self, settings: Settings, view: ConsoleView) -> None:
        s = settings
        self.settings = s
        self.view = view
        self.kinds = {
            s.topic_alert_state: "state",
            s.topic_console_users: "users",
            s.topic_console_preferences: "preferences",
            s.topic_console_sessions: "sessions",
            s.topic_audit: "audit",
        }
        self._consumer: Any = None
        self._ends: dict[Any, int] = {}
        self.pending: set[str] = set(self.kinds)  # topics not yet read up to their start-time end
        self.ready = asyncio.Event()
        self.started_ms = _now_ms()
        self.ready_ms: int | None = None
        self.records = 0

    async def start(self, partitions: dict[str, int]) -> None:
        """Assign every partition of the followed topics (``partitions``: their counts, from
        :func:`console.topics.ensure_console_topics`) and seek to where the view starts."""
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        s = self.settings
        consumer = AIOKafkaConsumer(
            **aiokafka_client_config(s), client_id="wearwatch-console", group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=50, max_partition_fetch_bytes=4 * 1_048_576,
        )
        try:
            await consumer.start()
            tps = [TopicPartition(topic, p) for topic in self.kinds for p in range(partitions[topic])]
            consumer.assign(tps)
            self._ends = await consumer.end_offsets(tps)
            audit_tps = [tp for tp in tps if tp.topic == s.topic_audit]
            since = _now_ms() - int(s.console_login_window_s * 1000)
            found = await consumer.offsets_for_times(dict.fromkeys(audit_tps, since))
            for tp in tps:
                if tp.topic == s.topic_audit:
                    off = found.get(tp)
                    consumer.seek(tp, off.offset if off is not None else self._ends[tp])
                else:
                    await consumer.seek_to_beginning(tp)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await consumer.stop()
            if isinstance(exc, KafkaError):
                raise StackUnavailable(f"Kafka at {s.kafka_bootstrap}: {exc}") from exc
            raise
        self._consumer = consumer
        await self._check_ready()

    async def _check_ready(self) -> None:
        if self.ready.is_set():
            return
        behind: set[str] = set()
        for tp, end in self._ends.items():
            if tp.topic in behind:
                continue
            if await self._consumer.position(tp) < end:
                behind.add(tp.topic)
        self.pending = behind
        if not behind:
            self.ready_ms = _now_ms()
            log.info("console view ready: %d records read in %.1f s (%d patients with open alerts, %d accounts)",
                     self.records, (self.ready_ms - self.started_ms) / 1000, len(self.view.patients),
                     len(self.view.accounts))
            self.ready.set()

    async def run(self) -> None:
        """Apply records as they come, forever (until cancelled)."""
        from aiokafka.errors import KafkaError

        assert self._consumer is not None, "start() first"
        view, kinds = self.view, self.kinds
        last_expiry = 0.0
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500, max_records=10_000)
            except KafkaError as exc:  # aiokafka retries connections itself; keep going
                log.warning("console follower: %s", type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            now = _now_ms()
            for tp, records in batches.items():
                kind = kinds[tp.topic]
                for r in records:
                    view.apply(kind, r.key, r.value, now)
                self.records += len(records)
            if not self.ready.is_set():
                await self._check_ready()
            if time.monotonic() - last_expiry > 60:
                view.expire_revocations(now)
                last_expiry = time.monotonic()

    async def stop(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None


class Publisher:
    """One idempotent aiokafka producer (acks=all) for everything the console writes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        producer = AIOKafkaProducer(**aiokafka_client_config(self.settings), client_id="wearwatch-console",
                                    acks="all", enable_idempotence=True, linger_ms=0)
        try:
            await producer.start()
        except KafkaError as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise StackUnavailable(f"Kafka at {self.settings.kafka_bootstrap}: {exc}") from exc
        self._producer = producer

    async def send(self, records: list[tuple[Any, ...]], timeout_s: float = 10.0) -> None:
        """Send (topic, key, value) or (topic, key, value, partition) records and wait until Kafka has every one.

        Raises :class:`~wearwatch.errors.StackUnavailable` if it does not within ``timeout_s``.
        """
        from aiokafka.errors import KafkaError

        assert self._producer is not None, "start() first"
        try:
            futures = [await self._producer.send(r[0], r[2], key=r[1], partition=r[3] if len(r) > 3 else None)
                       for r in records]
            await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
        except (KafkaError, TimeoutError) as exc:
            raise StackUnavailable(f"Kafka did not take {len(records)} record(s): {type(exc).__name__}") from exc

    async def stop(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None
