"""Alert fingerprints: every finding and alert event of fixed inputs, hashed per cohort.

A refactoring of the detectors must not change a single alert. This script runs
fixed, seeded inputs through the offline replay (``tools.replay``, the same
``PatientMonitor`` code as the worker), writes every finding as one canonical
JSON line (sorted keys) and every alert event the alert lifecycle
(``alerts.lifecycle.AlertBook``) makes of them, and prints a SHA-256 per cohort
and kind of record. Equal hashes before and after a change mean byte-identical
alerts.

Cohorts:

* ``bench-<seed>`` - the detection bench's cohorts (``bench/bench_detection.py``:
  20 patients x 5 days, seeds 1 and 3 (tuning), 2026 and 4242 (held-out)),
  readings replayed as the bench does (values converted, arrival order);
* ``bench-csv-2026`` - the bench's throughput input: the seed-2026 cohort
  written to CSV and read back (``read_csv``: values as printed, ``%g``);
* ``replay-cli``, ``replay-cohort``, ``replay-csv`` - the inputs of
  ``tests/test_replay.py`` (a 6-hour patient with a hypoglycaemia through the CSV
  path, a 2-patient half-day cohort without ticks, the hand-written CSV);
* ``contract-<seed>`` - the streams of ``detectors/test_contract.py`` (injected
  hypoglycaemia, resting tachycardia, bradycardia), seed 2 with a per-patient override;
* ``disorder-1`` - 6 patients of seed 1 over 2 days re-sent out of order: readings
  delayed by up to 12 minutes (some beyond the lateness limit) and 3 % duplicated;
* ``late-lows-4242`` - 10 patients of seed 4242 over 2 days, each run of glucose
  readings below 55 mg/dL arriving after the next reading above (the late urgent-low path);
* ``overrides-3`` - 8 patients of seed 3 over 3 days, each with its own thresholds.

``CPU /s`` is the replay's rate (detection and records, no CSV parsing) per second of
CPU time of this process, so a busy machine does not distort it.

Run: ``.venv/bin/python bench/alert_fingerprint.py`` (about 1 minute on a quiet core).
``--write FILE`` stores the fingerprints as JSON, ``--check FILE`` compares with
stored ones (exit status 1 on any difference), ``--out DIR`` keeps the JSON lines,
``--quick`` skips the four 20-patient cohorts.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alerts.lifecycle import AlertBook
from detectors.base import Audience, Finding, Priority
from ingest.scenarios import (
    DEFAULT_START_MS,
    MMOL_TO_MGDL,
    Cohort,
    Event,
    simulate_cohort,
    simulate_patient,
)
from tools.replay import read_csv, replay

Row = tuple[int, str, str, float]

BENCH_SEEDS = (1, 3, 2026, 4242)
BENCH_PATIENTS = 20
BENCH_DAYS = 5.0
_NAMES = ("heart_rate", "glucose", "steps")
_CONTRACT_T0 = 1_767_571_200_000
_DAY = 86_400_000


def cohort_rows(cohort: Cohort) -> list[Row]:
    """``(ts_ms, patient_id, signal, value mg/dL|bpm|steps)`` in arrival order, as the detection bench makes them."""
    ts, _arr, pidx, sig, val, unit = cohort.arrays()
    val = val.copy()
    val[unit == 2] *= MMOL_TO_MGDL
    ids = [p.patient_id for p in cohort.patients]
    return [(t, ids[p], _NAMES[s], v) for t, p, s, v in
            zip(ts.tolist(), pidx.tolist(), sig.tolist(), val.tolist(), strict=True)]


def _csv_rows(cohort: Cohort, ts_format: str = "epoch") -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cohort.csv")
        cohort.write_csv(path, ts_format=ts_format)
        return list(read_csv(path))


def _replay_cli_rows() -> list[Row]:
    t0 = DEFAULT_START_MS
    evs = [Event("hypoglycemia", t0 + 2 * 3_600_000, 100 * 60_000, 44.0)]
    d = simulate_patient("px", t0, t0 + 6 * 3_600_000, seed=3, events=evs)
    return _csv_rows(Cohort([d], t0, t0 + 6 * 3_600_000), ts_format="rfc3339")


def _replay_csv_rows() -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "in.csv")
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                "ts,patient_id,signal,value,unit\n"
                "1767571200,p1,glucose,3.0,mmol/L\n"
                "2026-01-05T00:00:05Z,p1,heart_rate,71,bpm\n"
                "1767571210,p1,glucose,5,bpm\n"
                "nope,p1,glucose,5,mg/dL\n"
                "1767571220,p1,pulse,5,bpm\n"
            )
        return list(read_csv(path))


def _contract_rows(seed: int, days: float, pid: str) -> list[Row]:
    evs = [
        Event("hypoglycemia", _CONTRACT_T0 + 3 * 3_600_000, 100 * 60_000, 45.0),
        Event("tachycardia_at_rest", _CONTRACT_T0 + 9 * 3_600_000, 20 * 60_000, 145.0),
        Event("bradycardia", _CONTRACT_T0 + 14 * 3_600_000, 6 * 60_000, 34.0),
    ]
    d = simulate_patient("p", _CONTRACT_T0, _CONTRACT_T0 + int(days * _DAY), seed=seed, events=evs)
    return [(r.ts_ms, pid, r.signal, r.value * MMOL_TO_MGDL if r.unit == "mmol/L" else r.value) for r in d]


def _disorder_rows() -> list[Row]:
    rows = cohort_rows(simulate_cohort(6, 2.0, seed=1))
    rng = np.random.default_rng(20260105)
    n = len(rows)
    delay = np.zeros(n, dtype=np.int64)
    late = rng.random(n) < 0.02
    delay[late] = rng.integers(1_000, 12 * 60_000, int(late.sum()))
    arrival = np.array([r[0] for r in rows], dtype=np.int64) + delay
    order = np.argsort(arrival, kind="stable")
    dup = rng.random(n) < 0.03
    out: list[Row] = []
    for i in order.tolist():
        out.append(rows[i])
        if dup[i]:
            out.append(rows[i])
    return out


def _late_lows_rows() -> list[Row]:
    """Dips below 55 mg/dL re-sent late: a run of low glucose readings arrives just after the next reading >= 55.

    Like a CGM whose low readings reach the phone only after a re-sync: the newest
    reading is back above the threshold, the urgent low comes in late (runs longer
    than the lateness limit lose their oldest readings).
    """
    rows = cohort_rows(simulate_cohort(10, 2.0, seed=4242))
    arrival = [float(r[0]) for r in rows]
    pending: dict[str, list[int]] = {}
    for i, (t, pid, sig, v) in enumerate(rows):
        if sig != "glucose":
            continue
        run = pending.setdefault(pid, [])
        if v < 55.0:
            run.append(i)
        elif run:
            for k, j in enumerate(run):
                arrival[j] = t + 0.5 + k / 1000
            run.clear()
    order = sorted(range(len(rows)), key=arrival.__getitem__)
    return [rows[i] for i in order]


#: per-patient thresholds of the overrides cohort (patient index -> settings)
OVERRIDES: tuple[dict[str, Any], ...] = (
    {"glucose_low_mgdl": 75, "glucose_low_clear_mgdl": 85},
    {"glucose_high_mgdl": 200, "glucose_high_sustain_s": 900, "glucose_high_clear_mgdl": 190},
    {"hr_rest_high_bpm": 100, "hr_rest_high_clear_bpm": 95, "hr_rest_high_sustain_s": 300},
    {"hr_low_bpm": 50, "hr_low_clear_bpm": 55},
    {"glucose_predict_margin_mgdl": 0, "glucose_rate_alerts": False},
    {"glucose_urgent_low_mgdl": 60, "glucose_fall_fast_mgdl_min": 1.5, "glucose_rise_fast_mgdl_min": 1.5},
    {"hr_news2_min_score": 1, "hr_abrupt_delta_bpm": 25, "models_enabled": False},
    {"implausible_repeat": 1, "hr_flatline_s": 300, "hr_stale_s": 600, "stale_clear_s": 300},
)


def _finding_of(rec: dict[str, Any]) -> Finding:
    ex = rec["explanation"]
    return Finding(
        kind=rec["kind"], signal=rec["signal"], priority=Priority(rec["priority"]),
        audience=Audience(rec["audience"]), ts_ms=rec["ts_ms"], onset_ms=rec["onset_ms"],
        source=rec["source"], message=rec["message"], value=ex.get("value"), threshold=ex.get("threshold"),
        window_s=ex.get("window_s"), baseline=ex.get("baseline"), trend_per_min=ex.get("trend_per_min"),
        contributing=tuple(ex.get("contributing", ())), cleared=rec["state"] == "resolved",
    )


def alert_events(findings: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alert lifecycle's events for replayed findings (one book per patient, acting at each finding's time)."""
    books: dict[str, AlertBook] = {}
    out: list[dict[str, Any]] = []
    for rec in findings:
        pid = rec["patient_id"]
        book = books.get(pid)
        if book is None:
            book = books[pid] = AlertBook(pid, ward="fingerprint")
        for ev in book.on_finding(_finding_of(rec)):
            out.append(ev.model_dump(mode="json"))
    return out


def canonical(records: Iterable[dict[str, Any]]) -> bytes:
    """JSON lines with sorted keys: the bytes that are hashed."""
    return b"".join(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) + b"\n" for r in records)


def cohorts(quick: bool) -> list[tuple[str, Callable[[], tuple[list[Row], dict[str, Any]]]]]:
    """``(name, make)`` where ``make()`` returns the rows and the keyword arguments of :func:`replay`."""
    out: list[tuple[str, Callable[[], tuple[list[Row], dict[str, Any]]]]] = []
    if not quick:
        for seed in BENCH_SEEDS:
            out.append((f"bench-{seed}", lambda s=seed: (  # type: ignore[misc]
                cohort_rows(simulate_cohort(BENCH_PATIENTS, BENCH_DAYS, seed=s)), {})))
        out.append(("bench-csv-2026", lambda: (
            _csv_rows(simulate_cohort(BENCH_PATIENTS, BENCH_DAYS, seed=2026)), {})))
    out += [
        ("replay-cli", lambda: (_replay_cli_rows(), {})),
        ("replay-cohort", lambda: (cohort_rows(simulate_cohort(2, 0.5, seed=4)), {"tick_ms": 10**12})),
        ("replay-csv", lambda: (_replay_csv_rows(), {})),
        ("contract-11", lambda: (_contract_rows(11, 1.0, "c11"), {})),
        ("contract-5", lambda: (_contract_rows(5, 0.5, "c5"), {})),
        ("contract-2", lambda: (_contract_rows(2, 3.0, "c2"), {"overrides": {"c2": {"glucose_low_mgdl": 75}}})),
        ("disorder-1", lambda: (_disorder_rows(), {})),
        ("late-lows-4242", lambda: (_late_lows_rows(), {})),
        ("overrides-3", lambda: (
            cohort_rows(simulate_cohort(8, 3.0, seed=3)),
            {"overrides": {f"sim-3-{i:03d}": ov for i, ov in enumerate(OVERRIDES)}})),
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", metavar="FILE", help="store the fingerprints (JSON)")
    ap.add_argument("--check", metavar="FILE", help="compare with stored fingerprints; exit 1 on a difference")
    ap.add_argument("--out", metavar="DIR", help="also write each cohort's JSON lines here")
    ap.add_argument("--quick", action="store_true", help="skip the 20-patient bench cohorts")
    args = ap.parse_args(argv)

    expected: dict[str, Any] = {}
    if args.check:
        with open(args.check, "rb") as f:
            expected = orjson.loads(f.read())["cohorts"]
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    head = (f"{'cohort':<16} {'readings':>10} {'opened':>7} {'resolved':>8} {'events':>7} "
            f"{'findings sha256':<20} {'events sha256':<20} {'CPU /s':>9} {'check':<6}")
    print(head)
    print("-" * len(head), flush=True)
    result: dict[str, Any] = {}
    bad = 0
    total_rows = 0
    total_s = 0.0
    sizes: list[int] = []
    for name, make in cohorts(args.quick):
        rows, kw = make()
        t0 = time.process_time()  # CPU time: the machine may be shared, the rate is per core
        res = replay(rows, **kw)
        dt = max(time.process_time() - t0, 1e-9)
        total_rows += len(rows)
        total_s += dt
        sizes += res.state_sizes()
        findings = canonical(res.alerts)
        events = canonical(alert_events(res.alerts))
        entry: dict[str, Any] = {
            "readings": len(rows),
            "opened": sum(1 for a in res.alerts if a["state"] == "open"),
            "resolved": sum(1 for a in res.alerts if a["state"] == "resolved"),
            "events": events.count(b"\n"),
            "findings_sha256": hashlib.sha256(findings).hexdigest(),
            "events_sha256": hashlib.sha256(events).hexdigest(),
        }
        result[name] = entry
        if args.out:
            with open(os.path.join(args.out, f"{name}.findings.jsonl"), "wb") as f:
                f.write(findings)
            with open(os.path.join(args.out, f"{name}.events.jsonl"), "wb") as f:
                f.write(events)
        status = ""
        if args.check:
            want = expected.get(name)
            status = "same" if want == entry else ("new" if want is None else "DIFF")
            bad += status != "same"
        print(f"{name:<16} {entry['readings']:>10,} {entry['opened']:>7,} {entry['resolved']:>8,} "
              f"{entry['events']:>7,} {entry['findings_sha256'][:16]:<20} {entry['events_sha256'][:16]:<20} "
              f"{len(rows) / dt:>9,.0f} {status:<6}", flush=True)
    print(f"\n{len(result)} cohorts, {total_rows:,} readings, replay (detection + records) at "
          f"{total_rows / total_s:,.0f} readings per CPU-second")
    sizes.sort()
    print(f"state per patient (pickled, end of each cohort): median {sizes[len(sizes) // 2]:,} B, "
          f"max {sizes[-1]:,} B, n={len(sizes)}")
    if args.check:
        missing = sorted(set(expected) - set(result)) if not args.quick else []
        bad += len(missing)
        print("fingerprints: " + ("all identical to " + args.check if not bad else
                                  f"{bad} cohort(s) differ from {args.check}"
                                  + (f" (missing: {', '.join(missing)})" if missing else "")))
    if args.write:
        with open(args.write, "wb") as f:
            f.write(orjson.dumps({"cohorts": result}, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n")
        print(f"fingerprints written to {args.write}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
