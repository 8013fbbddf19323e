"""``wearwatch replay``: run the detectors over a CSV of readings, offline.

Input: a CSV (read with the ``csv`` module: quoting works) whose header starts
with ``ts,patient_id,signal,value,unit``. ``ts`` is RFC 3339 (the contract's
policy, :mod:`wearwatch.contract.times`) or epoch seconds (numbers above 1e11
are taken as epoch milliseconds); signals ``heart_rate|glucose|steps``, units
``bpm|mg/dL|mmol/L|steps`` (mmol/L × 18.016 → mg/dL). Many patients
interleaved, normally sorted by ts; out-of-order rows are handled by the
detectors' lateness policy (see :mod:`detectors.monitor`).

Every row is checked with the gateway's own contract
(:func:`ingest.contract.validate_item`): what the gateway would dead-letter is
skipped here and counted under the same reason as on ``vitals.dlq``
(``bad_patient_id``, ``bad_value``, ``value_out_of_range``, ``unit_mismatch``,
``bad_ts``, …), shown in the summary. One rule differs, on purpose: the window
around the wall clock (``ts_in_future``, ``ts_too_old``) is not applied, since
replaying history is the point.

Output: JSON lines, one per finding (opened or resolved), with ``patient_id``,
``signal``, ``kind``, ``priority``, ``audience``, ``state`` (open/resolved),
``ts_ms`` and ``ts`` (when it fired, event time), ``onset_ms`` and the
``explanation``. The file is written next to its final place and renamed over
it at the end (``os.replace``): a run that fails leaves an existing ``--out``
as it was. The same :class:`detectors.PatientMonitor` code runs here and in the
stream worker. Time-driven checks (stale sensors) run every ``--tick-s``
seconds of stream time for every patient.

Bad input (a missing or unreadable file, a wrong header, ``--out`` in a folder
that does not exist, malformed ``--overrides``) ends the command with one line
on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import pickle
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from alerts.enrollment import check_overrides
from detectors import DetectorConfig, PatientMonitor
from ingest.contract import validate_item
from tools.files import write_atomically
from wearwatch.contract.ids import ID_RULE, is_patient_id
from wearwatch.contract.times import format_rfc3339
from wearwatch.errors import ConfigError, InvalidReading, WearwatchError

__all__ = [
    "COLUMNS",
    "ReplayResult",
    "add_arguments",
    "finding_record",
    "load_overrides",
    "parse_ts",
    "read_csv",
    "replay",
    "run",
]

log = logging.getLogger(__name__)

#: the columns a replay CSV starts with
COLUMNS = ("ts", "patient_id", "signal", "value", "unit")

Row = tuple[int, str, str, float]


def parse_ts(text: str) -> int | str:
    """A CSV ``ts`` cell as the contract takes it: epoch seconds or ms → int ms, anything else stays text.

    Text is left for the contract's RFC 3339 parser (which also refuses it, with the
    dead-letter reason ``bad_ts``, when it is not a time stamp).

    >>> parse_ts("1767571200"), parse_ts("1767571200.5"), parse_ts("1767571200000"), parse_ts("2026-01-05T00:00:00Z")
    (1767571200000, 1767571200500, 1767571200000, '2026-01-05T00:00:00Z')
    """
    if text[4:5] == "-":  # a date: skip the float attempt (its exception costs more than the row's checks)
        return text
    try:
        x = float(text)
    except ValueError:
        return text
    if not math.isfinite(x):
        return text  # "nan", "inf": the contract says bad_ts
    return round(x) if abs(x) > 1e11 else round(x * 1000)


@dataclass
class _Progress:
    total: int
    stream: IO[str] = field(default_factory=lambda: sys.stderr)  # the current stderr, not the one at import
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


def _value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text  # the contract says bad_value ("value must be a number")


def read_csv(
    path: str,
    *,
    errors: Counter[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[Row]:
    """Yield ``(ts_ms, patient_id, signal, value_canonical)`` from a replay CSV.

    Each row passes the gateway's contract (:func:`ingest.contract.validate_item`,
    without the wall-clock window); the others are skipped and counted in ``errors``
    by their dead-letter reason (logged at DEBUG with their line number only).
    Raises :class:`~wearwatch.errors.WearwatchError` for a file that cannot be read,
    is not UTF-8, or does not start with the header :data:`COLUMNS`.
    """
    errs = errors if errors is not None else Counter()
    chars = 0

    def lines(f: IO[str]) -> Iterator[str]:
        nonlocal chars
        for line in f:
            chars += len(line)
            yield line

    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(lines(f))
            header = next(reader, None)
            if header is None:
                raise WearwatchError(f"{path}: empty file (expected the header {','.join(COLUMNS)})")
            cols = tuple(c.strip() for c in header[:len(COLUMNS)])
            if cols != COLUMNS:
                raise WearwatchError(f"{path}: the header must start with {','.join(COLUMNS)}, "
                                     f"got {','.join(header)[:80]!r}")
            rows = 0
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) < len(COLUMNS):
                    errs["missing_field"] += 1
                    log.debug("line %d: %d fields, %d expected", reader.line_num, len(row), len(COLUMNS))
                    continue
                item = {"ts": parse_ts(row[0]), "patient_id": row[1], "signal": row[2], "value": _value(row[3]),
                        "unit": row[4]}
                try:
                    pid, sig, value, ts, _seq, _src = validate_item(item, None)
                except InvalidReading as exc:
                    errs[exc.reason] += 1
                    log.debug("line %d: %s", reader.line_num, exc.reason)
                    continue
                rows += 1
                if progress is not None and rows & 0x3FFF == 0:
                    progress(chars, rows)
                yield ts, pid, sig, value
            if progress is not None:
                progress(chars, rows)
    except UnicodeDecodeError as exc:
        raise WearwatchError(f"{path}: not UTF-8 text (byte {exc.start} of a chunk)") from None
    except csv.Error as exc:
        raise WearwatchError(f"{path}: malformed CSV: {exc}") from None
    except OSError as exc:
        raise WearwatchError(f"{path}: cannot read: {exc.strerror or exc}") from None


def finding_record(patient_id: str, f: Any) -> dict[str, Any]:
    """The JSON object written for one finding.

    >>> from detectors import PatientMonitor
    >>> fs = PatientMonitor().update("glucose", 1_767_571_200_000, 50.0)
    >>> r = finding_record("p1", fs[0])
    >>> r["kind"], r["priority"], r["state"], r["ts"]
    ('glucose_urgent_low', 'high', 'open', '2026-01-05T00:00:00.000Z')
    """
    return {
        "patient_id": patient_id,
        "signal": f.signal,
        "kind": f.kind,
        "priority": f.priority.value,
        "audience": f.audience.value,
        "state": "resolved" if f.cleared else "open",
        "ts_ms": f.ts_ms,
        "ts": format_rfc3339(f.ts_ms),
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
            lines.append(f"rows refused by the device contract (as vitals.dlq would): {sum(self.errors.values()):,} — "
                         + ", ".join(f"{k} {v:,}" for k, v in sorted(self.errors.items())))
        else:
            lines.append("rows refused by the device contract: 0")
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


def load_overrides(text: str) -> dict[str, dict[str, Any]]:
    """``--overrides``: a JSON file's path, or the JSON itself (text starting with ``{``).

    ``{"patient_id": {"glucose_low_mgdl": 75}, ...}``; every patient id and setting is
    checked (the enrollment file's rules). Raises :class:`~wearwatch.errors.ConfigError`.

    >>> load_overrides('{"p-1": {"glucose_low_mgdl": 75}}')
    {'p-1': {'glucose_low_mgdl': 75}}
    >>> load_overrides('{"p-1": 75}')
    Traceback (most recent call last):
    ...
    wearwatch.errors.ConfigError: --overrides: p-1: overrides must be a JSON object
    """
    stripped = text.strip()
    if stripped.startswith("{"):
        raw, where = stripped.encode(), "--overrides"
    else:
        try:
            raw, where = Path(text).read_bytes(), f"--overrides {text}"
        except OSError as exc:
            raise ConfigError(f"--overrides {text}: cannot read ({exc.strerror or exc}); give a JSON file or "
                              "inline JSON such as '{\"p-1\": {\"glucose_low_mgdl\": 75}}'") from None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: must be a JSON object of patient id -> settings")
    out: dict[str, dict[str, Any]] = {}
    for pid, settings in doc.items():
        if not is_patient_id(pid):
            raise ConfigError(f"{where}: patient ids must be {ID_RULE}")
        out[pid] = dict(check_overrides(settings, f"{where}: {pid}"))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT.csv", help="CSV whose header starts ts,patient_id,signal,value,unit")
    parser.add_argument("--out", type=Path, default=Path("alerts.jsonl"),
                        help="JSON-lines output (default alerts.jsonl), replaced only when the run succeeds")
    parser.add_argument("--overrides", metavar="FILE|JSON",
                        help='per-patient detector settings, a JSON file or inline JSON: '
                             '\'{"patient_id": {"glucose_low_mgdl": 75}, ...}\'')
    parser.add_argument("--tick-s", type=float, default=60.0,
                        help="stream-time interval of stale-sensor checks (default 60)")
    parser.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    parser.add_argument("--clinical-only", action="store_true",
                        help="write only clinical findings (drop device findings)")


def run(args: argparse.Namespace) -> int:
    src = Path(args.input)
    if not src.is_file():
        raise WearwatchError(f"input file not found: {src}" if not src.exists() else f"{src}: not a file")
    if not (args.tick_s > 0 and math.isfinite(args.tick_s)):
        raise ConfigError("--tick-s must be a positive number of seconds")
    overrides = load_overrides(args.overrides) if args.overrides else {}
    out: Path = args.out
    errors: Counter[str] = Counter()
    prog = _Progress(src.stat().st_size, enabled=not args.no_progress)
    clinical_only = bool(args.clinical_only)
    result: list[ReplayResult] = []

    def produce(fout: IO[bytes]) -> None:
        write = fout.write
        dumps = orjson.dumps

        def sink(rec: dict[str, Any]) -> None:
            if clinical_only and rec["audience"] != "clinical":
                return
            write(dumps(rec) + b"\n")

        try:
            result.append(replay(read_csv(str(src), errors=errors, progress=prog.update), overrides=overrides,
                                 tick_ms=int(args.tick_s * 1000), sink=sink))
        finally:
            prog.close()

    write_atomically(out, produce)
    res = result[0]
    res.errors = errors
    print(res.summary())
    print(f"alerts written to {out}")
    log.info("replay done: %d readings, %d findings, %d rows refused", res.readings, len(res.alerts),
             sum(errors.values()))
    return 0
