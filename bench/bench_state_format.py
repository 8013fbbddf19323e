"""The stored form of a patient state: bytes and CPU per state, in each version the worker writes.

The worker encodes every changed patient state at each commit and decodes a state when it
takes a patient over (a restart, a rebalance). This measures both for the states of
``tests/fixtures/make_state_golden.py`` (episodes open in every detector, warmed-up
models, alerts acknowledged and snoozed, a custom lifecycle policy) and for a fresh state:
``v0`` is what workers stored before (``pickle.dumps`` of the state), ``v1`` the tagged
tree of :func:`streams.state_codec.encode_state`, ``v2`` (current) that tree compressed.
Times are CPU
time (``time.process_time``) per state, the best of ``--repeat`` rounds of ``--number``
calls, so a loaded machine does not inflate them.

Run: ``.venv/bin/python bench/bench_state_format.py`` (about 20 s).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerts.lifecycle import AlertBook
from detectors import PatientMonitor
from streams.state import PatientState
from streams.state_codec import decode_state, encode_state

log = logging.getLogger("bench.state_format")
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def _maker() -> Any:
    spec = importlib.util.spec_from_file_location("make_state_golden", FIXTURES / "make_state_golden.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cpu_us(fn: Callable[[], Any], number: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        for _ in range(number):
            fn()
        best = min(best, (time.process_time() - t) / number)
    return best * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=2000, help="calls per round")
    ap.add_argument("--repeat", type=int, default=5, help="rounds (the best is kept)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    maker = _maker()
    states = {name: maker.make_case(name)[0] for name in maker.CASES.cases()}
    states["fresh"] = PatientState(PatientMonitor(), AlertBook("fresh"))
    cols = [f"v{v} B" for v in VERSIONS] + [f"v{v} enc µs" for v in VERSIONS] + [f"v{v} dec µs" for v in VERSIONS]
    header = f"{'state':<16} " + " ".join(f"{c:>10}" for c in cols)
    rows = [header, "-" * len(header)]
    totals = [0.0] * len(cols)
    for name, st in states.items():
        blobs = [encode_state(st, v) for v in VERSIONS]
        figures = [float(len(b)) for b in blobs]
        figures += [_cpu_us(functools.partial(encode_state, st, v), args.number, args.repeat) for v in VERSIONS]
        figures += [_cpu_us(functools.partial(decode_state, b), args.number, args.repeat) for b in blobs]
        if name != "fresh":
            totals = [a + b for a, b in zip(totals, figures, strict=True)]
        rows.append(_row(name, figures))
    n = len(states) - 1
    rows.append(_row("mean (warm)", [t / n for t in totals]))
    sys.stdout.write("\n".join(rows) + "\n")
    return 0


#: 0: the plain pickle earlier workers stored; 1: the tagged tree; 2: the tagged tree compressed (current)
VERSIONS = (0, 1, 2)


def _row(name: str, figures: list[float]) -> str:
    k = len(VERSIONS)
    return f"{name:<16} " + " ".join([f"{x:>10,.0f}" for x in figures[:k]] + [f"{x:>10.1f}" for x in figures[k:]])


if __name__ == "__main__":
    sys.exit(main())
