"""NAB: run the generic detector over NAB-format CSV files and score the results.

Two jobs live here:

* ``wearwatch nab INPUT... --out RESULTS_DIR`` runs
  :class:`detectors.generic.SeriesAnomalyDetector` (one fresh detector per
  file) over every ``timestamp,value`` CSV it is given — NAB's whole ``data``
  folder, one category folder, or single files — and writes
  ``RESULTS_DIR/<category>/<file>.csv`` with the columns
  ``timestamp,value,anomaly_score,alarm``. With a labels file (``--labels``, or a
  ``labels.json`` found beside or above the first input) it then scores exactly
  the series it ran: the labels are filtered to them.
* :func:`evaluate_results` scores such a results directory with the Numenta
  Anomaly Benchmark rule (NAB v1.1) and prints one table per profile: the
  labelled series that have a results file (a subset of NAB scores as such; the
  table says how many of the labelled series it covers).

The alarm threshold
-------------------
``alarm`` is ``anomaly_score >= threshold`` with one number fixed in code,
:data:`detectors.generic.DEFAULT_THRESHOLD`, the same for every file and every
profile. The detector's score is accumulated evidence against the series' own
calibrated tail probabilities, and its alarm budget adapts the alarm rate to
each series, so the threshold is not a per-file cut-off. The detector's settings
were chosen on the 31 public NAB series as the centre of a plateau;
``bench/bench_nab.py`` estimates the same choice on unseen series by
leave-one-category-out cross-validation and prints how much +-20 % on each
setting moves the score. ``--threshold`` overrides it for experiments.

The scoring rule
----------------
Implemented from the NAB v1.1 description (the README that comes with NAB's data
and labels) and cross-checked against NAB's reference sweeper:

* the first ``min(floor(0.15 N), 750)`` rows of a file are probationary: a
  detection there counts for nothing, and a window lying wholly inside the
  probationary period is not counted at all (as in NAB, where such a window
  never reaches the scorer);
* in a window ``[l, r]`` of ``W`` rows only the earliest detection ``i``
  counts, ``A_TP * sigma(-(r - i + 1) / W) / sigma(-1)``; a window without a
  detection scores ``-A_FN``;
* a detection outside every window scores ``A_FP * sigma(|i - r_prev| /
  (W_prev - 1))`` after a window and ``-A_FP`` before the first one, with
  ``sigma(y) = 2 / (1 + exp(5 y)) - 1`` and ``sigma(y) = -1`` for ``y >= 3``
  (NAB's code uses ``>=``; at ``y = 3`` the two readings differ by 6e-7);
* normalised score ``100 (S - S_null) / (S_perfect - S_null)`` with
  ``S_perfect = n_windows A_TP`` and ``S_null = -n_windows A_FN``.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from detectors.generic import DEFAULT_THRESHOLD, SeriesAnomalyDetector
from wearwatch.errors import WearwatchError

__all__ = [
    "PROFILES",
    "FileResult",
    "Profile",
    "add_arguments",
    "evaluate_results",
    "file_score",
    "normalised_score",
    "parse_timestamp",
    "probationary_length",
    "read_series",
    "run",
    "run_file",
    "scaled_sigmoid",
    "score_curve",
    "window_indices",
    "write_results",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Profile:
    """NAB application profile: the weights of true positives, misses and false positives."""

    name: str
    a_tp: float
    a_fn: float
    a_fp: float


#: NAB v1.1 profiles, in the order NAB reports them.
PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", 1.0, 1.0, 0.11),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", 1.0, 1.0, 0.22),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", 1.0, 2.0, 0.11),
}

_PROBATION_FRACTION = 0.15
_PROBATION_MAX = 750


def scaled_sigmoid(y: float) -> float:
    """NAB's scaled sigmoid ``2 / (1 + exp(5 y)) - 1``, and ``-1`` for ``y >= 3``.

    >>> round(scaled_sigmoid(-1.0), 5)
    0.98661
    >>> scaled_sigmoid(0.0)
    0.0
    >>> scaled_sigmoid(3.0)
    -1.0
    """
    if y >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probationary_length(n_rows: int) -> int:
    """Rows at the start of a file that are not scored: ``min(floor(0.15 n), 750)``.

    >>> probationary_length(4032), probationary_length(15902), probationary_length(10)
    (604, 750, 1)
    """
    return min(math.floor(_PROBATION_FRACTION * n_rows), _PROBATION_MAX)


def parse_timestamp(text: str) -> datetime:
    """Parse a NAB timestamp (``2014-04-10 07:15:00`` with optional fraction).

    >>> parse_timestamp("2014-04-10 07:15:00.000000") == parse_timestamp("2014-04-10 07:15:00")
    True
    """
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise WearwatchError(f"bad timestamp {text!r}") from exc


def window_indices(timestamps: Sequence[datetime], windows: Iterable[Sequence[str]]) -> list[tuple[int, int]]:
    """Map label windows ``[start, end]`` (timestamps) to row index pairs ``(l, r)``.

    A window edge normally equals a row's timestamp; otherwise the window is
    shrunk to the rows inside it (first row at or after ``start``, last row at
    or before ``end``). Windows holding no row are dropped.

    >>> ts = [datetime(2020, 1, 1, h) for h in range(6)]
    >>> window_indices(ts, [["2020-01-01 01:00:00", "2020-01-01 03:00:00.000000"]])
    [(1, 3)]
    """
    out: list[tuple[int, int]] = []
    for start, end in windows:
        lo = bisect.bisect_left(timestamps, parse_timestamp(start))
        hi = bisect.bisect_right(timestamps, parse_timestamp(end)) - 1
        if lo <= hi:
            out.append((lo, hi))
    return out


@dataclass(slots=True)
class FileResult:
    """The NAB score of one file under one profile."""

    raw: float = 0.0
    n_windows: int = 0
    tp: int = 0
    fn: int = 0
    fp: int = 0
    fp_cost: float = 0.0
    tp_reward: float = 0.0
    #: per counted window: row index of its earliest detection, or None
    first_detection: list[int | None] = field(default_factory=list)


def _scorable_windows(windows: Sequence[tuple[int, int]], n_rows: int) -> list[tuple[int, int]]:
    prob = probationary_length(n_rows)
    return [(lo, hi) for lo, hi in windows if hi >= prob]


def file_score(
    detections: Sequence[bool] | NDArray[Any], windows: Sequence[tuple[int, int]], profile: Profile
) -> FileResult:
    """Score one file's detections (one bool per row) against its windows.

    ``windows`` are row index pairs ``(l, r)`` (both inclusive), sorted and not
    overlapping, as :func:`window_indices` returns them.

    A perfect detector (one detection at each window's left edge) scores
    ``n_windows * A_TP``; the null detector ``-n_windows * A_FN``; one
    detection before any window costs exactly ``A_FP``:

    >>> std = PROFILES["standard"]
    >>> det = [False] * 1000
    >>> file_score(det, [(300, 399)], std).raw
    -1.0
    >>> det[300] = True
    >>> file_score(det, [(300, 399)], std).raw
    1.0
    >>> det[300], det[200] = False, True
    >>> round(file_score(det, [(300, 399)], std).raw, 12)
    -1.11
    """
    n = len(detections)
    prob = probationary_length(n)
    counted = _scorable_windows(windows, n)
    res = FileResult(n_windows=len(counted))
    max_tp = scaled_sigmoid(-1.0)
    det_rows = [i for i in range(prob, n) if detections[i]]
    # earliest detection in each counted window
    for lo, hi in counted:
        j = bisect.bisect_left(det_rows, max(lo, prob))
        if j < len(det_rows) and det_rows[j] <= hi:
            i = det_rows[j]
            width = hi - lo + 1
            reward = profile.a_tp * scaled_sigmoid(-(hi - i + 1) / width) / max_tp
            res.raw += reward
            res.tp_reward += reward
            res.tp += 1
            res.first_detection.append(i)
        else:
            res.raw -= profile.a_fn
            res.fn += 1
            res.first_detection.append(None)
    # detections outside every window (all windows, counted or not, shape the FP weight)
    ends = [hi for _, hi in windows]
    for i in det_rows:
        k = bisect.bisect_left(ends, i)  # first window ending at or after i
        if k < len(windows) and windows[k][0] <= i:
            continue  # inside window k
        if k == 0:
            weight = -1.0
        else:
            lo_p, hi_p = windows[k - 1]
            width_p = hi_p - lo_p + 1
            weight = scaled_sigmoid(abs(i - hi_p) / (width_p - 1)) if width_p > 1 else -1.0
        cost = profile.a_fp * weight
        res.raw += cost
        res.fp_cost += cost
        res.fp += 1
    return res


def normalised_score(raw: float, n_windows: int, profile: Profile) -> float:
    """NAB's normalised score ``100 (S - S_null) / (S_perfect - S_null)``.

    >>> normalised_score(-3.0, 3, PROFILES["standard"]), normalised_score(3.0, 3, PROFILES["standard"])
    (0.0, 100.0)
    >>> normalised_score(-6.0, 3, PROFILES["reward_low_FN_rate"])
    0.0
    """
    perfect = n_windows * profile.a_tp
    null = -n_windows * profile.a_fn
    if perfect == null:
        return 0.0
    return 100.0 * (raw - null) / (perfect - null)


def score_curve(
    scores: NDArray[Any], windows: Sequence[tuple[int, int]], profile: Profile, thresholds: NDArray[Any]
) -> NDArray[Any]:
    """Raw NAB score of one file for each threshold (detection = ``score >= threshold``).

    Equivalent to calling :func:`file_score` once per threshold, but vectorised;
    used for the leave-one-out estimate and threshold sweeps.

    >>> s = np.zeros(1000); s[300] = 0.9; s[200] = 0.5
    >>> [round(float(v), 2) for v in score_curve(s, [(300, 399)], PROFILES["standard"], np.array([0.4, 0.6, 1.0]))]
    [0.89, 1.0, -1.0]
    """
    scores = np.asarray(scores, dtype=float)
    thresholds = np.asarray(thresholds, dtype=float)
    n = len(scores)
    prob = probationary_length(n)
    total = np.zeros(len(thresholds))
    max_tp = scaled_sigmoid(-1.0)
    inside = np.zeros(n, dtype=bool)
    for lo, hi in windows:
        inside[lo : hi + 1] = True
    for lo, hi in _scorable_windows(windows, n):
        start = max(lo, prob)
        seg = scores[start : hi + 1]
        rows = np.arange(start, hi + 1)
        width = hi - lo + 1
        y = -(hi - rows + 1) / width
        reward = profile.a_tp * (2.0 / (1.0 + np.exp(5.0 * y)) - 1.0) / max_tp
        # best reward among rows with score >= t is the earliest such row: running max of score from the left
        # gives, for each threshold, the first row whose score reaches it
        run_max = np.maximum.accumulate(seg)
        first = np.searchsorted(run_max, thresholds, side="left")  # run_max is non-decreasing
        hit = first < len(seg)
        total += np.where(hit, reward[np.minimum(first, len(seg) - 1)], -profile.a_fn)
    # false positives
    fp_rows = np.nonzero(~inside)[0]
    fp_rows = fp_rows[fp_rows >= prob]
    if len(fp_rows):
        ends = np.array([hi for _, hi in windows], dtype=int)
        starts = np.array([lo for lo, _ in windows], dtype=int)
        k = np.searchsorted(ends, fp_rows, side="left")
        weight = np.full(len(fp_rows), -1.0)
        has_prev = k > 0
        if has_prev.any():
            kp = k[has_prev] - 1
            width_p = ends[kp] - starts[kp] + 1
            y = np.abs(fp_rows[has_prev] - ends[kp]) / np.maximum(width_p - 1, 1e-300)
            w = np.where(y >= 3.0, -1.0, 2.0 / (1.0 + np.exp(np.minimum(5.0 * y, 700.0))) - 1.0)
            weight[has_prev] = np.where(width_p > 1, w, -1.0)
        cost = profile.a_fp * weight
        order = np.argsort(-scores[fp_rows], kind="stable")
        sorted_scores = scores[fp_rows][order]
        csum = np.concatenate([[0.0], np.cumsum(cost[order])])
        # number of FP rows with score >= t
        count = np.searchsorted(-sorted_scores, -thresholds, side="right")
        total += csum[count]
    return total


# ---------------------------------------------------------------------------
# reading and writing files


def read_series(path: Path) -> tuple[list[str], list[float]]:
    """Read a NAB CSV (``timestamp,value`` header); blank or non-numeric values become NaN."""
    stamps: list[str] = []
    values: list[float] = []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["timestamp", "value"]:
            raise WearwatchError(f"{path}: expected a 'timestamp,value' header, got {header}")
        for row in reader:
            if not row:
                continue
            stamps.append(row[0])
            try:
                values.append(float(row[1]) if len(row) > 1 and row[1].strip() else math.nan)
            except ValueError:
                values.append(math.nan)
    return stamps, values


def run_file(
    stamps: Sequence[str], values: Sequence[float], threshold: float | None = None, **settings: Any
) -> tuple[list[float], list[int]]:
    """Run a fresh detector over one series; return its scores and 0/1 alarms (``score >= threshold``)."""
    thr = DEFAULT_THRESHOLD if threshold is None else threshold
    det = SeriesAnomalyDetector(threshold=thr, **settings)
    scores: list[float] = []
    for stamp, value in zip(stamps, values, strict=True):
        scores.append(det.score_and_learn(parse_timestamp(stamp).timestamp(), value))
    return scores, [1 if s >= thr else 0 for s in scores]


def write_results(path: Path, stamps: Sequence[str], values: Sequence[float], scores: Sequence[float],
                  alarms: Sequence[int]) -> None:
    """Write one NAB results file: ``timestamp,value,anomaly_score,alarm``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value", "anomaly_score", "alarm"])
        for stamp, value, score, alarm in zip(stamps, values, scores, alarms, strict=True):
            w.writerow([stamp, "" if math.isnan(value) else repr(value), f"{score:.6f}", alarm])


def _read_labels(path: Path) -> dict[str, list[list[str]]]:
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WearwatchError(f"cannot read labels {path}: {exc}") from exc
    if not isinstance(labels, dict):
        raise WearwatchError(f"labels {path}: expected a JSON object of series -> windows")
    return labels


def _label_key(path: Path, labels: Mapping[str, Any], fallback: str) -> str:
    """The labels' name of a data file: the key its path ends with (``category/file.csv``), else ``fallback``."""
    posix = path.resolve().as_posix()
    for key in labels:
        if posix == key or posix.endswith("/" + key.lstrip("/")):
            return key
    return fallback


def collect_inputs(inputs: Sequence[Path], labels: Mapping[str, Any]) -> dict[str, Path]:
    """Series name (as in the labels, ``category/file.csv``) → data file, for folders and files given.

    A folder contributes every CSV under it; a name not in the labels is the path
    relative to the folder given (for a file: its folder's name and its own).
    """
    out: dict[str, Path] = {}
    for given in inputs:
        if given.is_dir():
            files = [(p, p.relative_to(given).as_posix()) for p in sorted(given.rglob("*.csv")) if p.is_file()]
        elif given.is_file():
            files = [(given, f"{given.resolve().parent.name}/{given.name}")]
        else:
            raise WearwatchError(f"{given}: no such file or folder")
        for path, fallback in files:
            key = _label_key(path, labels, fallback)
            if key in out and out[key].resolve() != path.resolve():
                raise WearwatchError(f"two inputs are both series {key}: {out[key]} and {path}")
            out[key] = path
    if not out:
        raise WearwatchError(f"no CSV files in {', '.join(str(p) for p in inputs)}")
    return out


def _find_labels(first: Path) -> Path | None:
    start = first.resolve() if first.is_dir() else first.resolve().parent
    for folder in [start, *start.parents][:4]:
        if (folder / "labels.json").is_file():
            return folder / "labels.json"
    return None


# ---------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``wearwatch nab``."""
    parser.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                        help="NAB data: the data folder, category folders or single CSV files (any subset)")
    parser.add_argument("--out", type=Path, required=True, metavar="RESULTS_DIR", help="where to write results")
    parser.add_argument("--threshold", type=float, default=None,
                        help="alarm threshold on the score (default: the detector's fixed DEFAULT_THRESHOLD)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="NAB labels JSON to score the results (default: a labels.json in the first input's "
                             "folder or up to three folders above it)")


def run(args: argparse.Namespace) -> int:
    """``wearwatch nab``: detect over every CSV given, write results, score them (labels filtered to them)."""
    out: Path = args.out
    labels_path: Path | None = args.labels if args.labels is not None else _find_labels(args.inputs[0])
    labels = _read_labels(labels_path) if labels_path is not None else {}
    series = collect_inputs(args.inputs, labels)
    thr = DEFAULT_THRESHOLD if args.threshold is None else float(args.threshold)
    shown = ", ".join(str(p) for p in args.inputs[:3]) + (" ..." if len(args.inputs) > 3 else "")
    print(f"wearwatch nab: {len(series)} files from {shown} -> {out} (threshold {thr:g})", flush=True)
    t0 = time.perf_counter()
    total_rows = total_alarms = 0
    for i, (key, path) in enumerate(sorted(series.items()), 1):
        stamps, values = read_series(path)
        t1 = time.perf_counter()
        scores, alarms = run_file(stamps, values, thr)
        dt = time.perf_counter() - t1
        write_results(out / key, stamps, values, scores, alarms)
        total_rows += len(stamps)
        total_alarms += sum(alarms)
        rate = len(stamps) / dt if dt > 0 else float("inf")
        print(f"[{i:>3}/{len(series)}] {key}: {len(stamps)} rows, {sum(alarms)} alarms, {rate:,.0f} rows/s",
              flush=True)
    elapsed = time.perf_counter() - t0
    print(f"done: {len(series)} files, {total_rows} rows, {total_alarms} alarms in {elapsed:.1f} s "
          f"({total_rows / max(elapsed, 1e-9):,.0f} rows/s incl. I/O); results in {out}")
    if labels_path is None:
        print("no labels file: results not scored (give --labels)")
        return 0
    unlabelled = sorted(k for k in series if k not in labels)
    if unlabelled:
        print(f"not in {labels_path.name}, not scored: {', '.join(unlabelled[:5])}"
              + (" ..." if len(unlabelled) > 5 else ""))
    scored = {k: p for k, p in series.items() if k in labels}
    if not scored:
        raise WearwatchError(f"none of the series given is in {labels_path}")
    return evaluate_results(out, labels_path, scored)


# ---------------------------------------------------------------------------
# scoring a results directory


def _read_results(path: Path) -> tuple[list[str], list[bool]]:
    stamps: list[str] = []
    alarms: list[bool] = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "alarm" not in reader.fieldnames or "timestamp" not in reader.fieldnames:
            raise WearwatchError(f"{path}: expected columns timestamp,value,anomaly_score,alarm")
        for row in reader:
            stamps.append(row["timestamp"])
            alarms.append(row["alarm"].strip() not in ("", "0", "0.0", "False", "false"))
    return stamps, alarms


def evaluate_results(results_dir: Path | str, labels_path: Path | str,
                     data: Path | str | Mapping[str, Path]) -> int:
    """Score a ``wearwatch nab`` results directory with the NAB rule and print a table; returns 0.

    Detections are the rows with ``alarm == 1``. The labelled series scored are those
    ``data`` names (a mapping series → data file), or, for a data folder, those with
    a results file ``RESULTS_DIR/<category>/<file>.csv``: any subset of NAB scores,
    and the table says how many of the labelled series it covers. Each results file
    must have the same rows as its data file (when that file is there).
    """
    results_dir, labels_path = Path(results_dir), Path(labels_path)
    all_labels = _read_labels(labels_path)
    if isinstance(data, Mapping):
        data_files = {k: Path(v) for k, v in data.items()}
        missing = sorted(k for k in data_files if k not in all_labels)
        if missing:
            raise WearwatchError(f"series not in {labels_path}: {', '.join(missing[:5])}")
        labels = {k: all_labels[k] for k in data_files}
    else:
        data_files = {k: Path(data) / k for k in all_labels}
        labels = {k: v for k, v in all_labels.items() if (results_dir / k).is_file()}
        if not labels:
            raise WearwatchError(f"no results file in {results_dir} for any series of {labels_path}")
    totals = {name: FileResult() for name in PROFILES}
    per_file: list[tuple[str, FileResult]] = []
    for rel in sorted(labels):
        res_path = results_dir / rel
        if not res_path.is_file():
            raise WearwatchError(f"missing results file {res_path}")
        stamps, alarms = _read_results(res_path)
        data_path = data_files[rel]
        if data_path.is_file():
            data_stamps, _ = read_series(data_path)
            if len(data_stamps) != len(stamps):
                raise WearwatchError(f"{res_path}: {len(stamps)} rows but {data_path} has {len(data_stamps)}")
        ts = [parse_timestamp(s) for s in stamps]
        windows = window_indices(ts, labels[rel])
        for name, profile in PROFILES.items():
            r = file_score(alarms, windows, profile)
            t = totals[name]
            t.raw += r.raw
            t.n_windows += r.n_windows
            t.tp += r.tp
            t.fn += r.fn
            t.fp += r.fp
            t.fp_cost += r.fp_cost
            t.tp_reward += r.tp_reward
            if name == "standard":
                per_file.append((rel, r))
    print(f"NAB scores of {results_dir} ({len(labels)} of the {len(all_labels)} labelled series, alarm column)")
    print(f"{'file':60s} {'windows':>7s} {'TP':>3s} {'FN':>3s} {'FP':>4s} {'raw(std)':>9s}")
    for rel, r in per_file:
        print(f"{rel:60s} {r.n_windows:7d} {r.tp:3d} {r.fn:3d} {r.fp:4d} {r.raw:9.3f}")
    print()
    print(f"{'profile':20s} {'score':>7s} {'raw':>8s} {'windows':>7s} {'TP':>4s} {'FN':>4s} {'FP':>5s}")
    for name, t in totals.items():
        score = normalised_score(t.raw, t.n_windows, PROFILES[name])
        print(f"{name:20s} {score:7.1f} {t.raw:8.2f} {t.n_windows:7d} {t.tp:4d} {t.fn:4d} {t.fp:5d}")
    return 0
