"""Detection benchmark: simulated cohorts, replayed through the real detectors, scored.

Run: ``.venv/bin/python bench/bench_detection.py [--patients 20 --days 5]``.

Seeds 1 and 3 were used while choosing thresholds (tuning); the held-out
seeds (default 2026 and 4242) were never looked at before the thresholds were
fixed. The table reports each seed separately, marked tuning or held-out.
Throughput is measured twice: the full ``wearwatch replay`` path (CSV parsing,
unit conversion, per-patient monitors, ticks, JSON records) and the bare
``PatientMonitor.update`` loop; both single-threaded on one core.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectors import PatientMonitor
from ingest.scenarios import MMOL_TO_MGDL, simulate_cohort
from wearwatch.evaluation import LEVEL2, _q, score
from wearwatch.replay import read_csv, replay

TUNING = (1, 3)
HELD_OUT = (2026, 4242)


def _rows(cohort):  # type: ignore[no-untyped-def]
    ts, _arr, pidx, sig, val, unit = cohort.arrays()
    val = val.copy()
    val[unit == 2] *= MMOL_TO_MGDL
    ids = [p.patient_id for p in cohort.patients]
    names = ("heart_rate", "glucose", "steps")
    return [(t, ids[p], names[s], v) for t, p, s, v in
            zip(ts.tolist(), pidx.tolist(), sig.tolist(), val.tolist(), strict=True)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--days", type=float, default=5.0)
    ap.add_argument("--seeds", type=int, nargs="*", default=[*TUNING, *HELD_OUT])
    args = ap.parse_args()

    print(f"cohorts: {args.patients} patients x {args.days:g} days "
          f"= {args.patients * args.days:g} patient-days per seed\n")
    head = (f"{'seed':>6} {'set':<8} {'event':<20} {'n':>4} {'sens':>5} {'delay med':>9} "
            f"{'p90':>6}")
    print(head)
    print("-" * len(head))
    summary = []
    sizes: list[int] = []
    for seed in args.seeds:
        cohort = simulate_cohort(args.patients, args.days, seed=seed)
        res = replay(_rows(cohort))
        rep = score(res.alerts, cohort.episodes, cohort.patient_days)
        sizes += res.state_sizes()
        tag = "tuning" if seed in TUNING else "held-out"
        for k in LEVEL2:
            sc = rep.per_kind.get(k)
            if sc is None:
                continue
            print(f"{seed:>6} {tag:<8} {k:<20} {sc.episodes:>4} {sc.sensitivity:>5.2f} "
                  f"{_q(sc.delays_min, 0.5):>9.1f} {_q(sc.delays_min, 0.9):>6.1f}")
        dev = Counter(f"{a['kind']}/{a['signal']}" for a in res.alerts
                      if a["state"] == "open" and a["audience"] == "device")
        summary.append((seed, tag, rep, dev))
    print()
    head2 = (f"{'seed':>6} {'set':<8} {'pt-days':>7} {'false/pt-day':>12} {'(high+med)':>10} "
             f"{'lead>=15min':>11} {'hypo L2':>7} {'drift found':>11} {'device/pt-day':>13}")
    print(head2)
    print("-" * len(head2))
    for seed, tag, rep, _dev in summary:
        dr = rep.per_kind.get("hr_resting_drift")
        drs = f"{dr.detected}/{dr.episodes}" if dr else "-"
        print(f"{seed:>6} {tag:<8} {rep.patient_days:>7.0f} {rep.false_per_patient_day:>12.2f} "
              f"{rep.false_hm_per_patient_day:>10.2f} {rep.lead_share:>11.2f} {rep.hypo_l2:>7} "
              f"{drs:>11} {rep.device_findings / rep.patient_days:>13.2f}")
    fk: Counter[str] = Counter()
    for _s, _t, rep, _dev in summary:
        fk.update(rep.false_by_kind)
    print("false alerts by kind (all seeds): " + ", ".join(f"{k} {v}" for k, v in fk.most_common()))
    print("device findings per patient-day by kind/signal:")
    for seed, tag, rep, dev in summary:
        print(f"{seed:>6} {tag:<8} " + ", ".join(
            f"{k} {v / rep.patient_days:.2f}" for k, v in sorted(dev.items())))

    # --- throughput ---------------------------------------------------------------
    cohort = simulate_cohort(args.patients, args.days, seed=HELD_OUT[0])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cohort.csv")
        n = cohort.write_csv(path)
        t0 = time.perf_counter()
        res = replay(read_csv(path))
        dt = time.perf_counter() - t0
    rows = _rows(cohort)
    mons: dict[str, PatientMonitor] = {}
    t0 = time.perf_counter()
    for t, p, s, v in rows:
        m = mons.get(p)
        if m is None:
            m = mons[p] = PatientMonitor()
        m.update(s, t, v)
    dt2 = time.perf_counter() - t0
    print()
    print(f"replay from CSV (parse + detect + records): {n:,} readings in {dt:.2f} s = "
          f"{n / dt:,.0f} readings/s (one core)")
    print(f"PatientMonitor.update only:                 {len(rows):,} readings in {dt2:.2f} s = "
          f"{len(rows) / dt2:,.0f} readings/s")
    sizes += [len(pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL)) for m in mons.values()]
    print(f"state per patient after {args.days:g} days (pickled): median "
          f"{statistics.median(sizes):,.0f} B, max {max(sizes):,} B, n={len(sizes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
