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
from detectors.episodes import PicklesWithConfig

__all__ = ["ActivityTracker"]

_SLOTS = 16
_MIN = 60_000
#: a new ring's minutes (epoch minutes fit 4 bytes until the year 6053: a minute beyond, or before 1970 by as
#: much, turns the ring into 8-byte integers: see update and _minutes)
_NO_MINUTES = array("i", [-1] * _SLOTS)
_I32 = 2**31
#: the step counts of a tracker that has none yet (shared: replaced, never changed, on the first reading)
_NO_STEPS: array[Any] = array("d")


def _whole(x: float) -> bool:
    """Whether a count is kept exactly as a 4-byte integer (a whole, non-negative count; not -0.0)."""
    return 0.0 <= x < _I32 and x == int(x) and (x != 0 or math.copysign(1.0, x) > 0)


def _minutes(minutes: list[int]) -> array[int]:
    """A ring's minutes as 4-byte integers, or 8-byte ones if one does not fit."""
    try:
        return array("i", minutes)
    except OverflowError:
        return array("q", minutes)


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

    # one per patient in a worker: slots, and the ring as arrays (4 bytes a minute, 8 a count)
    __slots__ = ("_cache_key", "_cache_val", "_minute", "_steps", "config")

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._minute: array[int] | None = None
        # the counts as 4-byte integers while every one is a whole count (step counts are), else doubles
        self._steps: array[Any] = _NO_STEPS
        self._cache_key = -1
        self._cache_val = False

    def _init(self) -> None:
        self._minute = array("i", _NO_MINUTES)
        self._steps = array("i", bytes(4 * _SLOTS))

    def update(self, ts_ms: int, steps: float) -> None:
        """Record the step count of the minute containing ``ts_ms``."""
        if self._minute is None:
            self._init()
        assert self._minute is not None
        m = ts_ms // _MIN
        i = m % _SLOTS
        minute = self._minute
        if minute[i] > m:  # older than the ring covers
            return
        if not -_I32 <= m < _I32 and minute.typecode == "i":
            minute = self._minute = array("q", minute)
        minute[i] = m
        counts = self._steps
        if counts.typecode == "i":
            whole = int(steps) if 0.0 <= steps < _I32 else -1  # not NaN, not negative, fits
            if whole == steps and (whole or math.copysign(1.0, steps) > 0):
                counts[i] = whole
            else:  # a fraction, a negative zero or too large: doubles from now on
                counts = self._steps = array("d", counts)
                counts[i] = steps
        else:
            counts[i] = steps
        self._cache_key = -1

    def steps_in_window(self, ts_ms: int) -> float:
        """Steps recorded in the minutes of ``[ts - rest_window, ts]``."""
        if self._minute is None:
            return 0.0
        m1 = ts_ms // _MIN
        n = min(int(self.config.rest_window_s // 60) + 1, _SLOTS)
        total = 0.0
        minute, steps = self._minute, self._steps
        for m in range(m1 - n + 1, m1 + 1):
            i = m % _SLOTS
            if minute[i] == m:
                total += steps[i]
        return total

    def coverage(self, ts_ms: int) -> float:
        """Fraction of the window's minutes (excluding the current one) that have step data."""
        if self._minute is None:
            return 0.0
        m1 = ts_ms // _MIN
        n = min(int(self.config.rest_window_s // 60), _SLOTS - 1)
        minute = self._minute
        have = 0
        for m in range(m1 - n, m1):
            if minute[m % _SLOTS] == m:
                have += 1
        return have / n if n else 1.0

    def at_rest(self, ts_ms: int) -> bool:
        """True if step data covers the window and shows (almost) no steps."""
        key = ts_ms // _MIN
        if key == self._cache_key:
            return self._cache_val
        cfg = self.config
        val = (
            self._minute is not None
            and self.coverage(ts_ms) >= cfg.rest_min_coverage
            and self.steps_in_window(ts_ms) <= cfg.rest_max_steps
        )
        self._cache_key = key
        self._cache_val = val
        return val

    # -- pickling: builtins only (see PatientMonitor.__reduce__) ---------------------
    def dump_state(self) -> tuple[Any, ...]:
        """The state without the config, as builtins only (:meth:`load_state` is the inverse)."""
        minute = self._minute
        counts = self._steps
        return (None if minute is None else minute.tolist(),
                [float(x) for x in counts] if counts.typecode == "i" else counts.tolist())

    def load_state(self, config: DetectorConfig, s: tuple[Any, ...]) -> None:
        """Set config and state from :meth:`dump_state` (also on an instance made by ``__new__``)."""
        self.config = config
        minute, steps = s
        self._minute = None if minute is None else _minutes(minute)
        self._steps = (array("i", [int(x) for x in steps]) if all(type(x) is float and _whole(x) for x in steps)
                       else array("d", steps)) if steps else _NO_STEPS
        self._cache_key = -1
        self._cache_val = False

