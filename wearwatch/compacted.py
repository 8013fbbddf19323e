"""Following a small compacted topic: every record, in order, handed to a callback in a daemon thread.

Several services keep a table in memory that a compacted one-partition topic holds: the roster
(``enrollment``), the vendor tokens (``gateway.tokens``), the per-patient data keys (``datakeys``).
:class:`CompactedFollower` reads such a topic with no consumer group, from the beginning, and calls
``on_record(key, value)`` for every record (``value`` None: a tombstone). It turns :meth:`ready` once
the records that were in the topic when it started have all been handed over; from then on a new
record reaches the callback within the fetch wait. While Kafka is unreachable the table stays as it
is; the follower reads the topic again from the beginning when Kafka is back, so the callback must be
idempotent (it is whenever a record is the whole state of its key).

A callback raises :class:`ValueError` for a record it cannot read: the follower counts it in
:attr:`skipped` and logs its offset; any other error of the callback is logged and the follower goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from wearwatch.config import Settings

__all__ = ["CompactedFollower", "OnRawRecord"]

log = logging.getLogger(__name__)

#: (record key, record value or None for a tombstone); raises ValueError for a record it cannot read
OnRawRecord = Callable[[bytes | None, bytes | None], None]


class CompactedFollower:
    """Follows partition 0 of ``topic`` in a daemon thread (see the module docs).

    ``describe`` gives the text :meth:`ready` shows once caught up (e.g. "12 active tokens");
    ``ensure`` (if given) is called before each (re)start of the consumer, e.g. to create the topic.
    :attr:`last_contact` (monotonic seconds, 0 before the first answer) is refreshed at least every
    :attr:`CONTACT_EVERY_S` by asking Kafka for the topic's end: a sign of life while nothing is written.
    """

    #: how often the follower asks Kafka for the topic's end (its sign of life)
    CONTACT_EVERY_S = 5.0

    def __init__(self, settings: Settings, topic: str, on_record: OnRawRecord, *, name: str,
                 describe: Callable[[], str] | None = None, ensure: Callable[[], None] | None = None,
                 poll_ms: int = 500, fetch_wait_ms: int = 200) -> None:
        self.settings = settings
        self.topic = topic
        self.on_record = on_record
        self.name = name
        self.describe = describe if describe is not None else self._count
        self.ensure = ensure
        self.poll_ms = poll_ms
        self.fetch_wait_ms = fetch_wait_ms
        self._caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._syncs: list[threading.Event] = []
        self._syncs_lock = threading.Lock()
        self.records = 0
        self.skipped = 0
        self.last_contact = 0.0

    def _count(self) -> str:
        return f"{self.records} record(s) read"

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)

    def ready(self) -> tuple[bool, str]:
        if self._caught_up.is_set():
            return True, self.describe()
        return False, f"reading {self.topic}"

    def wait_ready(self, timeout_s: float) -> bool:
        return self._caught_up.wait(timeout_s)

    def sync(self, timeout_s: float) -> bool:
        """Block until every record written before this call has been handed over (False: not within
        ``timeout_s``). For a reader that met a reference to a record it has not seen yet."""
        done = threading.Event()
        with self._syncs_lock:
            self._syncs.append(done)
        return done.wait(timeout_s)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            contact = self.last_contact
            try:
                if self.ensure is not None:
                    self.ensure()
                self._follow()
            except Exception as exc:  # Kafka errors: start over (the callback is idempotent)
                failures = 0 if self.last_contact != contact else failures + 1
                if failures <= 1:  # once per outage; readiness tells how long it lasts
                    log.warning("following %s failed (%s); retrying", self.topic, type(exc).__name__)
                self._stop.wait(2.0)

    def _consumer(self) -> tuple[Any, Any]:
        from kafka import KafkaConsumer, TopicPartition

        from wearwatch.transport import kafka_client_config

        consumer = KafkaConsumer(**kafka_client_config(self.settings), group_id=None, enable_auto_commit=False,
                                 client_id=f"wearwatch-{self.name}", fetch_max_wait_ms=self.fetch_wait_ms)
        tp = TopicPartition(self.topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        return consumer, tp

    def _follow(self) -> None:
        consumer, tp = self._consumer()
        waiting: list[tuple[int, threading.Event]] = []
        try:
            end = consumer.end_offsets([tp])[tp]
            self.last_contact = time.monotonic()
            while not self._stop.is_set():
                with self._syncs_lock:
                    asked, self._syncs = self._syncs, []
                if asked:
                    target = consumer.end_offsets([tp])[tp]
                    self.last_contact = time.monotonic()
                    waiting += [(target, ev) for ev in asked]
                elif time.monotonic() - self.last_contact >= self.CONTACT_EVERY_S:
                    consumer.end_offsets([tp], timeout_ms=int(self.CONTACT_EVERY_S * 1000))
                    self.last_contact = time.monotonic()
                timeout_ms = self.poll_ms
                if waiting:  # a reader waits: no poll's wait when what it waits for is already here
                    timeout_ms = 0 if consumer.position(tp) >= max(t for t, _ in waiting) else 20
                for recs in consumer.poll(timeout_ms=timeout_ms).values():
                    for rec in recs:
                        self._apply(rec)
                position = consumer.position(tp)
                if waiting:
                    for target, ev in waiting:
                        if position >= target:
                            ev.set()
                    waiting = [(t, ev) for t, ev in waiting if not ev.is_set()]
                if not self._caught_up.is_set() and position >= end:
                    self._caught_up.set()
                    log.info("%s loaded: %s", self.topic, self.describe())
        finally:
            consumer.close()

    def _apply(self, rec: Any) -> None:
        try:
            self.on_record(rec.key, rec.value)
        except ValueError as exc:
            self.skipped += 1
            log.warning("skipped a record in %s (offset %d): %s", rec.topic, rec.offset, exc)
            return
        except Exception:  # one bad apply must not stop the table
            log.exception("applying a record of %s failed (offset %d)", rec.topic, rec.offset)
        self.records += 1
