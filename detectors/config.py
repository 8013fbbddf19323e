"""Detector settings: every threshold in one frozen dataclass, with clinical defaults.

Per-patient overrides (a clinician lowering the low-glucose threshold for an
elderly patient, raising the resting tachycardia threshold for a young one) go
through :meth:`DetectorConfig.with_overrides`, which refuses unknown keys.

Sources of the defaults (the project's clinical notes): CGM consensus
(Battelino 2019) for the glucose levels, Dexcom for urgent low 55 mg/dL,
"urgent low soon" (20 min) and rate alerts (2 and 3 mg/dL/min), NEWS2 for the
pulse bands, Apple Watch for "high heart rate while inactive for 10 minutes".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DetectorConfig"]


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """All detector thresholds (canonical units: bpm, mg/dL, steps; durations in seconds).

    Examples
    --------
    >>> cfg = DetectorConfig()
    >>> cfg.glucose_urgent_low_mgdl, cfg.glucose_low_mgdl, cfg.hr_rest_high_bpm
    (55.0, 70.0, 120.0)
    >>> cfg.with_overrides({"glucose_low_mgdl": 75}).glucose_low_mgdl
    75.0
    >>> cfg.with_overrides({"no_such_threshold": 1})
    Traceback (most recent call last):
    ...
    ValueError: unknown detector setting(s): no_such_threshold
    """

    # --- glucose rules -------------------------------------------------------
    glucose_urgent_low_mgdl: float = 55.0
    #: an urgent-low episode clears only above this (hysteresis) ...
    glucose_urgent_low_clear_mgdl: float = 65.0
    #: ... for this long
    glucose_clear_s: float = 600.0
    glucose_low_mgdl: float = 70.0
    glucose_low_sustain_s: float = 900.0
    glucose_low_clear_mgdl: float = 80.0
    glucose_high_mgdl: float = 250.0
    glucose_high_sustain_s: float = 1800.0
    glucose_high_clear_mgdl: float = 230.0
    glucose_fall_fast_mgdl_min: float = 2.0
    glucose_rise_fast_mgdl_min: float = 2.0
    #: rate at which a rate alert is raised to MEDIUM priority
    glucose_rate_very_fast_mgdl_min: float = 3.0
    #: the rate must be this fast for this long before a rate alert fires
    glucose_rate_sustain_s: float = 600.0
    #: rate episodes clear when the rate is below this fraction of the threshold
    glucose_rate_clear_fraction: float = 0.5
    glucose_predict_horizon_s: float = 1200.0
    #: warn when the crossing is forecast within the horizon *at the next reading*
    #: (horizon + the current reading interval, at most 5 min): otherwise the warning
    #: comes on average half an interval later than the horizon promises
    glucose_predict_next_reading: bool = True
    #: the trend is fitted over readings in this window (irregular timestamps)
    glucose_trend_window_s: float = 1500.0
    glucose_trend_min_readings: int = 3
    #: recency weighting of the trend fit (exp(-age/tau)); 0 = ordinary least squares
    glucose_trend_tau_s: float = 900.0
    #: predicted lows need the fitted trend to fall at least this fast
    glucose_predict_min_fall_mgdl_min: float = 0.5
    #: and need the last reading to be below this (avoids forecasts from far away: from 115
    #: a crossing of 55 within 20-25 min needs a fall >= 2.4 mg/dL/min held that long, and
    #: such falls from higher up (after meals, highs) mostly level off; they get the rate alert)
    glucose_predict_max_level_mgdl: float = 115.0
    #: recency weighting of the forecast's *level* (the slope keeps ``glucose_trend_tau_s``):
    #: level noise enters the forecast once, slope noise times the horizon, so the level can
    #: follow the newest readings closely without making the forecast noisy
    glucose_trend_level_tau_s: float = 300.0
    #: a forecast below the urgent-low threshold *plus* this margin also warns, once the two
    #: newest readings are the lowest in the trend window (a fall seen on two readings). 0, the
    #: default, is Dexcom's definition: a forecast that does not reach 55 is not an urgent low
    #: soon. A per-patient margin buys lead time at the price of false warnings (the detection
    #: bench's trade-off table, tuning seeds: margin 8 takes simglucose's false clinical alerts
    #: from 0.97 to 1.39 per patient-day for lead >= 15 min 0.81 -> 0.90, in-house 0.14 -> 0.23
    #: for 0.79 -> 0.84)
    glucose_predict_margin_mgdl: float = 0.0
    glucose_rate_alerts: bool = True
    #: the rate alerts read the less steep of the recency-weighted fit and the Theil-Sen slope
    #: (median of pairwise slopes): CGM noise at low levels is heavy-tailed, and one outlying
    #: reading tilts a least-squares fit but not the median of the slopes
    glucose_rate_robust: bool = True
    #: how much of a levelling-off the urgent-low forecast follows: when the slope at the newest
    #: reading of a quadratic fit is less steep than the trend, the forecast uses the trend plus
    #: this fraction of the difference (0 = straight line). A fall that levels off (insulin action
    #: ending, a snack) is not an urgent low soon
    glucose_predict_levelling: float = 1.0
    #: a reading that fell faster than this from the previous one (faster than glucose moves:
    #: a compression low or a sensor glitch) is not forecast from until the next reading confirms
    #: the fall (the urgent low below 55 stays immediate)
    glucose_predict_max_step_mgdl_min: float = 8.0
    #: the urgent-low forecast warns only once the newest reading is at least this far below the
    #: highest reading of the trend window (0, the default: no such condition). Meant against the
    #: slow drift of a CGM's error near 70; measured in the detection bench and not adopted: 15 mg/dL
    #: took simglucose's false urgent-low-soon warnings 58 -> 53 on the tuning seeds for the same lead,
    #: but on the held-out seeds 73 -> 69 for lead >= 15 min 0.75 -> 0.71
    glucose_predict_min_drop_mgdl: float = 0.0
    #: the urgent-low forecast from a state-space model of glucose and the CGM's error instead of
    #: the trend fit (off by default; measured in the detection bench). A Kalman filter per patient
    #: tracks glucose, its rate of change (mean-reverting) and the sensor's slow error as an AR(1)
    #: state (the published CGM error structure: Breton & Kovatchev 2008, an AR(1) with
    #: coefficient 0.7 per 15 min); the forecast is the filtered glucose plus the filtered rate
    #: times the horizon, so a drift the error state explains is discounted
    glucose_predict_kalman: bool = False
    #: stationary standard deviation of the CGM's slow error (mg/dL)
    glucose_kf_sensor_sd_mgdl: float = 8.0
    #: its correlation time (0.7 per 15 minutes: 42 minutes)
    glucose_kf_sensor_tau_s: float = 2520.0
    #: white measurement noise on top of it (mg/dL): the prior of a per-patient estimate from the
    #: readings' second differences over about ``glucose_kf_white_memory`` readings (0: fixed)
    glucose_kf_white_sd_mgdl: float = 2.0
    glucose_kf_white_memory: float = 48.0
    #: stationary standard deviation of glucose's rate of change (mg/dL/min) and its correlation time
    glucose_kf_rate_sd_mgdl_min: float = 1.0
    glucose_kf_rate_tau_s: float = 2400.0
    #: what the forecast takes from the filter: 1 its glucose and rate, 2 the trend forecast minus the
    #: estimated sensor error, 3 the trend's level with the filtered rate
    glucose_kf_mode: int = 1
    #: warn when forecast + z x its standard deviation reaches the threshold (0: the mean forecast)
    glucose_kf_z: float = 0.0
    #: a CGM's reporting range: it shows its floor (39 or 40 mg/dL, "LOW") for anything below
    #: it and its ceiling (400 or 401, "HIGH") for anything above. A reading at or beyond a limit
    #: says glucose is *at least that extreme*: it opens the urgent low (at the floor) or the high
    #: (at the ceiling) at once, never clears them, and a signal pinned there is not a stuck sensor
    glucose_sensor_floor_mgdl: float = 40.0
    glucose_sensor_ceiling_mgdl: float = 400.0

    # --- heart-rate rules ----------------------------------------------------
    hr_rest_high_bpm: float = 120.0
    hr_rest_high_sustain_s: float = 600.0
    #: resting tachycardia at or above this (NEWS2 pulse score 3) is HIGH priority
    hr_rest_high_urgent_bpm: float = 131.0
    hr_rest_high_clear_bpm: float = 110.0
    hr_low_bpm: float = 40.0
    hr_low_sustain_s: float = 60.0
    #: bradycardia, abrupt fall: when the patient's recent rate (10-min median) is at least
    #: ``hr_low_abrupt_depth_bpm`` above ``hr_low_bpm``, the conditioned rate needs to stay
    #: below ``hr_low_bpm`` only this long (the median and low-pass shorten a brief dip's
    #: time below the threshold by about 20 s)
    hr_low_abrupt_sustain_s: float = 40.0
    hr_low_abrupt_depth_bpm: float = 12.0
    hr_low_clear_bpm: float = 45.0
    #: bradycardia, robust path: a patient whose own recent rate (median of the last
    #: ``hr_low_robust_window_s``) is less than this far above ``hr_low_bpm`` (deep sleep,
    #: athletes, beta blockers) is judged on medians, not on 60 s of the filtered rate
    hr_low_baseline_margin_bpm: float = 6.0
    hr_low_robust_window_s: float = 600.0
    #: ... the long median must stay below ``hr_low_bpm`` this long ...
    hr_low_robust_sustain_s: float = 300.0
    #: ... and a 2-minute median this far below ``hr_low_bpm`` opens an episode after ``hr_low_sustain_s``
    hr_low_deep_bpm: float = 3.0
    #: a bradycardia episode also clears when both medians are this far above ``hr_low_bpm``
    hr_low_median_clear_bpm: float = 2.0
    hr_clear_s: float = 120.0
    #: NEWS2 pulse-score episodes (at rest) with score >= this; 0 turns them off
    hr_news2_min_score: int = 2
    hr_news2_sustain_s: float = 900.0
    #: abrupt change: conditioned HR moves by this much within 4 minutes at rest
    hr_abrupt_delta_bpm: float = 35.0
    hr_abrupt_hold_s: float = 600.0
    #: Hampel/running-median window (readings) for motion-artefact rejection
    hr_median_window: int = 5
    #: time constant of the first-order low-pass after the median (seconds)
    hr_smooth_tau_s: float = 20.0

    # --- activity (steps) ----------------------------------------------------
    #: "at rest" = at most this many steps in the covering minutes ...
    rest_max_steps: float = 20.0
    #: ... over this window before the reading
    rest_window_s: float = 600.0
    #: and steps data must cover at least this fraction of the window's minutes
    rest_min_coverage: float = 0.7

    # --- data quality (device findings) --------------------------------------
    #: silence before ``sensor_stale`` (LOW, technicians): a 10-30 min gap (shower, a
    #: phone re-sync delivering a backlog) is normal wear, not a device fault
    hr_stale_s: float = 1800.0
    glucose_stale_s: float = 1800.0
    steps_stale_s: float = 3600.0
    hr_flatline_s: float = 900.0
    glucose_flatline_s: float = 5400.0
    hr_plausible_min: float = 25.0
    hr_plausible_max: float = 230.0
    glucose_plausible_min: float = 20.0
    glucose_plausible_max: float = 600.0
    steps_plausible_max: float = 400.0
    implausible_clear_s: float = 600.0
    #: a single implausible value is a glitch (counted in stats, not reported); the
    #: device is reported when it sends this many within ``implausible_window_s``
    implausible_repeat: int = 3
    implausible_window_s: float = 1800.0
    #: a stale episode ends only after data has flowed again for this long, so a flaky
    #: link or a watch taken off and on during the night is one finding, not many
    stale_clear_s: float = 900.0
    #: readings older than the newest of their signal by at most this are "late"
    #: and handled (see :mod:`detectors.monitor`); older ones are dropped.
    lateness_s: float = 600.0
    #: gaps longer than this (per signal) restart filters and sustained timers
    hr_max_gap_s: float = 120.0
    glucose_max_gap_s: float = 960.0

    # --- per-patient models --------------------------------------------------
    models_enabled: bool = True
    #: no model finding before this much data (event time since first reading)
    model_warmup_s: float = 2.5 * 86400
    #: resting-HR drift must exceed this many bpm (and the calibrated quantile)
    hr_drift_min_bpm: float = 7.0
    hr_drift_sustain_s: float = 6 * 3600.0
    #: glucose variability: ratio of recent to long-term SD beyond this (or 1/this)
    glucose_var_min_ratio: float = 1.6
    glucose_var_sustain_s: float = 6 * 3600.0
    #: quantile of the score distribution used as the calibrated cutoff
    model_quantile: float = 0.99

    def with_overrides(self, overrides: Mapping[str, Any]) -> DetectorConfig:
        """A copy with some settings replaced; unknown keys raise ``ValueError``."""
        names = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(k for k in overrides if k not in names)
        if unknown:
            raise ValueError(f"unknown detector setting(s): {', '.join(unknown)}")
        clean: dict[str, Any] = {}
        for k, v in overrides.items():
            ftype = names[k].type
            if ftype in ("float", float):
                clean[k] = float(v)
            elif ftype in ("int", int):
                clean[k] = int(v)
            elif ftype in ("bool", bool):
                clean[k] = bool(v)
            else:  # pragma: no cover - all fields are scalars
                clean[k] = v
        return dataclasses.replace(self, **clean)
