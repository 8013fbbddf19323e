"""Erasure in the long-lived logs: a tombstone for every record of a patient on Kafka ``alerts`` and ``audit``.

Both topics are ``compact,delete`` (``wearwatch/retention.py``) with a key per record: an alert event's key is its
``alert_id:revision:state`` (in the partition the patient's id hashes to), an audit record's key is its id. So a
tombstone of a record's key removes that record, and nobody else's, at the next cleaning, within
``max.compaction.lag.ms`` (``WEARWATCH_ERASURE_COMPACTION_HOURS``).

:func:`erase_from_logs` reads each topic from its beginning to its end and writes one tombstone for every distinct
key found on a record of the patient, in that record's partition:

* ``alerts``: every event whose ``patient_id`` is the patient. Events written before the per-event keys have the
  patient's id as key; its tombstone removes them all (no other patient's event has that key).
* ``audit``: every record whose ``patient_id`` is the patient, or that names one of the patient's alerts, or the
  patient's id or pseudonym anywhere in it. A record written before the per-record keys has its actor as key,
  which other records share: its tombstone would remove them too, so such a key is tombstoned only when every
  record found under it is the patient's; the others are counted as ``shared`` and left to their retention.

The transit logs (``vitals.raw``, ``vitals.1m``, ``vitals.dlq``) and ``alerts.commands`` stay keyed by patient and
expire by retention (:func:`expiry_by`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from wearwatch.config import Settings
from wearwatch.errors import StackUnavailable
from wearwatch.partitioning import alert_record_key, audit_record_key
from wearwatch.transport import kafka_client_config, kafka_producer

__all__ = ["LogErasure", "erase_from_logs", "expiry_by"]

log = logging.getLogger(__name__)

_DAY_MS = 86_400_000


@dataclass
class LogErasure:
    """What the scan of one topic found and did."""

    topic: str
    scanned: int = 0
    records: int = 0  # records of the patient found
    tombstones: int = 0  # tombstones written (one per distinct key)
    shared: int = 0  # records of the patient under a key other records share (left to retention)
    keyless: int = 0  # records of the patient without a key (cannot be compacted away)
    alert_ids: set[str] = field(default_factory=set)


def _read_all(settings: Settings, topic: str, visit: Callable[[Any], None], timeout_s: float) -> int:
    """Call ``visit`` on every record of ``topic`` from the beginning to the end it has now; returns how many."""
    try:
        consumer = KafkaConsumer(**kafka_client_config(settings), group_id=None, enable_auto_commit=False,
                                 client_id="wearwatch-erasure", fetch_max_wait_ms=100)
    except KafkaError as exc:
        raise StackUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    n = 0
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            return 0
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        todo = {tp for tp in tps if consumer.position(tp) < ends[tp]}
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise StackUnavailable(f"could not read {topic} to its end in {timeout_s:.0f} s")
            for tp, recs in consumer.poll(timeout_ms=500, max_records=5000).items():
                for r in recs:
                    if r.offset < ends[tp]:
                        visit(r)
                        n += 1
            todo = {tp for tp in todo if consumer.position(tp) < ends[tp]}
    except KafkaError as exc:
        raise StackUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        consumer.close()
    return n


def _scan(settings: Settings, topic: str, own_key: Callable[[dict[str, Any]], bytes],
          is_patients: Callable[[bytes, dict[str, Any]], bool], timeout_s: float,
          ) -> tuple[LogErasure, dict[tuple[int, bytes], int]]:
    """The patient's (partition, key) pairs on ``topic`` that may be tombstoned, with the count of their records."""
    result = LogErasure(topic)
    found: dict[tuple[int, bytes], int] = {}
    others: set[tuple[int, bytes]] = set()  # keys of other records that are not per-record keys (older forms)

    def visit(r: Any) -> None:
        if r.value is None:
            return
        try:
            doc = orjson.loads(r.value)
        except orjson.JSONDecodeError:
            return
        if not isinstance(doc, dict):
            return
        if is_patients(r.value, doc):
            result.records += 1
            if topic == settings.topic_alerts and isinstance(doc.get("alert_id"), str):
                result.alert_ids.add(doc["alert_id"])
            if r.key is None:
                result.keyless += 1
            else:
                found[(r.partition, r.key)] = found.get((r.partition, r.key), 0) + 1
        elif r.key is not None and r.key != own_key(doc):
            others.add((r.partition, r.key))

    result.scanned = _read_all(settings, topic, visit, timeout_s)
    for pk in [pk for pk in found if pk in others]:
        result.shared += found.pop(pk)
    return result, found


def _tombstone(settings: Settings, topic: str, keys: list[tuple[int, bytes]]) -> None:
    if not keys:
        return
    producer = kafka_producer(settings, client_id="wearwatch-erasure")
    try:
        futures = [producer.send(topic, key=key, value=None, partition=p) for p, key in keys]
        producer.flush(60)
        for f in futures:
            f.get(timeout=30)
    except Exception as exc:  # KafkaError, KafkaTimeoutError
        raise StackUnavailable(f"Kafka did not take the tombstones on {topic}: {type(exc).__name__}") from exc
    finally:
        producer.close(timeout=10)


def erase_from_logs(settings: Settings, patient_id: str, tag: str, timeout_s: float = 600.0) -> list[LogErasure]:
    """Tombstone every record of the patient (id ``patient_id``, pseudonym ``tag``) on ``alerts``, then ``audit``."""
    pid_field = b'"patient_id":' + orjson.dumps(patient_id)

    def alert_of_patient(value: bytes, doc: dict[str, Any]) -> bool:
        return pid_field in value and doc.get("patient_id") == patient_id

    alerts, alert_keys = _scan(settings, settings.topic_alerts, alert_record_key, alert_of_patient, timeout_s)
    _tombstone(settings, settings.topic_alerts, sorted(alert_keys))
    alerts.tombstones = len(alert_keys)
    named = (orjson.dumps(patient_id), orjson.dumps(tag))

    def audit_of_patient(value: bytes, doc: dict[str, Any]) -> bool:
        return (doc.get("patient_id") == patient_id or doc.get("alert_id") in alerts.alert_ids
                or any(n in value for n in named))

    audit, audit_keys = _scan(settings, settings.topic_audit, audit_record_key, audit_of_patient, timeout_s)
    _tombstone(settings, settings.topic_audit, sorted(audit_keys))
    audit.tombstones = len(audit_keys)
    for r in (alerts, audit):
        log.info("erasure: %s: %d record(s) scanned, %d tombstone(s) written, %d left under a shared key",
                 r.topic, r.scanned, r.tombstones, r.shared)
    return [alerts, audit]


def expiry_by(settings: Settings, now_ms: int) -> dict[str, int]:
    """The time (ms) by which the logs kept by retention only hold nothing written before ``now_ms``: topic -> ms
    (Kafka deletes a whole segment once its newest record is older than the retention, so up to one segment's
    age, ``segment.ms``, later)."""
    s = settings
    return {
        s.topic_vitals: now_ms + int(s.retention_raw_days * _DAY_MS),
        s.topic_minutes: now_ms + int(s.retention_raw_days * _DAY_MS),
        s.topic_dlq: now_ms + int(s.retention_dead_letters_days * _DAY_MS),
        s.topic_commands: now_ms + int(s.retention_commands_days * _DAY_MS),
    }
