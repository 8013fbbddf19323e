"""Erasure in the long-lived logs: how long ``wearwatch patients erase`` takes to find and tombstone one patient's
records in ``alerts`` and ``audit``.

The run's own ``alerts`` (8 partitions) gets ``--events`` alert events of ``--patients`` patients (each in its
patient's partition, keyed per event, as the worker writes them) and ``audit`` (1 partition) ``--audit`` records
naming those patients; then :func:`tools.erasure.erase_from_logs` erases one patient: records scanned, the patient's
records found, tombstones written, seconds and records/s scanned. The scan reads both topics from their beginning,
so its time grows with what the topics hold (6 years of alert record in production).
"""

from __future__ import annotations

import argparse
import time

import orjson
from _common import bench_settings, ensure, loadavg, log, table

from console.models import AuditRecord
from tools.erasure import erase_from_logs
from wearwatch.config import Settings
from wearwatch.partitioning import patient_partition
from wearwatch.privacy import pseudonym
from wearwatch.transport import kafka_producer


def fill(settings: Settings, events: int, audit: int, patients: int) -> None:
    s = settings
    producer = kafka_producer(s, linger_ms=20)
    try:
        for i in range(events):
            pid = f"p-{i % patients:05d}"
            doc = {"schema_version": 1, "alert_id": f"al-{i // 4:08d}", "revision": i % 4, "state": "open",
                   "patient_id": pid, "ward": "3B", "kind": "glucose_low", "signal": "glucose", "priority": "medium",
                   "message": "Low glucose: 62 mg/dL, below 70", "explanation": {"source": "rule", "value": 62.0}}
            key = f"{doc['alert_id']}:{doc['revision']}:{doc['state']}".encode()
            producer.send(s.topic_alerts, key=key, value=orjson.dumps(doc),
                          partition=patient_partition(pid, s.partitions))
        for i in range(audit):
            rec = AuditRecord(ts_ms=int(time.time() * 1000), actor=f"nurse-{i % 40}", action="ack",
                              patient_id=f"p-{i % patients:05d}", alert_id=f"al-{i:08d}")
            producer.send(s.topic_audit, key=rec.record_key, value=rec.to_json())
        producer.flush(300)
    finally:
        producer.close(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--audit", type=int, default=20_000)
    ap.add_argument("--patients", type=int, default=1_000)
    args = ap.parse_args()
    s = bench_settings("erase")
    ensure(s, [s.topic_alerts])
    ensure(s, [s.topic_audit], partitions=1)
    log(f"load average {loadavg()}")
    t0 = time.perf_counter()
    fill(s, args.events, args.audit, args.patients)
    log(f"wrote {args.events} alert events and {args.audit} audit records in {time.perf_counter() - t0:.1f} s")
    pid = "p-00007"
    t0 = time.perf_counter()
    results = erase_from_logs(s, pid, pseudonym(s.pseudonym_key or "", pid))
    took = time.perf_counter() - t0
    scanned = sum(r.scanned for r in results)
    rows = [[r.topic.split(".", 1)[1], r.scanned, r.records, r.tombstones] for r in results]
    print(table(["topic", "records scanned", "the patient's", "tombstones"], rows))
    print()
    print(table(["erase (both topics) s", "records/s scanned", "load average"],
                [[took, scanned / took, loadavg()]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
