"""Tests of the generic per-series detector: pickling, determinism, missing data, gaps, size."""

from __future__ import annotations

import math
import pickle
import sys
from typing import Any

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
    bads: list[dict[str, Any]] = [{"smoothing": 0.0}, {"slow_smoothing": 0.0}, {"surprise_smoothing": 1.5},
                                  {"evidence_p": 0.0}, {"evidence_p": 1.0},
                                  {"evidence_memory": 1.0}, {"budget_memory": 0.5}]
    for bad in bads:
        with pytest.raises(ValueError):
            SeriesAnomalyDetector(**bad)


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
    # without the alarm bookkeeping (refractory period, alarm budget) the two paths are the same
    a = SeriesAnomalyDetector(refractory=0, budget_step=0.0)
    b = SeriesAnomalyDetector(refractory=0, budget_step=0.0)
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


def _noise_then(extra: list[float], n: int = 2000) -> tuple[list[float], list[float]]:
    values = [50.0 + (i * 7919 % 21) for i in range(n)]  # 50..70, every value seen often
    for i in range(150, n, 333):
        values[i] = 76.0  # and 76 now and then: rare, but not new
    values += extra
    return [60.0 * i for i in range(len(values))], values


def test_evidence_accumulates_over_a_run_of_rare_samples() -> None:
    # one rare (not new) value is not enough, two in a row are; ordinary samples drain the evidence
    def det() -> SeriesAnomalyDetector:
        return SeriesAnomalyDetector(evidence_p=0.0065, evidence_memory=10.0, threshold=0.4)

    ts, one = _noise_then([76.0] + [60.0] * 5)
    single = _run(det(), ts, list(one))
    assert 0.0 < single[-6] < 0.4
    assert max(single[-5:]) == 0.0
    ts, run = _noise_then([76.0] * 2 + [60.0] * 4)
    scores = _run(det(), ts, list(run))
    assert scores[-6] < 0.4 <= scores[-5]
    assert scores[-5] > 1.5 * scores[-6]  # the second adds to the first
    # a value far beyond everything seen alarms at once
    ts, far = _noise_then([500.0])
    assert _run(det(), ts, list(far))[-1] >= 0.4


def test_alarm_budget_raises_the_bar_after_each_alarm() -> None:
    # two equal outliers, 300 samples apart (past the refractory period)
    values = [50.0 + (i % 10) for i in range(1000)] + [200.0] + [55.0] * 300 + [200.0]
    ts = [60.0 * i for i in range(len(values))]
    free = _run(SeriesAnomalyDetector(budget_step=0.0), ts, list(values))
    assert free[1000] >= DEFAULT_THRESHOLD and free[-1] >= DEFAULT_THRESHOLD
    # the second one scores below 1 (its value is no longer new), so a bar raised by 5x holds it back
    assert free[-1] < 1.0
    held = _run(SeriesAnomalyDetector(budget_step=4.0), ts, list(values))
    assert held[1000] >= DEFAULT_THRESHOLD
    assert held[-1] == min(free[-1], 0.5 * DEFAULT_THRESHOLD)
    # forgotten after budget_memory: a short memory lets it through again
    short = _run(SeriesAnomalyDetector(budget_step=4.0, budget_memory=10.0), ts, list(values))
    assert short[-1] == free[-1]


def test_bench_alarm_emulation_matches_the_detector() -> None:
    """bench/bench_nab.py applies threshold, refractory and budget to refractory-free scores: same alarms."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_nab.py"
    spec = importlib.util.spec_from_file_location("bench_nab_under_test", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[spec.name]
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 1, 3000), rng.normal(0, 3, 1000)])  # noisier later: many alarms
    values[[500, 1700, 2600]] = [9.0, -8.0, 12.0]
    holey: list[float | None] = values.tolist()
    for i in range(0, 4000, 37):
        holey[i] = None
    ts = [60.0 * i for i in range(len(holey))]
    valid = np.array([v is not None for v in holey])
    settings: list[dict[str, Any]] = [{}, {"refractory": 20, "budget_step": 0.5, "budget_memory": 300.0},
                                      {"threshold": 0.2}]
    for kw in settings:
        det = SeriesAnomalyDetector(**kw)
        thr = det.threshold
        alarms = np.array(_run(det, ts, holey)) >= thr
        free = SeriesAnomalyDetector(**{**kw, "refractory": 0, "budget_step": 0.0})
        emulated = mod.alarms(np.array(_run(free, ts, holey)), valid, thr, det.refractory, det.budget_step,
                              det.budget_memory)
        assert alarms.sum() >= 3
        assert (alarms == emulated).all()


def _spikes(gap_before: int, gap_after: int, n_before: int = 3000, n_after: int = 300) -> list[float | None]:
    rng = np.random.default_rng(11)
    values = rng.uniform(8.0, 12.0, n_before + n_after)  # bounded noise: no value is rare by chance
    values[0:n_before:gap_before] = 30.0  # spikes the series learns as part of its usual behaviour
    values[n_before::gap_after] = 30.0
    return values.tolist()


def test_surprise_view_alarms_when_familiar_spikes_come_more_often() -> None:
    # a spike every 40 samples is usual; from sample 3000 on there is one every 4 samples: no single value is new,
    # the rate of surprising values is
    values = _spikes(40, 4)
    ts = [60.0 * i for i in range(len(values))]
    scores = _run(SeriesAnomalyDetector(), ts, values)
    alarms = [i for i, s in enumerate(scores) if s >= DEFAULT_THRESHOLD]
    assert [i for i in alarms if 500 <= i < 3000] == []
    assert any(3000 <= i < 3100 for i in alarms)
    # the same spikes at the usual rate: no alarm after the warm-up period of the histograms
    steady = _run(SeriesAnomalyDetector(), ts, _spikes(40, 40))
    assert [i for i, s in enumerate(steady) if s >= DEFAULT_THRESHOLD and i >= 500] == []
    # it is the surprise view that finds them: with the surprise frozen (a negligible smoothing weight) they pass
    frozen = SeriesAnomalyDetector(surprise_smoothing=1e-9)
    assert all(s < DEFAULT_THRESHOLD for s in _run(frozen, ts, values)[3000:3100])
