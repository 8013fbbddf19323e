"""Memory of the live patient states a worker holds: bytes per patient, and where they go.

Run: ``.venv/bin/python bench/bench_state_memory.py [--patients 10000] [--minutes 15] [--sample 500]``
(no stack needed).

N simulated patients (``ingest.scenarios.simulate_patient``, no delivery artefacts: heart rate
every 5 s, steps every minute, glucose every 5 minutes; the generator ``bench_throughput`` uses)
each get ``--minutes`` of readings through the worker's per-reading path on a
:class:`~streams.state.PatientState` of a real :class:`~detectors.PatientMonitor` and
:class:`~alerts.lifecycle.AlertBook`: ``admit``, ``aggregate``, ``monitor.update``,
``book.on_finding``, ``close_minutes``, then one ``tick`` of monitor and book. Every value
reaches the state as its own float object, as a decoded record's would.

Three figures per patient, the states built twice (in separate child processes):

* **tracemalloc**: the memory Python allocated for the N states (traced memory with the
  states alive, after a collection, minus before; nothing else is kept);
* **RSS**: the process's resident set with the states alive minus before (what the
  Kubernetes limit sees: allocator overhead and fragmentation included);
* **per part**: ``sys.getsizeof`` of every object reachable from each part of ``--sample``
  states (an object shared between patients, e.g. a config, counted once for the whole
  sample), so the rows add up to about the tracemalloc figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
import tracemalloc
import types
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import loadavg, patient_ids, rss_bytes, table  # noqa: E402

from detectors.episodes import Sustained  # noqa: E402
from streams.state import PatientState  # noqa: E402
from tools.state_dictionary import simulated_state  # noqa: E402


def build(i: int, pid: str, minutes: float) -> PatientState:
    """One patient's live state after ``minutes`` of readings, as the worker's per-reading path leaves it."""
    return simulated_state(7 * 100_000 + i, minutes, patient_id=pid, ward="3B", artefacts=False)


# -- the per-part breakdown --------------------------------------------------------------------
_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
           types.CodeType, types.MethodDescriptorType, types.WrapperDescriptorType, types.GetSetDescriptorType)


def _reach(root: object, seen: set[int]) -> Iterator[object]:
    """The objects reachable from ``root`` not seen yet (``seen``: their ids, added to), without types, modules,
    functions, None, booleans and cached small ints (shared by every process, owned by no state)."""
    stack = [root]
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, _OPAQUE) or o is None or isinstance(o, bool):
            continue
        seen.add(id(o))
        if isinstance(o, int) and -5 <= o <= 256:
            continue  # cached small ints
        yield o
        stack.extend(gc.get_referents(o))


def _deep(root: object, seen: set[int]) -> int:
    """Bytes of the objects reachable from ``root`` not counted yet (``seen``: ids counted)."""
    return sum(sys.getsizeof(o) for o in _reach(root, seen))


def _parts(st: PatientState) -> list[tuple[str, list[object]]]:
    m = st.monitor
    book = st.book
    episodes: list[object] = []
    for part in (m._quality, m._hr, m._glucose, m._hr_model, m._g_model):
        if part is not None:
            episodes += _episodes(part)
    return [
        ("episode trackers (Sustained)", episodes),
        ("activity tracker", [m._activity]),
        ("heart rate detector", [m._hr]),
        ("glucose detector", [m._glucose]),
        ("device quality", [m._quality]),
        ("models (resting HR, glucose variability)", [m._hr_model, m._g_model]),
        ("monitor object and config", [m]),
        ("alert book", [book]),
        ("minute buckets", [getattr(st, "_buckets", None) or st.buckets]),  # the live form, not a copy
        ("seconds bitmaps", [st._seen]),
        ("state object, positions", [st]),
    ]


def _episodes(part: object) -> list[object]:
    """The episode trackers a detector part holds (directly, or in lists, tuples or lists of lists)."""
    out: list[object] = []
    stack: list[object] = list(gc.get_referents(part))  # without materialising an instance __dict__
    while stack:
        o = stack.pop()
        if isinstance(o, Sustained):
            if not any(o is e for e in out):
                out.append(o)
        elif isinstance(o, list | tuple | dict):
            stack.extend(gc.get_referents(o))
    return out


def breakdown(states: list[PatientState]) -> list[tuple[str, float]]:
    seen: set[int] = set()
    sums: dict[str, int] = {}
    for st in states:
        for name, roots in _parts(st):
            sums[name] = sums.get(name, 0) + sum(_deep(r, seen) for r in roots if r is not None)
    return [(name, total / len(states)) for name, total in sums.items()]


def _value_bytes(o: object) -> int:
    """The bytes of what an object holds, without its header: what a packed record would keep of it (an
    array's items, a float's or small int's 8 bytes, a big int's bits; containers and objects: their slots)."""
    if isinstance(o, array):
        return o.itemsize * len(o)
    if isinstance(o, float):
        return 8
    if isinstance(o, int):
        return max(8, (o.bit_length() + 7) // 8)
    return 0  # the parts, lists, tuples, strings: structure, not values


def census(states: list[PatientState]) -> list[tuple[str, float, float, float]]:
    """Per kind of object a state owns (not shared with another of ``states``): (kind, objects, bytes, bytes
    of values) per patient, biggest first."""
    owners: dict[int, int] = {}
    reach: list[list[object]] = []
    for st in states:
        objs = list(_reach(st, set()))
        for o in objs:
            owners[id(o)] = owners.get(id(o), 0) + 1
        reach.append(objs)
    kinds: dict[str, list[float]] = {}
    for objs in reach:
        for o in objs:
            if owners[id(o)] > 1:
                continue  # shared: a configuration, compiled rules, IDLE episodes, a minute boundary
            k = kinds.setdefault(type(o).__name__, [0.0, 0.0, 0.0])
            k[0] += 1
            k[1] += sys.getsizeof(o)
            k[2] += _value_bytes(o)
    n = len(states)
    return sorted(((name, c / n, b / n, v / n) for name, (c, b, v) in kinds.items()), key=lambda r: -r[2])


# -- one measurement, in a child process ---------------------------------------------------------
def measure(n: int, minutes: float, mode: str, sample: int) -> dict[str, Any]:
    ids = patient_ids(n)
    gc.collect()
    if mode == "tracemalloc":
        tracemalloc.start()
    before_traced = tracemalloc.get_traced_memory()[0] if mode == "tracemalloc" else 0
    before_rss = rss_bytes()
    t0 = time.process_time()
    states: dict[str, PatientState] = {}
    for i, pid in enumerate(ids):
        states[pid] = build(i, pid, minutes)
    cpu = time.process_time() - t0
    gc.collect()
    out: dict[str, Any] = {"cpu_s": cpu}
    if mode == "tracemalloc":
        out["traced_b"] = (tracemalloc.get_traced_memory()[0] - before_traced) / n
        tracemalloc.stop()
    else:
        out["rss_b"] = (rss_bytes() - before_rss) / n
        out["parts"] = breakdown(list(states.values())[:sample])
        out["census"] = census(list(states.values())[:sample])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--patients", type=int, default=10_000)
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--sample", type=int, default=500, help="states walked for the per-part breakdown")
    p.add_argument("--child", choices=["tracemalloc", "rss"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(measure(a.patients, a.minutes, a.child, a.sample)))
        return 0
    load_before = loadavg()
    res: dict[str, Any] = {}
    for mode in ("rss", "tracemalloc"):
        cmd = [sys.executable, __file__, "--patients", str(a.patients), "--minutes", str(a.minutes),
               "--sample", str(a.sample), "--child", mode]
        res.update(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    print(f"{a.patients:,} patients, {a.minutes:g} minutes of data each; load average {load_before} → {loadavg()}")
    print(table(["per patient", "bytes"], [
        ["tracemalloc (Python allocations)", round(res["traced_b"])],
        ["RSS above the baseline", round(res["rss_b"])],
        ["CPU s to build the states (RSS run)", round(res["cpu_s"], 1)],
    ]))
    print()
    rows = [[name, round(b)] for name, b in res["parts"]]
    rows.append(["**sum of the parts**", round(sum(b for _, b in res["parts"]))])
    print(f"per part (sys.getsizeof of what each part reaches, {a.sample} states):")
    print(table(["part", "bytes per patient"], rows))
    print()
    rows = [[kind, f"{c:.1f}", round(b), round(v)] for kind, c, b, v in res["census"]]
    tot_c, tot_b, tot_v = (sum(r[i] for r in res["census"]) for i in (1, 2, 3))
    rows.append(["**all**", f"{tot_c:.1f}", round(tot_b), round(tot_v)])
    print(f"by kind of object a state owns ({a.sample} states; objects shared between patients left out); "
          "'values': the bytes of what the objects hold without their headers, slots and spare room — "
          "what one packed record per patient would keep:")
    print(table(["kind", "objects per patient", "bytes per patient", "values"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
