"""Per-patient state kept in the worker's Faust table (one entry per patient; stored form: :mod:`streams.state_codec`).

Pure Python, no faust import: :mod:`streams.processing` drives it and the
unit tests exercise it directly.

Ordering rules (the lateness tolerance, also in the README):

* A reading whose (signal, second) was already seen within the last
  ``LATENESS_S`` seconds of that signal is a **duplicate** and is dropped
  (re-delivery after a gateway or worker restart, device re-sync overlaps).
* A reading more than ``LATENESS_S`` seconds older than the newest reading of
  its signal is **too late**: it is recorded on the dead-letter topic with
  reason ``too_late`` and touches no state.
* Anything else is used, in arrival order: detectors handle modest disorder.

Before those rules, a reading read again from Kafka (after a crash or a
rebalance the worker resumes at the committed offsets, behind what the stored
state already holds) is recognised as a **replay** by the record's position: the
state keeps, per ``vitals.raw`` partition, the offset of the last record whose
readings for this patient it folded in (:meth:`PatientState.replayed`). Records
of one partition are processed in offset order (``streams.offsets.GapGuard``), so
an offset at or below it is one the state holds, however old its readings are.
"""

from __future__ import annotations

import sys
from array import array
from dataclasses import dataclass
from typing import Any

from detectors.episodes import shared_time

__all__ = ["LATENESS_S", "MinuteAggregate", "PatientState"]

#: How far behind the newest reading of a signal a reading may arrive and still be used.
LATENESS_S = 600
_MINUTE_MS = 60_000
#: A minute is closed (written out) once stream time is this far past its end.
MINUTE_GRACE_MS = 120_000
_NEVER = 2**62
_WINDOW_MASK = (1 << LATENESS_S) - 1
#: a minute bucket is one row of the state's bucket array: signal (its index in _SIGNALS), minute_ms, sum,
#: min, max, count, changed since last written (1.0) or not (0.0)
_ROW = 7
#: the signals of the buckets' rows by index (the contract's three; another name is added when first seen)
_SIGNALS: list[str] = ["heart_rate", "glucose", "steps"]
_SIGNAL_INDEX: dict[str, float] = {s: float(i) for i, s in enumerate(_SIGNALS)}


def _signal_index(signal: str) -> float:
    i = _SIGNAL_INDEX.get(signal)
    if i is None:
        i = _SIGNAL_INDEX[signal] = float(len(_SIGNALS))
        _SIGNALS.append(signal)
    return i


@dataclass(frozen=True, slots=True)
class MinuteAggregate:
    """One point of the ``vitals_1m`` series."""

    signal: str
    minute_ms: int
    mean: float
    min: float
    max: float
    sum: float
    count: int


class _SeenSeconds:
    """A bitmap of the seconds that already hold a reading, over the lateness window (how states pickled by
    earlier workers hold it; a live state keeps the pair in :attr:`PatientState.seen`'s flat list)."""

    __slots__ = ("bits", "newest_s")

    def __init__(self) -> None:
        self.newest_s = -1
        self.bits = 0  # bit i set <=> second (newest_s - i) holds a reading

    def classify(self, ts_s: int) -> str:
        """'new', 'duplicate' or 'late' — and remember it when new."""
        if self.newest_s < 0:
            self.newest_s, self.bits = ts_s, 1
            return "new"
        if ts_s > self.newest_s:
            shift = ts_s - self.newest_s
            self.bits = ((self.bits << shift) | 1) & ((1 << LATENESS_S) - 1) if shift < LATENESS_S else 1
            self.newest_s = ts_s
            return "new"
        age = self.newest_s - ts_s
        if age >= LATENESS_S:
            return "late"
        if self.bits >> age & 1:
            return "duplicate"
        self.bits |= 1 << age
        return "new"

    def dump_state(self) -> tuple[int, int]:
        """``(newest_s, bits)``: what :class:`PatientState` pickles (:meth:`from_state` is the inverse)."""
        return (self.newest_s, self.bits)

    @classmethod
    def from_state(cls, state: tuple[int, int]) -> _SeenSeconds:
        """Inverse of :meth:`dump_state`."""
        seen = cls.__new__(cls)
        seen.newest_s, seen.bits = state
        return seen

    def __getstate__(self) -> tuple[int, int]:
        return self.dump_state()

    def __setstate__(self, state: tuple[int, int]) -> None:
        self.newest_s, self.bits = state


class PatientState:
    """Everything the worker remembers about one patient.

    ``monitor`` is the detectors' :class:`~detectors.PatientMonitor` (any object
    with ``update(signal, ts_ms, value)`` and ``tick(now_ms)`` works).
    """

    __slots__ = ("_buckets", "_due_ms", "_more", "_offset", "_partition", "_seen", "book", "monitor", "newest_ms")

    def __init__(self, monitor: Any, book: Any = None) -> None:
        self.monitor = monitor
        #: the patient's :class:`~alerts.lifecycle.AlertBook` (alert lifecycle)
        self.book = book
        # per signal, in the order first seen: the signal, its newest second and a bitmap of the seconds that hold
        # a reading over the lateness window (bit i <=> newest - i); one flat list: a dict of a bitmap object
        # per signal cost ~250 B more in every state (see :attr:`seen`, the stored form's view)
        self._seen: list[Any] = []
        # the open minutes, one row of _ROW doubles each, oldest first: a worker holds one state per
        # patient, and a dict of tuples, lists and floats cost ~4 times the bytes (see :attr:`buckets`)
        self._buckets = array("d")
        self.newest_ms = 0  # newest reading time over all signals (stream time)
        # vitals.raw partition and offset of the last record whose readings for this patient are folded in
        # (-1: none), and those of further partitions (None: none): a patient's records all go to the partition
        # its id hashes to, and a dict of that one entry cost ~250 B in every state (see :attr:`positions`)
        self._partition = -1
        self._offset = -1
        self._more: dict[int, int] | None = None
        # Stream time at which the earliest open minute closes; None = not known (recomputed on demand).
        # A cache, not state: close_minutes runs after every reading and would otherwise sort the buckets.
        self._due_ms: int | None = None

    @property
    def buckets(self) -> dict[tuple[str, int], list[float]]:
        """The open minutes: ``(signal, minute_ms) -> [sum, min, max, count, changed-since-written]``
        (a copy, in the order they were opened; assigning one replaces them: the stored form)."""
        rows = self._buckets
        return {(_SIGNALS[int(rows[j])], int(rows[j + 1])): rows[j + 2:j + _ROW].tolist()
                for j in range(0, len(rows), _ROW)}

    @buckets.setter
    def buckets(self, buckets: dict[tuple[str, int], list[float]]) -> None:
        rows = array("d")
        for (signal, minute), b in buckets.items():
            rows.append(_signal_index(signal))
            rows.append(minute)
            rows.extend(b)
        self._buckets = rows[:]  # at its exact size (an array grown a value at a time keeps spare room)
        self._due_ms = None

    @property
    def positions(self) -> dict[int, int]:
        """``vitals.raw`` partition -> offset of the last record whose readings for this patient are folded in
        (a copy, in the order the partitions were first seen; assigning one replaces them: the stored form)."""
        out = {} if self._partition < 0 else {self._partition: self._offset}
        if self._more:
            out.update(self._more)
        return out

    @positions.setter
    def positions(self, positions: dict[int, int]) -> None:
        items = iter(positions.items())
        self._partition, self._offset = next(items, (-1, -1))
        self._more = dict(items) or None

    def replayed(self, partition: int, offset: int) -> bool:
        """Whether the record at ``offset`` of ``partition`` was already folded into this state."""
        if partition == self._partition:
            return offset <= self._offset
        more = self._more
        return more is not None and offset <= more.get(partition, -1)

    def fold_position(self, partition: int, offset: int) -> None:
        """The record at ``offset`` of ``partition`` is folded in (call after its last reading)."""
        if partition == self._partition:
            if offset > self._offset:
                self._offset = offset
        elif self._partition < 0:
            self._partition, self._offset = partition, offset
        else:
            more = self._more
            if more is None:
                more = self._more = {}
            if offset > more.get(partition, -1):
                more[partition] = offset

    @property
    def seen(self) -> dict[str, tuple[int, int]]:
        """``signal -> (newest second, bitmap)`` in the order the signals were first seen (a copy; assigning one
        replaces them: the stored form)."""
        seen = self._seen
        return {seen[j]: (seen[j + 1], seen[j + 2]) for j in range(0, len(seen), 3)}

    @seen.setter
    def seen(self, seen: dict[str, Any]) -> None:
        flat: list[Any] = []
        for signal, s in seen.items():
            newest, bits = s.dump_state() if isinstance(s, _SeenSeconds) else s
            flat.extend((sys.intern(signal), newest, bits))
        self._seen = flat[:]  # at its exact size (a list grown a few items at a time keeps spare room)

    def knows(self, signal: str) -> bool:
        """Whether a reading of ``signal`` was ever admitted."""
        return signal in self._seen[::3]

    def admit(self, signal: str, ts_ms: int) -> str:
        """Classify a reading as 'new', 'duplicate' or 'late' (see module docs) — and remember it when new."""
        ts_s = ts_ms // 1000
        seen = self._seen
        j = 0
        n = len(seen)
        while j < n and seen[j] != signal:  # two or three signals: a short walk
            j += 3
        if j == n:  # a signal's first reading: the list made anew at its exact size (a list extended keeps room)
            self._seen = seen + [sys.intern(signal), ts_s, 1]  # noqa: RUF005 (unpacking would keep spare room)
            return "new"
        newest = seen[j + 1]
        if newest < 0:
            seen[j + 1], seen[j + 2] = ts_s, 1
            return "new"
        if ts_s > newest:
            shift = ts_s - newest
            seen[j + 2] = ((seen[j + 2] << shift) | 1) & _WINDOW_MASK if shift < LATENESS_S else 1
            seen[j + 1] = ts_s
            return "new"
        age = newest - ts_s
        if age >= LATENESS_S:
            return "late"
        bits = seen[j + 2]
        if bits >> age & 1:
            return "duplicate"
        seen[j + 2] = bits | 1 << age
        return "new"

    def aggregate(self, signal: str, ts_ms: int, value: float) -> bool:
        """Add a reading to its 1-minute bucket; False if stream time already closed that minute."""
        minute = ts_ms - ts_ms % _MINUTE_MS
        if minute + _MINUTE_MS + MINUTE_GRACE_MS <= self.newest_ms:
            return False
        rows = self._buckets
        sig = _SIGNAL_INDEX.get(signal)
        if sig is None:
            sig = _signal_index(signal)
        j = len(rows) - _ROW
        while j >= 0 and (rows[j + 1] != minute or rows[j] != sig):  # newest first: usually the first row tried
            j -= _ROW
        if j < 0:  # a new minute: the rows made anew at their exact size (an array extended keeps spare room)
            self._buckets = rows + array("d", (sig, minute, value, value, value, 1.0, 1.0))
            due = minute + _MINUTE_MS + MINUTE_GRACE_MS
            if self._due_ms is not None and due < self._due_ms:
                self._due_ms = shared_time(due)
        else:
            rows[j + 2] += value
            if value < rows[j + 3]:
                rows[j + 3] = value
            if value > rows[j + 4]:
                rows[j + 4] = value
            rows[j + 5] += 1.0
            rows[j + 6] = 1.0  # changed since last written
        if ts_ms > self.newest_ms:
            self.newest_ms = ts_ms
        return True

    def close_minutes(self, force: bool = False) -> list[MinuteAggregate]:
        """The aggregates to write: minutes stream time has moved past (removed), and with
        ``force`` (the patient went silent) also the open ones, which are kept so that
        readings arriving later still join them and the point is rewritten in full —
        never overwritten by a partial second half."""
        rows = self._buckets
        if not force:
            if self._due_ms is None:
                # a minute's boundary, the same for a worker's patients: one object for all of them
                self._due_ms = shared_time(int(min(rows[1::_ROW], default=_NEVER - _MINUTE_MS - MINUTE_GRACE_MS)
                                               ) + _MINUTE_MS + MINUTE_GRACE_MS)
            if self.newest_ms < self._due_ms:
                return []
        self._due_ms = None
        out: list[MinuteAggregate] = []
        gone: list[int] = []
        newest = self.newest_ms
        for signal, minute, j in sorted((_SIGNALS[int(rows[j])], int(rows[j + 1]), j)
                                        for j in range(0, len(rows), _ROW)):
            closed = minute + _MINUTE_MS + MINUTE_GRACE_MS <= newest
            if closed:
                gone.append(j)
            if (closed or force) and rows[j + 6]:
                rows[j + 6] = 0.0
                total, count = rows[j + 2], rows[j + 5]
                out.append(MinuteAggregate(signal, minute, total / count, rows[j + 3], rows[j + 4], total,
                                           int(count)))
        if gone:
            for j in sorted(gone, reverse=True):
                del rows[j:j + _ROW]
            self._buckets = rows[:]  # at its exact size: deleting rows leaves their room allocated
        return out

    def has_unwritten(self) -> bool:
        """Whether some open minute changed since it was last written."""
        return any(self._buckets[6::_ROW])

    # The plain pickle of a state: the stored form of version 0, which earlier workers wrote and
    # read (streams.state_codec still reads it, and writes it in the first phase of an upgrade).
    # Pickle pays about 1 µs for each object it saves through __reduce_ex__/__getstate__: the
    # per-signal bitmaps go in as plain (newest_s, bits) pairs, and the state as one call of _restore_state.
    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_state, (self.monitor, self.book, self.seen, self.buckets, self.newest_ms, self.positions))


def _restore_state(
    monitor: Any, book: Any, seen: dict[str, tuple[int, int]], buckets: dict[tuple[str, int], list[float]],
    newest_ms: int, positions: dict[int, int] | None = None,
) -> PatientState:
    """Inverse of :meth:`PatientState.__reduce__` (``positions`` is absent from states stored before
    replays were told apart: every record is then new to them, as it was)."""
    st = PatientState(monitor, book)
    st.seen = seen
    st.buckets = buckets
    st.newest_ms = newest_ms
    st.positions = positions if positions is not None else {}
    return st  # _due_ms stays None: recomputed from the buckets on first use
