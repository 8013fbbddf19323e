"""The clinical rule table: every threshold / sustain / clear rule of the detectors, as data.

One :class:`~detectors.rules.RuleSet` per detector, stepped by the engine in
:mod:`detectors.rules`; the detectors compute the measures (conditioning, trends,
forecasts, per-patient baselines) and keep the episodes. Thresholds are the
settings of :class:`~detectors.config.DetectorConfig` by name, so per-patient
overrides (enrollment) and tuning scripts vary a rule without touching it.

``detectors/RULES.md`` is this table rendered for people (:mod:`tools.rules`;
``wearwatch rules`` prints it for a configuration).

Sources of the thresholds: see :mod:`detectors.config`.

Examples
--------
>>> [r.kind for r in GLUCOSE_RULES.rules]  # stepped in this order
['glucose_urgent_low', 'glucose_low', 'glucose_high', 'glucose_falling_fast', 'glucose_rising_fast', \
'glucose_urgent_low_soon']
>>> GLUCOSE_RULES.rules[1].opens_when, GLUCOSE_RULES.rules[1].sustain
('glucose < glucose_low_mgdl', 'glucose_low_sustain_s')
>>> [s for s in HEART_RATE_RULES.settings_used() if s.startswith("hr_rest")]  # what a tuning script can vary
['hr_rest_high_bpm', 'hr_rest_high_clear_bpm', 'hr_rest_high_sustain_s', 'hr_rest_high_urgent_bpm']
"""

from __future__ import annotations

from detectors.base import Audience, Priority
from detectors.rules import Case, Explain, Measure, Rule, RuleSet, Supersede

__all__ = ["ALL_RULE_SETS", "DEVICE_RULES", "GLUCOSE_RULES", "HEART_RATE_RULES", "MODEL_RULES"]

HIGH, MEDIUM, LOW = Priority.HIGH, Priority.MEDIUM, Priority.LOW
_HR_STEPS = ("heart_rate", "steps")

# --- glucose (CGM, about every 5 minutes) --------------------------------------------------------------

_GLUCOSE_MEASURES = (
    Measure("glucose", "mg/dL", "the newest CGM reading"),
    Measure("trend", "mg/dL/min", "slope of the recency-weighted least-squares trend over the trend window "
            "(0 until the trend is known)"),
    Measure("trend_known", "", "at least 3 readings spanning 10 minutes in the trend window"),
    Measure("fall_rate", "mg/dL/min", "how fast glucose falls: minus the rate slope (the trend, or with "
            "glucose_rate_robust the less steep of the trend and the Theil-Sen slope, 0 if they disagree)"),
    Measure("rise_rate", "mg/dL/min", "how fast glucose rises: the rate slope"),
    Measure("forecast", "mg/dL", "glucose forecast one horizon after the next expected reading (level from a "
            "short time constant plus trend times horizon, a fall that is levelling off followed as such; none "
            "after a single reading that fell faster than glucose_predict_max_step_mgdl_min; from a Kalman filter of "
            "glucose and the sensor's error with glucose_predict_kalman; see detectors.glucose)"),
    Measure("fall_confirmed", "", "the two newest readings are the lowest of the trend window (at least 4 readings)"),
    Measure("fall_depth", "mg/dL", "how far the newest reading is below the highest reading of the trend window "
            "(0 until the trend is known)"),
)
_GLUCOSE_EXTRAS = (
    Measure("forecast_text", "", "the forecast as shown: 'below 40 mg/dL' under what a CGM reads"),
    Measure("horizon_min", "min", "the forecast horizon including the wait for the next reading"),
    Measure("crossing_min", "min", "when the trend line crosses the urgent-low threshold"),
)

_URGENT_LOW_EXPLAIN = Explain(value="glucose", threshold="glucose_urgent_low_mgdl", window_s="0.0",
                              trend_per_min="trend")
_URGENT_LOW = Rule(
    kind="glucose_urgent_low", signal="glucose", priority=HIGH,
    opens_when="glucose < glucose_urgent_low_mgdl", sustain=0.0, opens_on_late=True,
    cases=(
        Case("at the sensor's floor", "glucose <= glucose_sensor_floor_mgdl", "glucose < glucose_urgent_low_mgdl",
             0.0, ("Urgent low glucose: at or below the sensor's lowest reading ({glucose_sensor_floor_mgdl:g} "
                   "mg/dL), below {glucose_urgent_low_mgdl:g}{late_note}"), _URGENT_LOW_EXPLAIN),
        Case("otherwise", None, "glucose < glucose_urgent_low_mgdl", 0.0,
             "Urgent low glucose: {glucose:.0f} mg/dL, below {glucose_urgent_low_mgdl:g}{late_note}",
             _URGENT_LOW_EXPLAIN),
    ),
    clears_when="glucose >= glucose_urgent_low_clear_mgdl", clear_for="glucose_clear_s",
    message="", explain=_URGENT_LOW_EXPLAIN,
    clear_message=("Urgent low resolved: glucose {glucose:.0f} mg/dL, at or above "
                   "{glucose_urgent_low_clear_mgdl:g} for {glucose_clear_min:g} min"),
    clear_explain=Explain(value="glucose", threshold="glucose_urgent_low_clear_mgdl", window_s="glucose_clear_s",
                          trend_per_min="trend"),
    note="Level 2 hypoglycaemia (Dexcom urgent low 55): one reading suffices; a late reading after a re-sync "
         "still raises it, so a backlog never hides an urgent low. A reading at the sensor's floor means glucose "
         "is at most that low (the CGM cannot show less): it is said so, and it never clears the episode.",
)

_LOW = Rule(
    kind="glucose_low", signal="glucose", priority=MEDIUM,
    opens_when="glucose < glucose_low_mgdl", sustain="glucose_low_sustain_s", tolerate_s=360.0,
    clears_when="glucose >= glucose_low_clear_mgdl", clear_for="glucose_clear_s",
    message=("Low glucose: {glucose:.0f} mg/dL, below {glucose_low_mgdl:g} for {sustained_min:.0f} min "
             "(trend {trend:+.1f} mg/dL/min)"),
    explain=Explain(value="glucose", threshold="glucose_low_mgdl", window_s="glucose_low_sustain_s",
                    trend_per_min="trend"),
    clear_message="Low glucose resolved: {glucose:.0f} mg/dL",
    clear_explain=Explain(value="glucose", threshold="glucose_low_clear_mgdl", window_s="glucose_clear_s",
                          trend_per_min="trend"),
    note="Level 1 hypoglycaemia (CGM consensus < 70 for 15 min); one noisy reading above does not restart the count.",
)

_HIGH_EXPLAIN = Explain(value="glucose", threshold="glucose_high_mgdl", window_s="glucose_high_sustain_s",
                        trend_per_min="trend")
_HIGH = Rule(
    kind="glucose_high", signal="glucose", priority=MEDIUM,
    opens_when="glucose > glucose_high_mgdl", sustain="glucose_high_sustain_s", tolerate_s=360.0,
    cases=(
        Case("at the sensor's ceiling", "glucose >= glucose_sensor_ceiling_mgdl", "glucose > glucose_high_mgdl",
             0.0, ("High glucose: at or above the sensor's highest reading ({glucose_sensor_ceiling_mgdl:g} "
                   "mg/dL), above {glucose_high_mgdl:g}"),
             Explain(value="glucose", threshold="glucose_high_mgdl", window_s="0.0", trend_per_min="trend")),
        Case("otherwise", None, "glucose > glucose_high_mgdl", "glucose_high_sustain_s",
             ("High glucose: {glucose:.0f} mg/dL, above {glucose_high_mgdl:g} for {sustained_min:.0f} min "
              "(trend {trend:+.1f} mg/dL/min)"), _HIGH_EXPLAIN),
    ),
    clears_when="glucose <= glucose_high_clear_mgdl", clear_for="glucose_clear_s",
    message="", explain=_HIGH_EXPLAIN,
    clear_message="High glucose resolved: {glucose:.0f} mg/dL",
    clear_explain=Explain(value="glucose", threshold="glucose_high_clear_mgdl", window_s="glucose_clear_s",
                          trend_per_min="trend"),
    note="Level 2 hyperglycaemia (> 250 mg/dL) held for 30 minutes. A reading at the sensor's ceiling means "
         "glucose is at least that high (the CGM cannot show more): a clinical extreme, raised at once.",
)


def _rate_rule(kind: str, word: str, measure: str, threshold: str) -> Rule:
    return Rule(
        kind=kind, signal="glucose", priority=LOW,
        raised=((MEDIUM, f"{measure} >= glucose_rate_very_fast_mgdl_min"),), clear_priority=LOW,
        requires="trend_known", enabled="glucose_rate_alerts",
        opens_when=f"{measure} >= {threshold}", sustain="glucose_rate_sustain_s",
        clears_when=f"{measure} < {threshold} * glucose_rate_clear_fraction", clear_for="glucose_clear_s",
        message=(f"Glucose {word} fast: {{trend:+.1f}} mg/dL/min over {{glucose_trend_window_min:g}} min, "
                 "now {glucose:.0f} mg/dL"),
        explain=Explain(value="glucose", threshold=threshold, window_s="glucose_trend_window_s",
                        trend_per_min="trend"),
        clear_message=f"Glucose no longer {word} fast: {{trend:+.1f}} mg/dL/min, now {{glucose:.0f}} mg/dL",
        clear_explain=Explain(value="glucose", threshold=f"{threshold} * glucose_rate_clear_fraction",
                              window_s="glucose_trend_window_s", trend_per_min="trend"),
        note="Dexcom rate alerts (2 mg/dL/min; 3 raises the priority). The clearing finding is LOW whatever the "
             "onset's priority.",
    )


_URGENT_LOW_SOON = Rule(
    kind="glucose_urgent_low_soon", signal="glucose", priority=MEDIUM, requires="trend_known",
    opens_when=("trend <= -glucose_predict_min_fall_mgdl_min"
                " and (forecast < glucose_urgent_low_mgdl"
                " or (fall_confirmed and forecast < glucose_urgent_low_mgdl + glucose_predict_margin_mgdl))"
                " and fall_depth >= glucose_predict_min_drop_mgdl"
                " and glucose >= glucose_urgent_low_mgdl and glucose < glucose_predict_max_level_mgdl"
                " and not glucose_urgent_low.open"),
    sustain=0.0,
    clears_when="forecast >= glucose_low_mgdl and glucose >= glucose_low_mgdl", clear_for="glucose_clear_s",
    message=("Urgent low soon: glucose {glucose:.0f} mg/dL falling {trend:+.1f} mg/dL/min, forecast "
             "{forecast_text} in {horizon_min:g} min (crosses {glucose_urgent_low_mgdl:g} in ~{crossing_min:.0f} min)"),
    explain=Explain(value="glucose", threshold="glucose_urgent_low_mgdl", window_s="glucose_trend_window_s",
                    trend_per_min="trend", baseline="round(max(forecast, 40.0), 1)"),
    clear_message="Urgent low no longer forecast: glucose {glucose:.0f} mg/dL, trend {trend:+.1f} mg/dL/min",
    clear_explain=Explain(value="glucose", threshold="glucose_low_mgdl", window_s="glucose_trend_window_s",
                          trend_per_min="trend", baseline="round(forecast, 1)"),
    note="Dexcom 'urgent low soon': the forecast reaches 55 within 20 min; a fall that is levelling off is "
         "forecast as such; a setting (off by default) can require a fall of glucose_predict_min_drop_mgdl "
         "within the trend window. No forecast from high up, "
         "where fast falls mostly level off. A margin (0 by default) can warn earlier on a fall seen on two "
         "readings, at the price of false warnings.",
)

GLUCOSE_RULES = RuleSet(
    "glucose", _GLUCOSE_MEASURES,
    (_URGENT_LOW, _LOW, _HIGH,
     _rate_rule("glucose_falling_fast", "falling", "fall_rate", "glucose_fall_fast_mgdl_min"),
     _rate_rule("glucose_rising_fast", "rising", "rise_rate", "glucose_rise_fast_mgdl_min"),
     _URGENT_LOW_SOON),
    _GLUCOSE_EXTRAS,
)

# --- heart rate (every few seconds, conditioned: running median then low-pass) ------------------------

_HR_MEASURES = (
    Measure("heart_rate", "bpm", "the conditioned heart rate (running median of 5 readings, then a 20-s low-pass)"),
    Measure("at_rest", "", "step data covers 70 % of the last 10 minutes and shows at most 20 steps"),
    Measure("news2_score", "", "NEWS2 pulse sub-score of the conditioned rate"),
    Measure("recent_median", "bpm", "the patient's recent rate: median of 30-s samples over the last 10 minutes"),
    Measure("short_median", "bpm", "median of the last four 30-s samples (2 minutes)"),
    Measure("recent_known", "", "at least 4 minutes of 30-s samples since the last data gap"),
    Measure("sampled", "", "a new 30-s sample was taken at this reading"),
    Measure("jump", "bpm", "change of the conditioned rate from 6 to 2 minutes ago (0 until 6 minutes are known)"),
)
_HR_EXTRAS = (
    Measure("steps_in_window", "steps", "steps in the rest window before the reading"),
    Measure("drop_below_recent", "bpm", "how far the 2-minute median is below the recent median"),
    Measure("jump_window_s", "s", "the span a jump is measured over (4 minutes)"),
    Measure("jump_window_min", "min", "the same in minutes"),
    Measure("rate_before", "bpm", "the conditioned rate 6 minutes ago"),
)

#: the patient's own recent rate is near the bradycardia threshold (deep sleep, athletes, beta blockers)
NEAR_THRESHOLD = "recent_known and recent_median < hr_low_bpm + hr_low_baseline_margin_bpm"
#: the 2-minute median is clearly below both the threshold and the patient's recent rate
DEEP_FALL = "short_median <= min(hr_low_bpm, recent_median) - hr_low_deep_bpm"

_BRADY_EXPLAIN = Explain(value="heart_rate", threshold="hr_low_bpm", baseline="recent_median")
_BRADYCARDIA = Rule(
    kind="bradycardia", signal="heart_rate", priority=HIGH,
    watch_while="heart_rate < hr_low_bpm + hr_low_baseline_margin_bpm",
    opens_when="heart_rate < hr_low_bpm", sustain="hr_low_sustain_s",
    cases=(
        Case("near own rate, deep fall", f"({NEAR_THRESHOLD}) and {DEEP_FALL}",
             f"{DEEP_FALL} or recent_median < hr_low_bpm", "hr_low_sustain_s",
             "Low heart rate: {heart_rate:.0f} bpm, 2-min median {short_median:.0f} bpm (NEWS2 pulse score 3)",
             Explain(value="heart_rate", threshold="hr_low_bpm", window_s="120.0", baseline="recent_median")),
        Case("near own rate", NEAR_THRESHOLD, "recent_median < hr_low_bpm", "hr_low_robust_sustain_s",
             ("Low heart rate: {heart_rate:.0f} bpm, {hr_low_robust_window_min:g}-min median {recent_median:.0f} bpm "
              "for {sustained_min:.0f} min (NEWS2 pulse score 3)"),
             Explain(value="heart_rate", threshold="hr_low_bpm", window_s="hr_low_robust_window_s",
                     baseline="recent_median")),
        Case("abrupt fall", "recent_median >= hr_low_bpm + hr_low_abrupt_depth_bpm", "heart_rate < hr_low_bpm",
             "hr_low_abrupt_sustain_s",
             "Low heart rate: {heart_rate:.0f} bpm, below {hr_low_bpm:g} for {sustained_s:.0f} s (NEWS2 pulse score 3)",
             Explain(value="heart_rate", threshold="hr_low_bpm", window_s="hr_low_abrupt_sustain_s",
                     baseline="recent_median")),
        Case("otherwise", None, "heart_rate < hr_low_bpm", "hr_low_sustain_s",
             "Low heart rate: {heart_rate:.0f} bpm, below {hr_low_bpm:g} for {sustained_s:.0f} s (NEWS2 pulse score 3)",
             Explain(value="heart_rate", threshold="hr_low_bpm", window_s="hr_low_sustain_s",
                     baseline="recent_median")),
    ),
    tolerate_s=15.0,
    clears_when=("heart_rate > hr_low_clear_bpm or (recent_median >= hr_low_bpm + hr_low_median_clear_bpm"
                 " and short_median >= hr_low_bpm + hr_low_median_clear_bpm)"),
    clear_for="hr_clear_s",
    message="", explain=_BRADY_EXPLAIN,
    clear_message="Low heart rate resolved: {heart_rate:.0f} bpm",
    clear_explain=Explain(value="heart_rate", threshold="hr_low_clear_bpm", window_s="hr_clear_s"),
    supersede=Supersede(
        after_case="near own rate", when=DEEP_FALL, sustain="hr_low_sustain_s",
        clear_message="Low heart rate episode superseded: rate fell further to {heart_rate:.0f} bpm",
        clear_explain=Explain(value="heart_rate", threshold="hr_low_bpm", window_s="hr_low_sustain_s"),
        message=("Low heart rate falling further: {heart_rate:.0f} bpm, 2-min median {short_median:.0f} bpm, "
                 "{drop_below_recent:.0f} bpm below this patient's recent {hr_low_robust_window_min:g}-min median "
                 "(NEWS2 pulse score 3)"),
        explain=Explain(value="heart_rate", threshold="hr_low_bpm", window_s="120.0", baseline="recent_median"),
    ),
    note="NEWS2 pulse score 3 (< 40 bpm). Judged against the patient's own recent rate: an abrupt fall is alarmed "
         "within about 2 minutes, a patient sleeping near 40 only on medians (wrist noise); an episode opened on "
         "the 10-minute median is replaced once by a new one if the rate falls further.",
)

_TACHYCARDIA = Rule(
    kind="tachycardia_at_rest", signal="heart_rate", priority=MEDIUM,
    raised=((HIGH, "heart_rate >= hr_rest_high_urgent_bpm"),),
    opens_when="heart_rate > hr_rest_high_bpm and at_rest", sustain="hr_rest_high_sustain_s", tolerate_s=60.0,
    clears_when="heart_rate < hr_rest_high_clear_bpm", clear_for="hr_clear_s", track_peak="heart_rate",
    message=("High heart rate at rest: {heart_rate:.0f} bpm, above {hr_rest_high_bpm:g} for {sustained_min:.0f} min "
             "while inactive ({steps_in_window:.0f} steps in {rest_window_min:g} min); NEWS2 pulse score "
             "{news2_score}"),
    explain=Explain(value="heart_rate", threshold="hr_rest_high_bpm", window_s="hr_rest_high_sustain_s",
                    baseline="peak", contributing=_HR_STEPS),
    clear_message="High heart rate resolved: {heart_rate:.0f} bpm",
    clear_explain=Explain(value="heart_rate", threshold="hr_rest_high_clear_bpm", window_s="hr_clear_s",
                          contributing=_HR_STEPS),
    note="Apple Watch: high heart rate while inactive for 10 minutes. HIGH from 131 bpm (NEWS2 pulse score 3, the "
         "'red' single-parameter trigger), MEDIUM below.",
)

_NEWS2 = Rule(
    kind="hr_news2_band", signal="heart_rate", priority=LOW, raised=((MEDIUM, "news2_score >= 3"),),
    enabled="hr_news2_min_score > 0",
    opens_when=("news2_score >= hr_news2_min_score and at_rest"
                " and not (tachycardia_at_rest.open or bradycardia.open)"),
    sustain="hr_news2_sustain_s", tolerate_s=60.0,
    clears_when="news2_score < hr_news2_min_score or tachycardia_at_rest.open or bradycardia.open",
    clear_for="hr_clear_s",
    message="Heart rate {heart_rate:.0f} bpm at rest scores NEWS2 pulse {news2_score} for {sustained_min:.0f} min",
    explain=Explain(value="heart_rate", threshold="float(hr_news2_min_score)", window_s="hr_news2_sustain_s",
                    contributing=_HR_STEPS),
    clear_message="NEWS2 pulse band resolved: {heart_rate:.0f} bpm",
    clear_explain=Explain(value="heart_rate", threshold="float(hr_news2_min_score)", window_s="hr_clear_s",
                          contributing=_HR_STEPS),
    note="A NEWS2 pulse score at rest; quiet while a more specific tachycardia or bradycardia alert is open "
         "(one alert per concern).",
)

_ABRUPT = Rule(
    kind="hr_abrupt_change", signal="heart_rate", priority=LOW, requires="sampled",
    opens_when="abs(jump) >= hr_abrupt_delta_bpm and at_rest", sustain=0.0,
    clears_when="not (abs(jump) >= hr_abrupt_delta_bpm and at_rest)", clear_for="hr_abrupt_hold_s",
    message=("Abrupt heart-rate change at rest: {jump:+.0f} bpm within {jump_window_min:g} min, "
             "now {heart_rate:.0f} bpm"),
    explain=Explain(value="heart_rate", threshold="hr_abrupt_delta_bpm", window_s="jump_window_s",
                    baseline="rate_before", trend_per_min="jump / jump_window_min", contributing=_HR_STEPS),
    clear_message="Heart rate stable again at {heart_rate:.0f} bpm",
    clear_explain=Explain(value="heart_rate", threshold="hr_abrupt_delta_bpm", window_s="hr_abrupt_hold_s",
                          contributing=_HR_STEPS),
    note="Judged on 30-s samples 2 minutes after the jump ended, so the steps of those minutes have arrived "
         "(the start of a walk is not mistaken for it).",
)

HEART_RATE_RULES = RuleSet(
    "heart_rate", _HR_MEASURES, (_BRADYCARDIA, _TACHYCARDIA, _NEWS2, _ABRUPT), _HR_EXTRAS)

# --- device (data quality, for technicians) --------------------------------------------------------------

_DEVICE_MEASURES = (
    Measure("value", "", "the reading as received"),
    Measure("at_reading", "", "stepped for a reading (not a time-driven check)"),
    Measure("receiving", "", "a reading newer than the newest one of its signal"),
    Measure("plausible", "", "the value lies within the plausible range"),
    Measure("recent_implausible", "", "implausible readings within the implausible window"),
    Measure("same_value", "", "exactly the value of the previous reading"),
    Measure("silence_s", "s", "at a time-driven check: time since the newest reading of the signal (else 0)"),
    Measure("last_ts", "ms", "time of the newest reading of the signal before this step (the previous reading)"),
    Measure("watch_off", "", "heart rate is already reported stale (the watch is off)"),
)
_DEVICE_EXTRAS = (
    Measure("silent_signals", "", "what the heart-rate stale message names ('heart-rate or step' when the step "
            "counter of the same watch is silent too)"),
    Measure("silent_contributing", "", "the signals a heart-rate stale finding is about"),
)

_SIGNAL_INFO = {
    # signal: (unit, plausible min setting or constant, max setting, stale setting, device word)
    "heart_rate": ("bpm", "hr_plausible_min", "hr_plausible_max", "hr_stale_s", "watch"),
    "glucose": ("mg/dL", "glucose_plausible_min", "glucose_plausible_max", "glucose_stale_s", "sensor"),
    "steps": ("steps", "0.0", "steps_plausible_max", "steps_stale_s", "watch"),
}


def _device_rules(signal: str) -> tuple[Rule, ...]:
    unit, lo, hi, stale, word = _SIGNAL_INFO[signal]
    lo_text = "0" if lo == "0.0" else f"{{{lo}:g}}"
    rules = [
        Rule(
            kind="sensor_stale", signal=signal, priority=LOW, audience=Audience.DEVICE,
            requires=f"receiving or silence_s > {stale}",
            opens_when=f"silence_s > {stale}" + (" and not watch_off" if signal == "steps" else ""),
            sustain=0.0, counts_from="last_ts",
            clears_when="receiving", clear_for="stale_clear_s",
            message=(f"No {'{silent_signals}' if signal == 'heart_rate' else signal} data for {{sustained_min:.0f}} "
                     f"min (limit {{{stale[:-2]}_min:g}} min): {word} disconnected or off-body?"),
            explain=Explain(window_s=stale, contributing="silent_contributing" if signal == "heart_rate" else None),
            clear_message=(f"{signal} data flowing again for {{clearing_min:.0f}} min "
                           "(silent since {open_before_clearing_min:.0f} min before that)"),
            clear_explain=Explain(window_s="stale_clear_s"),
            note=("Checked every tick; onset = the last reading. Clears only after data has flowed again for a "
                  "while, so a watch taken off and on at night is one finding."
                  + (" Not raised while heart rate is stale (the same watch)." if signal == "steps" else "")),
        ),
        Rule(
            kind="value_implausible", signal=signal, priority=LOW, audience=Audience.DEVICE, requires="at_reading",
            opens_when="not plausible and recent_implausible >= implausible_repeat", sustain=0.0,
            clears_when="plausible", clear_for="implausible_clear_s",
            message=(f"Implausible {signal} value {{value:g}} {unit} (plausible {lo_text}-{{{hi}:g}}), "
                     "{recent_implausible} within {implausible_window_min:g} min; readings ignored"),
            explain=Explain(value="value", threshold=f"{hi} if value > {hi} else {lo}"),
            clear_message=f"{signal} values plausible again",
            clear_explain=Explain(value="value", window_s="implausible_clear_s"),
            note="Implausible readings are always rejected before the clinical rules; a single one is a glitch "
                 "(counted, not reported).",
        ),
    ]
    if signal != "steps":
        flat = "hr_flatline_s" if signal == "heart_rate" else "glucose_flatline_s"
        rules.append(Rule(
            kind="sensor_flatline", signal=signal, priority=LOW, audience=Audience.DEVICE,
            requires="receiving and plausible",
            opens_when="same_value" + (" and glucose_sensor_floor_mgdl < value < glucose_sensor_ceiling_mgdl"
                                       if signal == "glucose" else ""),
            sustain=flat, counts_from="last_ts",
            clears_when="not same_value", clear_for=0.0,
            message=f"{signal} stuck at exactly {{value:g}} {unit} for {{sustained_min:.0f}} min",
            explain=Explain(value="value", window_s=flat),
            clear_message=f"{signal} values varying again", clear_explain=Explain(value="value"),
            note="A stuck sensor; counted from the first of the identical readings. Steps are exempt (no steps "
                 "for hours is sleep)."
                 + (" A CGM pinned at its floor or ceiling is reporting a clinical extreme (the urgent low or the "
                    "high), not a fault." if signal == "glucose" else ""),
        ))
    return tuple(rules)


#: per signal (heart_rate, glucose, steps, in that order)
DEVICE_RULES: tuple[RuleSet, ...] = tuple(
    RuleSet(f"device/{signal}", _DEVICE_MEASURES, _device_rules(signal), _DEVICE_EXTRAS)
    for signal in ("heart_rate", "glucose", "steps")
)

# --- per-patient models ------------------------------------------------------------------------------------

_DRIFT = Rule(
    kind="hr_resting_drift", signal="heart_rate", priority=LOW, source="model",
    opens_when="drift > cutoff", sustain="hr_drift_sustain_s",
    clears_when="drift < cutoff / 2", clear_for="hr_drift_sustain_s",
    message=("Resting heart rate {resting_rate:.0f} bpm is {drift:+.1f} bpm above this patient's usual for this "
             "time of day ({usual_now:.0f} bpm), sustained {sustained_h:.0f} h; early sign of infection?"),
    explain=Explain(value="round(resting_rate, 1)", threshold="round(cutoff, 1)", window_s="hr_drift_sustain_s",
                    baseline="round(usual_now, 1)", contributing=_HR_STEPS),
    clear_message="Resting heart rate back near this patient's baseline ({usual_all:.0f} bpm)",
    clear_explain=Explain(value="round(resting_rate, 1)", threshold="round(cutoff / 2, 1)",
                          window_s="hr_drift_sustain_s", baseline="round(usual_now, 1)", contributing=_HR_STEPS),
    note="Resting heart rate creeping up over days (infection). Cutoff: the larger of hr_drift_min_bpm and the "
         "model_quantile of the patient's own drift.",
)
DRIFT_RULES = RuleSet(
    "resting_heart_rate_model",
    (Measure("resting_rate", "bpm", "mean conditioned rate of the newest complete resting minute"),
     Measure("drift", "bpm", "slow average (about 300 resting minutes) of the difference from the usual rate"),
     Measure("cutoff", "bpm", "larger of hr_drift_min_bpm and the calibrated quantile of the drift"),
     Measure("usual_now", "bpm", "the patient's usual resting rate for this 4-hour time of day")),
    (_DRIFT,),
    (Measure("usual_all", "bpm", "mean of the usual resting rates over the day"),),
)

_VARIABILITY = Rule(
    kind="glucose_variability_change", signal="glucose", priority=LOW, source="model",
    opens_when="score > cutoff", sustain="glucose_var_sustain_s",
    clears_when="score < cutoff / 2", clear_for="glucose_var_sustain_s",
    message=("Glucose variability {direction} than usual for this patient: SD {sd_recent:.0f} mg/dL over the last "
             "day vs {sd_usual:.0f} long-term (x{ratio:.2f}), sustained {sustained_h:.0f} h"),
    explain=Explain(value="round(sd_recent, 1)", threshold="round(exp(cutoff), 2)", window_s="recent_window_s",
                    baseline="round(sd_usual, 1)"),
    clear_message="Glucose variability back to usual (SD {sd_recent:.0f} vs {sd_usual:.0f} mg/dL)",
    clear_explain=Explain(value="round(sd_recent, 1)", threshold="round(exp(cutoff / 2), 2)",
                          window_s="recent_window_s", baseline="round(sd_usual, 1)"),
    note="Ratio of the last day's glucose SD to the long-term SD, beyond glucose_var_min_ratio (or its inverse) "
         "and the calibrated quantile.",
)
VARIABILITY_RULES = RuleSet(
    "glucose_variability_model",
    (Measure("score", "", "|log| of the ratio of recent to long-term glucose SD"),
     Measure("cutoff", "", "larger of log(glucose_var_min_ratio) and the calibrated quantile of the score")),
    (_VARIABILITY,),
    (Measure("sd_recent", "mg/dL", "glucose SD over about the last day"),
     Measure("sd_usual", "mg/dL", "the patient's long-term glucose SD"),
     Measure("ratio", "", "sd_recent / sd_usual"),
     Measure("direction", "", "'higher' or 'lower'"),
     Measure("recent_window_s", "s", "the recent window (one day of 5-minute readings)")),
)

MODEL_RULES: tuple[RuleSet, ...] = (DRIFT_RULES, VARIABILITY_RULES)

#: every rule set, in the order the table is shown
ALL_RULE_SETS: tuple[RuleSet, ...] = (GLUCOSE_RULES, HEART_RATE_RULES, *DEVICE_RULES, *MODEL_RULES)
