"""The oracle bound of the detection bench (bench/bench_detection.py ``--bound``) on hand-made patients."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from ingest.scenarios import DEFAULT_START_MS, MIN_MS, Cohort, PatientData, _label, make_profile
from tests._files import load_script
from tools.evaluation import score

_PATH = Path(__file__).resolve().parents[1] / "bench" / "bench_detection.py"


@pytest.fixture(scope="module")
def bd() -> ModuleType:
    return load_script(_PATH, "bench_detection_under_test")


def _patient(pid: str, truth: np.ndarray, cgm: np.ndarray, every_min: int = 5) -> PatientData:
    """One patient: minute-level true glucose, CGM readings (mg/dL) every ``every_min`` minutes, no heart rate."""
    n = truth.size
    k = np.arange(0, n, every_min)
    ts = DEFAULT_START_MS + k * MIN_MS
    t_min = DEFAULT_START_MS + np.arange(n, dtype=np.int64) * MIN_MS
    flat = np.zeros(n)
    return PatientData(
        patient_id=pid, profile=make_profile(np.random.default_rng(0)), events=[],
        episodes=_label(pid, t_min, flat + 70.0, truth, flat, []),
        ts_ms=ts, arrival_ms=ts + 1000, signal=np.ones(k.size, dtype=np.int8), value=cgm[k].astype(float),
        unit=np.ones(k.size, dtype=np.int8), truth_hr=flat + 70.0, truth_glucose=truth, truth_steps=flat)


def _dip(n: int, low: float, start: int, fall: int = 40, hold: int = 30) -> np.ndarray:
    """100 mg/dL, a straight fall to ``low`` over ``fall`` minutes from minute ``start``, held, straight back."""
    g = np.full(n, 100.0)
    down = np.linspace(100.0, low, fall + 1)
    g[start:start + fall + 1] = down
    g[start + fall:start + fall + hold] = low
    g[start + fall + hold:start + 2 * fall + hold + 1] = down[::-1]
    return g


def _opens(alerts: list[dict[str, Any]], kind: str) -> list[int]:
    return [(a["ts_ms"] - DEFAULT_START_MS) // MIN_MS for a in alerts if a["kind"] == kind and a["state"] == "open"]


def test_a_perfect_sensor_warns_exactly_one_horizon_ahead_and_is_never_false(bd: ModuleType) -> None:
    truth = _dip(600, 40.0, 100)  # 100 -> 40 over minutes 100-140 (1.5 mg/dL/min): below 54 from minute 131
    c = Cohort([_patient("p", truth, truth)], DEFAULT_START_MS, DEFAULT_START_MS + 600 * MIN_MS)
    for source in ("cgm", "truth"):
        alerts = bd.oracle_alerts(c, bd.Oracle("o", source, 55.0, 20.0))
        # readings every 5 min: the first below 55 is at 135 (52.0), the first within 20 min of it at 115
        assert _opens(alerts, "glucose_urgent_low_soon") == [115]
        assert _opens(alerts, "glucose_urgent_low") == [135]
        assert _opens(alerts, "glucose_low") == [140]  # read below 70 from 125: 15 min later
        assert _opens(alerts, "glucose_falling_fast") == []  # 1.5 mg/dL/min is not fast
        rep = score(alerts, c.episodes, c.patient_days)
        assert rep.false_alerts == 0
        assert rep.hypo_l2 == 1 and rep.lead_times_min == [131 - 115]


def test_a_sensor_dip_is_false_for_the_cgm_oracle_and_absent_for_the_truth(bd: ModuleType) -> None:
    truth = np.full(600, 100.0)
    cgm = _dip(600, 45.0, 200, fall=20, hold=30)  # the sensor alone reads 45 for half an hour
    c = Cohort([_patient("p", truth, cgm)], DEFAULT_START_MS, DEFAULT_START_MS + 600 * MIN_MS)
    alerts = bd.oracle_alerts(c, bd.Oracle("o", "cgm", 55.0, 20.0))
    rep = score(alerts, c.episodes, c.patient_days)
    assert c.episodes == []
    assert rep.false_alerts == len([a for a in alerts if a["state"] == "open"])  # every alert is false
    assert {k: rep.false_by_kind.get(k) for k in ("glucose_urgent_low_soon", "glucose_urgent_low", "glucose_low")} \
        == {"glucose_urgent_low_soon": 1, "glucose_urgent_low": 1, "glucose_low": 1}
    assert bd.oracle_alerts(c, bd.Oracle("o", "truth", 55.0, 20.0)) == []


def test_episodes_sustain_clear_and_gaps(bd: ModuleType) -> None:
    ts = np.arange(12, dtype=np.int64) * 5 * MIN_MS
    ts[8:] += 20 * MIN_MS  # a 25-minute gap before reading 8
    opens = np.array([1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1], dtype=bool)
    # held 15 min: opens at reading 3, clears after 10 min of clears (4, 5, 6), reopens only after the gap
    assert bd._episodes(ts, opens, ~opens, 15 * MIN_MS, 10 * MIN_MS) == [(3, 6), (11, None)]
    assert bd._episodes(ts, opens, ~opens, 0, 10 * MIN_MS, blocked=opens) == []


def test_future_slope_of_a_line_and_across_a_gap(bd: ModuleType) -> None:
    ts = np.arange(20, dtype=np.int64) * 5 * MIN_MS
    vs = 100.0 - 2.5 * np.arange(20) * 5
    slope = bd._future_slope(ts, vs, 25 * MIN_MS)
    assert np.allclose(slope[:15], -2.5)  # a full 25 minutes ahead
    assert slope[15] == pytest.approx(-2.5)  # 20 minutes ahead: at least two thirds of the span
    assert (slope[16:] == 0).all()  # 15 minutes or less: too little of the future to fit
