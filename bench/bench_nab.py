"""NAB benchmark of the generic detector: in-sample, cross-validated and sensitivity; prints tables, exits 0.

Data: the NAB half beside the checkout (``shared/data/nab`` in the repository's
parent or grandparent folder) or ``$WEARWATCH_NAB_DIR`` or the first argument, else the same 31 series kept with
the tests (``tests/fixtures/nab``, unpacked under ``out/nab-data``):
``data/<category>/<file>.csv`` and ``labels.json``.

What it prints
--------------
1. **End to end**: ``wearwatch nab`` (the real command) at the detector's
   built-in settings, scored by :func:`tools.nab.evaluate_results`. Every
   setting of the detector was chosen on these 31 series, so this is an
   *in-sample* figure.
2. **Leave-one-category-out cross-validation** (the honest estimate of what
   the same procedure gives on series nobody tuned on): NAB's 31 series fall
   in 7 categories (artificial with/without anomalies, AWS CloudWatch, ad
   exchange, known causes, traffic, tweets). For each category, *every*
   parameter of the grid below (threshold, refractory period, detector
   settings) is chosen by the best summed raw score on the other six
   categories, and the held-out category is scored with that choice; the raw
   scores of the seven held-out categories are summed and normalised once.
   Done per NAB profile (each profile may pick its own parameters, as NAB
   allows one threshold per detector and profile). Nothing is chosen per file.
   Printed next to the in-sample score of the grid's best point and of the
   built-in settings.
3. **Sensitivity**: the built-in settings with each parameter moved by -20 %
   and +20 % (one at a time), scored on all 31 series: a wide, flat optimum
   moves by less than 2 points.
4. Throughput (points/s of ``score_and_learn``) and the pickled state per series.

How the grid is evaluated cheaply: the detector's learning never depends on
the alarm settings (threshold, refractory period, alarm budget: they only
decide which scores become alarms), so each setting of the *other* parameters
is run once with ``refractory=0, budget_step=0``, its scores are cached under
``out/nab-cache/`` (keyed by the settings and a hash of
``detectors/generic.py``), and every alarm setting is applied afterwards
exactly as ``score_and_learn`` would (:func:`alarms`; the bench checks it
against the end-to-end run, ``detectors/test_generic.py`` against the detector).

Usage: ``python bench/bench_nab.py [NAB_DIR] [--jobs 2] [--grid default|threshold]``
(NAB runs are CPU-heavy: run big grids under ``nice -n 10``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import itertools
import json
import math
import os
import pickle
import sys
import tarfile
import tempfile
import time
from argparse import Namespace
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detectors import generic  # noqa: E402
from detectors.generic import DEFAULT_THRESHOLD, SeriesAnomalyDetector  # noqa: E402
from tools import nab  # noqa: E402

__all__ = ["Series", "find_nab_dir", "load_series", "main"]

CACHE = ROOT / "out" / "nab-cache"
PROFILES = list(nab.PROFILES)
SHORT = {"standard": "standard", "reward_low_FP_rate": "low FP", "reward_low_FN_rate": "low FN"}

#: alarm settings tried for every detector setting (full product; applied after the run, see ``alarms``)
POST_GRID: dict[str, Sequence[Any]] = {
    "threshold": tuple(round(0.15 * 6 ** (i / 30), 4) for i in range(31)),  # 0.15 .. 0.9, 6 % apart
    "refractory": (50, 100, 200),
    "budget_step": (0.0, 0.1, 0.2, 0.3),
}
#: detector settings (each needs a run): name -> values (full product); empty = built-in settings only
GRIDS: dict[str, dict[str, Sequence[Any]]] = {
    "threshold": {},
    "default": {"evidence_p": (0.0045, 0.0065, 0.009), "evidence_memory": (5.0, 10.0, 20.0)},
}


@dataclass
class Series:
    """One NAB file: timestamps (s), values, label windows (row index pairs)."""

    rel: str
    category: str
    ts: list[float]
    values: list[float]
    windows: list[tuple[int, int]]

    @property
    def n_scored_windows(self) -> int:
        prob = nab.probationary_length(len(self.values))
        return sum(1 for _lo, hi in self.windows if hi >= prob)


def find_nab_dir(arg: str | None = None) -> Path:
    """The NAB folder: the argument, ``$WEARWATCH_NAB_DIR``, ``shared/data/nab`` beside the checkout, or the copy
    kept with the tests."""
    if arg:
        return Path(arg)
    env = os.environ.get("WEARWATCH_NAB_DIR")
    if env:
        return Path(env)
    for up in (ROOT.parent, ROOT.parent.parent):  # a checkout, or a worktree one level deeper
        cand = up / "shared" / "data" / "nab"
        if (cand / "labels.json").is_file():
            return cand
    # the same 31 series kept with the tests (tests/fixtures/nab, MIT), unpacked once under out/
    archive = ROOT / "tests" / "fixtures" / "nab" / "nab-shared-half.tar.gz"
    unpacked = ROOT / "out" / "nab-data"
    if not (unpacked / "labels.json").is_file():
        if not archive.is_file():
            raise SystemExit("NAB data not found: pass NAB_DIR or set WEARWATCH_NAB_DIR")
        unpacked.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")
    return unpacked


def load_series(root: Path) -> list[Series]:
    labels: dict[str, list[list[str]]] = json.loads((root / "labels.json").read_text())
    out = []
    for rel in sorted(labels):
        stamps, values = nab.read_series(root / "data" / rel)
        dts = [nab.parse_timestamp(s) for s in stamps]
        out.append(Series(rel, rel.split("/")[0], [d.timestamp() for d in dts], values,
                          nab.window_indices(dts, labels[rel])))
    return out


# ---------------------------------------------------------------------------------------------
# detector runs (cached) and alarms


def _code_hash() -> str:
    return hashlib.sha256(Path(generic.__file__).read_bytes()).hexdigest()[:12]


def _key(settings: dict[str, Any]) -> str:
    text = json.dumps(sorted(settings.items()), default=str)
    return hashlib.sha256(f"{_code_hash()}|{text}".encode()).hexdigest()[:20]


def _run_one(args: tuple[dict[str, Any], list[float], list[float]]) -> np.ndarray:
    settings, ts, values = args
    det = SeriesAnomalyDetector(refractory=0, budget_step=0.0, **settings)
    return np.array([det.score_and_learn(t, v) for t, v in zip(ts, values, strict=True)])


def detector_scores(settings: dict[str, Any], series: list[Series], jobs: int = 1) -> list[np.ndarray]:
    """Scores (``refractory=0``) of a fresh detector per series, cached under out/nab-cache/."""
    path = CACHE / f"{_key(settings)}.npz"
    if path.is_file():
        with np.load(path) as z:
            return [z[f"s{i}"] for i in range(len(series))]
    work = [(settings, s.ts, s.values) for s in series]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as ex:
            out = list(ex.map(_run_one, work))
    else:
        out = [_run_one(w) for w in work]
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **{f"s{i}": a for i, a in enumerate(out)})  # type: ignore[arg-type]
    tmp.replace(path)
    return out


def alarms(scores: np.ndarray, valid: np.ndarray, threshold: float, refractory: int,
           budget_step: float = 0.0, budget_memory: float = 10_000.0) -> np.ndarray:
    """Alarms exactly as ``score_and_learn`` raises them, from the scores of a detector run without
    refractory period and alarm budget (``refractory=0, budget_step=0``).

    After an alarm the next ``refractory`` *valid* samples cannot alarm, and an alarm needs
    ``score >= threshold * (1 + budget_step * A)``, ``A`` = earlier alarms forgotten by
    ``1 - 1 / budget_memory`` per valid sample.
    """
    out = np.zeros(len(scores), dtype=bool)
    cand = np.flatnonzero(scores >= threshold)
    if not len(cand):
        return out
    if refractory <= 0 and budget_step <= 0.0:
        out[cand] = True
        return out
    vidx = np.cumsum(valid) - 1  # index of each row among the valid samples
    keep = 1.0 - 1.0 / budget_memory
    free_from = -1
    level = 0.0  # A, as of valid sample ``at``
    at = 0
    for i in cand.tolist():
        v = int(vidx[i])
        if v <= free_from:
            continue
        a = level * keep ** (v + 1 - at)  # decayed once per valid sample up to and including this one
        if scores[i] < threshold * (1.0 + budget_step * a):
            continue
        out[i] = True
        free_from = v + refractory
        level, at = a + 1.0, v + 1
    return out


#: settings applied after the detector run (they decide which scores become alarms, not what is learned)
POST = ("threshold", "refractory", "budget_step", "budget_memory")


@dataclass(frozen=True)
class Point:
    """One point of the grid: detector settings (learning) and alarm settings (``POST``)."""

    settings: tuple[tuple[str, Any], ...]
    post: tuple[tuple[str, Any], ...]

    def label(self) -> str:
        def fmt(k: str, v: Any) -> str:
            return f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"

        return ", ".join(fmt(k, v) for k, v in (*self.post, *self.settings))


def raw_table(points_settings: list[dict[str, Any]], series: list[Series], posts: list[dict[str, Any]],
              jobs: int = 1, progress: bool = True) -> tuple[list[Point], dict[str, np.ndarray]]:
    """Raw NAB score per (grid point, file) for every profile: ``{profile: array[n_points, n_files]}``.

    Grid points are every detector setting in ``points_settings`` combined with every alarm setting in ``posts``.
    """
    points: list[Point] = []
    rows: dict[str, list[np.ndarray]] = {p: [] for p in PROFILES}
    valid = [np.isfinite(np.asarray(s.values, dtype=float)) for s in series]
    t0 = time.perf_counter()
    for k, settings in enumerate(points_settings):
        scores = detector_scores(settings, series, jobs)
        for post in posts:
            points.append(Point(tuple(sorted(settings.items())), tuple(post.items())))
            per = {p: np.zeros(len(series)) for p in PROFILES}
            for i, (s, sc) in enumerate(zip(series, scores, strict=True)):
                det = alarms(sc, valid[i], **post)
                for p in PROFILES:
                    per[p][i] = nab.file_score(det, s.windows, nab.PROFILES[p]).raw
            for p in PROFILES:
                rows[p].append(per[p])
        if progress and len(points_settings) > 1:
            print(f"  grid {k + 1}/{len(points_settings)} settings done ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    return points, {p: np.array(r) for p, r in rows.items()}


def loco(points: list[Point], raw: dict[str, np.ndarray], series: list[Series]) -> dict[str, Any]:
    """Leave-one-category-out: per profile, normalised CV score, in-sample best, and each fold's pick."""
    cats = sorted({s.category for s in series})
    n_windows = sum(s.n_scored_windows for s in series)
    result: dict[str, Any] = {}
    for p in PROFILES:
        r = raw[p]
        total = r.sum(axis=1)
        cv_raw = 0.0
        picks = {}
        for c in cats:
            held = np.array([s.category == c for s in series])
            train = r[:, ~held].sum(axis=1)
            j = int(np.argmax(train))
            cv_raw += float(r[j, held].sum())
            picks[c] = (points[j], nab.normalised_score(float(r[j, held].sum()),
                                                        sum(s.n_scored_windows for s in series if s.category == c),
                                                        nab.PROFILES[p]))
        jb = int(np.argmax(total))
        result[p] = {
            "cv": nab.normalised_score(cv_raw, n_windows, nab.PROFILES[p]),
            "best": nab.normalised_score(float(total[jb]), n_windows, nab.PROFILES[p]),
            "best_point": points[jb],
            "picks": picks,
        }
    return result


def _split(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return ({k: v for k, v in params.items() if k not in POST}, {k: v for k, v in params.items() if k in POST})


def score_all(params: dict[str, Any], series: list[Series], jobs: int = 1) -> dict[str, float]:
    """Normalised NAB score per profile of one full parameter set (detector and alarm settings), all files."""
    settings, post = _split(params)
    _pts, raw = raw_table([settings], series, [post], jobs, progress=False)
    n_windows = sum(s.n_scored_windows for s in series)
    return {p: nab.normalised_score(float(raw[p][0].sum()), n_windows, nab.PROFILES[p]) for p in PROFILES}


def defaults() -> dict[str, Any]:
    """Every constructor setting of the detector at its built-in value."""
    det = SeriesAnomalyDetector()
    return {k: v for k, v in vars(det).items() if not k.startswith("_")}


def sensitivity(series: list[Series], jobs: int) -> list[tuple[str, Any, dict[str, float], dict[str, float]]]:
    """Built-in settings with each numeric parameter at x0.8 and x1.2 (one at a time), scored on all files.

    ``evidence_p`` is a probability: it is moved by +-20 % as such, and once more on the
    logarithmic scale (``-log10 evidence_p`` x0.8 / x1.2, a factor of 2.8 in p) as
    ``evidence_p (log)``.
    """
    base = defaults()
    out = []
    names = [k for k, v in base.items() if isinstance(v, int | float) and not isinstance(v, bool) and k != "n_bins"]
    names = sorted(names, key=lambda k: (k not in POST, k))
    for name in [*names, "evidence_p (log)"]:
        res = []
        for f in (0.8, 1.2):
            params = dict(base)
            if name == "evidence_p (log)":
                params["evidence_p"] = 10 ** (math.log10(base["evidence_p"]) * f)
            else:
                v = base[name]
                params[name] = round(v * f) if isinstance(v, int) else v * f
            if name == "smoothing":
                params[name] = min(1.0, params[name])
            res.append(score_all(params, series, jobs))
        value = base["evidence_p"] if name == "evidence_p (log)" else base[name]
        out.append((name, value, res[0], res[1]))
    return out


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("nab_dir", nargs="?", default=None, help="NAB folder (data/ and labels.json)")
    ap.add_argument("--jobs", type=int, default=1, help="processes for detector runs (at most 2 here)")
    ap.add_argument("--grid", choices=sorted(GRIDS), default="default",
                    help="the parameters cross-validation chooses (threshold: the threshold only)")
    ap.add_argument("--no-sensitivity", action="store_true")
    args = ap.parse_args(argv)
    root = find_nab_dir(args.nab_dir)
    data_dir, labels_path = root / "data", root / "labels.json"
    series = load_series(root)
    n_points = sum(len(s.values) for s in series)
    n_windows = sum(s.n_scored_windows for s in series)
    cats = sorted({s.category for s in series})

    # 1. the real command, end to end, at the built-in settings
    with tempfile.TemporaryDirectory() as tmp:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            t0 = time.perf_counter()
            rc = nab.run(Namespace(inputs=[data_dir], out=Path(tmp), threshold=None, labels=labels_path))
            wall = time.perf_counter() - t0
        if rc != 0:
            print(out.getvalue())
            return 1
        table = [ln for ln in out.getvalue().splitlines() if ln.split()[:1] and ln.split()[0] in nab.PROFILES]
        fixed = {ln.split()[0]: float(ln.split()[1]) for ln in table}
        fp_total = int(table[0].split()[-1])
        tp_total = int(table[0].split()[-3])
    # the same through the cached-scores path: must agree exactly (alarms() == score_and_learn's rules)
    check = score_all(defaults(), series, args.jobs)
    for p in PROFILES:
        if abs(check[p] - fixed[p]) > 0.051:
            raise SystemExit(f"cached-score path disagrees with wearwatch nab ({p}: {check[p]:.2f} vs {fixed[p]})")

    # 2. throughput and state size
    t_det = 0.0
    sizes = []
    for s in series:
        det = SeriesAnomalyDetector()
        t1 = time.perf_counter()
        for t, v in zip(s.ts, s.values, strict=True):
            det.score_and_learn(t, v)
        t_det += time.perf_counter() - t1
        sizes.append(len(pickle.dumps(det, protocol=pickle.HIGHEST_PROTOCOL)))

    # 3. leave-one-category-out over the grid
    base = defaults()
    base_settings, base_post = _split(base)
    grid = GRIDS[args.grid]
    names = sorted(grid)
    settings_list = [{**base_settings, **dict(zip(names, combo, strict=True))}
                     for combo in itertools.product(*(grid[n] for n in names))] or [base_settings]
    post_grid = {"threshold": POST_GRID["threshold"]} if args.grid == "threshold" else POST_GRID
    pnames = list(post_grid)
    posts = [{**base_post, **dict(zip(pnames, combo, strict=True))}
             for combo in itertools.product(*(post_grid[n] for n in pnames))]
    points, raw = raw_table(settings_list, series, posts, args.jobs)
    cv = loco(points, raw, series)

    print(f"NAB benchmark: {len(series)} series in {len(cats)} categories, {n_windows} windows, {n_points} points; "
          f"SeriesAnomalyDetector, built-in threshold {DEFAULT_THRESHOLD}")
    grid_desc = "; ".join(f"{k} {list(v)}" for k, v in grid.items())
    print(f"grid '{args.grid}': {len(settings_list)} detector settings ({grid_desc or 'built-in'}) x "
          f"{len(posts)} alarm settings (threshold {post_grid['threshold'][0]:g}-{post_grid['threshold'][-1]:g}"
          + "".join(f"; {k} {list(v)}" for k, v in post_grid.items() if k != "threshold")
          + f") = {len(points)} points")
    print()
    print(f"{'profile':10s} {'built-in (in-sample)':>21s} {'grid best (in-sample)':>22s} "
          f"{'leave-1-category-out':>21s}")
    for p in PROFILES:
        c = cv[p]
        print(f"{SHORT[p]:10s} {fixed[p]:21.1f} {c['best']:22.1f} {c['cv']:21.1f}")
    print(f"{'detections':10s} TP {tp_total}, FP {fp_total} (built-in settings)")
    print()
    print("cross-validation folds (standard profile): held-out category, its score, the point chosen on the other six")
    for c in cats:
        pt, sc = cv["standard"]["picks"][c]
        print(f"  {c:22s} {sc:7.1f}  {pt.label()}")
    print(f"in-sample best (standard): {cv['standard']['best_point'].label()}")

    if not args.no_sensitivity:
        print()
        print("sensitivity of the built-in settings (all 31 series; score at x0.8 / x1.2 of one parameter)")
        print(f"{'parameter':18s} {'value':>9s} " + " ".join(f"{SHORT[p]:>15s}" for p in PROFILES)
              + f" {'max |change|':>12s}")
        worst = 0.0
        for name, value, lo, hi in sensitivity(series, args.jobs):
            cells = " ".join(f"{lo[p]:7.1f}/{hi[p]:<7.1f}" for p in PROFILES)
            ch = max(abs(lo["standard"] - fixed["standard"]), abs(hi["standard"] - fixed["standard"]))
            worst = max(worst, ch)
            print(f"{name:18s} {value:9.4g} {cells} {ch:12.1f}")
        print(f"largest change of the standard score for +-20 % on one parameter: {worst:.1f} points "
              f"(built-in {fixed['standard']:.1f})")

    print()
    print(f"throughput: {n_points / t_det:,.0f} points/s (score_and_learn, one core); "
          f"wearwatch nab end to end {wall:.1f} s")
    print(f"state per series: {int(np.median(sizes))} bytes pickled (median; max {max(sizes)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
