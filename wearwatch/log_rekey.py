"""Re-keying ``alerts`` and ``audit`` written by an earlier version, before they are switched to compaction.

An earlier version keyed an alert event by its patient and an audit record by its actor, with ``cleanup.policy``
``delete``. Compaction keeps only the latest record of each key, so switching such a topic to ``compact,delete``
as it is would reduce the alert record to one event per patient and the audit trail to one record per actor.
:func:`rekey_log` first writes every such record again under its own key (``wearwatch.partitioning``), in the same
partition and with its original timestamp (so retention still counts from when it happened); compaction then
reduces each old key to one record, a duplicate of a re-keyed one (consumers drop repeated alert events; the
audit reader drops repeated record ids). Records already present under their own key are not written again, so a
second run copies nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from wearwatch.errors import StackUnavailable

__all__ = ["rekey_log"]

log = logging.getLogger(__name__)


def _records(client_config: dict[str, Any], topic: str, timeout_s: float) -> list[Any]:
    consumer = KafkaConsumer(**client_config, group_id=None, enable_auto_commit=False, client_id="wearwatch-rekey",
                             fetch_max_wait_ms=100)
    out: list[Any] = []
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return out
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise StackUnavailable(f"could not read {topic} to its end in {timeout_s:.0f} s")
            for tp, recs in consumer.poll(timeout_ms=500, max_records=5000).items():
                out.extend(r for r in recs if r.offset < ends[tp])
    finally:
        consumer.close()
    return out


def rekey_log(client_config: dict[str, Any], topic: str, own_key: Callable[[dict[str, Any]], bytes],
              timeout_s: float = 1800.0) -> int:
    """Write every record of ``topic`` whose key is not ``own_key(record)`` again under that key (same partition,
    same timestamp), unless a record with that key is already there. ``client_config``: kafka-python client
    settings (bootstrap, security). Returns how many records were written."""
    try:
        records = _records(client_config, topic, timeout_s)
        present: set[bytes] = set()
        todo: list[tuple[Any, bytes]] = []
        for r in records:
            if r.value is None:
                continue
            try:
                doc = orjson.loads(r.value)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(doc, dict):
                continue
            key = own_key(doc)
            if r.key == key:
                present.add(key)
            else:
                todo.append((r, key))
        todo = [(r, key) for r, key in todo if key not in present]
        if not todo:
            return 0
        producer = KafkaProducer(**client_config, acks="all", enable_idempotence=True, client_id="wearwatch-rekey")
        try:
            futures = [producer.send(topic, key=key, value=r.value, partition=r.partition, timestamp_ms=r.timestamp)
                       for r, key in todo]
            producer.flush(120)
            for f in futures:
                f.get(timeout=60)
        finally:
            producer.close(timeout=10)
    except KafkaError as exc:
        raise StackUnavailable(f"re-keying {topic} failed: {type(exc).__name__}") from exc
    log.info("re-keyed %d record(s) of %s", len(todo), topic)
    return len(todo)
