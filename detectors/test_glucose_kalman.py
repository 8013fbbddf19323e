"""The urgent-low forecast's Kalman filter (``glucose_predict_kalman``, off by default): state kept across restarts."""

from __future__ import annotations

import math
import pickle

from detectors import DetectorConfig, PatientMonitor
from detectors.glucose import GlucoseDetector, kalman_step

KALMAN = DetectorConfig().with_overrides({"glucose_predict_kalman": True, "glucose_kf_mode": 2})
MIN = 60_000


def _series() -> list[float]:
    # steady 110, a fall of 1.5 mg/dL/min to 50, recovery, and a slow sensor-like dip
    fall = [110.0 - 1.5 * max(0, 5 * i - 30) for i in range(14)]
    dip = [100.0 - 15 * math.sin(math.pi * k / 8) for k in range(9)]
    return [110.0] * 12 + fall + [50.0, 55.0, 70.0, 90.0, 100.0] + dip + [100.0] * 10


def test_off_by_default_and_the_stored_layout_unchanged() -> None:
    assert DetectorConfig().glucose_predict_kalman is False
    g = GlucoseDetector()
    for i, v in enumerate(_series()):
        g.update(i * 5 * MIN, v)
    assert g._kf is None
    assert len(g.dump_state()) == 3 + len(g.episodes) + 4


def test_filter_state_survives_a_restart() -> None:
    series = _series()
    cut = 30
    m = PatientMonitor(KALMAN)
    before = [f for i, v in enumerate(series[:cut]) for f in m.update("glucose", i * 5 * MIN, v)]
    restored: PatientMonitor = pickle.loads(pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL))
    assert restored._glucose is not None and m._glucose is not None
    assert restored._glucose._kf == m._glucose._kf and restored._glucose._kf is not None
    rest = list(enumerate(series))[cut:]
    after_a = [f for i, v in rest for f in m.update("glucose", i * 5 * MIN, v)]
    after_b = [f for i, v in rest for f in restored.update("glucose", i * 5 * MIN, v)]
    assert after_a == after_b
    kinds = [f.kind for f in before + after_a if not f.cleared]
    assert kinds.count("glucose_urgent_low_soon") == 1 and kinds.count("glucose_urgent_low") == 1


def test_filter_follows_glucose_and_splits_off_part_of_a_drop() -> None:
    cfg = KALMAN
    s = None
    for _ in range(24):
        s = kalman_step(s, 5.0, 100.0, cfg)
    assert s is not None
    # a 10 mg/dL drop in one reading: part of it is read as the sensor's error, part as glucose
    s = kalman_step(s, 5.0, 90.0, cfg)
    glucose, rate, error = s[:3]
    assert 90.0 < glucose < 100.0 and error < 0.0 and rate < 0.0
    assert abs(glucose + error - 90.0) < 3.0  # the rest is white noise
