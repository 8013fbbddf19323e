"""The memory mode of the offline worker loop (bench/bench_worker_loop.py ``--memory``) on a small fleet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "bench" / "bench_worker_loop.py"


def test_the_parts_account_for_what_the_loop_keeps() -> None:
    # one measurement as --memory takes it: in a process of its own (nothing else allocated or shared)
    out = subprocess.run([sys.executable, str(_PATH), "--patients", "300", "--readings", "100000",
                          "--child", "tracemalloc"], check=True, capture_output=True, text=True, timeout=300).stdout
    res = json.loads(out)
    parts = dict(res["parts"])
    # every per-patient structure of the processor is walked, the grouped queues included
    assert {"_patients", "_by_age", "_by_offset", "_heap", "dirty", "table's stored copy (memory store)"} <= set(parts)
    assert parts["live states (cache values)"] > 2_000 and parts["_patients"] > 0
    assert parts["table's stored copy (memory store)"] > 250  # two commits wrote every state (~0.4 KB each)
    # what the walk finds is what tracemalloc saw allocated (at 300 patients ~9 % is the fleet's: the interned
    # ids' table, caches of the decoders; ~2 % at 100,000 patients)
    assert 0.85 * res["traced"] <= sum(parts.values()) <= 1.05 * res["traced"]
    assert 100 < res["ring"] < 1_000 and 50 < res["roster"] < 1_000
    assert res["sites"] and all(where.startswith("streams/") for where, _, _ in res["sites"])
