"""The worker's per-patient costs without Kafka or Faust: batches, the tick and the commits' state writes.

Run: ``.venv/bin/python bench/bench_worker_loop.py [--patients 1000 100000] [--readings 3000000]``
or, for the memory the worker holds per patient after such a run,
``.venv/bin/python bench/bench_worker_loop.py --memory [--patients 10000 100000]``
or, for a bound on the live states (``WEARWATCH_WORKER_LIVE_STATES``),
``.venv/bin/python bench/bench_worker_loop.py --patients 100000 --readings 4000000 --live-states 0 40000
--active-share 0.3``

P patients (heart rate every 5 s, glucose every 5 minutes, time-ordered, 12 readings per record, batches of
500 records) go through one :class:`streams.processing.BatchProcessor` as the worker drives it: a simulated
wall clock moves at ``--rate`` readings per second, the tick runs every 5 s of it (the rounds of
:meth:`BatchProcessor.begin_round`) and a commit (write pacing: ``plan_writes``, ``take_dirty``,
``commit_limits``) every 2 s. Prints readings per CPU-second and the share of the tick and the commits.

``--memory``: each N runs twice in child processes, once under ``tracemalloc`` and once for RSS, and prints
bytes per patient once the run is over: everything Python allocated since the processor was made (tracemalloc),
the live states (``sys.getsizeof`` of everything the cached states reach, objects shared between patients once:
the accounting of ``bench_state_memory.py``), the rest by structure (each per-patient structure of the
``BatchProcessor``, walked the same way after the states, and the table's stored copy: the worker's memory
store), the largest allocation sites outside the live states (tracemalloc by file:line), a data key ring with one
key per patient (``wearwatch.datakeys.KeyRing``) and an enrolment roster with one entry per patient, both built
after the run; and the RSS above the process's baseline (before the processor was made), also after
``malloc_trim``.

``--live-states``: the loop once per cap (0: none), each in a child process, with ``--active-share`` of the
patients sending in each quarter of the run (a different share each quarter: devices worn part of the day):
readings per CPU-second, the states decoded and packed at the end, how often states were packed and decoded again,
and RSS per patient above the baseline without the table's stored copy (a dict here; on disk with the RocksDB store).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import linecache
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

from _common import loadavg, log, rss_bytes, table
from bench_state_memory import _deep

from alerts.lifecycle import AlertBook
from detectors import PatientMonitor
from ingest.contract import encode_batch
from streams.processing import BatchProcessor
from streams.state import PatientState

T0 = 1_780_000_000_000
UNITS = {"heart_rate": "bpm", "glucose": "mg/dL", "steps": "steps"}


def _new_state(pid: str) -> PatientState:
    return PatientState(PatientMonitor(), AlertBook(pid))


def _readings(pids: list[str], seconds: int, active: float = 1.0) -> Iterator[tuple[str, str, float, int]]:
    """The patients' readings, time-ordered; with ``active`` < 1, in each quarter of the run only that share of
    the patients sends, a different one each quarter (devices worn part of the day, charged, out of range)."""
    quarters = [[(i, pid) for i, pid in enumerate(pids) if (i * 7919 + q * 104_729) % 1000 < active * 1000]
                for q in range(4)] if active < 1 else [list(enumerate(pids))] * 4
    for s in range(0, seconds, 5):
        for i, pid in quarters[min(3, s * 4 // seconds)]:
            ts = T0 + s * 1000 + i % 5000
            yield pid, "heart_rate", 60.0 + (s // 5 + i) % 30, ts
            if (s + i * 5) % 300 == 0:
                yield pid, "glucose", 90.0 + i % 40, ts


def run(patients: int, readings: int, rate: float, kept: list[object] | None = None, live_states: int = 0,
        active: float = 1.0) -> list[object]:
    """One run; ``kept`` receives the processor and the table's stored copy (for ``--memory``)."""
    wall = [float(T0)]
    stored: dict[str, bytes] = {}
    proc = BatchProcessor(_new_state, stored.get, lambda: int(wall[0]), write_readings=32, write_max_ms=120_000,
                          write_eager=2_000, write_quiet_ms=2_000, live_states=live_states)
    pids = [f"patient-{i:06d}" for i in range(patients)]
    seconds = max(5, int(readings / (patients * active) / (1 + 1 / 60) * 5))
    cpu = {"process": 0.0, "tick": 0.0, "commit": 0.0}
    batch: list[tuple[bytes, bytes]] = []
    group: list[bytes] = []
    offset = n = 0
    next_tick, next_commit = T0 + 5_000, T0 + 2_000
    for pid, signal, value, ts in _readings(pids, seconds, active):
        group.append(orjson.dumps({"schema_version": 1, "patient_id": pid, "signal": signal, "value": value,
                                   "unit": UNITS[signal], "ts_ms": ts, "vendor": "v", "device_id": "d",
                                   "received_ms": int(wall[0])}))
        n += 1
        if len(group) < 12:
            continue
        batch.append((b"k", encode_batch(group)))
        group = []
        if len(batch) < 500:
            continue
        t = time.process_time()
        proc.process(batch, [(0, offset + i) for i in range(len(batch))])
        cpu["process"] += time.process_time() - t
        offset += len(batch)
        batch = []
        wall[0] += 6_000 / rate * 1000
        if wall[0] >= next_commit:
            next_commit += 2_000
            t = time.process_time()
            proc.plan_writes()
            stored.update(proc.take_dirty())
            proc.commit_limits()
            proc.pack(len(proc.cache))  # past live_states, as the worker does after its commit
            cpu["commit"] += time.process_time() - t
        if wall[0] >= next_tick:
            next_tick += 5_000
            t = time.process_time()
            proc.tick(proc.begin_round(proc.held() if proc.full_round else None))
            cpu["tick"] += time.process_time() - t
    if kept is not None:
        kept += [proc, stored]
    total = sum(cpu.values())
    return [patients, n, round(n / total), round(100 * cpu["tick"] / total, 1), round(100 * cpu["commit"] / total, 1)]


# -- --memory ------------------------------------------------------------------------------------
_HERE = str(Path(__file__).resolve().parent.parent)



def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _structures(proc: BatchProcessor) -> list[tuple[str, object]]:
    """The processor's per-patient structures, by name (whatever the processor has of them)."""
    skip = {"cache", "stats", "signals", "alert_events", "latencies", "new_state", "load_state", "now_ms",
            "admits", "keys"}
    names = sorted(n for n, v in vars(proc).items()
                   if n not in skip and not isinstance(v, int | float | str | None) and not callable(v))
    return [(n, getattr(proc, n)) for n in names]


def _ring(pids: list[str]) -> object:
    from wearwatch.datakeys import KeyRing
    ring = KeyRing(kek=None)
    for i, pid in enumerate(pids):
        ring.add(os.urandom(16), pid.encode().decode(), os.urandom(32), T0 + i)  # as decoded from a record
    return ring


def _roster(pids: list[str]) -> object:
    from alerts.enrollment import Enrollment
    from wearwatch.contract.enrollment import EnrollmentRecord
    roster = Enrollment()
    for pid in pids:
        roster.apply(pid, EnrollmentRecord.model_validate_json(
            orjson.dumps({"patient_id": pid, "ward": "3B", "since_ms": T0})))
    return roster


def measure(patients: int, readings: int, rate: float, mode: str) -> dict[str, object]:
    """One ``--memory`` measurement in this (child) process: ``mode`` is tracemalloc or rss."""
    gc.collect()
    out: dict[str, object] = {}
    if mode == "tracemalloc":
        tracemalloc.start()
        base = tracemalloc.take_snapshot()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = rss_bytes()
    kept: list[object] = []
    run(patients, readings, rate, kept)
    proc, stored = kept
    assert isinstance(proc, BatchProcessor) and isinstance(stored, dict)
    gc.collect()
    if mode == "rss":
        out["rss"] = (rss_bytes() - before) / patients
        _malloc_trim()
        out["rss_trimmed"] = (rss_bytes() - before) / patients
        return out
    out["traced"] = (tracemalloc.get_traced_memory()[0] - before) / patients
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, f"{_HERE}/streams/*")])
    sites = []
    for st in snap.compare_to(base.filter_traces([tracemalloc.Filter(True, f"{_HERE}/streams/*")]), "lineno")[:12]:
        frame = st.traceback[0]
        where = f"{os.path.relpath(frame.filename, _HERE)}:{frame.lineno}"
        sites.append((where, linecache.getline(frame.filename, frame.lineno).strip()[:60], st.size_diff / patients))
    out["sites"] = sites
    seen: set[int] = set()
    parts = [("live states (cache values)", sum(_deep(s, seen) for s in proc.cache.values()))]
    parts.append(("cache (the dict, its keys)", _deep(proc.cache, seen)))
    for name, obj in _structures(proc):
        parts.append((name, _deep(obj, seen)))
    parts.append(("table's stored copy (memory store)", _deep(stored, seen)))
    parts.append(("counters and latencies (per fleet, not per patient)",
                  sum(_deep(getattr(proc, n), seen) for n in ("stats", "signals", "alert_events", "latencies"))))
    out["parts"] = [(n, b / patients) for n, b in parts]
    pids = list(proc.cache)
    t = tracemalloc.get_traced_memory()[0]
    ring = _ring(pids)
    out["ring"] = (tracemalloc.get_traced_memory()[0] - t) / patients
    t = tracemalloc.get_traced_memory()[0]
    roster = _roster(pids)
    out["roster"] = (tracemalloc.get_traced_memory()[0] - t) / patients
    del ring, roster
    tracemalloc.stop()
    return out


def memory(patients: list[int], readings: int, rate: float) -> None:
    load = loadavg()
    res: dict[int, dict[str, Any]] = {}
    for n in patients:
        res[n] = {}
        for mode in ("rss", "tracemalloc"):
            cmd = [sys.executable, __file__, "--patients", str(n), "--readings", str(readings), "--rate", str(rate),
                   "--child", mode]
            res[n].update(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    print(f"bytes per patient after {readings:,} readings; load average {load} → {loadavg()}")

    def row(name: str, values: list[float]) -> list[object]:
        return [name, *(round(v) for v in values)]

    names = [name for name, _ in res[patients[0]]["parts"]]
    rows = [
        row("tracemalloc, everything since the processor was made", [res[n]["traced"] for n in patients]),
        row("RSS above the baseline", [res[n]["rss"] for n in patients]),
        row("RSS above the baseline after malloc_trim", [res[n]["rss_trimmed"] for n in patients]),
        *(row(name, [res[n]["parts"][i][1] for n in patients]) for i, name in enumerate(names)),
        row("**outside the live states**", [sum(b for _, b in res[n]["parts"][1:]) for n in patients]),
        row("data key ring (one key per patient)", [res[n]["ring"] for n in patients]),
        row("enrolment roster (one entry per patient)", [res[n]["roster"] for n in patients]),
    ]
    print(table(["per patient"] + [f"{n:,} patients" for n in patients], rows))
    print()
    big = patients[-1]
    print(f"largest allocation sites in streams/ at {big:,} patients (tracemalloc, bytes per patient):")
    print(table(["file:line", "code", "bytes"], [[w, f"`{c}`", round(b)] for w, c, b in res[big]["sites"]]))


def live_states_study(patients: int, readings: int, rate: float, caps: list[int], active: float) -> None:
    """``--live-states``: the loop once per cap (0: none), each in a child process: readings per CPU-second,
    the states held decoded and packed at the end, how often states were packed and decoded again, and RSS per
    patient above the baseline."""
    load = loadavg()
    rows = []
    for cap in caps:
        cmd = [sys.executable, __file__, "--patients", str(patients), "--readings", str(readings), "--rate",
               str(rate), "--active-share", str(active), "--child", f"cap:{cap}"]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        rows.append([f"{cap:,}" if cap else "all", res["readings"], res["per_cpu_s"], res["held"], res["packed_now"],
                     round(res["packed_b"]), res["packed"], res["unpacked"], round(res["rss"]), round(res["stored"])])
        log(f"  cap {cap or 'none'}: {res['per_cpu_s']:,} readings per CPU-second, {res['held']:,} states decoded")
    print(f"{patients:,} patients, {active:.0%} of them sending in each quarter of the run (a different "
          f"{active:.0%} each quarter); load average {load} → {loadavg()}")
    print(table(["live states", "readings", "per CPU-second", "decoded at the end", "packed at the end",
                 "packed B (mean)", "packings", "decodings", "RSS B/patient", "table's copy B/patient"], rows))


def _cap_child(patients: int, readings: int, rate: float, cap: int, active: float) -> dict[str, object]:
    gc.collect()
    before = rss_bytes()
    kept: list[object] = []
    row = run(patients, readings, rate, kept, live_states=cap, active=active)
    proc, stored = kept
    assert isinstance(proc, BatchProcessor) and isinstance(stored, dict)
    gc.collect()
    # the table's stored copy is a dict of bytes here (the memory store); a worker on RocksDB keeps it on disk
    stored_b = sum(sys.getsizeof(v) for v in stored.values()) / patients
    packed = proc.packed
    return {"readings": row[1], "per_cpu_s": row[2], "held": len(proc.cache), "packed_now": len(packed),
            "packed_b": sum(map(len, packed.values())) / max(1, len(packed)),
            "packed": proc.stats["states_packed"], "unpacked": proc.stats["states_unpacked"],
            "rss": (rss_bytes() - before) / patients - stored_b, "stored": stored_b}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, nargs="*", default=None,
                    help="default 1000 100000 (10000 100000 with --memory)")
    ap.add_argument("--readings", type=int, default=3_000_000)
    ap.add_argument("--rate", type=float, default=20_000.0, help="readings per second of simulated wall time")
    ap.add_argument("--memory", action="store_true", help="bytes per patient held after the run, by structure")
    ap.add_argument("--live-states", type=int, nargs="*", default=None,
                    help="WEARWATCH_WORKER_LIVE_STATES values to compare (0: none) on one patient count")
    ap.add_argument("--active-share", type=float, default=1.0,
                    help="share of the patients sending in each quarter of the run, a different one each quarter")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child and args.child.startswith("cap:"):
        print(json.dumps(_cap_child(args.patients[0], args.readings, args.rate, int(args.child[4:]),
                                    args.active_share)))
        return
    if args.live_states is not None:
        live_states_study((args.patients or [100_000])[0], args.readings, args.rate, args.live_states,
                          args.active_share)
        return
    if args.child:
        print(json.dumps(measure(args.patients[0], args.readings, args.rate, args.child)))
        return
    if args.memory:
        memory(args.patients or [10_000, 100_000], args.readings, args.rate)
        return
    rows = [run(p, args.readings, args.rate) for p in args.patients or [1000, 100_000]]
    print(table(["patients", "readings", "per CPU-second", "tick %", "commits %"], rows))


if __name__ == "__main__":
    main()
