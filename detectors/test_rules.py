"""Clinical rules on handmade series, with exact counts."""

from __future__ import annotations

from collections.abc import Callable

from detectors import Audience, DetectorConfig, Finding, PatientMonitor, Priority

MIN = 60_000
T0 = 1_700_000_000_000


def feed_glucose(m: PatientMonitor, values: list[float], step_min: int = 5) -> list[Finding]:
    out: list[Finding] = []
    for i, v in enumerate(values):
        out += m.update("glucose", T0 + i * step_min * MIN, v)
    return out


def kinds(fs: list[Finding], kind: str) -> list[tuple[bool, int]]:
    return [(f.cleared, f.onset_ms) for f in fs if f.kind == kind]


def test_urgent_low_fires_at_once_and_clears_once() -> None:
    m = PatientMonitor()
    series = [120, 110, 100, 90, 80, 70, 60, 54, 50, 48, 52, 58, 66, 72, 80, 90, 100, 110, 115]
    fs = feed_glucose(m, [float(v) for v in series])
    ul = [f for f in fs if f.kind == "glucose_urgent_low"]
    assert [f.cleared for f in ul] == [False, True]
    onset, clear = ul
    assert onset.ts_ms == T0 + 7 * 5 * MIN  # the first reading below 55
    assert onset.priority is Priority.HIGH and onset.audience is Audience.CLINICAL
    assert onset.onset_ms == clear.onset_ms
    assert onset.value == 54.0 and onset.threshold == 55.0
    assert "55" in onset.message
    # hysteresis: 58 is above 55 but below the clear level: still one episode
    assert clear.ts_ms >= T0 + 12 * 5 * MIN + 10 * MIN


def test_urgent_low_does_not_flap_on_noise_around_threshold() -> None:
    m = PatientMonitor()
    fs = feed_glucose(m, [56, 54, 57, 53, 56, 54, 57, 56, 54, 70, 80, 85, 90, 95])
    assert len(kinds(fs, "glucose_urgent_low")) == 2


def test_glucose_low_needs_15_minutes() -> None:
    m = PatientMonitor()
    # 68 for 10 min then back up: no low
    fs = feed_glucose(m, [90, 68, 68, 68, 85, 90, 95, 100])
    assert kinds(fs, "glucose_low") == []
    m = PatientMonitor()
    fs = feed_glucose(m, [90, 68, 66, 65, 64, 66, 68, 85, 90, 95, 100, 100])
    low = [f for f in fs if f.kind == "glucose_low"]
    assert [f.cleared for f in low] == [False, True]
    assert low[0].ts_ms == T0 + 4 * 5 * MIN  # 15 min after the first reading below 70
    assert low[0].onset_ms == T0 + 1 * 5 * MIN
    assert low[0].priority is Priority.MEDIUM
    assert low[0].window_s == 900.0


def test_one_noisy_reading_does_not_restart_the_low_timer() -> None:
    m = PatientMonitor()
    fs = feed_glucose(m, [90, 66, 65, 71, 64, 63, 85, 90, 95, 100])
    assert [c for c, _ in kinds(fs, "glucose_low")] == [False, True]


def test_glucose_low_override() -> None:
    m = PatientMonitor(DetectorConfig().with_overrides({"glucose_low_mgdl": 75}))
    fs = feed_glucose(m, [90, 73, 73, 73, 73, 74, 90, 95, 100])
    assert [c for c, _ in kinds(fs, "glucose_low")] == [False, True]


def test_glucose_high_sustained_30_minutes() -> None:
    m = PatientMonitor()
    fs = feed_glucose(m, [200, 260, 270, 280, 275, 270, 265, 262, 240, 220, 200, 190, 180])
    high = [f for f in fs if f.kind == "glucose_high"]
    assert [f.cleared for f in high] == [False, True]
    assert high[0].ts_ms == T0 + 7 * 5 * MIN


def test_predicted_urgent_low_before_the_crossing() -> None:
    m = PatientMonitor()
    values = [float(130 - 2 * 5 * i) for i in range(9)]  # 130 -> 50 at -2 mg/dL/min
    fs = feed_glucose(m, values)
    soon = [f for f in fs if f.kind == "glucose_urgent_low_soon"]
    urgent = [f for f in fs if f.kind == "glucose_urgent_low"]
    assert len(soon) == 1 and len(urgent) == 1
    assert urgent[0].ts_ms - soon[0].ts_ms >= 15 * MIN
    assert soon[0].trend_per_min is not None and soon[0].trend_per_min < -1.5


def test_urgent_low_soon_lead_on_a_fall_from_a_flat_start() -> None:
    # flat 110 for an hour, then a straight fall: the warning must come >= 15 min before the fall
    # crosses 54 at 1.5 mg/dL/min; at 2 mg/dL/min it comes 13 min ahead (the slope of a fall that
    # has just begun needs a few readings; the forecast margin does not help here, the forecast
    # is still above 63 a reading earlier) -- pinned so a change of the forecast shows here
    leads = {}
    for rate in (1.0, 1.5, 2.0):
        m = PatientMonitor()
        fs = feed_glucose(m, [110.0 - rate * max(0, 5 * i - 55) for i in range(26)])
        soon = [f for f in fs if f.kind == "glucose_urgent_low_soon" and not f.cleared]
        assert len(soon) == 1
        leads[rate] = T0 + (55 + (110 - 54) / rate) * MIN - soon[0].ts_ms
    assert leads[1.0] >= 20 * MIN and leads[1.5] >= 15 * MIN
    assert leads[2.0] == 13 * MIN


def test_urgent_low_soon_means_a_forecast_reaching_55_a_margin_is_a_per_patient_setting() -> None:
    # flat 110, then -1 mg/dL/min: by default (Dexcom) the warning comes when the forecast reaches 55,
    # 21 min before the fall crosses 54; a margin of 8 (forecast < 63 once the two newest readings
    # are the lowest) warns two readings earlier
    def first_soon(cfg: DetectorConfig) -> Finding:
        m = PatientMonitor(cfg)
        fs = feed_glucose(m, [110.0 - max(0, 5 * i - 55) for i in range(26)])
        return next(f for f in fs if f.kind == "glucose_urgent_low_soon" and not f.cleared)

    cfg = DetectorConfig()
    assert cfg.glucose_predict_margin_mgdl == 0.0
    soon = first_soon(cfg)
    assert T0 + (55 + 56) * MIN - soon.ts_ms == 21 * MIN
    assert soon.baseline is not None and soon.baseline < 55
    earlier = first_soon(cfg.with_overrides({"glucose_predict_margin_mgdl": 8}))
    assert earlier.ts_ms == soon.ts_ms - 10 * MIN
    assert earlier.baseline is not None and 55 <= earlier.baseline < 63  # forecast within the margin


def test_a_fall_that_levels_off_above_55_is_not_an_urgent_low_soon() -> None:
    # 150 falling 2 mg/dL/min, then decelerating to a plateau at 85 (insulin action ending): the
    # straight line through the last 25 minutes reaches 55 within 20 minutes, the fall does not
    series = [150.0] * 6 + [140.0, 130.0, 120.0, 111.0, 103.0, 96.0, 91.0, 88.0, 86.0, 85.0, 85.0, 85.0, 85.0]

    def soon(cfg: DetectorConfig) -> list[tuple[bool, int]]:
        return kinds(feed_glucose(PatientMonitor(cfg), series), "glucose_urgent_low_soon")

    assert soon(DetectorConfig()) == []
    straight = soon(DetectorConfig().with_overrides({"glucose_predict_levelling": 0.0}))
    assert [o for o in straight if not o[0]] == [(False, T0 + 11 * 5 * MIN)]


def test_a_fall_that_does_not_level_off_is_still_warned() -> None:
    # the same start, the fall going on at 2.5 mg/dL/min: warned before 55 is reached
    series = [110.0] * 12 + [110.0 - 12.5 * k for k in range(1, 6)]
    fs = feed_glucose(PatientMonitor(), series)
    soon = [f for f in fs if f.kind == "glucose_urgent_low_soon"]
    urgent = [f for f in fs if f.kind == "glucose_urgent_low"]
    assert [f.cleared for f in soon] == [False] and [f.cleared for f in urgent] == [False]
    assert urgent[0].ts_ms - soon[0].ts_ms >= 5 * MIN


def test_one_reading_falling_faster_than_glucose_can_is_not_an_urgent_low_soon_until_confirmed() -> None:
    # steady near 100 read every 3 min, then one reading 30 lower (10 mg/dL/min: a compression low)
    steady = [100.0, 101.0, 99.0, 100.0, 102.0, 100.0, 99.0, 101.0, 100.0]
    glitch = feed_glucose(PatientMonitor(), [*steady, 70.0, 100.0, 99.0, 101.0], step_min=3)
    assert [f.kind for f in glitch] == []
    unguarded = DetectorConfig().with_overrides({"glucose_predict_max_step_mgdl_min": 100})
    assert kinds(feed_glucose(PatientMonitor(unguarded), [*steady, 70.0], step_min=3),
                 "glucose_urgent_low_soon") == [(False, T0 + 27 * MIN)]
    # the next reading confirms the fall: warned then
    real = feed_glucose(PatientMonitor(), [*steady, 70.0, 62.0], step_min=3)
    assert kinds(real, "glucose_urgent_low_soon") == [(False, T0 + 30 * MIN)]


def test_a_short_dip_near_70_warns_unless_a_minimum_fall_is_required() -> None:
    # steady at 75, then 72, 68, 64 (11 mg/dL in 10 min: the drift of a CGM's error near 70), back to 75:
    # the forecast reaches 55 and warns at the defaults; a required fall of 15 mg/dL within the trend
    # window (glucose_predict_min_drop_mgdl) holds it back, and the same dip from 79 is warned again
    series = [75.0] * 12 + [72.0, 68.0, 64.0, 64.0, 66.0, 70.0, 74.0, 75.0, 75.0, 75.0, 75.0, 75.0]
    warned = [(False, T0 + 70 * MIN), (True, T0 + 70 * MIN)]
    assert kinds(feed_glucose(PatientMonitor(), series), "glucose_urgent_low_soon") == warned
    deep = DetectorConfig().with_overrides({"glucose_predict_min_drop_mgdl": 15.0})
    assert kinds(feed_glucose(PatientMonitor(deep), series), "glucose_urgent_low_soon") == []
    deeper = [79.0] * 12 + series[12:]
    assert kinds(feed_glucose(PatientMonitor(deep), deeper), "glucose_urgent_low_soon") == warned


def test_two_outlying_readings_do_not_make_a_moderate_fall_fast() -> None:
    # a fall of 1.6 mg/dL/min (below the 2 of the rate alert) read every 3 min, two readings 30 high
    # (heavy-tailed CGM noise): the weighted fit alone reads 2+ mg/dL/min for 10 minutes once they
    # have aged; the Theil-Sen slope does not
    series = [float(round(200.0 - 1.6 * 3 * i)) for i in range(22)]
    series[7] += 30.0
    series[8] += 30.0
    robust = feed_glucose(PatientMonitor(), series, step_min=3)
    plain = feed_glucose(PatientMonitor(DetectorConfig().with_overrides({"glucose_rate_robust": False})),
                         series, step_min=3)
    assert kinds(robust, "glucose_falling_fast") == []
    assert kinds(plain, "glucose_falling_fast") == [(False, T0 + 12 * 3 * MIN)]  # onset: the count's start
    assert [f.kind for f in robust] == []


def _hr_session(
    m: PatientMonitor,
    minutes: int,
    bpm_at: Callable[[int], float],
    steps_at: Callable[[int], float],
) -> list[Finding]:
    out: list[Finding] = []
    for s in range(0, minutes * 60, 5):
        t = T0 + s * 1000
        if s % 60 == 0:
            out += m.update("steps", t, steps_at(s // 60))
        out += m.update("heart_rate", t, bpm_at(s))
    return out


def test_tachycardia_at_rest_once_after_10_minutes() -> None:
    m = PatientMonitor()
    fs = _hr_session(m, 60, lambda s: 135.0 if 20 * 60 <= s < 40 * 60 else 68.0, lambda _m: 0.0)
    t = [f for f in fs if f.kind == "tachycardia_at_rest"]
    assert [f.cleared for f in t] == [False, True]
    assert t[0].priority is Priority.HIGH  # >= 131: NEWS2 score 3
    assert 30 * MIN <= t[0].ts_ms - T0 <= 31 * MIN
    assert t[0].contributing == ("heart_rate", "steps")
    assert t[1].onset_ms == t[0].onset_ms


def test_tachycardia_121_to_130_is_medium() -> None:
    m = PatientMonitor()
    fs = _hr_session(m, 45, lambda s: 125.0 if 20 * 60 <= s < 35 * 60 else 68.0, lambda _m: 0.0)
    t = [f for f in fs if f.kind == "tachycardia_at_rest"]
    assert [(f.cleared, f.priority) for f in t] == [(False, Priority.MEDIUM), (True, Priority.MEDIUM)]


def test_no_tachycardia_at_rest_while_walking() -> None:
    m = PatientMonitor()
    fs = _hr_session(m, 60, lambda s: 135.0 if 20 * 60 <= s < 40 * 60 else 68.0,
                     lambda mi: 100.0 if 15 <= mi < 45 else 0.0)
    assert kinds(fs, "tachycardia_at_rest") == []


def test_tachycardia_threshold_130_override() -> None:
    m = PatientMonitor(DetectorConfig().with_overrides({"hr_rest_high_bpm": 130}))
    fs = _hr_session(m, 45, lambda s: 125.0 if 10 * 60 <= s < 35 * 60 else 68.0, lambda _m: 0.0)
    assert kinds(fs, "tachycardia_at_rest") == []


def test_bradycardia() -> None:
    m = PatientMonitor()
    fs = _hr_session(m, 20, lambda s: 35.0 if 5 * 60 <= s < 10 * 60 else 60.0, lambda _m: 0.0)
    b = [f for f in fs if f.kind == "bradycardia"]
    assert [(f.cleared, f.priority) for f in b] == [(False, Priority.HIGH), (True, Priority.HIGH)]
    assert 6 * MIN <= b[0].ts_ms - T0 <= 7 * MIN  # 60 s sustained after ~40 s of filter lag


def _minute_interp(samples: dict[int, float], base: float) -> Callable[[int], float]:
    """HR at second ``s``: linear between per-minute values (``base`` where none is given)."""
    def at(s: int) -> float:
        i, f = divmod(s, 60)
        a, b = samples.get(i, base), samples.get(i + 1, base)
        return a + (b - a) * f / 60
    return at


def test_brief_deep_fall_from_a_normal_rate_is_bradycardia() -> None:
    # a V-shaped fall from 70 to 35 and back (minute values 44, 35, 44): about 67 s below 40.
    # The running median and low-pass leave about 45 s of the conditioned rate below 40, so a
    # patient whose own rate is >= 12 bpm above 40 is alarmed after 40 s of it, not 60 s
    dip = _minute_interp({20: 44.0, 21: 35.0, 22: 44.0}, 70.0)
    fs = _hr_session(PatientMonitor(), 30, dip, lambda _m: 0.0)
    b = [f for f in fs if f.kind == "bradycardia"]
    assert [f.cleared for f in b] == [False, True]
    assert b[0].window_s == 40.0 and "below 40 for 40 s" in b[0].message
    assert 20 * MIN <= b[0].ts_ms - T0 <= 22 * MIN
    slow = PatientMonitor(DetectorConfig().with_overrides({"hr_low_abrupt_sustain_s": 60}))
    assert kinds(_hr_session(slow, 30, dip, lambda _m: 0.0), "bradycardia") == []


def test_short_fall_from_a_rate_near_40_still_needs_60_s() -> None:
    # own rate 48 (less than 12 bpm above 40): 70 s at 35 leaves under 60 s of the conditioned
    # rate below 40 -> nothing; from 52 the same fall is alarmed after 40 s
    def fall(base: float) -> Callable[[int], float]:
        return lambda s: 35.0 if 20 * 60 <= s < 20 * 60 + 70 else base

    assert kinds(_hr_session(PatientMonitor(), 30, fall(48.0), lambda _m: 0.0), "bradycardia") == []
    b = kinds(_hr_session(PatientMonitor(), 30, fall(52.0), lambda _m: 0.0), "bradycardia")
    assert [c for c, _t in b] == [False, True]


def test_motion_artefact_spikes_are_rejected() -> None:
    m = PatientMonitor()

    def bpm(s: int) -> float:
        return 160.0 if s % 120 in (0, 5) else 70.0  # two-sample spikes every 2 minutes

    fs = _hr_session(m, 60, bpm, lambda _m: 0.0)
    assert [f for f in fs if f.audience is Audience.CLINICAL] == []


def _noisy_hr(level_at: Callable[[int], float], minutes: int, seed: int, sd: float = 2.0) -> list[float]:
    """Wrist-PPG-like readings every 5 s: AR(1) noise (phi 0.85), rounded to whole bpm."""
    import numpy as np

    rng = np.random.default_rng(seed)
    z, out = 0.0, []
    for i in range(minutes * 12):
        z = 0.85 * z + rng.normal(0, sd * (1 - 0.85**2) ** 0.5)
        out.append(float(round(level_at(i * 5) + z + rng.normal(0, 0.8))))
    return out


def _brady_session(values: list[float]) -> list[Finding]:
    m = PatientMonitor()
    out: list[Finding] = []
    for i, v in enumerate(values):
        t = T0 + i * 5_000
        if i % 12 == 0:
            out += m.update("steps", t, 0.0)
        out += m.update("heart_rate", t, v)
    return [f for f in out if f.kind == "bradycardia"]


def test_sleeping_near_40_is_not_bradycardia() -> None:
    # a fit patient falling asleep (55 -> 42 bpm over 20 min) and sleeping at 42 bpm: wrist
    # noise dips below 40 for a minute now and then. (Nothing is known about the patient's
    # own rate in the first 4 minutes: the plain 60-s rule applies then.)
    for seed in range(8):
        b = _brady_session(_noisy_hr(lambda s: max(42.0, 55.0 - 13.0 * s / 1200), 8 * 60, seed))
        assert b == []


def test_sleeping_below_40_gives_one_episode() -> None:
    b = _brady_session(_noisy_hr(lambda s: 52.0 if s < 1800 else 38.0, 6 * 60, seed=3))
    assert [f.cleared for f in b] == [False]
    assert b[0].priority is Priority.HIGH


def test_acute_drop_while_near_threshold_episode_is_open_raises_a_new_one() -> None:
    def level(s: int) -> float:
        if s < 600:
            return 44.0
        return 33.0 if 3 * 3600 <= s < 3 * 3600 + 600 else 39.5

    b = _brady_session(_noisy_hr(level, 4 * 60, seed=1, sd=1.5))
    assert [f.cleared for f in b] == [False, True, False]
    assert "further" in b[2].message
    assert b[1].onset_ms == b[0].onset_ms != b[2].onset_ms
    assert 3 * 3600_000 <= b[2].ts_ms - T0 <= 3 * 3600_000 + 4 * MIN


def test_bradycardia_episode_of_a_near_threshold_sleeper_clears_when_the_median_recovers() -> None:
    # asleep at 38, then at 43 (still asleep, below the 45 clear level): the episode must end
    b = _brady_session(_noisy_hr(lambda s: 38.0 if s < 3600 else 43.0, 2 * 60, seed=2))
    assert [f.cleared for f in b] == [False, True]


def test_urgent_low_soon_never_shows_a_forecast_below_what_a_cgm_reads() -> None:
    from detectors import PatientMonitor

    m = PatientMonitor()
    found = []
    for i, g in enumerate([130, 115, 100, 85, 72, 62]):  # -3 mg/dL/min: a straight line runs far below 0
        found += m.update("glucose", 1_780_000_000_000 + i * 300_000, float(g))
    soon = [f for f in found if f.kind == "glucose_urgent_low_soon" and not f.cleared]
    assert len(soon) == 1
    assert soon[0].baseline is not None and soon[0].baseline >= 40.0
    assert "-" not in soon[0].message.split("forecast ")[1].split(" in ")[0]
