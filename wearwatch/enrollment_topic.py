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
from collections.abc import Callable, Iterable

from wearwatch.compacted import CompactedFollower
from wearwatch.config import Settings
from wearwatch.contract.enrollment import EnrollmentRecord, decode_enrollment
from wearwatch.errors import StackUnavailable
from wearwatch.transport import ensure_topics, kafka_producer, read_to_end

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
    ensure_topics(settings, [settings.topic_enrollment], partitions=1)


def read_enrollment(settings: Settings, timeout_s: float = 30.0) -> dict[str, EnrollmentRecord]:
    """Every patient's latest record (tombstoned patients left out), read to the topic's current end."""
    out: dict[str, EnrollmentRecord] = {}
    for rec in read_to_end(settings, settings.topic_enrollment, 0, client_id="wearwatch-enrollment",
                           timeout_s=timeout_s, fetch_max_wait_ms=200):
        pid = rec.key.decode() if rec.key else ""
        try:
            r = decode_enrollment(rec.value)
        except ValueError:
            log.warning("skipped a malformed record in %s (offset %d)", rec.topic, rec.offset)
            continue
        if r is None:
            out.pop(pid, None)
        else:
            out[pid] = r
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


class EnrollmentFollower(CompactedFollower):
    """Follows ``enrollment`` (:class:`~wearwatch.compacted.CompactedFollower`) and calls ``on_record`` for
    every record, in order: (patient id, its record or None for a tombstone). A record whose key is not its
    patient is skipped. The callbacks must be idempotent: they are, since each record is a patient's whole state.
    """

    def __init__(self, settings: Settings, on_record: OnRecord) -> None:
        self.on_enrollment = on_record
        super().__init__(settings, settings.topic_enrollment, self._decode, name="enrollment-follower",
                         describe=lambda: f"{self.records} enrollment record(s) read",
                         ensure=lambda: ensure_enrollment_topic(settings))

    def _decode(self, key: bytes | None, value: bytes | None) -> None:
        pid = key.decode(errors="replace") if key else ""
        record = decode_enrollment(value)  # ValueError: skipped
        if record is not None and record.patient_id != pid:
            raise ValueError("its key is not its patient")
        self.on_enrollment(pid, record)
