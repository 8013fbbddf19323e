"""Reading history from Kafka on demand: a patient's alert events, and the audit trail.

Both are read straight from their topics, by time (``offsets_for_times``), with a consumer
of their own and no consumer group; nothing is kept in memory between requests, so every
replica answers the same.

* **Patient history** comes from Kafka ``alerts``, the source of truth: every event with
  every field (who acknowledged, notes, causes), which the InfluxDB ``alerts`` measurement
  does not keep (it stores the message and state for the dashboards, under a pseudonym).
  Only the patient's own partition is read (the murmur2 partition of their id, where the worker
  puts each of their events although every event has a key of its own), from 24 h ago to its
  end: with a fleet raising 100,000 alert events a day over 8 partitions that is ~12,500
  records (bench/README.md measures the cost).
* **The audit trail** (``audit``, one partition) is read between ``since_ms`` and
  ``until_ms`` and filtered; at most :data:`MAX_SCAN` records per request (``truncated``
  says when the window held more).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from wearwatch.config import Settings
from wearwatch.errors import StackUnavailable
from wearwatch.partitioning import alert_record_key
from wearwatch.transport import aiokafka_client_config

__all__ = ["MAX_SCAN", "audit_records", "patient_events", "scan_topic"]

#: the most records one history or audit request reads
MAX_SCAN = 500_000


async def scan_topic(
    settings: Settings, topic: str, partitions: int, since_ms: int, until_ms: int | None,
    keep: Callable[[Any], bool], *, partition_key: bytes | None = None, limit: int = MAX_SCAN,
) -> tuple[list[Any], bool]:
    """Records of ``topic`` (of ``partitions`` partitions) from ``since_ms`` (Kafka time) to its current
    end (or ``until_ms``) that ``keep`` accepts, oldest first, at most the newest ``limit``; with
    ``partition_key`` only the partition Kafka's default partitioner gives that key is read (a patient's
    alert events are there, whatever their record key). Returns (records, truncated)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError
    from aiokafka.partitioner import DefaultPartitioner

    consumer = AIOKafkaConsumer(**aiokafka_client_config(settings), client_id="wearwatch-console-history",
                                group_id=None, enable_auto_commit=False, fetch_max_wait_ms=10)
    kept: deque[Any] = deque(maxlen=limit)
    truncated = False
    try:
        await consumer.start()
        ordered = list(range(partitions))
        chosen = [DefaultPartitioner()(partition_key, ordered, ordered)] if partition_key is not None else ordered
        tps = [TopicPartition(topic, p) for p in chosen]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        todo = {}
        for tp in tps:
            found = starts.get(tp)
            start = found.offset if found is not None else ends[tp]
            if start < ends[tp]:
                consumer.seek(tp, start)
                todo[tp] = ends[tp]
        scanned = 0
        while todo:
            batches = await consumer.getmany(*todo, timeout_ms=1000, max_records=5000)
            for tp, records in batches.items():
                for r in records:
                    if r.offset >= todo.get(tp, 0):
                        break
                    scanned += 1
                    if until_ms is not None and r.timestamp > until_ms:
                        todo.pop(tp, None)
                        break
                    if keep(r):
                        if len(kept) == limit:
                            truncated = True  # an older match drops out
                        kept.append(r)
                if tp in todo and await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
            if scanned >= MAX_SCAN:
                truncated = truncated or bool(todo)
                break
    except KafkaError as exc:
        raise StackUnavailable(f"Kafka history read failed: {type(exc).__name__}") from exc
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    out = sorted(kept, key=lambda r: (r.timestamp, r.offset))
    return out, truncated


async def patient_events(settings: Settings, partitions: int, patient_id: str, since_ms: int) -> list[dict[str, Any]]:
    """The patient's alert events on Kafka ``alerts`` (of ``partitions`` partitions) since ``since_ms``,
    newest first (JSON dicts)."""
    # one key per event: the patient is in the payload (the partition is still the one their id hashes to)
    mark = f'"patient_id":{orjson.dumps(patient_id).decode()}'.encode()
    records, _ = await scan_topic(settings, settings.topic_alerts, partitions, since_ms, None,
                                  lambda r: r.value is not None and mark in r.value,
                                  partition_key=patient_id.encode())
    events: list[dict[str, Any]] = []
    seen: set[bytes] = set()
    for r in reversed(records):
        try:
            doc = orjson.loads(r.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict) and doc.get("patient_id") == patient_id:
            key = alert_record_key(doc)
            if key in seen:  # the same event twice (a replay, or re-keyed from an earlier version's record)
                continue
            seen.add(key)
            events.append(doc)
    return events


async def audit_records(
    settings: Settings, partitions: int, since_ms: int, until_ms: int | None, limit: int,
    user: str | None = None, patient: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Audit records in the window matching ``user`` (actor) and ``patient``, newest first, at most ``limit``."""

    def keep(r: Any) -> bool:
        if r.value is None:
            return False
        if user is not None and f'"actor":{orjson.dumps(user).decode()}'.encode() not in r.value:
            return False
        return patient is None or f'"patient_id":"{patient}"'.encode() in r.value

    records, truncated = await scan_topic(settings, settings.topic_audit, partitions, since_ms, until_ms, keep,
                                          limit=limit)
    out: list[dict[str, Any]] = []
    seen: set[Any] = set()
    for r in reversed(records):
        try:
            doc = orjson.loads(r.value)
        except orjson.JSONDecodeError:
            continue
        if until_ms is not None and doc.get("ts_ms", 0) > until_ms:
            continue
        if doc.get("ts_ms", 0) < since_ms:
            continue
        if patient is not None and doc.get("patient_id") != patient:
            continue
        if user is not None and doc.get("actor") != user:
            continue
        if doc.get("id") in seen:  # re-keyed from an earlier version's record (wearwatch/log_rekey.py)
            continue
        seen.add(doc.get("id"))
        out.append(doc)
    return out, truncated
