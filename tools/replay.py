"""``wearwatch replay``: run the detectors over a CSV of readings, offline.

Input: a CSV with header ``ts,patient_id,signal,value,unit`` — ``ts`` in
RFC 3339 (``2026-01-05T10:00:00Z``) or epoch seconds (numbers above 1e11 are
taken as epoch milliseconds), signals ``heart_rate|glucose|steps``, units
``bpm|mg/dL|mmol/L|steps`` (mmol/L × 18.016 → mg/dL). Many patients
interleaved, normally sorted by ts; out-of-order rows are handled by the
detectors' lateness policy (see :mod:`detectors.monitor`).

Output: JSON lines, one per finding (opened or resolved), with ``patient_id``,
``signal``, ``kind``, ``priority``, ``audience``, ``state`` (open/resolved),
``ts_ms`` and ``ts`` (when it fired, event time), ``onset_ms`` and the
``explanation``. The same :class:`detectors.PatientMonitor` code runs here and
in the stream worker. Time-driven checks (stale sensors) run every
``--tick-s`` seconds of stream time for every patient.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

__all__ = [
    "ReplayResult",
    "add_arguments",
    "finding_record",
    "parse_ts",
    "read_csv",
    "replay",
    "run",
]

log = logging.getLogger(__name__)

MMOL_TO_MGDL = 18.016
_UNITS = {
    "heart_rate": {"bpm": 1.0},
    "glucose": {"mg/dL": 1.0, "mmol/L": MMOL_TO_MGDL},
    "steps": {"steps": 1.0},
}

Row = tuple[int, str, str, float]


def parse_ts(text: str) -> int:
    """Epoch milliseconds from RFC 3339 or epoch seconds (or ms if > 1e11).

    >>> parse_ts("1767571200"), parse_ts("1767571200.5"), parse_ts("2026-01-05T00:00:00Z")
    (1767571200000, 1767571200500, 1767571200000)
    >>> parse_ts("2026-01-05T01:00:00+01:00")
    1767571200000
    """
    try:
        x = float(text)
    except ValueError:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if dt.tzinfo is None:
            raise ValueError(f"timestamp {text!r} has no time zone") from None
        return round(dt.timestamp() * 1000)
    if not math.isfinite(x):
        raise ValueError("timestamp is not finite")
    return round(x) if abs(x) > 1e11 else round(x * 1000)


@dataclass
class _Progress:
    total: int
    stream: IO[str] = sys.stderr
    enabled: bool = True
    done: int = 0
    _tty: bool = False
    _next_pct: int = 10
    _last: float = 0.0
    _t0: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self._tty = self.stream.isatty()

    def update(self, done: int, rows: int) -> None:
        if not self.enabled or self.total <= 0:
            return
        self.done = done
        pct = 100.0 * done / self.total
        if self._tty:
            now = time.perf_counter()
            if now - self._last < 0.2:
                return
            self._last = now
            rate = rows / max(now - self._t0, 1e-9)
            bar = "#" * int(pct / 4)
            self.stream.write(f"\r[{bar:<25}] {pct:5.1f}%  {rows:,} readings  {rate:,.0f}/s")
            self.stream.flush()
        elif pct >= self._next_pct:
            while pct >= self._next_pct:
                self._next_pct += 10
            el = time.perf_counter() - self._t0
            self.stream.write(f"replay: {pct:3.0f}%  {rows:,} readings  {el:.1f} s\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()


def read_csv(
    path: str,
    *,
    errors: Counter[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[Row]:
    """Yield ``(ts_ms, patient_id, signal, value_canonical)`` from a replay CSV.

    Bad rows are skipped and counted in ``errors`` by reason (logged at DEBUG
    with their line number only).
    """
    errs = errors if errors is not None else Counter()
    units = _UNITS
    with open(path, encoding="utf-8", newline="") as f:
        header = f.readline()
        nbytes = len(header)
        cols = [c.strip() for c in header.strip().split(",")]
        if cols[:5] != ["ts", "patient_id", "signal", "value", "unit"]:
            raise ValueError(f"{path}: header must be ts,patient_id,signal,value,unit, got {header!r}")
        rows = 0
        lineno = 1
        for line in f:
            lineno += 1
            nbytes += len(line)
            parts = line.rstrip("\r\n").split(",")
            if len(parts) < 5:
                if line.strip():
                    errs["bad_row"] += 1
                    log.debug("line %d: too few fields", lineno)
                continue
            ts_s, pid, sig, val_s, unit = parts[0], parts[1], parts[2], parts[3], parts[4]
            try:
                ts = parse_ts(ts_s)
                value = float(val_s)
            except ValueError:
                errs["bad_ts_or_value"] += 1
                log.debug("line %d: bad ts or value", lineno)
                continue
            su = units.get(sig)
            if su is None:
                errs["unknown_signal"] += 1
                continue
            factor = su.get(unit.strip())
            if factor is None:
                errs["unit_mismatch"] += 1
                continue
            rows += 1
            if progress is not None and rows & 0x3FFF == 0:
                progress(nbytes, rows)
            yield ts, pid, sig, value * factor if factor != 1.0 else value
        if progress is not None:
            progress(nbytes, rows)


def finding_record(patient_id: str, f: Any) -> dict[str, Any]:
    """The JSON object written for one finding.

    >>> from detectors import PatientMonitor
    >>> fs = PatientMonitor().update("glucose", 1_767_571_200_000, 50.0)
    >>> r = finding_record("p1", fs[0])
    >>> r["kind"], r["priority"], r["state"], r["ts"]
    ('glucose_urgent_low', 'high', 'open', '2026-01-05T00:00:00.000Z')
    """
    ts = datetime.fromtimestamp(f.ts_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return {
        "patient_id": patient_id,
        "signal": f.signal,
        "kind": f.kind,
        "priority": f.priority.value,
        "audience": f.audience.value,
        "state": "resolved" if f.cleared else "open",
        "ts_ms": f.ts_ms,
        "ts": ts.replace("+00:00", "Z"),
        "onset_ms": f.onset_ms,
        "source": f.source,
        "message": f.message,
        "explanation": f.explanation(),
    }


@dataclass
class ReplayResult:
    """What a replay produced."""

    alerts: list[dict[str, Any]]
    readings: int
    seconds: float
    monitors: dict[str, Any]
    errors: Counter[str]

    @property
    def rate(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0

    def state_sizes(self) -> list[int]:
        """Pickled size in bytes of each patient's monitor."""
        import pickle

        return [len(pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL)) for m in self.monitors.values()]

    def summary(self) -> str:
        """A human summary (counts by kind and priority, throughput, state size)."""
        by_kind = Counter((a["audience"], a["kind"], a["priority"]) for a in self.alerts
                          if a["state"] == "open")
        sizes = sorted(self.state_sizes())
        lines = [
            f"replayed {self.readings:,} readings of {len(self.monitors)} patients in "
            f"{self.seconds:.1f} s ({self.rate:,.0f} readings/s)",
            f"findings: {sum(by_kind.values())} opened, "
            f"{sum(1 for a in self.alerts if a['state'] == 'resolved')} resolved",
        ]
        for (aud, kind, prio), n in sorted(by_kind.items()):
            lines.append(f"  {aud:<8} {kind:<28} {prio:<6} {n:>6}")
        dup = sum(m.stats()["duplicates"] for m in self.monitors.values())
        late = sum(m.stats()["late"] for m in self.monitors.values())
        lines.append(f"duplicates ignored: {dup:,}; late readings: {late:,}")
        if self.errors:
            lines.append("rows skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())))
        if sizes:
            lines.append(
                f"state per patient (pickled): median {sizes[len(sizes) // 2]:,} B, "
                f"max {sizes[-1]:,} B"
            )
        return "\n".join(lines)


def replay(
    rows: Iterable[Row],
    *,
    config: Any = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    tick_ms: int = 60_000,
    sink: Callable[[dict[str, Any]], None] | None = None,
) -> ReplayResult:
    """Run one :class:`~detectors.PatientMonitor` per patient over ``rows``.

    Every ``tick_ms`` of stream time (the newest timestamp seen), all monitors
    get :meth:`~detectors.PatientMonitor.tick`. Findings are passed to ``sink``
    (if given) and collected in the result.

    >>> rows = [(i * 300_000, "p1", "glucose", v) for i, v in enumerate([90.0, 60.0, 50.0])]
    >>> res = replay(rows)
    >>> [(a["kind"], a["state"]) for a in res.alerts]
    [('glucose_urgent_low', 'open')]
    """
    from detectors import DetectorConfig, PatientMonitor

    cfg = config if config is not None else DetectorConfig()
    ov = overrides or {}
    monitors: dict[str, PatientMonitor] = {}
    alerts: list[dict[str, Any]] = []
    emit = alerts.append
    n = 0
    clock = -1
    next_tick = -1
    t0 = time.perf_counter()

    def out(pid: str, fs: list[Any]) -> None:
        for f in fs:
            rec = finding_record(pid, f)
            emit(rec)
            if sink is not None:
                sink(rec)

    for ts, pid, sig, value in rows:
        m = monitors.get(pid)
        if m is None:
            m = monitors[pid] = PatientMonitor(cfg.with_overrides(ov[pid]) if pid in ov else cfg)
        if ts > clock:
            clock = ts
            if next_tick < 0:
                next_tick = (ts // tick_ms + 1) * tick_ms
            while clock >= next_tick:
                for p, mm in monitors.items():
                    fs = mm.tick(next_tick)
                    if fs:
                        out(p, fs)
                next_tick += tick_ms
        n += 1
        fs = m.update(sig, ts, value)
        if fs:
            out(pid, fs)
    return ReplayResult(alerts, n, time.perf_counter() - t0, monitors, Counter())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT.csv", help="CSV with header ts,patient_id,signal,value,unit")
    parser.add_argument("--out", default="alerts.jsonl", help="JSON-lines output (default alerts.jsonl)")
    parser.add_argument("--overrides", metavar="JSON",
                        help='per-patient settings: {"patient_id": {"glucose_low_mgdl": 75}, ...}')
    parser.add_argument("--tick-s", type=float, default=60.0,
                        help="stream-time interval of stale-sensor checks (default 60)")
    parser.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    parser.add_argument("--clinical-only", action="store_true",
                        help="write only clinical findings (drop device findings)")


def run(args: argparse.Namespace) -> int:
    import orjson

    from wearwatch.errors import WearwatchError

    if not os.path.exists(args.input):
        raise WearwatchError(f"input file not found: {args.input}")
    overrides: dict[str, dict[str, Any]] = {}
    if args.overrides:
        with open(args.overrides, "rb") as fo:
            overrides = orjson.loads(fo.read())
    errors: Counter[str] = Counter()
    prog = _Progress(os.path.getsize(args.input), enabled=not args.no_progress)
    clinical_only = bool(args.clinical_only)
    with open(args.out, "wb") as fout:
        write = fout.write
        dumps = orjson.dumps

        def sink(rec: dict[str, Any]) -> None:
            if clinical_only and rec["audience"] != "clinical":
                return
            write(dumps(rec) + b"\n")

        try:
            res = replay(
                read_csv(args.input, errors=errors, progress=prog.update),
                overrides=overrides, tick_ms=int(args.tick_s * 1000), sink=sink,
            )
        except ValueError as exc:
            raise WearwatchError(str(exc)) from exc
        finally:
            prog.close()
    res.errors = errors
    print(res.summary())
    print(f"alerts written to {args.out}")
    log.info("replay done: %d readings, %d findings", res.readings, len(res.alerts))
    return 0
