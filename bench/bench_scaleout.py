"""Scale-out: two wearwatch workers against one, on the same pre-loaded ``vitals.raw`` (8 partitions).

Run: ``.venv/bin/python bench/bench_scaleout.py [--patients 10000] [--readings 300000] [--partitions 8]``
(stack credentials in the environment: ``make bench`` does that).

The backlog is produced once; each configuration consumes all of it under its
own consumer group (a fresh Faust app id, so state starts empty each time):
1 worker, then 2 workers with the same app id sharing the partitions. The rate
is the group's committed-offset rate between 10 % and 90 % of the backlog.
CPU is summed over the workers (100 % = one core). On a 2-core machine that
also runs Kafka, InfluxDB and Mosquitto, two workers compete with the broker
for the same cores: read the CPU column with the load average.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_settings, ensure, generate_backlog, group_backlog, loadavg, log, preload, table
from bench_throughput import READINGS_PER_PATIENT_MINUTE, run_worker


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--readings", type=int, default=1_500_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=150.0)
    args = ap.parse_args()

    log(f"load average before: {loadavg()}")
    base = bench_settings("so", partitions=args.partitions)
    minutes = args.readings / (args.patients * READINGS_PER_PATIENT_MINUTE)
    backlog = group_backlog(generate_backlog(args.patients, minutes), args.partitions)
    ensure(base, [base.topic_vitals, base.topic_commands, base.topic_alerts, base.topic_minutes, base.topic_dlq])
    rate_in = preload(base, backlog)
    log(f"preloaded {backlog.readings:,} readings of {args.patients:,} patients ({len(backlog.records):,} records) "
        f"at {rate_in:,.0f}/s")
    rows = []
    rates: dict[int, float] = {}
    for n in (1, 2):
        s = base.model_copy(update={"app_id": f"{base.app_id}-w{n}"})
        log(f"{n} worker(s) …")
        r = run_worker(s, backlog, args.timeout, args.patients, n_workers=n)
        rates[n] = r.rate
        rows.append([n, r.rate, r.rate / rates[1], r.drain_s, r.lag_end, r.cpu_pct, r.rss_mb, loadavg()])
        log(f"  {r.rate:,.0f}/s, CPU {r.cpu_pct:.0f} %")
    print(f"\nscale-out on {args.partitions} partitions, {backlog.readings:,} readings of {args.patients:,} patients "
          f"in {len(backlog.records):,} records\n")
    print(table(["workers", "readings/s", "speed-up", "drain s", "lag end", "CPU % (sum)", "RSS MB (sum)",
                 "load avg after"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
