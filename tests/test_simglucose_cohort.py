"""The simglucose cohort generator of the detection bench (bench/simglucose_cohort.py), on one short patient."""

from __future__ import annotations

import doctest
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from tests._files import load_script

pytest.importorskip("simglucose", reason="the bench extra (make venv installs it)")

_PATH = Path(__file__).resolve().parents[1] / "bench" / "simglucose_cohort.py"


def _module() -> ModuleType:
    return load_script(_PATH, "simglucose_cohort_under_test")


@pytest.fixture(scope="module")
def sg() -> ModuleType:
    return _module()


@pytest.fixture(scope="module")
def patient(sg: ModuleType) -> Any:
    # six hours of one virtual patient (a few seconds), an excess correction bolus after the first hour
    return sg.simulate_sg_patient("sg-test", "adolescent#001", sg.DEFAULT_START_MS, 0.25, seed=7,
                                  over_bolus=[(1.0, 200.0)])


def test_cgm_display_doctests(sg: ModuleType) -> None:
    result = doctest.testmod(sg, verbose=False)
    assert (result.attempted, result.failed) == (2, 0)


def test_readings_look_like_devices(patient: Any, sg: ModuleType) -> None:
    n_min = 6 * 60
    assert len(patient.truth_glucose) == n_min
    counts = patient.counts()
    assert counts["steps"] > 0.8 * n_min and counts["heart_rate"] > 0.8 * n_min * 12
    g = patient.signal == 1
    mgdl = patient.value[g] * (sg.MMOL_TO_MGDL if patient.profile.glucose_unit == "mmol/L" else 1.0)
    assert mgdl.min() >= 38.5 and mgdl.max() <= 400.5
    step_min = np.diff(np.sort(patient.ts_ms[g])) / 60_000
    assert float(np.median(step_min)) in (3.0, 5.0)  # Dexcom or GuardianRT
    # the severe low is shown at the sensor's floor, not below it
    assert (mgdl <= 40.5).any()
    # every reading arrives after it was taken
    assert (patient.arrival_ms >= patient.ts_ms).all()


def test_labels_follow_the_true_glucose(patient: Any) -> None:
    start = patient.ts_ms.min() // 60_000 * 60_000
    truth = patient.truth_glucose
    l2 = [e for e in patient.episodes if e.kind == "hypoglycemia_l2"]
    assert len(l2) == 1
    i = (l2[0].start_ms - start) // 60_000
    assert truth[i - 1] >= 54 > truth[i]  # starts at the true crossing of 54 ...
    assert (truth[i : i + 15] < 54).all()  # ... and lasts at least 15 minutes
    assert l2[0].criterion_met_ms == l2[0].start_ms + 15 * 60_000
    assert truth.min() < 40 and truth[-1] > 70  # severe, and treated by the patient


def test_same_seed_same_patient(sg: ModuleType) -> None:
    a, b = (sg.simulate_sg_patient("sg-test", "child#002", sg.DEFAULT_START_MS, 0.05, seed=3) for _ in range(2))
    assert np.array_equal(a.value, b.value) and np.array_equal(a.ts_ms, b.ts_ms)
    assert np.array_equal(a.truth_glucose, b.truth_glucose) and a.episodes == b.episodes
