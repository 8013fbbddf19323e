"""Tests of the generic per-series detector: pickling, determinism, missing data, gaps, size."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from detectors.generic import DEFAULT_THRESHOLD, DensityHistogram, SeriesAnomalyDetector


def _series(n: int = 3000, seed: int = 7) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    ts = np.cumsum(rng.uniform(50.0, 70.0, n))  # irregular ~1/min
    day = 2 * math.pi * ts / 86400.0
    values = 70.0 + 8.0 * np.sin(day) + rng.gamma(2.0, 2.0, n)
    if n > 2500:
        values[2500] = 160.0
    return ts.tolist(), values.tolist()


def _run(det: SeriesAnomalyDetector, ts: list[float], values: list[float | None]) -> list[float]:
    return [det.score_and_learn(t, v) for t, v in zip(ts, values, strict=True)]


def test_constructor_only_stores_settings() -> None:
    det = SeriesAnomalyDetector(refractory=7)
    assert det._state is None
    assert det.refractory == 7
    with pytest.raises(ValueError):
        SeriesAnomalyDetector(smoothing=0.0)


def test_scores_in_unit_interval_and_spike_found() -> None:
    ts, values = _series()
    scores = _run(SeriesAnomalyDetector(), ts, list(values))
    assert all(0.0 <= s <= 1.0 for s in scores)
    alarms = [i for i, s in enumerate(scores) if s >= DEFAULT_THRESHOLD]
    assert 2500 in alarms
    assert len(alarms) <= 5


def test_deterministic() -> None:
    ts, values = _series()
    assert _run(SeriesAnomalyDetector(), ts, list(values)) == _run(SeriesAnomalyDetector(), ts, list(values))


def test_pickle_round_trip_gives_identical_scores() -> None:
    ts, values = _series()
    det = SeriesAnomalyDetector()
    _run(det, ts[:1500], list(values[:1500]))
    restored = pickle.loads(pickle.dumps(det))
    assert _run(restored, ts[1500:], list(values[1500:])) == _run(det, ts[1500:], list(values[1500:]))


def test_state_is_compact() -> None:
    rng = np.random.default_rng(1)
    det = SeriesAnomalyDetector()
    values = np.exp(rng.normal(0.0, 3.0, 20_000))  # very wide range: the histograms grow
    _run(det, [60.0 * i for i in range(len(values))], values.tolist())
    assert len(pickle.dumps(det, protocol=pickle.HIGHEST_PROTOCOL)) <= 4096


def test_missing_values_score_zero_and_leave_state_untouched() -> None:
    ts, values = _series(800)
    det = SeriesAnomalyDetector()
    _run(det, ts, list(values))
    before = pickle.dumps(det)
    for bad in (None, math.nan, math.inf, -math.inf):
        assert det.score_and_learn(ts[-1] + 60.0, bad) == 0.0
        assert det.score_one(ts[-1] + 60.0, bad) == 0.0
        det.learn_one(ts[-1] + 60.0, bad)
    assert pickle.dumps(det) == before
    # a series that starts with missing values
    fresh = SeriesAnomalyDetector()
    assert fresh.score_and_learn(0.0, None) == 0.0
    assert fresh._state is None


def test_missing_values_interleaved_equal_dropping_them() -> None:
    ts, values = _series(1500)
    holey: list[float | None] = list(values)
    for i in range(0, 1500, 7):
        holey[i] = math.nan
    kept = [(t, v) for t, v in zip(ts, holey, strict=True) if v is not None and not math.isnan(v)]
    a = [s for s, v in zip(_run(SeriesAnomalyDetector(), ts, holey), holey, strict=True) if v is not None and v == v]
    b = _run(SeriesAnomalyDetector(), [t for t, _ in kept], [v for _, v in kept])
    assert a == b


def test_gap_restarts_smoothing_and_keeps_working() -> None:
    ts, values = _series(1500)
    det = SeriesAnomalyDetector()
    _run(det, ts, list(values))
    st = det._state
    assert st is not None
    typical = st.dt
    assert 50.0 <= typical <= 70.0  # running median of the sampling interval
    after_gap = ts[-1] + 3 * 3600.0  # a 3-hour gap (> max_gap typical intervals)
    score = det.score_and_learn(after_gap, 75.0)
    assert 0.0 <= score <= 1.0
    assert st.smooth == 75.0  # the smoothed view restarted from the new value
    # out-of-order and duplicate timestamps do not break anything
    assert 0.0 <= det.score_and_learn(after_gap, 74.0) <= 1.0
    assert 0.0 <= det.score_and_learn(after_gap - 10.0, 73.0) <= 1.0


def test_score_one_does_not_learn_and_learn_one_matches() -> None:
    ts, values = _series(1200)
    a, b = SeriesAnomalyDetector(refractory=0), SeriesAnomalyDetector(refractory=0)
    for t, v in zip(ts, values, strict=True):
        before = pickle.dumps(b)
        s = b.score_one(t, v)
        assert pickle.dumps(b) == before
        b.learn_one(t, v)
        assert s == a.score_and_learn(t, v)


def test_refractory_caps_scores_after_an_alarm() -> None:
    values = [50.0 + (i % 10) for i in range(1000)] + [500.0, 600.0, 700.0]
    ts = [60.0 * i for i in range(len(values))]
    with_r = _run(SeriesAnomalyDetector(refractory=10), ts, list(values))
    without = _run(SeriesAnomalyDetector(refractory=0), ts, list(values))
    assert [s >= DEFAULT_THRESHOLD for s in without[-3:]] == [True, True, True]
    assert [s >= DEFAULT_THRESHOLD for s in with_r[-3:]] == [True, False, False]


def test_warmup_and_constant_series() -> None:
    det = SeriesAnomalyDetector(warmup=50)
    scores = _run(det, [float(i) for i in range(2000)], [5.0] * 2000)
    assert scores == [0.0] * 2000
    assert det.score_and_learn(2000.0, 9.0) >= DEFAULT_THRESHOLD  # first departure from a constant


def test_histogram_grows_both_ways_and_keeps_mass() -> None:
    h = DensityHistogram(n_bins=8)
    for v in [0.0, 1.0, 0.5, 100.0, -100.0, 0.25]:
        h.add(v)
    assert h.total == 6.0
    assert h.log10_p(1e6) < h.log10_p(150.0) <= 0.0
    forgetting = DensityHistogram(memory=100)
    for i in range(10_000):
        forgetting.add(float(i % 17))
    assert 99.0 <= forgetting.total <= 101.0  # effective memory
