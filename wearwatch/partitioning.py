"""Keys and partitions: the partition a patient's id hashes to, and the per-record keys of the long-lived logs.

Every topic keyed by patient (``vitals.raw``, ``alerts.commands``, the worker's changelog, ``alerts.state``)
is partitioned by Kafka's default partitioner: murmur2 of the key bytes, positive, modulo the partition count
(the same function in kafka-python, aiokafka and Faust). The long-lived logs that are compacted for erasure
(``alerts``, and the audit trail) carry a key per event instead, so that a tombstone removes one record; an alert
event is still sent to the partition its patient hashes to (:func:`patient_partition`), so one patient's events
keep their order and stay co-partitioned with the patient's readings and state in the worker.
"""

from __future__ import annotations

from typing import Any

from kafka.partitioner.default import murmur2

__all__ = ["alert_record_key", "audit_record_key", "patient_partition"]


def patient_partition(patient_id: str | bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives the key ``patient_id`` among ``partitions``.

    >>> patient_partition("p-0001", 8) == patient_partition(b"p-0001", 8)
    True
    >>> 0 <= patient_partition("p-0001", 3) < 3
    True
    """
    if partitions < 1:
        raise ValueError("a topic has at least one partition")
    key = patient_id.encode() if isinstance(patient_id, str) else patient_id
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def alert_record_key(doc: dict[str, Any]) -> bytes:
    """The key of an ``alerts`` record from its JSON: the event's ``alert_id:revision:state``.

    >>> alert_record_key({"alert_id": "al-1", "revision": 2, "state": "acknowledged"})
    b'al-1:2:acknowledged'
    """
    return f"{doc.get('alert_id')}:{doc.get('revision', 0)}:{doc.get('state')}".encode()


def audit_record_key(doc: dict[str, Any]) -> bytes:
    """The key of an ``audit`` record from its JSON: the record's ``id``.

    >>> audit_record_key({"id": "0f" * 16})
    b'0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f'
    """
    return str(doc.get("id")).encode()
