"""Glucose (CGM) rules: urgent low, low, high, fast fall/rise, predicted urgent low.

Readings arrive about every 5 minutes in mg/dL. The detector keeps the readings
of the last ``glucose_trend_window_s`` (about 5) for a least-squares trend over
irregular timestamps; everything else is a handful of integers.

Predicted urgent low ("urgent low soon"): glucose is forecast to cross the
urgent-low threshold (55 mg/dL) within ``glucose_predict_horizon_s`` (20 min) of
the next expected reading. The forecast is linear, ``level + slope * horizon``,
from two recency-weighted least-squares fits over the same window: the slope with
a long time constant (``glucose_trend_tau_s``: a 25-minute extrapolation
multiplies slope noise 25-fold) and the level with a short one
(``glucose_trend_level_tau_s``: level noise enters only once, while a long time
constant makes the level lag a descent that has just begun). Forecasts are made
only from readings below ``glucose_predict_max_level_mgdl``: a warning from higher
up extrapolates a fast fall for 25 minutes, which after meals and highs mostly
levels off instead (fast falls have their own rate alert). Once the two newest
readings are the lowest in the window (a fall seen on two readings, not one low
reading), the forecast is compared with the threshold plus
``glucose_predict_margin_mgdl`` (about one standard deviation of CGM error below
100 mg/dL; for a fall of r mg/dL/min it warns up to margin / r minutes before the
horizon would). With 5-minute readings and CGM noise, every estimator tried
(shorter or longer windows and time constants, hinge and change-point fits, a
Kalman level+slope filter, two-reading persistence, outlier clipping) gains lead
time only along the same lead/false-alert frontier as this one; the margin is the
cheapest place on it to buy lead time.

Order policy (see also :mod:`detectors.monitor`): a reading at the same
timestamp and value as the newest one is a duplicate and ignored. A reading
older than the newest one by at most ``lateness_s`` is *late*: it no longer
feeds the trend or the sustained timers (they have moved on), but a late value
below the urgent-low threshold still opens an urgent-low episode if none is
open and none has closed after it, so a re-synced burst never hides an urgent
low. Older readings are dropped.
"""

from __future__ import annotations

from typing import Any

from detectors.base import Finding, Priority, rule_finding
from detectors.conditioning import trend
from detectors.config import DetectorConfig
from detectors.episodes import CLEARED, OPENED, PicklesWithConfig, Sustained

#: lowest glucose a CGM reports; forecasts are not shown below it
_CGM_FLOOR = 40.0

__all__ = ["GlucoseDetector"]

_SIG = "glucose"


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
    "urgent low soon" comes at 85 or 80 mg/dL, 31 or 13 minutes before the fall
    crosses 54. The fast fall is recognised late: its slope needs a few readings;
    the slow one early, as the forecast margin (8 mg/dL) adds up to 8 minutes to the
    horizon of a fall of 1 mg/dL/min.

    >>> for rate in (1.0, 2.0):
    ...     g = GlucoseDetector()
    ...     out = []
    ...     for i in range(24):
    ...         out += g.update(i * 300_000, 110.0 - rate * max(0, 5 * i - 55))
    ...     soon = [f for f in out if f.kind == "glucose_urgent_low_soon"][0]
    ...     print(soon.value, 55 + (110 - 54) / rate - soon.ts_ms / 60_000)
    85.0 31.0
    80.0 13.0
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._ts: list[int] | None = None
        self._vs: list[float] = []
        self._last_v = float("nan")
        self.urgent = Sustained()
        self.low = Sustained()
        self.high = Sustained()
        self.fall = Sustained()
        self.rise = Sustained()
        self.soon = Sustained()
        self._urgent_closed_ms = -1
        self.late = 0
        self.duplicates = 0
        self.dropped = 0

    # -- helpers ---------------------------------------------------------------
    def _finding(self, kind: str, priority: Priority, ts: int, onset: int, message: str, **kw: Any) -> Finding:
        return rule_finding(_SIG, kind, priority, ts, onset, message, **kw)

    @property
    def last_ts(self) -> int:
        return self._ts[-1] if self._ts else -1

    def current_trend(self) -> tuple[float, float, int]:
        """``(level, slope per min, n readings)`` of the current trend window."""
        if not self._ts:
            return float("nan"), 0.0, 0
        level, slope = trend(self._ts, self._vs, self.config.glucose_trend_tau_s / 60)
        return level, slope, len(self._ts)

    # -- the per-reading step ----------------------------------------------------
    def update(self, ts: int, v: float) -> list[Finding]:
        """Process one reading (mg/dL) at ``ts`` (epoch ms); returns new findings."""
        cfg = self.config
        out: list[Finding] = []
        if self._ts is None:
            self._ts = []
        tss, vss = self._ts, self._vs
        last = tss[-1] if tss else -1
        if ts <= last:
            if ts == last and v == self._last_v:
                self.duplicates += 1
                return out
            if last - ts > cfg.lateness_s * 1000:
                self.dropped += 1
                return out
            self.late += 1
            if (
                v < cfg.glucose_urgent_low_mgdl
                and not self.urgent.active
                and ts > self._urgent_closed_ms
            ):
                self.urgent.open_now(ts)
                out.append(self._urgent_onset(ts, ts, v, late=True))
            return out
        if last >= 0 and ts - last > cfg.glucose_max_gap_s * 1000:
            tss.clear()
            vss.clear()
            for ep in (self.low, self.high, self.fall, self.rise, self.soon):
                ep.reset_timer()
        tss.append(ts)
        vss.append(v)
        horizon_ms = cfg.glucose_trend_window_s * 1000
        while ts - tss[0] > horizon_ms:
            del tss[0]
            del vss[0]
        self._last_v = v
        n = len(tss)
        have_trend = n >= cfg.glucose_trend_min_readings and ts - tss[0] >= 600_000
        if have_trend:
            level, slope = trend(tss, vss, cfg.glucose_trend_tau_s / 60)
        else:
            level, slope = v, 0.0
        clear_ms = cfg.glucose_clear_s * 1000

        # urgent low: fires at once on one reading
        ul = cfg.glucose_urgent_low_mgdl
        r = self.urgent.step(ts, v < ul, v >= cfg.glucose_urgent_low_clear_mgdl, 0, clear_ms)
        if r == OPENED:
            out.append(self._urgent_onset(ts, self.urgent.onset_ms, v, slope=slope))
        elif r == CLEARED:
            self._urgent_closed_ms = ts
            out.append(
                self._finding(
                    "glucose_urgent_low", Priority.HIGH, ts, self.urgent.last_onset_ms,
                    f"Urgent low resolved: glucose {v:.0f} mg/dL, at or above "
                    f"{cfg.glucose_urgent_low_clear_mgdl:g} for {cfg.glucose_clear_s / 60:g} min",
                    value=v, threshold=cfg.glucose_urgent_low_clear_mgdl,
                    window_s=cfg.glucose_clear_s, trend_per_min=slope, cleared=True,
                )
            )

        # low, sustained
        lo = cfg.glucose_low_mgdl
        r = self.low.step(
            ts, v < lo, v >= cfg.glucose_low_clear_mgdl,
            cfg.glucose_low_sustain_s * 1000, clear_ms, 360_000,
        )
        if r == OPENED:
            out.append(
                self._finding(
                    "glucose_low", Priority.MEDIUM, ts, self.low.onset_ms,
                    f"Low glucose: {v:.0f} mg/dL, below {lo:g} for "
                    f"{(ts - self.low.onset_ms) / 60_000:.0f} min (trend {slope:+.1f} mg/dL/min)",
                    value=v, threshold=lo, window_s=cfg.glucose_low_sustain_s, trend_per_min=slope,
                )
            )
        elif r == CLEARED:
            out.append(
                self._finding(
                    "glucose_low", Priority.MEDIUM, ts, self.low.last_onset_ms,
                    f"Low glucose resolved: {v:.0f} mg/dL",
                    value=v, threshold=cfg.glucose_low_clear_mgdl,
                    window_s=cfg.glucose_clear_s, trend_per_min=slope, cleared=True,
                )
            )

        # high, sustained
        hi = cfg.glucose_high_mgdl
        r = self.high.step(
            ts, v > hi, v <= cfg.glucose_high_clear_mgdl,
            cfg.glucose_high_sustain_s * 1000, clear_ms, 360_000,
        )
        if r == OPENED:
            out.append(
                self._finding(
                    "glucose_high", Priority.MEDIUM, ts, self.high.onset_ms,
                    f"High glucose: {v:.0f} mg/dL, above {hi:g} for "
                    f"{(ts - self.high.onset_ms) / 60_000:.0f} min (trend {slope:+.1f} mg/dL/min)",
                    value=v, threshold=hi, window_s=cfg.glucose_high_sustain_s, trend_per_min=slope,
                )
            )
        elif r == CLEARED:
            out.append(
                self._finding(
                    "glucose_high", Priority.MEDIUM, ts, self.high.last_onset_ms,
                    f"High glucose resolved: {v:.0f} mg/dL",
                    value=v, threshold=cfg.glucose_high_clear_mgdl,
                    window_s=cfg.glucose_clear_s, trend_per_min=slope, cleared=True,
                )
            )

        if not have_trend:
            return out
        # rate of change
        if cfg.glucose_rate_alerts:
            out += self._rate(ts, v, slope, fall=True)
            out += self._rate(ts, v, slope, fall=False)
        # predicted urgent low
        h_min = cfg.glucose_predict_horizon_s / 60
        if cfg.glucose_predict_next_reading and n >= 2:
            h_min += min((ts - tss[0]) / (n - 1), 300_000) / 60_000
        # the forecast's level from a short time constant (see the module docstring)
        level, _ = trend(tss, vss, cfg.glucose_trend_level_tau_s / 60)
        pred = level + slope * h_min
        limit = ul
        # the margin (see the module docstring) only for a fall seen on two readings: one low
        # reading at a steady level moves the short-tau level almost as much as a real fall
        if cfg.glucose_predict_margin_mgdl > 0 and n >= 4 and max(vss[-1], vss[-2]) < min(vss[:-2]):
            limit += cfg.glucose_predict_margin_mgdl
        on = (
            slope <= -cfg.glucose_predict_min_fall_mgdl_min
            and pred < limit
            and ul <= v < cfg.glucose_predict_max_level_mgdl
            and not self.urgent.active
        )
        off = pred >= cfg.glucose_low_mgdl and v >= cfg.glucose_low_mgdl
        r = self.soon.step(ts, on, off, 0, clear_ms)
        if r == OPENED:
            eta = (level - ul) / -slope if slope < 0 else float("inf")
            # a straight-line forecast can run below what a CGM reports (40 mg/dL) or below zero:
            # say "below 40" rather than print a physiologically meaningless number
            shown = f"{pred:.0f}" if pred >= _CGM_FLOOR else f"below {_CGM_FLOOR:.0f} mg/dL"
            out.append(
                self._finding(
                    "glucose_urgent_low_soon", Priority.MEDIUM, ts, self.soon.onset_ms,
                    f"Urgent low soon: glucose {v:.0f} mg/dL falling {slope:+.1f} mg/dL/min, "
                    f"forecast {shown} in {h_min:g} min (crosses {ul:g} in ~{eta:.0f} min)",
                    value=v, threshold=ul, window_s=cfg.glucose_trend_window_s,
                    trend_per_min=slope, baseline=round(max(pred, _CGM_FLOOR), 1),
                )
            )
        elif r == CLEARED:
            out.append(
                self._finding(
                    "glucose_urgent_low_soon", Priority.MEDIUM, ts, self.soon.last_onset_ms,
                    f"Urgent low no longer forecast: glucose {v:.0f} mg/dL, trend {slope:+.1f} mg/dL/min",
                    value=v, threshold=cfg.glucose_low_mgdl, window_s=cfg.glucose_trend_window_s,
                    trend_per_min=slope, baseline=round(pred, 1), cleared=True,
                )
            )
        return out

    def _urgent_onset(
        self, ts: int, onset: int, v: float, *, slope: float | None = None, late: bool = False
    ) -> Finding:
        ul = self.config.glucose_urgent_low_mgdl
        note = " (late reading after re-sync)" if late else ""
        return self._finding(
            "glucose_urgent_low", Priority.HIGH, ts, onset,
            f"Urgent low glucose: {v:.0f} mg/dL, below {ul:g}{note}",
            value=v, threshold=ul, window_s=0.0, trend_per_min=slope,
        )

    def _rate(self, ts: int, v: float, slope: float, *, fall: bool) -> list[Finding]:
        cfg = self.config
        ep = self.fall if fall else self.rise
        thr = cfg.glucose_fall_fast_mgdl_min if fall else cfg.glucose_rise_fast_mgdl_min
        s = -slope if fall else slope
        r = ep.step(
            ts, s >= thr, s < thr * cfg.glucose_rate_clear_fraction,
            cfg.glucose_rate_sustain_s * 1000, cfg.glucose_clear_s * 1000,
        )
        if r == 0:
            return []
        kind = "glucose_falling_fast" if fall else "glucose_rising_fast"
        word = "falling" if fall else "rising"
        if r == OPENED:
            very = s >= cfg.glucose_rate_very_fast_mgdl_min
            return [
                self._finding(
                    kind, Priority.MEDIUM if very else Priority.LOW, ts, ep.onset_ms,
                    f"Glucose {word} fast: {slope:+.1f} mg/dL/min over "
                    f"{cfg.glucose_trend_window_s / 60:g} min, now {v:.0f} mg/dL",
                    value=v, threshold=thr, window_s=cfg.glucose_trend_window_s, trend_per_min=slope,
                )
            ]
        return [
            self._finding(
                kind, Priority.LOW, ts, ep.last_onset_ms,
                f"Glucose no longer {word} fast: {slope:+.1f} mg/dL/min, now {v:.0f} mg/dL",
                value=v, threshold=thr * cfg.glucose_rate_clear_fraction,
                window_s=cfg.glucose_trend_window_s, trend_per_min=slope, cleared=True,
            )
        ]

    # -- pickling: builtins only (see PatientMonitor.__reduce__) ---------------------
    def dump_state(self) -> tuple[Any, ...]:
        """The state without the config, as builtins only (:meth:`load_state` is the inverse).

        The episode machines go in as tuples: pickling each as an object costs ~1 µs.
        """
        return (
            self._ts, self._vs, self._last_v,
            self.urgent.dump_state(), self.low.dump_state(), self.high.dump_state(),
            self.fall.dump_state(), self.rise.dump_state(), self.soon.dump_state(),
            self._urgent_closed_ms, self.late, self.duplicates, self.dropped,
        )

    def load_state(self, config: DetectorConfig, s: tuple[Any, ...]) -> None:
        """Set config and state from :meth:`dump_state` (also on an instance made by ``__new__``)."""
        self.config = config
        (self._ts, self._vs, self._last_v, urgent, low, high, fall, rise, soon,
         self._urgent_closed_ms, self.late, self.duplicates, self.dropped) = s
        load = Sustained.from_state
        self.urgent, self.low, self.high = load(urgent), load(low), load(high)
        self.fall, self.rise, self.soon = load(fall), load(rise), load(soon)

