"""Glucose (CGM) rules: urgent low, low, high, fast fall/rise, predicted urgent low.

Readings arrive about every 5 minutes in mg/dL. The detector keeps the readings
of the last ``glucose_trend_window_s`` (about 5) for a least-squares trend over
irregular timestamps; everything else is a handful of integers.

Predicted urgent low ("urgent low soon", Dexcom's definition): glucose is forecast to
reach the urgent-low threshold (55 mg/dL) within ``glucose_predict_horizon_s`` (20 min)
of the next expected reading. The forecast is ``level + slope * horizon``: the slope
from a recency-weighted least-squares fit with a long time constant
(``glucose_trend_tau_s``: a 25-minute extrapolation multiplies slope noise 25-fold),
the level from one with a short one (``glucose_trend_level_tau_s``: level noise
enters only once, while a long time constant makes the level lag a descent that has
just begun). A fall that is levelling off (insulin action ending, a snack) is not an
urgent low soon: when the slope at the newest reading of a weighted quadratic fit is
less steep than the linear trend, the forecast follows it
(``glucose_predict_levelling``). Forecasts are made only from readings below
``glucose_predict_max_level_mgdl``: a warning from higher up extrapolates a fast fall
for 25 minutes, which after meals and highs mostly levels off instead (fast falls
have their own rate alert). ``glucose_predict_margin_mgdl`` (0 by default) can warn
on a forecast that falls short of 55, once a fall is seen on two readings: lead time
bought with false warnings (the detection bench's trade-off table). A single reading
that fell faster than glucose moves (``glucose_predict_max_step_mgdl_min``, 8 mg/dL/min:
a compression low, a sensor glitch) is not forecast from until the next reading
confirms the fall; the urgent low itself stays immediate. ``glucose_predict_min_drop_mgdl``
(0 by default: off) can also require the newest reading that far below the highest reading
of the trend window, against a CGM error that drifts a few mg/dL near 70 and makes the
forecast reach 55 without glucose falling (measured, not adopted: it cost lead time on the
detection bench's held-out seeds).

``glucose_predict_kalman`` (off by default: measured, not adopted) makes the forecast from a
Kalman filter per patient instead (:func:`kalman_step`): glucose, its rate of change and the
CGM's slow error as an AR(1) state (the published structure of CGM error, Breton & Kovatchev
2008), the white noise estimated per patient from the readings' second differences. Over the
20-25 minutes that matter, an error that drifts 10 mg/dL looks like a fall of 0.4 mg/dL/min:
the filter splits such a drift between glucose and the error by their prior spreads, which
moves warnings along the same lead-for-false-alarms curve as a shorter horizon (the
detection bench, ``--kalman``).

The rate alerts read the less steep of the weighted trend and the Theil-Sen slope
(``glucose_rate_robust``): CGM noise is heavy-tailed, and one outlying reading tilts
a least-squares fit but not the median of the pairwise slopes.

The rules themselves (thresholds, sustain and clear conditions, priorities,
messages) are the table :data:`detectors.rule_table.GLUCOSE_RULES`; this module
computes what they read (the trend, the forecast) and keeps their episodes.

Order policy (see also :mod:`detectors.monitor`): a reading at the same
timestamp and value as the newest one is a duplicate and ignored. A reading
older than the newest one by at most ``lateness_s`` is *late*: it no longer
feeds the trend or the sustained timers (they have moved on), but a late value
below the urgent-low threshold still opens an urgent-low episode if none is
open and none has closed after it, so a re-synced burst never hides an urgent
low. Older readings are dropped.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

from detectors.base import Finding
from detectors.conditioning import median_slope, slope_now, trend
from detectors.config import DetectorConfig
from detectors.episodes import IDLE, PicklesWithConfig, Sustained, episode_from_state, own_episode
from detectors.rule_table import GLUCOSE_RULES
from detectors.rules import CompiledRules

#: lowest glucose a CGM reports; forecasts are not shown below it
_CGM_FLOOR = 40.0

__all__ = ["GlucoseDetector"]

#: the episodes of a detector none of whose episodes has started (shared by every such detector, never written:
#: the rules are given a copy, which the detector keeps once an episode starts in it)
_ALL_IDLE: list[Sustained] = [IDLE] * len(GLUCOSE_RULES.rules)
#: the episodes' positions (the table's order)
_URGENT, _LOW, _HIGH, _FALL, _RISE, _SOON = (GLUCOSE_RULES.index(k) for k in (
    "glucose_urgent_low", "glucose_low", "glucose_high", "glucose_falling_fast", "glucose_rising_fast",
    "glucose_urgent_low_soon"))
_NAN = float("nan")
_NO_FORECAST = (_NAN, _NAN, 0.0, 0.0)


def kalman_step(s: list[float] | None, dt_min: float, mgdl: float, cfg: DetectorConfig) -> list[float]:
    """One step of the glucose / rate / sensor-error Kalman filter (see ``glucose_predict_kalman``).

    ``s`` is ``[glucose, rate, error, Pgg, Pgr, Pge, Prr, Pre, Pee, white noise sd]`` (``None`` starts it: glucose
    unknown, rate and error at their stationary spread); the CGM reads glucose + error + white noise.
    Glucose's rate is a mean-reverting (Ornstein-Uhlenbeck) process, the error an AR(1).

    >>> cfg = DetectorConfig()
    >>> s = None
    >>> for k in range(12):  # a steady 100 mg/dL
    ...     s = kalman_step(s, 5.0, 100.0, cfg)
    >>> round(s[0] + s[2], 1), round(s[1], 3)
    (100.0, 0.0)
    """
    sr2 = cfg.glucose_kf_rate_sd_mgdl_min ** 2
    se2 = cfg.glucose_kf_sensor_sd_mgdl ** 2
    if s is None:
        g, r, e = mgdl, 0.0, 0.0
        gg, gr, ge, rr, re, ee = 1e4, 0.0, 0.0, sr2, 0.0, se2
        w = cfg.glucose_kf_white_sd_mgdl
    else:
        g, r, e, gg, gr, ge, rr, re, ee, w = s
        tau_r = cfg.glucose_kf_rate_tau_s / 60
        a = math.exp(-dt_min / tau_r)
        b = tau_r * (1.0 - a)
        ph = math.exp(-dt_min * 60 / cfg.glucose_kf_sensor_tau_s)
        qr = sr2 * (1.0 - a * a)
        g, r, e = g + b * r, a * r, ph * e
        gg, gr, ge, rr, re, ee = (gg + 2 * b * gr + b * b * rr + qr * dt_min * dt_min / 3,
                                  a * (gr + b * rr) + qr * dt_min / 2, ph * (ge + b * re),
                                  a * a * rr + qr, a * ph * re, ph * ph * ee + se2 * (1.0 - ph * ph))
    sw2 = w * w
    # measurement update: y = glucose + error + white noise
    sv = gg + 2 * ge + ee + sw2
    kg, kr, ke = (gg + ge) / sv, (gr + re) / sv, (ge + ee) / sv
    v = mgdl - g - e
    return [g + kg * v, r + kr * v, e + ke * v,
            gg - kg * kg * sv, gr - kg * kr * sv, ge - kg * ke * sv,
            rr - kr * kr * sv, re - kr * ke * sv, ee - ke * ke * sv, w]


def _interleave(times: array[float], values: array[float]) -> array[float]:
    """A trend window (time, value, time, value...) at its exact size."""
    w = _ZERO * (2 * len(times))
    w[0::2] = times
    w[1::2] = values
    return w


def _times_values(w: array[float] | None) -> tuple[list[int] | None, list[float]]:
    """A trend window's times and values as the stored form holds them (None, []: no reading yet)."""
    if w is None:
        return None, []
    return [int(t) for t in w[0::2]], w[1::2].tolist()


_ZERO = array("d", (0.0,))


class GlucoseDetector(PicklesWithConfig):
    """Clinical glucose rules for one patient.

    Parameters
    ----------
    config
        Thresholds (``glucose_*``); defaults follow the CGM consensus and Dexcom.

    Examples
    --------
    A handmade series: 100 mg/dL, a dip to 50 for 20 minutes, back to 100.

    >>> g = GlucoseDetector()
    >>> series = [100, 90, 80, 70, 60, 50, 50, 50, 50, 70, 90, 100, 100, 100, 100]
    >>> out = []
    >>> for i, v in enumerate(series):
    ...     out += g.update(i * 300_000, float(v))
    >>> [(f.kind, f.cleared, f.priority.value) for f in out if f.kind == "glucose_urgent_low"]
    [('glucose_urgent_low', False, 'high'), ('glucose_urgent_low', True, 'high')]

    Glucose flat at 110 for an hour, then falling 1 or 2 mg/dL/min from minute 55:
    "urgent low soon" comes at 75 or 80 mg/dL, 21 or 13 minutes before the fall
    crosses 54. The fast fall is recognised late: its slope needs a few readings.

    >>> for rate in (1.0, 2.0):
    ...     g = GlucoseDetector()
    ...     out = []
    ...     for i in range(24):
    ...         out += g.update(i * 300_000, 110.0 - rate * max(0, 5 * i - 55))
    ...     soon = [f for f in out if f.kind == "glucose_urgent_low_soon"][0]
    ...     print(soon.value, 55 + (110 - 54) / rate - soon.ts_ms / 60_000)
    75.0 21.0
    80.0 13.0
    """

    # one per patient in a worker: slots, and the trend window as one array of doubles (a time and a value
    # per reading: epoch milliseconds are exact in a double up to 2**53)
    __slots__ = (
        "_forecast", "_kf", "_last_value", "_rules_for", "_window", "config", "dropped", "duplicates",
        "episodes", "late",
    )

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        #: the trend window, oldest first: time, value, time, value... at its exact size (None until the
        #: first reading)
        self._window: array[float] | None = None
        self._last_value = float("nan")
        #: one episode per rule of the table, in its order
        self.episodes: list[Sustained] = _ALL_IDLE
        self.late = 0
        self.duplicates = 0
        self.dropped = 0
        self._rules_for: tuple[DetectorConfig, CompiledRules] | None = None
        #: level, forecast, slope, horizon (for the messages); an array of 4 once a forecast is made
        self._forecast: tuple[float, ...] | array[float] = _NO_FORECAST
        self._kf: list[float] | None = None

    @property
    def rules(self) -> CompiledRules:
        """The glucose rule table compiled for this detector's config (made on first use)."""
        r = self._rules_for
        if r is None or r[0] is not self.config:
            r = self._rules_for = GLUCOSE_RULES.bound(self.config)
        return r[1]

    @property
    def last_ts(self) -> int:
        w = self._window
        return int(w[-2]) if w else -1

    def current_trend(self) -> tuple[float, float, int]:
        """``(level, slope per min, n readings)`` of the current trend window."""
        w = self._window
        if not w:
            return float("nan"), 0.0, 0
        level, slope = trend(w[0::2], w[1::2], self.config.glucose_trend_tau_s / 60)
        return level, slope, len(w) // 2

    def message_values(self) -> dict[str, Any]:
        """Values for the rule table's messages (its ``extras``), computed when a finding is written."""
        level, forecast, slope, horizon_min = self._forecast
        urgent_low = self.config.glucose_urgent_low_mgdl
        return {
            # a straight-line forecast can run below what a CGM reports (40 mg/dL) or below zero:
            # say "below 40" rather than print a physiologically meaningless number
            "forecast_text": f"{forecast:.0f}" if forecast >= _CGM_FLOOR else f"below {_CGM_FLOOR:.0f} mg/dL",
            "horizon_min": horizon_min,
            "crossing_min": (level - urgent_low) / -slope if slope < 0 else float("inf"),
        }

    # -- the per-reading step ----------------------------------------------------
    def update(self, ts: int, mgdl: float) -> list[Finding]:
        """Process one reading (mg/dL) at ``ts`` (epoch ms); returns new findings."""
        eps = self.episodes
        if eps is not _ALL_IDLE:
            return self._update(ts, mgdl, eps)
        mine = list(eps)  # the shared idle list: the rules get a copy, kept once an episode starts in it
        out = self._update(ts, mgdl, mine)
        for ep in mine:
            if ep is not IDLE:
                self.episodes = mine
                break
        return out

    def _update(self, ts: int, mgdl: float, episodes: list[Sustained]) -> list[Finding]:
        cfg = self.config
        out: list[Finding] = []
        w = self._window
        if w is None:
            w = self._window = array("d")
        # the window's times and values apart (copies: the window is written back once changed)
        times, values = w[0::2], w[1::2]
        newest = int(times[-1]) if times else -1
        if ts <= newest:
            if ts == newest and mgdl == self._last_value:
                self.duplicates += 1
                return out
            if newest - ts > cfg.lateness_s * 1000:
                self.dropped += 1
                return out
            self.late += 1
            # a late reading feeds no trend or timer, but may still open an urgent low
            self.rules.open_late(ts, (mgdl, None, False, _NAN, _NAN, _NAN, False, 0.0), episodes, out)
            return out
        if newest >= 0 and ts - newest > cfg.glucose_max_gap_s * 1000:
            del times[:]
            del values[:]
            for episode in episodes:
                episode.reset_timer()
            self._kf = None
        if cfg.glucose_predict_kalman:
            kf = self._kf = kalman_step(self._kf, (ts - newest) / 60_000 if times else 0.0, mgdl, cfg)
            mem = cfg.glucose_kf_white_memory
            if mem > 0 and len(values) >= 2:
                # the patient's white noise from second differences (E|d2| = 1.954 sd for Gaussian noise)
                d2 = abs(mgdl - 2 * values[-1] + values[-2]) / 1.954
                kf[9] = max(kf[9] + (min(d2, 4 * kf[9] + 4.0) - kf[9]) / mem, 1.0)
        times.append(ts)
        values.append(mgdl)
        window_ms = cfg.glucose_trend_window_s * 1000
        while ts - times[0] > window_ms:
            del times[0]
            del values[0]
        self._window = _interleave(times, values)
        self._last_value = mgdl
        n = len(times)
        trend_known = n >= cfg.glucose_trend_min_readings and ts - times[0] >= 600_000
        forecast = _NAN
        fall_confirmed = False
        fall_depth = 0.0
        if trend_known:
            tau = cfg.glucose_trend_tau_s / 60
            slope = trend(times, values, tau)[1]
            rate = slope
            if cfg.glucose_rate_robust and abs(slope) >= cfg.glucose_rate_clear_fraction * min(
                    cfg.glucose_fall_fast_mgdl_min, cfg.glucose_rise_fast_mgdl_min):
                # the rate alerts read the less steep of the weighted fit and the Theil-Sen slope (0 if
                # they disagree on the direction): one outlying reading makes the fit steep, not both
                robust = median_slope(times, values)
                rate = 0.0 if robust * slope <= 0 else (slope if abs(slope) < abs(robust) else robust)
            # the forecast (see the module docstring): level from a short time constant, the
            # horizon counted from the next expected reading
            horizon_min = cfg.glucose_predict_horizon_s / 60
            if cfg.glucose_predict_next_reading and n >= 2:
                horizon_min += min((ts - times[0]) / (n - 1), 300_000) / 60_000
            level, _ = trend(times, values, cfg.glucose_trend_level_tau_s / 60)
            ahead = slope
            levelling = cfg.glucose_predict_levelling
            if levelling > 0 and slope < 0 and n >= 4:
                # a fall that is levelling off (less steep now than on average) is forecast as such
                now = slope_now(times, values, tau)
                if now > slope:
                    ahead = slope + levelling * (min(now, 0.0) - slope)
            forecast = level + ahead * horizon_min
            filt = self._kf
            if cfg.glucose_predict_kalman and filt is not None:
                # glucose without the sensor's estimated error, its filtered rate
                mode = cfg.glucose_kf_mode
                if mode == 1:
                    level, ahead = filt[0], filt[1]
                elif mode == 2:
                    level -= filt[2]
                else:
                    ahead = filt[1]
                forecast = level + ahead * horizon_min + cfg.glucose_kf_z * math.sqrt(max(
                    filt[3] + 2 * horizon_min * filt[4] + horizon_min * horizon_min * filt[6], 0.0))
            # a fall seen on two readings: one low reading at a steady level moves the
            # short-tau level almost as much as a real fall
            fall_confirmed = n >= 4 and max(values[-1], values[-2]) < min(values[:-2])
            # a reading that fell faster than glucose can (a compression low, a sensor glitch) is
            # forecast from only once the next reading confirms the fall
            if not fall_confirmed and (values[-2] - mgdl) * 60_000 > cfg.glucose_predict_max_step_mgdl_min * (
                    ts - times[-2]):
                forecast = _NAN
            fc = self._forecast
            if not isinstance(fc, array):
                fc = self._forecast = array("d", _NO_FORECAST)
            fc[0], fc[1], fc[2], fc[3] = level, forecast, ahead, horizon_min
            fall_depth = max(values) - mgdl
        else:
            slope = rate = 0.0
        self.rules.step_values(ts, episodes, out, self,
                               mgdl, slope, trend_known, -rate, rate, forecast, fall_confirmed,
                               fall_depth)
        return out

    # -- pickling: builtins only (see PatientMonitor.__reduce__) ---------------------
    def dump_state(self) -> tuple[Any, ...]:
        """The state without the config, as builtins only (:meth:`load_state` is the inverse).

        The episode machines go in as tuples: pickling each as an object costs ~1 µs. The
        layout is the one of the detectors before the rule table (states stored by them load).
        """
        eps = self.episodes
        state = (
            *_times_values(self._window), self._last_value,
            *(ep.dump_state() for ep in eps),
            eps[_URGENT].closed_ms, self.late, self.duplicates, self.dropped,
        )
        # the forecast filter's state, only where it runs (glucose_predict_kalman): the layout is otherwise unchanged
        return state if self._kf is None else (*state, self._kf)

    def load_state(self, config: DetectorConfig, s: tuple[Any, ...]) -> None:
        """Set config and state from :meth:`dump_state` (also on an instance made by ``__new__``)."""
        self.config = config
        self._rules_for = None
        self._forecast = _NO_FORECAST
        n = len(GLUCOSE_RULES.rules)
        times, values, self._last_value = s[:3]
        if times is None:
            if values:
                raise ValueError(f"glucose state with values {values} and no times")
            self._window = None
        elif len(times) != len(values):
            raise ValueError(f"glucose state with {len(times)} times and {len(values)} values")
        else:
            self._window = _interleave(array("d", times), array("d", values))
        eps = [episode_from_state(ep) for ep in s[3:3 + n]]
        rest = s[3 + n:]
        closed, self.late, self.duplicates, self.dropped = rest[:4]
        self._kf = list(rest[4]) if len(rest) > 4 else None
        if not (type(closed) is int and closed == -1):
            own_episode(eps, _URGENT).closed_ms = closed
        self.episodes = _ALL_IDLE if len(eps) == len(_ALL_IDLE) and all(ep is IDLE for ep in eps) else eps
