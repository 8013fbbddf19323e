"""One patient's detectors behind one object: :class:`PatientMonitor`.

This is what the stream worker keeps per patient (pickled in a Faust table)
and what ``wearwatch replay`` runs offline: the same code in both places.

Timing and ordering policy
--------------------------
* Time is the device's measurement time (``ts_ms``), never the arrival time.
* Per signal, a reading with the same timestamp and value as the newest one is
  a **duplicate** and ignored (re-sent after a re-sync).
* A reading older than the newest one of its signal is **late**. Within
  ``lateness_s`` (default 600 s, the worker's tolerance too) steps readings are
  applied normally (they are kept per minute), a late glucose value below the
  urgent-low threshold still opens an urgent-low episode, and other late
  readings are counted and skipped by the causal filters. Beyond ``lateness_s``
  they are dropped.
* **Bursts** after a device re-sync arrive in time order and are processed as
  a fast-forward of event time: sustained timers measure event time, so a
  10-minute episode inside the backlog is detected with its true onset.
* **Gaps** longer than ``hr_max_gap_s``/``glucose_max_gap_s`` restart the
  filters and any sustained timer that has not fired yet; a silent device is
  reported by :meth:`PatientMonitor.tick` as ``sensor_stale``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypeVar

from detectors.activity import ActivityTracker
from detectors.base import Finding
from detectors.config import DetectorConfig
from detectors.episodes import DEFAULT_CONFIG, config_diff, config_from_diff
from detectors.glucose import GlucoseDetector
from detectors.heart_rate import HeartRateDetector
from detectors.models import GlucoseVariabilityModel, RestingHeartRateModel
from detectors.quality import DeviceQuality

__all__ = ["PatientMonitor"]

_INDEX = {"heart_rate": 0, "glucose": 1, "steps": 2}


class PatientMonitor:
    """All detectors of one patient: rules, device checks and per-patient models.

    Parameters
    ----------
    config
        Thresholds; build per-patient ones with :meth:`DetectorConfig.with_overrides`.
        The constructor only stores it: learned state is created on the first reading.

    Examples
    --------
    >>> import pickle
    >>> m = PatientMonitor()
    >>> fs = []
    >>> for i, v in enumerate([110, 95, 80, 66, 52, 49, 51, 60, 72, 85, 95, 100, 104]):
    ...     fs += m.update("glucose", i * 300_000, float(v))
    >>> [(f.kind, f.cleared) for f in fs if f.kind == "glucose_urgent_low"]
    [('glucose_urgent_low', False), ('glucose_urgent_low', True)]
    >>> len(pickle.dumps(m)) < 16_000
    True
    >>> m.update("pulse", 0, 1.0)
    Traceback (most recent call last):
    ...
    ValueError: unknown signal 'pulse'; expected heart_rate, glucose or steps
    """

    __slots__ = ("_activity", "_g_model", "_glucose", "_hr", "_hr_model", "_quality", "config")

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config if config is not None else DEFAULT_CONFIG  # shared: a config is immutable
        self._quality: DeviceQuality | None = None
        self._hr: HeartRateDetector | None = None
        self._glucose: GlucoseDetector | None = None
        self._activity: ActivityTracker | None = None
        self._hr_model: RestingHeartRateModel | None = None
        self._g_model: GlucoseVariabilityModel | None = None

    def _init(self) -> DeviceQuality:
        cfg = self.config
        q = self._quality = DeviceQuality(cfg)
        self._hr = HeartRateDetector(cfg)
        self._glucose = GlucoseDetector(cfg)
        self._activity = ActivityTracker(cfg)
        if cfg.models_enabled:
            self._hr_model = RestingHeartRateModel(cfg)
            self._g_model = GlucoseVariabilityModel(cfg)
        return q

    def update(self, signal: str, ts_ms: int, value: float) -> list[Finding]:
        """Feed one reading (canonical units); returns the findings it caused."""
        i = _INDEX.get(signal)
        if i is None:
            raise ValueError(f"unknown signal {signal!r}; expected heart_rate, glucose or steps")
        q = self._quality or self._init()
        ts_ms = int(ts_ms)
        value = float(value)
        ok, out = q.check(i, ts_ms, value)
        if not ok:
            return out
        if i == 0:
            hr = self._hr
            assert hr is not None and self._activity is not None
            fs = hr.update(ts_ms, value, self._activity)
            if fs:
                out += fs
            if hr.rest_ok and self._hr_model is not None:
                fs = self._hr_model.observe(ts_ms, hr._y)  # hr.smoothed, without the property's call
                if fs:
                    out += fs
        elif i == 1:
            g = self._glucose
            assert g is not None
            last = g.last_ts
            fs = g.update(ts_ms, value)
            if fs:
                out += fs
            if self._g_model is not None and ts_ms > last:
                fs = self._g_model.observe(ts_ms, value)
                if fs:
                    out += fs
        else:
            assert self._activity is not None
            self._activity.update(ts_ms, value)
        return out

    def update_batch(
        self,
        signals: Sequence[str] | Iterable[str],
        ts_ms_seq: Sequence[int] | Iterable[int],
        values: Sequence[float] | Iterable[float],
    ) -> list[Finding]:
        """Same as calling :meth:`update` for each reading in order, with less overhead.

        >>> m1, m2 = PatientMonitor(), PatientMonitor()
        >>> sig = ["glucose"] * 4
        >>> ts = [0, 300_000, 600_000, 900_000]
        >>> vals = [60.0, 54.0, 50.0, 48.0]
        >>> m1.update_batch(sig, ts, vals) == [f for s, t, v in zip(sig, ts, vals)
        ...                                    for f in m2.update(s, t, v)]
        True
        """
        out: list[Finding] = []
        upd = self.update
        for s, t, v in zip(signals, ts_ms_seq, values, strict=True):
            fs = upd(s, t, v)
            if fs:
                out += fs
        return out

    def tick(self, now_ms: int) -> list[Finding]:
        """Time-driven checks at event time ``now_ms``: stale/disconnected sensors."""
        if self._quality is None:
            return []
        return self._quality.tick(int(now_ms))

    def next_due_ms(self, readings: bool = False) -> int | None:
        """The earliest event time at which :meth:`tick` could report or change something, or None (nothing
        until the next reading). Never later than necessary (earlier is allowed): a caller may skip the
        ticks before it and get exactly the findings and states of ticking all along. Ask again after
        every reading or tick; with ``readings``, a bound that stays valid after readings of signals seen
        before, until :meth:`update` or :meth:`tick` returns a finding."""
        if self._quality is None:
            return None
        return self._quality.next_due_ms(readings)

    def stats(self) -> dict[str, int]:
        """Counts of duplicate, late, dropped and implausible (rejected) readings (for logs and replays)."""
        hr, g, q = self._hr, self._glucose, self._quality
        if hr is None or g is None or q is None:
            return {"duplicates": 0, "late": 0, "dropped": 0, "implausible": 0}
        return {
            "duplicates": hr.duplicates + g.duplicates,
            "late": hr.late + g.late,
            "dropped": g.dropped,
            "implausible": sum(q.implausible_count),
        }

    # -- pickling ---------------------------------------------------------------------
    # The worker pickles every changed patient state on every commit, and pickle pays about
    # 1 µs for every object it saves through __reduce_ex__ and __getstate__ (more for the first
    # of each class). So a monitor pickles as one call of _restore_monitor with the config's
    # diff stored once and each part's state as builtins only (their dump_state), not as ~35
    # objects (parts, episode machines, filters, river quantiles).
    def __reduce__(self) -> tuple[Any, ...]:
        q, hr, g, a, hm, gm = self._quality, self._hr, self._glucose, self._activity, self._hr_model, self._g_model
        return (_restore_monitor, (
            config_diff(self.config),
            None if q is None else q.dump_state(),
            None if hr is None else hr.dump_state(),
            None if g is None else g.dump_state(),
            None if a is None else a.dump_state(),
            None if hm is None else hm.dump_state(),
            None if gm is None else gm.dump_state(),
        ))


class _Part(Protocol):
    """A monitor part: restored from its ``dump_state`` by ``load_state``."""

    def load_state(self, config: DetectorConfig, s: tuple[Any, ...]) -> None: ...


_P = TypeVar("_P", bound=_Part)


def _part(cls: type[_P], config: DetectorConfig, s: tuple[Any, ...] | None) -> _P | None:
    """A part of class ``cls`` restored from its ``dump_state`` (None stays None: not created yet)."""
    if s is None:
        return None
    part = cls.__new__(cls)
    part.load_state(config, s)
    return part


def _restore_monitor(
    diff: dict[str, Any],
    q: tuple[Any, ...] | None,
    hr: tuple[Any, ...] | None,
    g: tuple[Any, ...] | None,
    a: tuple[Any, ...] | None,
    hm: tuple[Any, ...] | None,
    gm: tuple[Any, ...] | None,
) -> PatientMonitor:
    """Inverse of :meth:`PatientMonitor.__reduce__`; all parts share the one restored config."""
    cfg = config_from_diff(diff)
    m = PatientMonitor(cfg)
    m._quality = _part(DeviceQuality, cfg, q)
    m._hr = _part(HeartRateDetector, cfg, hr)
    m._glucose = _part(GlucoseDetector, cfg, g)
    m._activity = _part(ActivityTracker, cfg, a)
    m._hr_model = _part(RestingHeartRateModel, cfg, hm)
    m._g_model = _part(GlucoseVariabilityModel, cfg, gm)
    return m
