"""Data-quality findings about the device, not the patient (``Audience.DEVICE``).

* ``value_implausible`` — a value no body produces (HR < 25 or > 230 bpm,
  glucose < 20 or > 600 mg/dL, > 400 steps in one reading, NaN). The reading
  is rejected before the clinical rules; the episode clears after
  ``implausible_clear_s`` of plausible readings.
* ``sensor_flatline`` — the exact same value for ``hr_flatline_s`` (heart rate)
  or ``glucose_flatline_s`` (glucose): a stuck sensor. Steps are exempt (zero
  steps for hours is sleep).
* ``sensor_stale`` — no reading of a signal for ``*_stale_s``; raised by
  :meth:`DeviceQuality.tick` (time-driven) and cleared by the next reading.

All device findings are LOW priority for the technician queue.
"""

from __future__ import annotations

from detectors.base import SIGNALS, Audience, Finding, Priority
from detectors.config import DetectorConfig
from detectors.episodes import CLEARED, OPENED, Sustained, config_diff, config_from_diff

__all__ = ["DeviceQuality"]

_UNIT = ("bpm", "mg/dL", "steps")


class DeviceQuality:
    """Implausible values, flatlines and silent sensors, per signal.

    Examples
    --------
    >>> q = DeviceQuality()
    >>> q.check(0, 0, 70.0)
    (True, [])
    >>> ok, fs = q.check(0, 5_000, 400.0)
    >>> ok, [(f.kind, f.audience.value) for f in fs]
    (False, [('value_implausible', 'device')])
    >>> [(f.kind, f.cleared) for f in q.tick(20 * 60_000)]
    [('sensor_stale', False)]
    >>> q.tick(21 * 60_000)  # no repeats while the episode continues
    []
    >>> [(f.kind, f.cleared) for f in q.check(0, 21 * 60_000, 72.0)[1]]
    [('sensor_stale', True)]
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._last_ts: list[int] | None = None
        self._last_v: list[float] = []
        self.implausible: list[Sustained] = []
        self.flat: list[Sustained] = []
        self.stale: list[Sustained] = []

    def _init(self) -> None:
        self._last_ts = [-1, -1, -1]
        self._last_v = [float("nan")] * 3
        self.implausible = [Sustained() for _ in SIGNALS]
        self.flat = [Sustained() for _ in SIGNALS]
        self.stale = [Sustained() for _ in SIGNALS]

    def _f(self, kind: str, i: int, ts: int, onset: int, msg: str, *, value: float | None = None,
           threshold: float | None = None, window_s: float | None = None,
           cleared: bool = False) -> Finding:
        return Finding(
            kind=kind, signal=SIGNALS[i], priority=Priority.LOW, audience=Audience.DEVICE,
            ts_ms=ts, onset_ms=onset, source="rule", message=msg, value=value,
            threshold=threshold, window_s=window_s, contributing=(SIGNALS[i],), cleared=cleared,
        )

    def _limits(self, i: int) -> tuple[float, float]:
        c = self.config
        if i == 0:
            return c.hr_plausible_min, c.hr_plausible_max
        if i == 1:
            return c.glucose_plausible_min, c.glucose_plausible_max
        return 0.0, c.steps_plausible_max

    def check(self, i: int, ts: int, v: float) -> tuple[bool, list[Finding]]:
        """Check one reading of signal index ``i`` (0 HR, 1 glucose, 2 steps).

        Returns ``(usable, findings)``; unusable readings must not reach the rules.
        """
        if self._last_ts is None:
            self._init()
        assert self._last_ts is not None
        cfg = self.config
        out: list[Finding] = []
        last = self._last_ts[i]
        st = self.stale[i]
        if st.onset_ms >= 0 and ts > last:
            onset = st.close_now()
            out.append(self._f(
                "sensor_stale", i, ts, onset,
                f"{SIGNALS[i]} data resumed after {(ts - last) / 60_000:.0f} min",
                window_s=(ts - last) / 1000, cleared=True,
            ))
        lo, hi = self._limits(i)
        ok = lo <= v <= hi  # False for NaN
        imp = self.implausible[i]
        if not ok or imp.onset_ms >= 0:
            r = imp.step(ts, not ok, ok, 0, cfg.implausible_clear_s * 1000)
            if r == OPENED:
                out.append(self._f(
                    "value_implausible", i, ts, imp.onset_ms,
                    f"Implausible {SIGNALS[i]} value {v:g} {_UNIT[i]} (plausible {lo:g}-{hi:g}); "
                    "reading ignored",
                    value=v if v == v else None, threshold=hi if v > hi else lo,
                ))
            elif r == CLEARED:
                out.append(self._f(
                    "value_implausible", i, ts, imp.last_onset_ms,
                    f"{SIGNALS[i]} values plausible again",
                    value=v, window_s=cfg.implausible_clear_s, cleared=True,
                ))
        if ts > last:
            self._last_ts[i] = ts
        if not ok:
            return False, out
        if i < 2 and ts > last:
            flat_s = cfg.hr_flatline_s if i == 0 else cfg.glucose_flatline_s
            same = v == self._last_v[i]
            fl = self.flat[i]
            if same or fl.since >= 0 or fl.onset_ms >= 0:
                if same and fl.since < 0:
                    fl.since = last  # the value has been constant since the previous reading
                r = fl.step(ts, same, not same, flat_s * 1000, 0)
                if r == OPENED:
                    out.append(self._f(
                        "sensor_flatline", i, ts, fl.onset_ms,
                        f"{SIGNALS[i]} stuck at exactly {v:g} {_UNIT[i]} for "
                        f"{(ts - fl.onset_ms) / 60_000:.0f} min",
                        value=v, window_s=flat_s,
                    ))
                elif r == CLEARED:
                    out.append(self._f(
                        "sensor_flatline", i, ts, fl.last_onset_ms,
                        f"{SIGNALS[i]} values varying again", value=v, cleared=True,
                    ))
            self._last_v[i] = v
        return True, out

    def tick(self, now_ms: int) -> list[Finding]:
        """Open ``sensor_stale`` for every signal silent for longer than its limit."""
        if self._last_ts is None:
            return []
        cfg = self.config
        out: list[Finding] = []
        for i, limit_s in enumerate((cfg.hr_stale_s, cfg.glucose_stale_s, cfg.steps_stale_s)):
            last = self._last_ts[i]
            st = self.stale[i]
            if last < 0 or st.onset_ms >= 0:
                continue
            if now_ms - last > limit_s * 1000:
                st.open_now(last)
                out.append(self._f(
                    "sensor_stale", i, now_ms, last,
                    f"No {SIGNALS[i]} data for {(now_ms - last) / 60_000:.0f} min "
                    f"(limit {limit_s / 60:g} min): sensor disconnected or off-body?",
                    window_s=limit_s,
                ))
        return out

    def __getstate__(self) -> tuple[object, ...]:
        return (config_diff(self.config), self._last_ts, self._last_v,
                self.implausible, self.flat, self.stale)

    def __setstate__(self, s: tuple[object, ...]) -> None:
        (diff, self._last_ts, self._last_v,
         self.implausible, self.flat, self.stale) = s  # type: ignore[assignment]
        self.config = config_from_diff(diff)  # type: ignore[arg-type]
