"""Detection benchmark: simulated cohorts, replayed through the real detectors, scored.

Run: ``.venv/bin/python bench/bench_detection.py [--patients 20 --days 5]``.

Seeds 1 and 3 were used while choosing thresholds (tuning); the held-out
seeds (default 2026 and 4242) were never looked at before the thresholds were
fixed. The table reports each seed separately, marked tuning or held-out.
Throughput is measured twice: the full ``wearwatch replay`` path (CSV parsing,
unit conversion, per-patient monitors, ticks, JSON records) and the bare
``PatientMonitor.update`` loop; both single-threaded on one core.

Predicted lows: ``lead>=15min`` is the scorer's share (``tools.evaluation``:
first ``glucose_urgent_low_soon`` opened within 90 min before the true glucose
first fell below 54). ``open@54`` is a stricter reading of the same target: the
lead counts from the opening of a warning (``urgent_low_soon`` or ``urgent_low``)
that is still open when glucose crosses 54, so a warning that came and went
earlier earns nothing. ``L2 misses`` splits the episodes short of 15 min by the
lead they did get (none, < 10 min, 10-15 min); ``soon false`` is the false
``glucose_urgent_low_soon`` alerts per patient-day (part of ``false/pt-day``).
With ``--episodes`` each L2 hypoglycemia is listed (seed, patient, fall rate
over the 15 min before the crossing, both leads).
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
from ingest.scenarios import simulate_cohort
from tools.evaluation import LEVEL2, _q, score
from tools.replay import read_csv, replay
from wearwatch.contract.units import MMOL_TO_MGDL

TUNING = (1, 3)
HELD_OUT = (2026, 4242)
MIN_MS = 60_000
_WARN = ("glucose_urgent_low_soon", "glucose_urgent_low")


def _warning_spans(alerts):  # type: ignore[no-untyped-def]
    """patient -> [(opened_ms, resolved_ms or inf)] of its low-glucose warnings."""
    spans: dict[str, list[tuple[int, float]]] = {}
    open_at: dict[tuple[str, str, int], int] = {}
    for a in alerts:
        if a["kind"] not in _WARN or a["audience"] != "clinical":
            continue
        key = (a["patient_id"], a["kind"], int(a["onset_ms"]))
        if a["state"] == "open":
            open_at[key] = int(a["ts_ms"])
        elif key in open_at:
            spans.setdefault(key[0], []).append((open_at.pop(key), float(a["ts_ms"])))
    for (pid, _k, _o), t in open_at.items():
        spans.setdefault(pid, []).append((t, float("inf")))
    return spans


def _lead_detail(alerts, cohort):  # type: ignore[no-untyped-def]
    """Per L2 hypoglycemia: (patient, fall rate mg/dL/min, scorer's lead, lead of a warning open at 54)."""
    spans = _warning_spans(alerts)
    soon: dict[str, list[int]] = {}
    for a in alerts:
        if a["kind"] == "glucose_urgent_low_soon" and a["state"] == "open" and a["audience"] == "clinical":
            soon.setdefault(a["patient_id"], []).append(int(a["ts_ms"]))
    truth = {p.patient_id: p.truth_glucose for p in cohort.patients}
    out = []
    for e in cohort.episodes:
        if e.kind != "hypoglycemia_l2":
            continue
        s = e.start_ms
        g = truth[e.patient_id]
        i = (s - cohort.start_ms) // MIN_MS
        rate = float(g[i - 15] - g[i]) / 15 if i >= 15 else float("nan")
        first = min((t for t in soon.get(e.patient_id, []) if s - 90 * MIN_MS <= t <= s), default=None)
        lead = (s - first) / MIN_MS if first is not None else None
        held = [o for o, c in spans.get(e.patient_id, []) if o <= s < c]
        strict = (s - min(held)) / MIN_MS if held else None
        out.append((e.patient_id, rate, lead, strict))
    return out


def _miss_split(leads: list[float | None]) -> str:
    none = sum(1 for x in leads if x is None)
    lt10 = sum(1 for x in leads if x is not None and x < 10)
    mid = sum(1 for x in leads if x is not None and 10 <= x < 15)
    return f"{none}/{lt10}/{mid}"


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
    ap.add_argument("--episodes", action="store_true",
                    help="list every level-2 hypoglycemia with its fall rate and leads")
    ap.add_argument("--no-throughput", action="store_true", help="skip the throughput runs")
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
        detail = _lead_detail(res.alerts, cohort)
        summary.append((seed, tag, rep, dev, detail))
    print()
    head2 = (f"{'seed':>6} {'set':<8} {'pt-days':>7} {'false/pt-day':>12} {'(high+med)':>10} "
             f"{'soon false':>10} {'lead>=15min':>11} {'open@54':>7} {'hypo L2':>7} {'L2 misses':>9} "
             f"{'drift found':>11} {'device/pt-day':>13}")
    print(head2)
    print("-" * len(head2))
    for seed, tag, rep, _dev, detail in summary:
        dr = rep.per_kind.get("hr_resting_drift")
        drs = f"{dr.detected}/{dr.episodes}" if dr else "-"
        soon_false = rep.false_by_kind.get("glucose_urgent_low_soon", 0) / rep.patient_days
        strict = sum(1 for d in detail if d[3] is not None and d[3] >= 15) / max(len(detail), 1)
        misses = [d[2] for d in detail if d[2] is None or d[2] < 15]
        print(f"{seed:>6} {tag:<8} {rep.patient_days:>7.0f} {rep.false_per_patient_day:>12.2f} "
              f"{rep.false_hm_per_patient_day:>10.2f} {soon_false:>10.2f} {rep.lead_share:>11.2f} "
              f"{strict:>7.2f} {rep.hypo_l2:>7} {_miss_split(misses):>9} "
              f"{drs:>11} {rep.device_findings / rep.patient_days:>13.2f}")
    print("L2 misses: episodes predicted < 15 min ahead, as none / < 10 min / 10-15 min")
    fk: Counter[str] = Counter()
    for _s, _t, rep, _dev, _d in summary:
        fk.update(rep.false_by_kind)
    print("false alerts by kind (all seeds): " + ", ".join(f"{k} {v}" for k, v in fk.most_common()))
    if args.episodes:
        print("level-2 hypoglycemias (fall rate = true mg/dL/min over the 15 min before < 54):")
        for seed, _t, _rep, _dev, detail in summary:
            for pid, rate, lead, strict_lead in sorted(detail, key=lambda d: d[1]):
                fmt = [f"{x:5.1f}" if x is not None else "    -" for x in (lead, strict_lead)]
                print(f"{seed:>6} {pid:<12} rate {rate:4.1f}  lead {fmt[0]}  open@54 {fmt[1]}")
    print("device findings per patient-day by kind/signal:")
    for seed, tag, rep, dev, _d in summary:
        print(f"{seed:>6} {tag:<8} " + ", ".join(
            f"{k} {v / rep.patient_days:.2f}" for k, v in sorted(dev.items())))

    if args.no_throughput:
        print(f"state per patient after {args.days:g} days (pickled): median "
              f"{statistics.median(sizes):,.0f} B, max {max(sizes):,} B, n={len(sizes)}")
        return 0
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
