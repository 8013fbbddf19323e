"""The ``enrollment`` topic on Kafka: create it, write records, read it once, follow it live.

The record itself is :class:`wearwatch.contract.enrollment.EnrollmentRecord`. The topic has
one partition (a roster of a few thousand patients is read from the beginning in well under
a second) and is compacted: each patient's latest record stays, a tombstone removes them.

Every service that needs the roster follows the topic in a daemon thread
(:class:`EnrollmentFollower`) with no consumer group, from the beginning, and hands each
record to a callback: the gateway keeps who may send readings, the worker applies wards,
overrides and discharges to patient states, the console maps patients to wards. A change
written by ``wearwatch patients`` reaches them within the consumer's fetch wait (200 ms).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from wearwatch.config import Settings
from wearwatch.contract.enrollment import EnrollmentRecord, decode_enrollment
from wearwatch.errors import StackUnavailable
from wearwatch.retention import topic_configs
from wearwatch.transport import kafka_client_config, kafka_producer

__all__ = [
    "EnrollmentFollower",
    "OnRecord",
    "ensure_enrollment_topic",
    "publish_enrollment",
    "read_enrollment",
]

log = logging.getLogger(__name__)

#: (patient id, its record or None for a tombstone)
OnRecord = Callable[[str, EnrollmentRecord | None], None]



def ensure_enrollment_topic(settings: Settings) -> None:
    """Create the compacted ``enrollment`` topic (one partition, kept for ever, tombstones compacted within
    ``WEARWATCH_ERASURE_COMPACTION_HOURS``: :mod:`wearwatch.retention`) if it does not exist."""
    name = settings.topic_enrollment
    try:
        admin = KafkaAdminClient(**kafka_client_config(settings), client_id="wearwatch-admin")
    except KafkaError as exc:
        raise StackUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    try:
        if name in set(admin.list_topics()):
            return
        try:
            admin.create_topics([NewTopic(name, 1, settings.replication_factor,
                                          topic_configs=topic_configs(settings)[name])])
            log.info("created topic %s (compacted)", name)
        except TopicAlreadyExistsError:
            pass
        except KafkaError as exc:
            raise StackUnavailable(f"Kafka refused to create topic {name}: {type(exc).__name__}") from exc
    finally:
        admin.close()


def _consumer(settings: Settings) -> tuple[Any, Any]:
    consumer = KafkaConsumer(**kafka_client_config(settings), group_id=None, enable_auto_commit=False,
                             client_id="wearwatch-enrollment", fetch_max_wait_ms=200)
    tp = TopicPartition(settings.topic_enrollment, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    return consumer, tp


def read_enrollment(settings: Settings, timeout_s: float = 30.0) -> dict[str, EnrollmentRecord]:
    """Every patient's latest record (tombstoned patients left out), read to the topic's current end."""
    out: dict[str, EnrollmentRecord] = {}
    try:
        consumer, tp = _consumer(settings)
    except KafkaError as exc:
        raise StackUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    try:
        end = consumer.end_offsets([tp])[tp]
        deadline = time.monotonic() + timeout_s
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise StackUnavailable(f"could not read {tp.topic} to its end in {timeout_s:.0f} s")
            for recs in consumer.poll(timeout_ms=500).values():
                for rec in recs:
                    pid = rec.key.decode() if rec.key else ""
                    try:
                        r = decode_enrollment(rec.value)
                    except ValueError:
                        log.warning("skipped a malformed record in %s (offset %d)", tp.topic, rec.offset)
                        continue
                    if r is None:
                        out.pop(pid, None)
                    else:
                        out[pid] = r
    except KafkaError as exc:
        raise StackUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        consumer.close()
    return out


def publish_enrollment(settings: Settings, records: Iterable[EnrollmentRecord | str], timeout_s: float = 30.0) -> int:
    """Write enrolment records (a bare patient id: its tombstone) and wait until Kafka took every one."""
    producer = kafka_producer(settings, client_id="wearwatch-enrollment")
    try:
        futures = []
        for r in records:
            if isinstance(r, str):
                futures.append(producer.send(settings.topic_enrollment, key=r.encode(), value=None))
            else:
                futures.append(producer.send(settings.topic_enrollment, key=r.patient_id.encode(), value=r.to_json()))
        for fut in futures:
            fut.get(timeout=timeout_s)
        return len(futures)
    except Exception as exc:  # KafkaError, KafkaTimeoutError
        raise StackUnavailable(f"Kafka did not take the enrollment records: {type(exc).__name__}") from exc
    finally:
        producer.close(timeout=10)


class EnrollmentFollower:
    """Follows ``enrollment`` in a daemon thread and calls ``on_record`` for every record, in order.

    :meth:`ready` turns true once the records that were in the topic when the thread started
    have all been handed over. While Kafka is unreachable nothing changes; the follower reads
    the topic again from the beginning when it is back (the callbacks must be idempotent:
    they are, since each record is a patient's whole state).
    """

    def __init__(self, settings: Settings, on_record: OnRecord) -> None:
        self.settings = settings
        self.on_record = on_record
        self._caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="enrollment-follower", daemon=True)
        self.records = 0
        self.skipped = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)

    def ready(self) -> tuple[bool, str]:
        if self._caught_up.is_set():
            return True, f"{self.records} enrollment record(s) read"
        return False, f"reading {self.settings.topic_enrollment}"

    def wait_ready(self, timeout_s: float) -> bool:
        return self._caught_up.wait(timeout_s)

    def _run(self) -> None:
        failed = False
        while not self._stop.is_set():
            try:
                ensure_enrollment_topic(self.settings)
                self._follow()
                failed = False
            except Exception as exc:  # Kafka errors: start over (callbacks are idempotent)
                if not failed:
                    log.warning("following %s failed (%s); retrying", self.settings.topic_enrollment,
                                type(exc).__name__)
                failed = True
                self._stop.wait(2.0)

    def _follow(self) -> None:
        consumer, tp = _consumer(self.settings)
        try:
            end = consumer.end_offsets([tp])[tp]
            while not self._stop.is_set():
                for recs in consumer.poll(timeout_ms=500).values():
                    for rec in recs:
                        self._apply(rec)
                if not self._caught_up.is_set() and consumer.position(tp) >= end:
                    self._caught_up.set()
                    log.info("enrollment loaded: %d record(s)", self.records)
        finally:
            consumer.close()

    def _apply(self, rec: Any) -> None:
        pid = rec.key.decode(errors="replace") if rec.key else ""
        try:
            record = decode_enrollment(rec.value)
        except ValueError:
            self.skipped += 1
            log.warning("skipped a malformed record in %s (offset %d)", rec.topic, rec.offset)
            return
        if record is not None and record.patient_id != pid:
            self.skipped += 1
            log.warning("skipped a record in %s whose key is not its patient (offset %d)", rec.topic, rec.offset)
            return
        self.records += 1
        try:
            self.on_record(pid, record)
        except Exception:  # one bad apply must not stop the roster
            log.exception("applying an enrollment record failed (offset %d)", rec.offset)
