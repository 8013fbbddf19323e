"""A CGM at the ends of its reporting range reports a clinical extreme, not a stuck sensor.

A CGM shows its floor (39 or 40 mg/dL, "LOW") for any glucose below it and its
ceiling (400 or 401, "HIGH") for any glucose above: the true value is at least
that extreme, and a signal that stays there for hours is the patient, not the device.
"""

from __future__ import annotations

import pytest

from detectors import Audience, DetectorConfig, Finding, PatientMonitor, Priority

MIN = 60_000
T0 = 1_700_000_000_000


def _pinned(value: float, hours: float = 2.0, ticks: bool = True) -> list[Finding]:
    """Readings every 5 min: 20 min at 100 mg/dL, then ``value`` for ``hours``; a time-driven check each minute."""
    m = PatientMonitor()
    out: list[Finding] = []
    n = 4 + int(hours * 12)
    for i in range(n):
        ts = T0 + i * 5 * MIN
        out += m.update("glucose", ts, 100.0 if i < 4 else value)
        if ticks:
            for k in range(5):
                out += m.tick(ts + k * MIN)
    return out


@pytest.mark.parametrize("floor", [39.0, 40.0])
def test_two_hours_at_the_floor_is_one_open_urgent_low_and_no_device_finding(floor: float) -> None:
    fs = _pinned(floor)
    urgent = [f for f in fs if f.kind == "glucose_urgent_low"]
    assert [(f.cleared, f.onset_ms) for f in urgent] == [(False, T0 + 20 * MIN)]
    (onset,) = urgent
    assert onset.priority is Priority.HIGH and onset.audience is Audience.CLINICAL
    assert onset.message == "Urgent low glucose: at or below the sensor's lowest reading (40 mg/dL), below 55"
    assert onset.value == floor and onset.threshold == 55.0
    assert [f for f in fs if f.audience is Audience.DEVICE] == []


@pytest.mark.parametrize("ceiling", [400.0, 401.0])
def test_two_hours_at_the_ceiling_is_one_high_opened_at_once_and_no_device_finding(ceiling: float) -> None:
    fs = _pinned(ceiling)
    high = [f for f in fs if f.kind == "glucose_high"]
    # at once: the sensor cannot show how far above 400 glucose is, so there is nothing to wait for
    assert [(f.cleared, f.onset_ms, f.ts_ms) for f in high] == [(False, T0 + 20 * MIN, T0 + 20 * MIN)]
    assert high[0].message == "High glucose: at or above the sensor's highest reading (400 mg/dL), above 250"
    assert high[0].priority is Priority.MEDIUM and high[0].window_s == 0.0
    assert [f for f in fs if f.audience is Audience.DEVICE] == []


def test_a_signal_stuck_inside_the_range_is_still_a_flatline() -> None:
    fs = _pinned(123.0)
    flat = [f for f in fs if f.kind == "sensor_flatline"]
    assert [(f.cleared, f.onset_ms, f.audience) for f in flat] == [(False, T0 + 20 * MIN, Audience.DEVICE)]
    assert [f for f in fs if f.kind in ("glucose_urgent_low", "glucose_high")] == []


def test_an_urgent_low_that_opened_above_the_floor_stays_open_at_the_floor() -> None:
    m = PatientMonitor()
    series = [100.0, 90.0, 75.0, 62.0, 50.0, 44.0] + [39.0] * 24 + [70.0] * 3
    fs: list[Finding] = []
    for i, v in enumerate(series):
        fs += m.update("glucose", T0 + i * 5 * MIN, v)
    urgent = [(f.cleared, f.onset_ms, f.ts_ms, f.message) for f in fs if f.kind == "glucose_urgent_low"]
    # two hours at the floor never clear it; 10 minutes at 70 do
    assert urgent == [
        (False, T0 + 20 * MIN, T0 + 20 * MIN, "Urgent low glucose: 50 mg/dL, below 55"),
        (True, T0 + 20 * MIN, T0 + 160 * MIN, "Urgent low resolved: glucose 70 mg/dL, at or above 65 for 10 min")]


def test_a_late_reading_at_the_floor_opens_the_urgent_low_with_the_floor_explanation() -> None:
    m = PatientMonitor()
    fs: list[Finding] = []
    for i in range(5):
        fs += m.update("glucose", T0 + i * 5 * MIN, 100.0)
    fs += m.update("glucose", T0 + 19 * MIN, 39.0)  # delivered after the 20-min reading (re-sync)
    assert [(f.kind, f.onset_ms, f.message) for f in fs] == [
        ("glucose_urgent_low", T0 + 19 * MIN, "Urgent low glucose: at or below the sensor's lowest reading "
         "(40 mg/dL), below 55 (late reading after re-sync)")]


def test_the_sensor_limits_are_settings() -> None:
    # a sensor whose range ends at 50 mg/dL: two hours at 50 are its floor, not a flatline
    cfg = DetectorConfig().with_overrides({"glucose_sensor_floor_mgdl": 50})
    m = PatientMonitor(cfg)
    fs: list[Finding] = []
    for i in range(30):
        ts = T0 + i * 5 * MIN
        fs += m.update("glucose", ts, 100.0 if i < 4 else 50.0)
        fs += m.tick(ts)
    assert [f.message for f in fs if f.kind == "glucose_urgent_low"] == [
        "Urgent low glucose: at or below the sensor's lowest reading (50 mg/dL), below 55"]
    assert [f for f in fs if f.audience is Audience.DEVICE] == []
