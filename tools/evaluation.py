"""``wearwatch evaluate``: event-level scoring of detector alerts against labelled episodes.

Three ways in:

* ``--alerts alerts.jsonl --episodes episodes.csv [--patient-days N]`` scores a
  finished replay (``wearwatch replay``) against labels
  (``patient_id,kind,start_ms,end_ms,criterion_met_ms``, as written by
  :meth:`ingest.scenarios.Cohort.write_episodes`);
* ``--simulate N_PATIENTS --days D --seed S`` generates a cohort with
  :mod:`ingest.scenarios`, replays it through the same detector code and scores it;
* ``--nab RESULTS_DIR [--labels PATH] [--data DIR]`` delegates to
  :func:`tools.nab.evaluate_results` (NAB scoring of the generic detector).

Scoring rules (honest by construction):

* An **alert** is a finding that opened (``state == "open"``), audience clinical.
  Device findings are counted separately and never as true or false alerts.
* A level-2 episode is **detected** if an alert of a detecting kind
  (:data:`DETECTS`) opened within ``[start - 60 min, end + 30 min]``;
  **sensitivity** = detected / episodes; **delay** = first such alert's time
  minus ``criterion_met_ms`` (negative = before the criterion was met).
* Every clinical alert that matches no labelled episode of a compatible kind
  (:data:`COMPATIBLE`) within ``[start - 60 min, end + 60 min]`` is a **false
  alert**, reported per patient-day, for all priorities and for high+medium.
* **Lead time** of predicted lows: per level-2 hypoglycemia, the time from the
  first ``glucose_urgent_low_soon`` (opened ≤ 90 min before) to the episode's
  start (true glucose first < 54 mg/dL); the share with ≥ 15 min is reported.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "COMPATIBLE",
    "DETECTS",
    "LEVEL2",
    "EpisodeScore",
    "Report",
    "add_arguments",
    "evaluate_cohort",
    "format_report",
    "load_alerts",
    "load_episodes",
    "run",
    "score",
]

log = logging.getLogger(__name__)

MIN_MS = 60_000
PRE_MS = 60 * MIN_MS
POST_DETECT_MS = 30 * MIN_MS
POST_MATCH_MS = 60 * MIN_MS
LEAD_WINDOW_MS = 90 * MIN_MS

#: level-2 (target) episode kinds
LEVEL2: tuple[str, ...] = ("hypoglycemia_l2", "tachycardia_at_rest", "bradycardia")
#: episode kind -> alert kinds that count as detecting it (for sensitivity and delay)
DETECTS: dict[str, frozenset[str]] = {
    "hypoglycemia_l2": frozenset({"glucose_urgent_low", "glucose_low"}),
    "hypoglycemia_l1": frozenset({"glucose_urgent_low", "glucose_low"}),
    "hyperglycemia": frozenset({"glucose_high"}),
    "tachycardia_at_rest": frozenset({"tachycardia_at_rest"}),
    "tachycardia_at_rest_l1": frozenset({"tachycardia_at_rest", "hr_news2_band"}),
    "bradycardia": frozenset({"bradycardia"}),
    "hr_resting_drift": frozenset({"hr_resting_drift"}),
    "glucose_variability_change": frozenset({"glucose_variability_change"}),
    "glucose_rapid_change": frozenset({"glucose_falling_fast", "glucose_rising_fast"}),
}
_HYPO = frozenset({"hypoglycemia_l1", "hypoglycemia_l2"})
_TACHY = frozenset({"tachycardia_at_rest", "tachycardia_at_rest_l1"})
#: alert kind -> episode kinds it may truthfully refer to (anything else is a false alert)
COMPATIBLE: dict[str, frozenset[str]] = {
    "glucose_urgent_low": _HYPO,
    "glucose_low": _HYPO,
    "glucose_urgent_low_soon": _HYPO,
    "glucose_high": frozenset({"hyperglycemia"}),
    "glucose_falling_fast": _HYPO | {"glucose_rapid_change", "hyperglycemia"},
    "glucose_rising_fast": frozenset({"glucose_rapid_change", "hyperglycemia"}) | _HYPO,
    "glucose_variability_change": frozenset({"glucose_variability_change"}),
    "tachycardia_at_rest": _TACHY,
    "bradycardia": frozenset({"bradycardia"}),
    "hr_news2_band": _TACHY | {"bradycardia"},
    "hr_abrupt_change": _TACHY | {"bradycardia"},
    "hr_resting_drift": frozenset({"hr_resting_drift"}),
}


@dataclass
class EpisodeScore:
    """Detection result of one episode kind."""

    kind: str
    episodes: int = 0
    detected: int = 0
    delays_min: list[float] = field(default_factory=list)

    @property
    def sensitivity(self) -> float:
        return self.detected / self.episodes if self.episodes else float("nan")


@dataclass
class Report:
    """Everything :func:`score` measured."""

    patient_days: float
    per_kind: dict[str, EpisodeScore]
    alerts: int
    false_alerts: int
    false_alerts_hm: int
    false_by_kind: dict[str, int]
    device_findings: int
    lead_times_min: list[float]
    hypo_l2: int

    @property
    def false_per_patient_day(self) -> float:
        return self.false_alerts / self.patient_days if self.patient_days else float("nan")

    @property
    def false_hm_per_patient_day(self) -> float:
        return self.false_alerts_hm / self.patient_days if self.patient_days else float("nan")

    @property
    def lead_share(self) -> float:
        """Share of level-2 hypoglycemias predicted ≥ 15 min before the true crossing."""
        ok = sum(1 for x in self.lead_times_min if x >= 15.0)
        return ok / self.hypo_l2 if self.hypo_l2 else float("nan")


def _q(xs: Sequence[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def load_alerts(path: str) -> list[dict[str, Any]]:
    """Read a replay's JSON lines."""
    import orjson

    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


def load_episodes(path: str) -> list[tuple[str, str, int, int, int]]:
    """Read ``patient_id,kind,start_ms,end_ms,criterion_met_ms`` rows."""
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            out.append((row["patient_id"], row["kind"], int(row["start_ms"]), int(row["end_ms"]),
                        int(row["criterion_met_ms"])))
    return out


def score(
    alerts: Iterable[dict[str, Any]],
    episodes: Iterable[Sequence[Any]],
    patient_days: float,
) -> Report:
    """Score alert records against labelled episodes.

    ``episodes`` are ``(patient_id, kind, start_ms, end_ms, criterion_met_ms)``.

    >>> eps = [("p", "hypoglycemia_l2", 0, 30 * 60_000, 15 * 60_000)]
    >>> al = [{"patient_id": "p", "kind": "glucose_urgent_low", "state": "open",
    ...        "audience": "clinical", "priority": "high", "ts_ms": 16 * 60_000},
    ...       {"patient_id": "p", "kind": "glucose_high", "state": "open",
    ...        "audience": "clinical", "priority": "medium", "ts_ms": 5 * 3_600_000}]
    >>> r = score(al, eps, patient_days=1.0)
    >>> r.per_kind["hypoglycemia_l2"].sensitivity, r.per_kind["hypoglycemia_l2"].delays_min
    (1.0, [1.0])
    >>> r.false_alerts, r.false_by_kind
    (1, {'glucose_high': 1})
    """
    by_pat: dict[str, list[tuple[str, int, int, int]]] = defaultdict(list)
    per_kind: dict[str, EpisodeScore] = {}
    for pid, kind, start, end, crit in episodes:
        by_pat[pid].append((kind, int(start), int(end), int(crit)))
        per_kind.setdefault(kind, EpisodeScore(kind)).episodes += 1
    opened: dict[str, list[dict[str, Any]]] = defaultdict(list)
    device = 0
    n_alerts = 0
    for a in alerts:
        if a.get("state") != "open":
            continue
        if a.get("audience") != "clinical":
            device += 1
            continue
        n_alerts += 1
        opened[a["patient_id"]].append(a)
    false = false_hm = 0
    false_by_kind: dict[str, int] = defaultdict(int)
    for pid, al in opened.items():
        eps = by_pat.get(pid, [])
        for a in al:
            comp = COMPATIBLE.get(a["kind"], frozenset())
            t = int(a["ts_ms"])
            if not any(k in comp and s - PRE_MS <= t <= e + POST_MATCH_MS for k, s, e, _c in eps):
                false += 1
                false_by_kind[a["kind"]] += 1
                if a.get("priority") in ("high", "medium"):
                    false_hm += 1
    leads: list[float] = []
    n_l2 = 0
    for pid, eps in by_pat.items():
        al = sorted(opened.get(pid, []), key=lambda a: int(a["ts_ms"]))
        for kind, s, e, c in eps:
            det = DETECTS.get(kind, frozenset())
            hits = [int(a["ts_ms"]) for a in al
                    if a["kind"] in det and s - PRE_MS <= int(a["ts_ms"]) <= e + POST_DETECT_MS]
            if hits:
                sc = per_kind[kind]
                sc.detected += 1
                sc.delays_min.append((hits[0] - c) / MIN_MS)
            if kind == "hypoglycemia_l2":
                n_l2 += 1
                soon = [int(a["ts_ms"]) for a in al if a["kind"] == "glucose_urgent_low_soon"
                        and s - LEAD_WINDOW_MS <= int(a["ts_ms"]) <= s]
                if soon:
                    leads.append((s - soon[0]) / MIN_MS)
    return Report(patient_days, per_kind, n_alerts, false, false_hm, dict(false_by_kind), device,
                  leads, n_l2)


def format_report(r: Report, title: str = "") -> str:
    """The report as a text table."""
    lines = []
    if title:
        lines.append(title)
    lines.append(f"{'episode kind':<28} {'n':>4} {'detected':>8} {'sens':>6} "
                 f"{'delay med':>9} {'p90':>6}  (min after criterion met)")
    order = list(LEVEL2) + sorted(k for k in r.per_kind if k not in LEVEL2)
    for k in order:
        sc = r.per_kind.get(k)
        if sc is None:
            continue
        star = "*" if k in LEVEL2 else " "
        lines.append(
            f"{star}{k:<27} {sc.episodes:>4} {sc.detected:>8} {sc.sensitivity:>6.2f} "
            f"{_q(sc.delays_min, 0.5):>9.1f} {_q(sc.delays_min, 0.9):>6.1f}"
        )
    lines.append("* level-2 target events")
    lines.append(f"patient-days: {r.patient_days:.1f}; clinical alerts opened: {r.alerts}; "
                 f"device findings: {r.device_findings}")
    lines.append(f"false alerts per patient-day: {r.false_per_patient_day:.2f} (all priorities), "
                 f"{r.false_hm_per_patient_day:.2f} (high+medium)")
    if r.false_by_kind:
        lines.append("false alerts by kind: " + ", ".join(
            f"{k} {v}" for k, v in sorted(r.false_by_kind.items(), key=lambda x: -x[1])))
    lines.append(
        f"predicted urgent low >= 15 min ahead: {r.lead_share:.2f} of {r.hypo_l2} level-2 hypos "
        f"(lead median {_q(r.lead_times_min, 0.5):.1f} min, predicted {len(r.lead_times_min)})"
    )
    return "\n".join(lines)


def evaluate_cohort(
    n_patients: int, days: float, seed: int, *, config: Any = None
) -> tuple[Report, Any]:
    """Simulate, replay (same detector code as the worker) and score a cohort."""
    from ingest.scenarios import MMOL_TO_MGDL, simulate_cohort
    from tools.replay import replay

    cohort = simulate_cohort(n_patients, days, seed=seed)
    ts, _arr, pidx, sig, val, unit = cohort.arrays()
    val = val.copy()
    val[unit == 2] *= MMOL_TO_MGDL
    ids = [p.patient_id for p in cohort.patients]
    names = ("heart_rate", "glucose", "steps")
    rows = ((t, ids[p], names[s], v) for t, p, s, v in
            zip(ts.tolist(), pidx.tolist(), sig.tolist(), val.tolist(), strict=True))
    res = replay(rows, config=config)
    return score(res.alerts, cohort.episodes, cohort.patient_days), res


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--alerts", help="alerts JSON lines from `wearwatch replay`")
    parser.add_argument("--episodes", help="labelled episodes CSV")
    parser.add_argument("--patient-days", type=float,
                        help="patient-days covered by the alerts (default: from the labels' span)")
    parser.add_argument("--simulate", type=int, metavar="N_PATIENTS",
                        help="simulate a cohort of N patients, replay and score it")
    parser.add_argument("--days", type=float, default=5.0, help="days per simulated patient")
    parser.add_argument("--seed", type=int, default=2, help="cohort seed (report a held-out one)")
    parser.add_argument("--nab", metavar="RESULTS_DIR", help="score NAB results (tools.nab)")
    parser.add_argument("--labels", default=None,
                        help="NAB labels JSON (default ../shared/data/nab/labels.json from the repo)")
    parser.add_argument("--data", default=None, help="NAB data directory")


def run(args: argparse.Namespace) -> int:
    from wearwatch.errors import WearwatchError

    if args.nab:
        import importlib

        nab = importlib.import_module("tools.nab")
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        labels = args.labels or os.path.normpath(os.path.join(repo, "..", "shared", "data", "nab",
                                                              "labels.json"))
        data = args.data
        if data is None:
            data = os.path.join(os.path.dirname(labels), "data")
        return int(nab.evaluate_results(args.nab, labels, data))
    if args.simulate:
        report, res = evaluate_cohort(args.simulate, args.days, args.seed)
        title = (f"simulated cohort: {args.simulate} patients x {args.days:g} days, seed {args.seed}; "
                 f"{res.readings:,} readings replayed at {res.rate:,.0f}/s")
        print(format_report(report, title))
        return 0
    if not (args.alerts and args.episodes):
        raise WearwatchError("give --alerts and --episodes, or --simulate N, or --nab DIR")
    alerts = load_alerts(args.alerts)
    eps = load_episodes(args.episodes)
    pdays = args.patient_days
    if pdays is None:
        pats = {a["patient_id"] for a in alerts} | {e[0] for e in eps}
        ts = [int(a["ts_ms"]) for a in alerts] + [e[2] for e in eps] + [e[3] for e in eps]
        span_days = (max(ts) - min(ts)) / 86_400_000 if ts else 0.0
        pdays = max(span_days, 1.0) * max(len(pats), 1)
        log.warning("--patient-days not given: estimated %.1f from the data span", pdays)
    print(format_report(score(alerts, eps, pdays)))
    return 0
