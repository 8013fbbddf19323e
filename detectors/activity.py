"""Activity from step counts: is the patient at rest around a given time?

Step readings are counts per reading interval (usually one per minute, stamped
at the start of the minute). They are kept by minute in a 16-slot ring, so a
late, duplicated or re-sent minute simply overwrites its slot: the tracker is
insensitive to order and duplicates by construction.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

from detectors.config import DetectorConfig
from detectors.episodes import PicklesWithConfig, shared_time, shared_time_if_known

__all__ = ["ActivityTracker"]

_SLOTS = 16
_MIN = 60_000
#: a new ring: each slot's minute (-1: none), then each slot's step count, as 4-byte integers (epoch minutes fit
#: until the year 6053, step counts are whole): a minute that does not fit, or a count that is not whole, turns
#: the ring into doubles (exact for every minute of an epoch-millisecond time and for every count; see update)
_NO_RING = array("i", [-1] * _SLOTS + [0] * _SLOTS)
_I32 = 2**31


def _whole(x: float) -> bool:
    """Whether a count is kept exactly as a 4-byte integer (a whole, non-negative count; not -0.0)."""
    return 0.0 <= x < _I32 and x == int(x) and (x != 0 or math.copysign(1.0, x) > 0)


class ActivityTracker(PicklesWithConfig):
    """Steps per minute over the last 16 minutes and the "at rest" test.

    Parameters
    ----------
    config
        Uses ``rest_max_steps``, ``rest_window_s`` and ``rest_min_coverage``.

    Examples
    --------
    >>> a = ActivityTracker()
    >>> for m in range(12):
    ...     a.update(m * 60_000, 0.0)
    >>> a.at_rest(12 * 60_000)
    True
    >>> a.update(11 * 60_000, 80.0)  # a late, corrected minute overwrites its slot
    >>> a.at_rest(12 * 60_000), a.steps_in_window(12 * 60_000)
    (False, 80.0)
    >>> ActivityTracker().at_rest(0)  # no step data: activity unknown, not "at rest"
    False
    """

    # one per patient in a worker: slots, and the ring as one array (minutes, then counts; 4 bytes each)
    __slots__ = ("_cache_key", "_cache_val", "_ring", "config")

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        #: each slot's minute, then each slot's step count (None until the first reading): 4-byte integers
        #: while every minute fits and every count is whole (step counts are), else doubles
        self._ring: array[Any] | None = None
        self._cache_key = -1
        self._cache_val = False

    def update(self, ts_ms: int, steps: float) -> None:
        """Record the step count of the minute containing ``ts_ms``."""
        ring = self._ring
        if ring is None:
            ring = self._ring = array("i", _NO_RING)
        m = ts_ms // _MIN
        i = m % _SLOTS
        if ring[i] > m:  # older than the ring covers
            return
        if ring.typecode == "i":
            whole = int(steps) if 0.0 <= steps < _I32 else -1  # not NaN, not negative, fits
            if -_I32 <= m < _I32 and whole == steps and (whole or math.copysign(1.0, steps) > 0):
                ring[i] = m
                ring[_SLOTS + i] = whole
                self._cache_key = -1
                return
            # a minute beyond 4 bytes, a fraction, a negative zero or too large a count: doubles from now on
            wide: array[Any] = array("d", ring)
            self._ring = wide
        else:
            wide = ring
        wide[i] = m
        wide[_SLOTS + i] = steps
        self._cache_key = -1

    def steps_in_window(self, ts_ms: int) -> float:
        """Steps recorded in the minutes of ``[ts - rest_window, ts]``."""
        ring = self._ring
        if ring is None:
            return 0.0
        m1 = ts_ms // _MIN
        n = min(int(self.config.rest_window_s // 60) + 1, _SLOTS)
        total = 0.0
        for m in range(m1 - n + 1, m1 + 1):
            i = m % _SLOTS
            if ring[i] == m:
                total += ring[_SLOTS + i]
        return total

    def coverage(self, ts_ms: int) -> float:
        """Fraction of the window's minutes (excluding the current one) that have step data."""
        ring = self._ring
        if ring is None:
            return 0.0
        m1 = ts_ms // _MIN
        n = min(int(self.config.rest_window_s // 60), _SLOTS - 1)
        have = 0
        for m in range(m1 - n, m1):
            if ring[m % _SLOTS] == m:
                have += 1
        return have / n if n else 1.0

    def at_rest(self, ts_ms: int) -> bool:
        """True if step data covers the window and shows (almost) no steps."""
        key = ts_ms // _MIN
        if key == self._cache_key:
            return self._cache_val
        cfg = self.config
        val = (
            self._ring is not None
            and self.coverage(ts_ms) >= cfg.rest_min_coverage
            and self.steps_in_window(ts_ms) <= cfg.rest_max_steps
        )
        self._cache_key = shared_time_if_known(key) or shared_time(key)  # every patient's at this minute: one object
        self._cache_val = val
        return val

    # -- pickling: builtins only (see PatientMonitor.__reduce__) ---------------------
    def dump_state(self) -> tuple[Any, ...]:
        """The state without the config, as builtins only (:meth:`load_state` is the inverse)."""
        ring = self._ring
        if ring is None:
            return (None, [])
        if ring.typecode == "i":
            return (ring[:_SLOTS].tolist(), [float(x) for x in ring[_SLOTS:]])
        return ([int(m) for m in ring[:_SLOTS]], ring[_SLOTS:].tolist())

    def load_state(self, config: DetectorConfig, s: tuple[Any, ...]) -> None:
        """Set config and state from :meth:`dump_state` (also on an instance made by ``__new__``)."""
        self.config = config
        minute, steps = s
        if minute is None:
            if steps:
                raise ValueError(f"activity state with step counts {steps} and no minutes")
            self._ring = None
        elif len(minute) != _SLOTS or len(steps) != _SLOTS:
            raise ValueError(f"activity state with {len(minute)} minutes and {len(steps)} step counts")
        elif all(-_I32 <= m < _I32 for m in minute) and all(type(x) is float and _whole(x) for x in steps):
            self._ring = array("i", [*minute, *(int(x) for x in steps)])
        else:
            self._ring = array("d", [*minute, *steps])
        self._cache_key = -1
        self._cache_val = False
