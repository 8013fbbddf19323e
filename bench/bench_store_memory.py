"""Memory of the worker's RocksDB store at fleet size: a budget per partition database against one shared budget.

Run: ``.venv/bin/python bench/bench_store_memory.py [--patients 100000] [--partitions 8] [--value-bytes 1600]``
(no stack needed; the databases go to a temporary directory).

Each configuration runs in a child process of its own, which opens one database per partition as the worker's
store does (:class:`streams.store.PatientStateStore`'s options, through Faust's ``RocksDBOptions`` and
``rocksdict``) and then does what the worker does to it, patients spread over the partitions as Kafka spreads
them: writes every patient's stored state (``--value-bytes``, random bytes: a sealed state does not compress)
``--rounds`` times (the commits' state writes), reads each patient's state once (a patient first seen after a
start), and writes every state twice more. It reports the process's RSS above its baseline after each phase,
what RocksDB says its memtables and block cache hold at the end, and the CPU seconds of the whole run.

Configurations:

* ``per-database W/C``: each database its own write buffers (``W`` MB, two of them) and its own ``C``-MB block
  cache: how the store was configured before, and Faust's way (its defaults are 64 MB x 3 and 2 GB);
* ``shared B``: :class:`streams.store.SharedMemoryOptions` with ``memory_mb=B`` — one block cache for every
  partition, with the memtables (at most three quarters of it) and the index and filter blocks charged to it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import loadavg, rss_bytes, table  # noqa: E402

#: (label, options) of each configuration measured
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("per-database 8/16", {"write_buffer_size": 8 << 20, "max_write_buffer_number": 2,
                           "block_cache_size": 16 << 20}),
    ("shared 16", {"memory_mb": 16}),
    ("shared 32 (default)", {"memory_mb": 32}),
    ("shared 64", {"memory_mb": 64}),
]



def child(options: dict[str, Any], patients: int, partitions: int, value_bytes: int, rounds: int) -> dict[str, Any]:
    """One configuration's run (in a process of its own): RSS above the baseline after each phase, in bytes."""
    from faust.stores.rocksdb import RocksDBOptions

    from streams.store import SharedMemoryOptions
    from wearwatch.partitioning import patient_partition

    options = dict(options)
    rocks: Any = (SharedMemoryOptions(options.pop("memory_mb"), max_write_buffer_number=2) if "memory_mb" in options
                  else RocksDBOptions(use_rocksdict=True, **options))
    base = tempfile.mkdtemp(prefix="ww-store-mem-")
    cpu0 = time.process_time()
    try:
        rss0 = rss_bytes()
        dbs = [rocks.open(Path(base) / str(p)) for p in range(partitions)]
        keys = [f"p-{i:07d}".encode() for i in range(patients)]
        where = [dbs[patient_partition(k, partitions)] for k in keys]
        value = os.urandom(value_bytes)
        out: dict[str, Any] = {}
        for _ in range(rounds):
            for k, db in zip(keys, where, strict=True):
                db.put(k, value)
        out["written"] = rss_bytes() - rss0
        missing = sum(db.get(k) is None for k, db in zip(keys, where, strict=True))
        out["read"] = rss_bytes() - rss0
        for _ in range(2):
            for k, db in zip(keys, where, strict=True):
                db.put(k, value)
        out["rewritten"] = rss_bytes() - rss0
        out["memtables"] = sum(int(db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0) for db in dbs)
        caches = ([int(rocks.cache.get_usage())] if isinstance(rocks, SharedMemoryOptions)
                  else [int(db.property_int_value("rocksdb.block-cache-usage") or 0) for db in dbs])
        out["cache"] = sum(caches)
        out["missing"] = missing
        out["cpu_s"] = time.process_time() - cpu0
        for db in dbs:
            db.close()
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--value-bytes", type=int, default=1600, help="a stored state (version 2: ~1.1-1.8 KB)")
    ap.add_argument("--rounds", type=int, default=3, help="writes of every state before the reads")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child(json.loads(a.child), a.patients, a.partitions, a.value_bytes, a.rounds)))
        return
    load0 = loadavg()
    rows = []
    mb = 1024 * 1024
    for label, options in CONFIGS:
        print(f"{label}: {a.patients:,} patients over {a.partitions} databases ...", file=sys.stderr, flush=True)
        res = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(options), "--patients", str(a.patients),
             "--partitions", str(a.partitions), "--value-bytes", str(a.value_bytes), "--rounds", str(a.rounds)],
            check=True, capture_output=True, text=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        if r["missing"]:
            raise SystemExit(f"{label}: {r['missing']} states not read back")
        rows.append([label, f"{r['written'] / mb:.0f}", f"{r['read'] / mb:.0f}", f"{r['rewritten'] / mb:.0f}",
                     f"{r['rewritten'] / a.patients:,.0f}", f"{r['memtables'] / mb:.1f}", f"{r['cache'] / mb:.1f}",
                     f"{r['cpu_s']:.1f}"])
    print(f"\nthe RocksDB store's memory, {a.patients:,} patients' states of {a.value_bytes:,} B over {a.partitions} "
          f"partition databases; load average {load0} → {loadavg()}")
    print(table(["store options", "RSS MB written", "after reads", "after rewrites", "B/patient",
                 "memtables MB", "cache MB", "CPU s"], rows))


if __name__ == "__main__":
    main()
