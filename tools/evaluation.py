"""``wearwatch evaluate``: event-level scoring of detector alerts against labelled episodes.

Three ways in:

* ``--alerts alerts.jsonl --episodes episodes.csv [--patient-days N]`` scores a
  finished replay (``wearwatch replay``) against labels
  (``patient_id,kind,start_ms,end_ms,criterion_met_ms``, as written by
  :meth:`ingest.scenarios.Cohort.write_episodes`);
* ``--simulate N_PATIENTS --days D --seed S`` generates a cohort with
  :mod:`ingest.scenarios`, replays it through the same detector code and scores it;
* ``--nab RESULTS_DIR --labels PATH [--data DIR]`` delegates to
  :func:`tools.nab.evaluate_results` (NAB scoring of the generic detector; the
  labelled series that have a results file are scored).

``--json`` prints the scores as one JSON document instead of the table, each
rate with its 95 % confidence interval: **Wilson** score intervals for the
proportions (sensitivity per episode kind, share of level-2 hypoglycemias
predicted ≥ 15 min ahead), and the **exact (Garwood) Poisson** interval for the
false-alert rates per patient-day (the count's chi-square bounds divided by the
patient-days: alarms are counted events over an exposure, not a proportion).

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
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from scipy.stats import chi2

from ingest.scenarios import simulate_cohort
from tools import nab
from tools.replay import replay
from wearwatch.contract.units import MMOL_TO_MGDL
from wearwatch.errors import ConfigError, WearwatchError

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
    "poisson_rate_ci",
    "report_json",
    "run",
    "score",
    "wilson_ci",
]

log = logging.getLogger(__name__)

MIN_MS = 60_000
#: two-sided 95 %: the normal quantile of Wilson's interval, and the level of the Poisson one
Z95 = 1.959963984540054
ALPHA = 0.05
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


def wilson_ci(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (95 % by default); NaN bounds for ``n == 0``.

    >>> [round(x, 4) for x in wilson_ci(9, 10)]
    [0.5958, 0.9821]
    >>> [round(x, 4) for x in wilson_ci(0, 20)], wilson_ci(20, 20)[1]
    ([0.0, 0.1611], 1.0)
    """
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def poisson_rate_ci(count: int, exposure: float, alpha: float = ALPHA) -> tuple[float, float]:
    """Exact (Garwood) interval of a Poisson rate ``count / exposure`` (95 % by default).

    Bounds: ``chi2.ppf(alpha/2, 2k) / 2`` and ``chi2.ppf(1 - alpha/2, 2k + 2) / 2`` events,
    over the exposure; the lower bound is 0 for no events.

    >>> [round(x, 4) for x in poisson_rate_ci(0, 1.0)]
    [0.0, 3.6889]
    >>> [round(x, 3) for x in poisson_rate_ci(10, 5.0)]
    [0.959, 3.678]
    """
    if exposure <= 0:
        return float("nan"), float("nan")
    lo = 0.0 if count == 0 else float(chi2.ppf(alpha / 2, 2 * count)) / 2
    hi = float(chi2.ppf(1 - alpha / 2, 2 * count + 2)) / 2
    return lo / exposure, hi / exposure


def _q(xs: Sequence[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def load_alerts(path: str) -> list[dict[str, Any]]:
    """Read a replay's JSON lines; :class:`~wearwatch.errors.WearwatchError` naming the line for bad input."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise WearwatchError(f"--alerts {path}: cannot read ({exc.strerror or exc})") from None
    out: list[dict[str, Any]] = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise WearwatchError(f"--alerts {path} line {n}: not JSON (expected `wearwatch replay` output)") from None
        if not isinstance(rec, dict) or not rec.keys() >= _ALERT_KEYS or isinstance(rec["ts_ms"], bool) \
                or not isinstance(rec["ts_ms"], int):
            raise WearwatchError(f"--alerts {path} line {n}: expected an object with "
                                 f"{', '.join(sorted(_ALERT_KEYS))} (ts_ms an integer)")
        out.append(rec)
    return out


_ALERT_KEYS = frozenset({"patient_id", "kind", "state", "audience", "ts_ms"})
_EPISODE_COLUMNS = ("patient_id", "kind", "start_ms", "end_ms", "criterion_met_ms")


def load_episodes(path: str) -> list[tuple[str, str, int, int, int]]:
    """Read ``patient_id,kind,start_ms,end_ms,criterion_met_ms`` rows (errors name the line)."""
    out = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not set(_EPISODE_COLUMNS) <= set(reader.fieldnames):
                raise WearwatchError(f"--episodes {path}: the header must have {','.join(_EPISODE_COLUMNS)}")
            for row in reader:
                try:
                    out.append((row["patient_id"], row["kind"], int(row["start_ms"]), int(row["end_ms"]),
                                int(row["criterion_met_ms"])))
                except (TypeError, ValueError):
                    raise WearwatchError(f"--episodes {path} line {reader.line_num}: start_ms, end_ms and "
                                         "criterion_met_ms must be integers") from None
    except OSError as exc:
        raise WearwatchError(f"--episodes {path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise WearwatchError(f"--episodes {path}: not UTF-8 text") from None
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
    lines.append(f"{'episode kind':<28} {'n':>4} {'detected':>8} {'sens':>6} {'95% CI (Wilson)':>15} "
                 f"{'delay med':>9} {'p90':>6}  (min after criterion met)")
    order = list(LEVEL2) + sorted(k for k in r.per_kind if k not in LEVEL2)
    for k in order:
        sc = r.per_kind.get(k)
        if sc is None:
            continue
        star = "*" if k in LEVEL2 else " "
        lo, hi = wilson_ci(sc.detected, sc.episodes)
        lines.append(
            f"{star}{k:<27} {sc.episodes:>4} {sc.detected:>8} {sc.sensitivity:>6.2f} {f'{lo:.2f}-{hi:.2f}':>15} "
            f"{_q(sc.delays_min, 0.5):>9.1f} {_q(sc.delays_min, 0.9):>6.1f}"
        )
    lines.append("* level-2 target events")
    lines.append(f"patient-days: {r.patient_days:.1f}; clinical alerts opened: {r.alerts}; "
                 f"device findings: {r.device_findings}")
    fa = poisson_rate_ci(r.false_alerts, r.patient_days)
    hm = poisson_rate_ci(r.false_alerts_hm, r.patient_days)
    lines.append(f"false alerts per patient-day: {r.false_per_patient_day:.2f} (all priorities; 95% CI "
                 f"{fa[0]:.2f}-{fa[1]:.2f}), {r.false_hm_per_patient_day:.2f} (high+medium; {hm[0]:.2f}-{hm[1]:.2f}) "
                 "[exact Poisson]")
    if r.false_by_kind:
        lines.append("false alerts by kind: " + ", ".join(
            f"{k} {v}" for k, v in sorted(r.false_by_kind.items(), key=lambda x: -x[1])))
    lines.append(
        f"predicted urgent low >= 15 min ahead: {r.lead_share:.2f} of {r.hypo_l2} level-2 hypos "
        f"(lead median {_q(r.lead_times_min, 0.5):.1f} min, predicted {len(r.lead_times_min)})"
    )
    return "\n".join(lines)


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def report_json(r: Report, *, title: str = "") -> dict[str, Any]:
    """The report as a JSON-ready dict, every rate with its 95 % interval (see the module docs)."""
    kinds: dict[str, Any] = {}
    order = list(LEVEL2) + sorted(k for k in r.per_kind if k not in LEVEL2)
    for k in order:
        sc = r.per_kind.get(k)
        if sc is None:
            continue
        lo, hi = wilson_ci(sc.detected, sc.episodes)
        kinds[k] = {
            "level2": k in LEVEL2, "episodes": sc.episodes, "detected": sc.detected,
            "sensitivity": _num(sc.sensitivity), "sensitivity_ci95": [_num(lo), _num(hi)],
            "delay_min_median": _num(_q(sc.delays_min, 0.5)), "delay_min_p90": _num(_q(sc.delays_min, 0.9)),
        }
    fa_lo, fa_hi = poisson_rate_ci(r.false_alerts, r.patient_days)
    hm_lo, hm_hi = poisson_rate_ci(r.false_alerts_hm, r.patient_days)
    ahead = sum(1 for x in r.lead_times_min if x >= 15.0)
    ld_lo, ld_hi = wilson_ci(ahead, r.hypo_l2)
    return {
        "title": title,
        "confidence": 0.95,
        "intervals": {"proportions": "Wilson score", "rates per patient-day": "exact Poisson (Garwood)"},
        "patient_days": r.patient_days,
        "clinical_alerts": r.alerts,
        "device_findings": r.device_findings,
        "episode_kinds": kinds,
        "false_alerts": {
            "all": {"count": r.false_alerts, "per_patient_day": _num(r.false_per_patient_day),
                    "ci95": [_num(fa_lo), _num(fa_hi)]},
            "high_medium": {"count": r.false_alerts_hm, "per_patient_day": _num(r.false_hm_per_patient_day),
                            "ci95": [_num(hm_lo), _num(hm_hi)]},
            "by_kind": dict(sorted(r.false_by_kind.items())),
        },
        "predicted_urgent_low": {
            "level2_hypos": r.hypo_l2, "predicted": len(r.lead_times_min), "ahead_15min": ahead,
            "share_ahead_15min": _num(r.lead_share), "share_ci95": [_num(ld_lo), _num(ld_hi)],
            "lead_min_median": _num(_q(r.lead_times_min, 0.5)),
        },
    }


def evaluate_cohort(
    n_patients: int, days: float, seed: int, *, config: Any = None
) -> tuple[Report, Any]:
    """Simulate, replay (same detector code as the worker) and score a cohort."""
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
    parser.add_argument("--json", action="store_true",
                        help="print the scores as JSON, with 95 %% intervals (Wilson; exact Poisson for rates)")
    parser.add_argument("--nab", metavar="RESULTS_DIR", help="score `wearwatch nab` results (NAB rule)")
    parser.add_argument("--labels", default=None, help="NAB labels JSON (with --nab)")
    parser.add_argument("--data", default=None, help="NAB data folder (with --nab; default: beside the labels)")


def _print(report: Report, title: str, as_json: bool) -> None:
    if as_json:
        print(orjson.dumps(report_json(report, title=title), option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_report(report, title))


def run(args: argparse.Namespace) -> int:
    if args.nab:
        if not args.labels:
            raise ConfigError("--nab needs --labels (NAB's labels JSON)")
        data = args.data if args.data is not None else str(Path(args.labels).parent / "data")
        return int(nab.evaluate_results(args.nab, args.labels, data))
    if args.simulate:
        if args.simulate < 1 or not args.days > 0:
            raise ConfigError("--simulate needs at least 1 patient and --days above 0")
        report, res = evaluate_cohort(args.simulate, args.days, args.seed)
        title = (f"simulated cohort: {args.simulate} patients x {args.days:g} days, seed {args.seed}; "
                 f"{res.readings:,} readings replayed at {res.rate:,.0f}/s")
        _print(report, title, args.json)
        return 0
    if not (args.alerts and args.episodes):
        raise WearwatchError("give --alerts and --episodes, or --simulate N, or --nab DIR")
    alerts = load_alerts(args.alerts)
    eps = load_episodes(args.episodes)
    pdays = args.patient_days
    if pdays is not None and not pdays > 0:
        raise ConfigError("--patient-days must be above 0")
    if pdays is None:
        pats = {a["patient_id"] for a in alerts} | {e[0] for e in eps}
        ts = [int(a["ts_ms"]) for a in alerts] + [e[2] for e in eps] + [e[3] for e in eps]
        span_days = (max(ts) - min(ts)) / 86_400_000 if ts else 0.0
        pdays = max(span_days, 1.0) * max(len(pats), 1)
        log.warning("--patient-days not given: estimated %.1f from the data span", pdays)
    _print(score(alerts, eps, pdays), "", args.json)
    return 0
