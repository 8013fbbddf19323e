"""The live roster: how soon a change to ``enrollment`` reaches a follower, and how long a start reads the roster.

(1) An :class:`~wearwatch.enrollment_topic.EnrollmentFollower` (what every gateway, worker and console runs)
follows a run's own ``enrollment`` topic; ``--changes`` records are written one at a time, each acknowledged by
Kafka (acks=all): time from the send to the follower's callback. The worker then applies a change to the
patient's state on its next ``EnrollmentSync`` timer (every 0.5 s). (2) A roster of ``--patients`` records
(overrides on every tenth) is written, and ``read_enrollment`` (what ``wearwatch patients list`` and a start do)
reads it to its end: time and records/s.
"""

from __future__ import annotations

import argparse
import threading
import time

from _common import bench_settings, loadavg, log, percentiles, table

from wearwatch.config import Settings
from wearwatch.contract.enrollment import EnrollmentRecord
from wearwatch.enrollment_topic import EnrollmentFollower, ensure_enrollment_topic, publish_enrollment, read_enrollment
from wearwatch.transport import kafka_producer


def follow_latency(settings: Settings, changes: int) -> list[float]:
    got: dict[str, float] = {}
    seen = threading.Event()

    def on_record(pid: str, record: EnrollmentRecord | None) -> None:
        got[pid] = time.perf_counter()
        seen.set()

    follower = EnrollmentFollower(settings, on_record)
    follower.start()
    follower.wait_ready(30)
    producer = kafka_producer(settings)
    out: list[float] = []
    try:
        for i in range(changes):
            pid = f"lat-{i}"
            rec = EnrollmentRecord(patient_id=pid, ward="3B", since_ms=int(time.time() * 1000))
            seen.clear()
            t0 = time.perf_counter()
            producer.send(settings.topic_enrollment, key=pid.encode(), value=rec.to_json()).get(10)
            while pid not in got and seen.wait(10):
                seen.clear()
            out.append((got[pid] - t0) * 1000)
            time.sleep(0.05)
    finally:
        producer.close(10)
        follower.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--patients", type=int, default=10_000)
    args = ap.parse_args()
    s = bench_settings("enrol")
    ensure_enrollment_topic(s)
    log(f"load average {loadavg()}")
    lat = follow_latency(s, args.changes)
    p50, p95, p99 = percentiles(lat)
    print(table(["changes", "p50 ms", "p95 ms", "p99 ms", "max ms"],
                [[len(lat), p50, p95, p99, max(lat)]]))
    roster = [EnrollmentRecord(patient_id=f"p-{i:05d}", ward=f"W{i % 20}", since_ms=0,
                               overrides={"glucose_low_mgdl": 75} if i % 10 == 0 else {})
              for i in range(args.patients)]
    t0 = time.perf_counter()
    publish_enrollment(s, roster)
    written = time.perf_counter() - t0
    t0 = time.perf_counter()
    read = read_enrollment(s)
    took = time.perf_counter() - t0
    print()
    print(table(["records in the roster", "write s", "read to end s", "records/s read"],
                [[len(read), written, took, len(read) / took]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
