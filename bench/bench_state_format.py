"""The stored form of a patient state: bytes and CPU per state, the current format against plain pickle.

The worker encodes every changed patient state at each commit and decodes a state when it
takes a patient over (a restart, a rebalance). This measures both for the states of
``tests/fixtures/make_state_golden.py`` (episodes open in every detector, warmed-up
models, alerts acknowledged and snoozed, a custom lifecycle policy) and for a fresh state:
``pickle`` is what workers stored before (version 0, ``pickle.dumps`` of the state),
``v1`` is :func:`streams.state_codec.encode_state` / ``decode_state``. Times are CPU
time (``time.process_time``) per state, the best of ``--repeat`` rounds of ``--number``
calls, so a loaded machine does not inflate them.

Run: ``.venv/bin/python bench/bench_state_format.py`` (about 20 s).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import logging
import pickle
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
    header = (f"{'state':<16} {'pickle B':>9} {'v1 B':>7} {'pickle enc µs':>14} {'v1 enc µs':>10} "
              f"{'pickle dec µs':>14} {'v1 dec µs':>10}")
    rows = [header, "-" * len(header)]
    totals = [0.0] * 6
    for name, st in states.items():
        old = pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL)
        new = encode_state(st)
        figures = (
            float(len(old)), float(len(new)),
            _cpu_us(functools.partial(pickle.dumps, st, protocol=pickle.HIGHEST_PROTOCOL), args.number, args.repeat),
            _cpu_us(functools.partial(encode_state, st), args.number, args.repeat),
            _cpu_us(functools.partial(pickle.loads, old), args.number, args.repeat),
            _cpu_us(functools.partial(decode_state, new), args.number, args.repeat),
        )
        if name != "fresh":
            totals = [a + b for a, b in zip(totals, figures, strict=True)]
        rows.append(f"{name:<16} {figures[0]:>9,.0f} {figures[1]:>7,.0f} {figures[2]:>14.1f} {figures[3]:>10.1f} "
                    f"{figures[4]:>14.1f} {figures[5]:>10.1f}")
    n = len(states) - 1
    mean = [t / n for t in totals]
    rows.append(f"{'mean (warm)':<16} {mean[0]:>9,.0f} {mean[1]:>7,.0f} {mean[2]:>14.1f} {mean[3]:>10.1f} "
                f"{mean[4]:>14.1f} {mean[5]:>10.1f}")
    sys.stdout.write("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
