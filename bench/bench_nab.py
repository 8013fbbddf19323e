"""NAB benchmark of the generic detector, end to end; prints one table and exits 0.

Runs ``wearwatch nab`` over the NAB data (the project's ``shared/data/nab`` beside
the checkout or above it, or ``$WEARWATCH_NAB_DIR``) into a temporary directory, scores the results with
:func:`tools.nab.evaluate_results` and adds, for information:

* a leave-one-out estimate: for each file, the threshold that scores best on
  the *other* files (detector re-run at each threshold of a small grid, since
  the refractory period depends on the threshold) is used to score it;
* throughput (points/s of ``score_and_learn``) and the pickled state size per
  series.

Usage: ``python bench/bench_nab.py [NAB_DIR]``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import numpy as np

from detectors.generic import DEFAULT_THRESHOLD, SeriesAnomalyDetector
from tools import nab

__all__ = ["main"]

GRID = (0.22, 0.23, 0.24, 0.25, 0.26, 0.27, 0.28, 0.29, 0.30, 0.32)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    beside = next((d / "shared/data/nab" for d in Path(__file__).resolve().parents[1:4]
                   if (d / "shared/data/nab/labels.json").is_file()), Path(__file__).resolve().parents[2] / "shared")
    root = Path(args[0] if args else os.environ.get("WEARWATCH_NAB_DIR", str(beside)))
    data_dir, labels_path = root / "data", root / "labels.json"
    labels: dict[str, list[list[str]]] = json.loads(labels_path.read_text())
    files = sorted(labels)

    # 1. the real command, end to end, at the fixed threshold
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

    # 2. series, windows, throughput and state size
    series = []
    n_points = 0
    t_det = 0.0
    sizes = []
    for rel in files:
        stamps, values = nab.read_series(data_dir / rel)
        ts = [nab.parse_timestamp(s).timestamp() for s in stamps]
        windows = nab.window_indices([nab.parse_timestamp(s) for s in stamps], labels[rel])
        series.append((ts, values, windows))
        det = SeriesAnomalyDetector()
        t1 = time.perf_counter()
        for t, v in zip(ts, values, strict=True):
            det.score_and_learn(t, v)
        t_det += time.perf_counter() - t1
        n_points += len(values)
        sizes.append(len(pickle.dumps(det, protocol=pickle.HIGHEST_PROTOCOL)))

    # 3. leave-one-out over a threshold grid (re-running the detector per threshold)
    loo: dict[str, float] = {}
    loo_thr: dict[str, list[float]] = {}
    curves = {name: np.zeros((len(files), len(GRID))) for name in nab.PROFILES}
    for j, thr in enumerate(GRID):
        for i, (ts, values, windows) in enumerate(series):
            det = SeriesAnomalyDetector(threshold=thr)
            alarms = [det.score_and_learn(t, v) >= thr for t, v in zip(ts, values, strict=True)]
            for name, prof in nab.PROFILES.items():
                curves[name][i, j] = nab.file_score(alarms, windows, prof).raw
    n_windows = sum(len([w for w in s[2] if w[1] >= nab.probationary_length(len(s[0]))]) for s in series)
    best: dict[str, tuple[float, float]] = {}
    for name, prof in nab.PROFILES.items():
        c = curves[name]
        total = c.sum(axis=0)
        picks = [int(np.argmax(total - c[i])) for i in range(len(files))]
        raw = sum(c[i, j] for i, j in enumerate(picks))
        loo[name] = nab.normalised_score(raw, n_windows, prof)
        loo_thr[name] = sorted({GRID[j] for j in picks})
        k = int(np.argmax(total))
        best[name] = (GRID[k], nab.normalised_score(total[k], n_windows, prof))

    print(f"NAB benchmark: {len(files)} series, {n_windows} windows, {n_points} points; "
          f"detector SeriesAnomalyDetector, fixed threshold {DEFAULT_THRESHOLD}")
    print(f"{'profile':20s} {'fixed thr':>9s} {'leave-1-out':>11s} {'best (in-sample)':>18s}  LOO thresholds")
    for name in nab.PROFILES:
        bt, bs = best[name]
        picked = ",".join(f"{t:.2f}" for t in loo_thr[name])
        print(f"{name:20s} {fixed[name]:9.1f} {loo[name]:11.1f} {bs:11.1f} @ {bt:.2f}  {picked}")
    print(f"{'detections':20s} TP {tp_total}, FP {fp_total} (fixed threshold)")
    print(f"{'throughput':20s} {n_points / t_det:,.0f} points/s (score_and_learn); "
          f"wearwatch nab end to end {wall:.1f} s")
    print(f"{'state per series':20s} {int(np.median(sizes))} bytes pickled (median; max {max(sizes)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
