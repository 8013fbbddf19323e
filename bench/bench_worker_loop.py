"""The worker's per-patient costs without Kafka or Faust: batches, the tick and the commits' state writes.

Run: ``.venv/bin/python bench/bench_worker_loop.py [--patients 1000 100000] [--readings 3000000]``

P patients (heart rate every 5 s, glucose every 5 minutes, time-ordered, 12 readings per record, batches of
500 records) go through one :class:`streams.processing.BatchProcessor` as the worker drives it: a simulated
wall clock moves at ``--rate`` readings per second, the tick runs every 5 s of it (the rounds of
:meth:`BatchProcessor.begin_round`) and a commit (write pacing: ``plan_writes``, ``take_dirty``,
``commit_limits``) every 2 s. Prints readings per CPU-second and the share of the tick and the commits.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table

from alerts.lifecycle import AlertBook
from detectors import PatientMonitor
from ingest.contract import encode_batch
from streams.processing import BatchProcessor
from streams.state import PatientState

T0 = 1_780_000_000_000
UNITS = {"heart_rate": "bpm", "glucose": "mg/dL", "steps": "steps"}


def _new_state(pid: str) -> PatientState:
    return PatientState(PatientMonitor(), AlertBook(pid))


def _readings(pids: list[str], seconds: int) -> Iterator[tuple[str, str, float, int]]:
    for s in range(0, seconds, 5):
        for i, pid in enumerate(pids):
            ts = T0 + s * 1000 + i % 5000
            yield pid, "heart_rate", 60.0 + (s // 5 + i) % 30, ts
            if (s + i * 5) % 300 == 0:
                yield pid, "glucose", 90.0 + i % 40, ts


def run(patients: int, readings: int, rate: float) -> list[object]:
    wall = [float(T0)]
    stored: dict[str, bytes] = {}
    proc = BatchProcessor(_new_state, stored.get, lambda: int(wall[0]), write_readings=32, write_max_ms=120_000,
                          write_eager=2_000, write_quiet_ms=2_000)
    pids = [f"patient-{i:06d}" for i in range(patients)]
    seconds = max(5, int(readings / patients / (1 + 1 / 60) * 5))
    cpu = {"process": 0.0, "tick": 0.0, "commit": 0.0}
    batch: list[tuple[bytes, bytes]] = []
    group: list[bytes] = []
    offset = n = 0
    next_tick, next_commit = T0 + 5_000, T0 + 2_000
    for pid, signal, value, ts in _readings(pids, seconds):
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
            cpu["commit"] += time.process_time() - t
        if wall[0] >= next_tick:
            next_tick += 5_000
            t = time.process_time()
            proc.tick(proc.begin_round(list(proc.cache) if proc.full_round else None))
            cpu["tick"] += time.process_time() - t
    total = sum(cpu.values())
    return [patients, n, round(n / total), round(100 * cpu["tick"] / total, 1), round(100 * cpu["commit"] / total, 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, nargs="*", default=[1000, 100_000])
    ap.add_argument("--readings", type=int, default=3_000_000)
    ap.add_argument("--rate", type=float, default=20_000.0, help="readings per second of simulated wall time")
    args = ap.parse_args()
    rows = [run(p, args.readings, args.rate) for p in args.patients]
    print(table(["patients", "readings", "per CPU-second", "tick %", "commits %"], rows))


if __name__ == "__main__":
    main()
