"""Train the dictionary that stored patient states are compressed against (format version 3).

A stored state (:mod:`streams.state_codec`) is a pickled tree of ~3 KB in which the type tags, the field
names and the shapes of the detectors' windows are the same from patient to patient. Compressed one state
at a time, each state pays for them again: zlib got a state to ~1.1 KB in ~50 µs. A zstd dictionary
trained on typical states holds what they share once, so each state costs little more than what is its own:
~0.4 KB in ~5 µs, and it opens in ~2 µs instead of ~14.

The dictionary is part of the stored format. States written in version 3 can be read only with exactly
these bytes, so the file is checked into the package and :mod:`streams.state_codec` checks its SHA-256 when
it loads it. Run this to make the dictionary of a *new* format version, never to replace one in use.

The training states are simulated patients (:func:`ingest.scenarios.simulate_patient`, with their events
and delivery artefacts) taken through the worker's per-reading path for 5 minutes to 4 hours; the figures
it prints are for patients of other seeds, which the dictionary did not see.

Run: ``python -m tools.state_dictionary`` (``--out`` to write elsewhere; ~10 s).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import statistics
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import zstandard

from alerts.lifecycle import AlertBook
from detectors import DetectorConfig, PatientMonitor
from ingest.scenarios import simulate_patient
from streams.state import PatientState
from streams.state_codec import ZSTD_LEVEL, encode_state
from wearwatch.contract.units import MMOL_TO_MGDL

__all__ = ["main", "simulated_state", "train"]

log = logging.getLogger(__name__)

_SIGNALS = ("heart_rate", "glucose", "steps")
_END_MS = 1_780_000_000_000  # a fixed end: the same states every run
#: how long each training (and held-out) patient has been sending, in turn
_MINUTES = (5, 15, 60, 240)
#: the seeds of the training patients; held-out patients start at HELD_OUT_SEED
TRAIN_PATIENTS = 800
HELD_OUT_SEED = 1_000_000
HELD_OUT_PATIENTS = 200
DEFAULT_SIZE = 16384
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "streams" / "state_v3.zdict"


#: the worker gives every patient without overrides one shared configuration (its enrollment's default)
_CONFIG = DetectorConfig()


def _readings(seed: int, pid: str, minutes: float, artefacts: bool) -> Iterator[tuple[str, int, float]]:
    d = simulate_patient(pid, _END_MS - int(minutes * 60_000), _END_MS, seed=seed, artefacts=artefacts)
    for t, s, v, u in zip(d.ts_ms.tolist(), d.signal.tolist(), d.value.tolist(), d.unit.tolist(), strict=True):
        yield _SIGNALS[s], t, (v * MMOL_TO_MGDL if u == 2 else v)


def simulated_state(seed: int, minutes: float, *, patient_id: str | None = None, ward: str = "ward-3",
                    artefacts: bool = True, partition: int | None = None) -> PatientState:
    """A simulated patient's state after ``minutes`` of readings, as the worker's per-reading path leaves it
    (dedupe, minute buckets, detectors, alert book, a tick at the end).

    ``patient_id`` defaults to one made from the seed; ``artefacts``: the devices' delivery artefacts
    (:func:`~ingest.scenarios.simulate_patient`); ``partition``: each reading is folded in as the record at its
    index of that ``vitals.raw`` partition (the replay positions a worker's state holds), None: none.
    """
    pid = patient_id or f"patient-{seed:07d}"
    st = PatientState(PatientMonitor(_CONFIG), AlertBook(pid, ward=ward))
    newest = 0
    for offset, (signal, ts, value) in enumerate(_readings(seed, pid, minutes, artefacts)):
        if partition is not None:
            st.fold_position(partition, offset)
        if st.admit(signal, ts) != "new":
            continue
        st.aggregate(signal, ts, value)
        for finding in st.monitor.update(signal, ts, value):
            st.book.on_finding(finding)
        st.close_minutes()
        newest = max(newest, ts)
    for finding in st.monitor.tick(newest):
        st.book.on_finding(finding, newest)
    st.book.tick(newest)
    return st


def _trees(seeds: range) -> list[bytes]:
    """The uncompressed stored trees (version 1 without its header) of the patients of ``seeds``."""
    out = []
    for n, seed in enumerate(seeds):
        out.append(encode_state(simulated_state(seed, _MINUTES[n % len(_MINUTES)], partition=seed % 8), 1)[3:])
        if (n + 1) % 100 == 0:
            log.info("  %d/%d states", n + 1, len(seeds))
    return out


def train(samples: list[bytes], size: int) -> bytes:
    """A zstd dictionary of at most ``size`` bytes for ``samples`` (one thread: the same bytes every run)."""
    buffers: list[bytes | bytearray | memoryview] = list(samples)
    return zstandard.train_dictionary(size, buffers, level=ZSTD_LEVEL, threads=0).as_bytes()


def _measure(name: str, compress: zstandard.ZstdCompressor | None, trees: list[bytes]) -> list[str]:
    t0 = time.process_time()
    sizes = [len(compress.compress(t)) if compress else len(zlib.compress(t, 1)) for t in trees]
    us = (time.process_time() - t0) / len(trees) * 1e6
    return [name, f"{statistics.mean(sizes):,.0f}", f"{max(sizes):,}", f"{us:.1f}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the dictionary")
    ap.add_argument("--size", type=int, default=DEFAULT_SIZE, help="the dictionary's size in bytes")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("training states: %d simulated patients", TRAIN_PATIENTS)
    samples = _trees(range(TRAIN_PATIENTS))
    log.info("held-out states: %d simulated patients of other seeds", HELD_OUT_PATIENTS)
    held_out = _trees(range(HELD_OUT_SEED, HELD_OUT_SEED + HELD_OUT_PATIENTS))
    rows = [["uncompressed", f"{statistics.mean(map(len, held_out)):,.0f}", f"{max(map(len, held_out)):,}", "-"],
            _measure("zlib level 1 (version 2)", None, held_out)]
    chosen = b""
    for size in sorted({4096, args.size, 16384}):
        zd = train(samples, size)
        if size == args.size:
            chosen = zd
        c = zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=zstandard.ZstdCompressionDict(zd))
        rows.append(_measure(f"zstd level {ZSTD_LEVEL}, {size:,}-B dictionary", c, held_out))
    widths = [max(len(r[i]) for r in [*rows, _HEAD]) for i in range(len(_HEAD))]
    for r in [_HEAD, ["-" * w for w in widths], *rows]:
        cells = zip(r, widths, strict=True)
        log.info("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells)))
    args.out.write_bytes(chosen)
    log.info("written %s (%d B, sha256 %s)", args.out, len(chosen), hashlib.sha256(chosen).hexdigest())
    return 0


_HEAD = ["held-out states", "mean B", "max B", "µs per state"]

if __name__ == "__main__":
    sys.exit(main())
