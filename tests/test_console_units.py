"""Glucose units in the console: one conversion for explanations, alert text and series."""

from __future__ import annotations

import re

import pytest

from console.units import (
    MGDL_PER_MMOLL,
    convert_explanation,
    convert_series_point,
    glucose,
    glucose_rate,
    glucose_text,
)
from console.views import alert_row
from detectors.base import Finding
from detectors.glucose import GlucoseDetector

MIN = 60_000
T0 = 1_800_000_000_000


def glucose_findings() -> list[Finding]:
    """Real findings of the glucose detector: a fall to an urgent low, a long low, recovery, a long high."""
    det = GlucoseDetector()
    values = ([120, 118, 116, 112, 106, 98, 90, 82, 75, 68, 62, 58, 53, 50, 49, 52, 60, 66]
              + [64] * 10 + [80, 95, 110, 125, 140] + [110] * 10 + [200, 240, 270, 290, 300] + [300] * 12
              + [260, 200, 150, 120] + [115] * 10)
    out: list[Finding] = []
    for i, v in enumerate(values):
        out += det.update(T0 + i * 5 * MIN, float(v))
    return out


FINDINGS = glucose_findings()


def test_the_scenario_covers_every_glucose_message() -> None:
    seen = {(f.kind, f.cleared) for f in FINDINGS}
    for kind in ("glucose_urgent_low", "glucose_low", "glucose_high", "glucose_urgent_low_soon",
                 "glucose_falling_fast", "glucose_rising_fast"):
        assert (kind, False) in seen, kind
    assert ("glucose_urgent_low", True) in seen and ("glucose_low", True) in seen


def test_conversion_functions() -> None:
    assert MGDL_PER_MMOLL == 18.016
    assert [glucose(v, "mmol/L") for v in (40, 55, 70, 180, 250, 400)] == [2.2, 3.1, 3.9, 10.0, 13.9, 22.2]
    assert glucose(52.4, "mg/dL") == 52.4
    assert glucose_rate(-3.0, "mmol/L") == -0.17 and glucose_rate(1.5, "mg/dL") == 1.5


@pytest.mark.parametrize("f", FINDINGS, ids=lambda f: f"{f.kind}-{'clear' if f.cleared else 'onset'}-{f.ts_ms}")
def test_every_glucose_message_converts_consistently_with_its_explanation(f: Finding) -> None:
    mmol = glucose_text(f.message, "mmol/L")
    mgdl = glucose_text(f.message, "mg/dL")
    assert "mg/dL" not in mmol
    # every glucose number is named with its unit, the same ones in both units
    assert mmol.count("mmol/L") == mgdl.count("mg/dL") >= 1
    # in mg/dL the numbers are the original ones
    assert re.findall(r"\d+(?:\.\d+)?", mgdl) == re.findall(r"\d+(?:\.\d+)?", f.message)
    ex = convert_explanation("glucose", f.kind, f.explanation(), "mmol/L")
    assert ex["unit"] == "mmol/L" and ex["trend_unit"] == "mmol/L/min"
    # the reading's value: the text shows the rounded mg/dL value converted by the same function
    assert f.value is not None
    assert f"{glucose(round(f.value), 'mmol/L'):.1f} mmol/L" in mmol
    assert ex["value"] == glucose(f.value, "mmol/L")
    if f.trend_per_min is not None:
        assert ex["trend_per_min"] == glucose_rate(f.trend_per_min, "mmol/L")
    if not f.cleared and f.kind in ("glucose_urgent_low", "glucose_low", "glucose_high", "glucose_urgent_low_soon"):
        # the threshold is in the text as a bare number; converted like the structured threshold
        assert f.threshold is not None
        assert f"{ex['threshold']:.1f} mmol/L" in mmol
    # mg/dL leaves the structured values alone and names the unit
    ex_mg = convert_explanation("glucose", f.kind, f.explanation(), "mg/dL")
    assert ex_mg["value"] == f.value and ex_mg["unit"] == "mg/dL"


def test_text_phrasings_of_other_detectors() -> None:
    assert glucose_text("Glucose variability higher than usual for this patient: SD 45 mg/dL over the last day "
                        "vs 25 long-term (x1.80), sustained 6 h", "mmol/L") == (
        "Glucose variability higher than usual for this patient: SD 2.5 mmol/L over the last day "
        "vs 1.4 mmol/L long-term (x1.80), sustained 6 h")
    assert glucose_text("Glucose variability back to usual (SD 25 vs 24 mg/dL)", "mmol/L") == (
        "Glucose variability back to usual (SD 1.4 mmol/L vs 1.3 mmol/L)")
    assert glucose_text("glucose stuck at exactly 110 mg/dL for 45 min", "mmol/L") == (
        "glucose stuck at exactly 6.1 mmol/L for 45 min")
    assert glucose_text("forecast below 40 mg/dL in 25 min", "mmol/L") == "forecast below 2.2 mmol/L in 25 min"
    # times, counts and ratios stay as they are
    assert glucose_text("No glucose data for 30 min (limit 20 min): sensor disconnected or off-body?",
                        "mmol/L") == "No glucose data for 30 min (limit 20 min): sensor disconnected or off-body?"


def test_variability_threshold_is_a_ratio_and_stays() -> None:
    ex = convert_explanation("glucose", "glucose_variability_change",
                             {"value": 45.0, "threshold": 1.65, "baseline": 25.0}, "mmol/L")
    assert ex == {"value": 2.5, "threshold": 1.65, "baseline": 1.4, "unit": "mmol/L", "trend_unit": "mmol/L/min"}


def test_other_signals_only_get_their_unit() -> None:
    ex = {"value": 142.0, "threshold": 120.0, "trend_per_min": 1.0}
    assert convert_explanation("heart_rate", "tachycardia_at_rest", ex, "mmol/L") == {**ex, "unit": "bpm"}
    assert convert_series_point("heart_rate", {"t_ms": 0, "mean": 80.0}, "mmol/L") == {"t_ms": 0, "mean": 80.0}


def test_rows_use_the_readers_units() -> None:
    f = next(f for f in FINDINGS if f.kind == "glucose_urgent_low" and not f.cleared)
    from alerts.lifecycle import AlertBook

    (ev,) = [e for e in AlertBook("p-1", ward="3B").on_finding(f) if e.kind == f.kind]
    row = alert_row(ev.model_dump(), "mmol/L")
    assert row["unit"] == "mmol/L" and row["explanation"]["unit"] == "mmol/L"
    assert "mg/dL" not in row["message"] and row["explanation"]["threshold"] == 3.1
    row_mg = alert_row(ev.model_dump(), "mg/dL")
    assert row_mg["unit"] == "mg/dL" and row_mg["explanation"]["threshold"] == 55.0
    assert row_mg["message"] == glucose_text(ev.message, "mg/dL")
