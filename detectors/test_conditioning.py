"""The hand-rolled streaming filters agree with scipy.signal and river.stats."""

from __future__ import annotations

import math

import numpy as np
from river import stats
from scipy import signal

from detectors.conditioning import LowPass, RunningMedian, news2_pulse_score, trend


def test_lowpass_equals_lfilter_with_zi() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(70, 5, 500)
    tau_ms, dt = 20_000.0, 5_000
    a = 1 - math.exp(-dt / tau_ms)
    lp = LowPass(tau_ms)
    ours = [lp.push(i * dt, float(v)) for i, v in enumerate(x)]
    b_coef, a_coef = [a], [1.0, a - 1.0]
    zi = signal.lfiltic(b_coef, a_coef, y=[x[0]], x=[x[0]])  # start settled at x[0]
    ref, _ = signal.lfilter(b_coef, a_coef, x[1:], zi=zi)
    np.testing.assert_allclose(ours[1:], ref, rtol=1e-12)


def test_lowpass_state_carries_between_chunks() -> None:
    x = np.linspace(60, 120, 50)
    one = LowPass(10_000)
    whole = [one.push(i * 5_000, float(v)) for i, v in enumerate(x)]
    two = LowPass(10_000)
    first = [two.push(i * 5_000, float(v)) for i, v in enumerate(x[:20])]
    rest = [two.push((i + 20) * 5_000, float(v)) for i, v in enumerate(x[20:])]
    assert whole == first + rest


def test_running_median_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, 200)
    rm = RunningMedian(5)
    ours = [rm.push(float(v)) for v in x]
    ref = [float(np.median(x[max(0, i - 4) : i + 1])) for i in range(len(x))]
    np.testing.assert_allclose(ours, ref)


def test_trend_equals_savgol_on_a_regular_grid() -> None:
    rng = np.random.default_rng(2)
    y = 120 - 1.5 * np.arange(6) * 5 + rng.normal(0, 4, 6)
    ts = [i * 300_000 for i in range(6)]
    level, slope = trend(ts, y.tolist())
    c0 = signal.savgol_coeffs(6, 1, deriv=0, pos=5, use="dot")
    c1 = signal.savgol_coeffs(6, 1, deriv=1, delta=5.0, pos=5, use="dot")
    assert math.isclose(level, float(c0 @ y), rel_tol=1e-9)
    assert math.isclose(slope, float(c1 @ y), rel_tol=1e-9)


def test_trend_with_irregular_timestamps_is_exact_on_a_line() -> None:
    ts = [0, 240_000, 600_000, 1_320_000]
    ys = [100 - 2.0 * t / 60_000 for t in ts]
    level, slope = trend(ts, ys, tau_min=15.0)
    assert math.isclose(slope, -2.0) and math.isclose(level, ys[-1])


def test_ewm_recurrences_match_river() -> None:
    rng = np.random.default_rng(3)
    a = 0.05
    m_ref, v_ref = stats.EWMean(fading_factor=a), stats.EWVar(fading_factor=a)
    mean = var = 0.0
    first = True
    for x in rng.normal(100, 20, 2000).tolist():
        m_ref.update(x)
        v_ref.update(x)
        if first:
            mean, first = x, False
        else:
            d = x - mean
            mean += a * d
            var = (1 - a) * (var + a * d * d)
    assert math.isclose(mean, m_ref.get(), rel_tol=1e-9)
    # river's EWVar is E[x^2] - E[x]^2 with the same fading; close, not bit-equal
    assert math.isclose(var, v_ref.get(), rel_tol=0.1)


def test_news2_bands_edges() -> None:
    assert [news2_pulse_score(x) for x in (40, 41, 50, 51, 90, 91, 110, 111, 130, 131)] == [
        3, 1, 1, 0, 0, 1, 1, 2, 2, 3,
    ]
