"""Data-quality findings about the device, not the patient (``Audience.DEVICE``).

* ``value_implausible`` — a value no body produces (HR < 25 or > 230 bpm,
  glucose < 20 or > 600 mg/dL, > 400 steps in one reading, NaN). The reading
  is always rejected before the clinical rules. A single such value is a glitch
  that needs no technician: it is only counted (:attr:`DeviceQuality.implausible_count`,
  ``PatientMonitor.stats()["implausible"]``). The device is reported when it sends
  ``implausible_repeat`` (3) implausible values within ``implausible_window_s``
  (30 min); the episode clears after ``implausible_clear_s`` of plausible readings.
* ``sensor_flatline`` — the exact same value for ``hr_flatline_s`` (heart rate)
  or ``glucose_flatline_s`` (glucose): a stuck sensor. Steps are exempt (zero
  steps for hours is sleep).
* ``sensor_stale`` — no reading of a signal for ``*_stale_s``; raised by
  :meth:`DeviceQuality.tick` (time-driven). It clears only after readings have
  flowed again for ``stale_clear_s`` (15 min): a flaky link, or a watch taken off
  and put back on a few times in a night, stays one episode. Heart rate and
  steps come from the same watch: while heart rate is stale, a silent step
  counter is part of that finding (``contributing``), not a second one.

All device findings are LOW priority for the technician queue.
"""

from __future__ import annotations

from typing import Any

from detectors.base import SIGNALS, Audience, Finding, Priority
from detectors.config import DetectorConfig
from detectors.episodes import CLEARED, OPENED, PicklesWithConfig, Sustained

__all__ = ["DeviceQuality"]

_UNIT = ("bpm", "mg/dL", "steps")


class DeviceQuality(PicklesWithConfig):
    """Implausible values, flatlines and silent sensors, per signal.

    Examples
    --------
    >>> q = DeviceQuality()
    >>> q.check(0, 0, 70.0)
    (True, [])
    >>> q.check(0, 5_000, 400.0)  # one glitch: rejected and counted, not reported
    (False, [])
    >>> q.check(0, 10_000, 0.0)[1], q.implausible_count
    ([], [2, 0, 0])
    >>> ok, fs = q.check(0, 15_000, 255.0)  # the third within 30 min: a device problem
    >>> ok, [(f.kind, f.audience.value) for f in fs]
    (False, [('value_implausible', 'device')])
    >>> [(f.kind, f.cleared) for f in q.tick(35 * 60_000)]
    [('sensor_stale', False)]
    >>> q.tick(36 * 60_000)  # no repeats while the episode continues
    []
    >>> q.check(0, 36 * 60_000, 72.0)[1]  # data again, but not yet for 15 min
    []
    >>> [(f.kind, f.cleared) for f in q.check(0, 51 * 60_000, 73.0)[1]]
    [('sensor_stale', True), ('value_implausible', True)]
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._last_ts: list[int] | None = None
        self._last_v: list[float] = []
        self.implausible: list[Sustained] = []
        self.flat: list[Sustained] = []
        self.stale: list[Sustained] = []
        #: implausible readings per signal (reported or not)
        self.implausible_count: list[int] = [0, 0, 0]
        self._bad_ts: list[list[int]] = [[], [], []]
        self._resume: list[int] = [-1, -1, -1]

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
            res = self._resume[i]
            if res < 0:
                self._resume[i] = res = ts
            if ts - res >= cfg.stale_clear_s * 1000:
                onset = st.close_now()
                self._resume[i] = -1
                out.append(self._f(
                    "sensor_stale", i, ts, onset,
                    f"{SIGNALS[i]} data flowing again for {(ts - res) / 60_000:.0f} min "
                    f"(silent since {(res - onset) / 60_000:.0f} min before that)",
                    window_s=cfg.stale_clear_s, cleared=True,
                ))
        lo, hi = self._limits(i)
        ok = lo <= v <= hi  # False for NaN
        imp = self.implausible[i]
        repeated = False
        if not ok:
            self.implausible_count[i] += 1
            bad = self._bad_ts[i]
            bad.append(ts)
            win = cfg.implausible_window_s * 1000
            while bad and ts - bad[0] > win:
                del bad[0]
            if len(bad) > cfg.implausible_repeat:
                del bad[0]
            repeated = len(bad) >= cfg.implausible_repeat
        if repeated or imp.onset_ms >= 0:
            r = imp.step(ts, repeated, ok, 0, cfg.implausible_clear_s * 1000)
            if r == OPENED:
                out.append(self._f(
                    "value_implausible", i, ts, imp.onset_ms,
                    f"Implausible {SIGNALS[i]} value {v:g} {_UNIT[i]} (plausible {lo:g}-{hi:g}), "
                    f"{len(self._bad_ts[i])} within {cfg.implausible_window_s / 60:g} min; readings ignored",
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
            if last < 0:
                continue
            silent = now_ms - last > limit_s * 1000
            if st.onset_ms >= 0:
                if silent:
                    self._resume[i] = -1  # silent again before it counted as resumed
                continue
            if silent:
                if i == 2 and self.stale[0].onset_ms >= 0:
                    continue  # the watch is off: reported with heart rate
                st.open_now(last)
                both = i == 0 and now_ms - self._last_ts[2] > limit_s * 1000 and self._last_ts[2] >= 0
                out.append(Finding(
                    kind="sensor_stale", signal=SIGNALS[i], priority=Priority.LOW,
                    audience=Audience.DEVICE, ts_ms=now_ms, onset_ms=last, source="rule",
                    message=(f"No {'heart-rate or step' if both else SIGNALS[i]} data for "
                             f"{(now_ms - last) / 60_000:.0f} min (limit {limit_s / 60:g} min): "
                             f"{'watch' if i != 1 else 'sensor'} disconnected or off-body?"),
                    window_s=limit_s,
                    contributing=(SIGNALS[0], SIGNALS[2]) if both else (SIGNALS[i],),
                ))
        return out

    # -- pickling: builtins only (see PatientMonitor.__reduce__) ---------------------
    def dump_state(self) -> tuple[Any, ...]:
        """The state without the config, as builtins only (:meth:`load_state` is the inverse).

        The nine episode machines go in as tuples: pickling each as an object costs ~1 µs.
        """
        return (self._last_ts, self._last_v, [ep.dump_state() for ep in self.implausible],
                [ep.dump_state() for ep in self.flat], [ep.dump_state() for ep in self.stale],
                self.implausible_count, self._bad_ts, self._resume)

    def load_state(self, config: DetectorConfig, s: tuple[Any, ...]) -> None:
        """Set config and state from :meth:`dump_state` (also on an instance made by ``__new__``)."""
        self.config = config
        self._last_ts, self._last_v, imp, flat, stale, self.implausible_count, self._bad_ts, self._resume = s
        self.implausible = [Sustained.from_state(ep) for ep in imp]
        self.flat = [Sustained.from_state(ep) for ep in flat]
        self.stale = [Sustained.from_state(ep) for ep in stale]

