"""wearwatch evaluate: event-level scoring."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pytest

from tools import evaluation as ev

MIN = 60_000


def _alert(pid: str, kind: str, t: int, prio: str = "high", aud: str = "clinical") -> dict[str, object]:
    return {"patient_id": pid, "kind": kind, "state": "open", "audience": aud, "priority": prio,
            "ts_ms": t}


def test_score_counts_exactly() -> None:
    eps = [
        ("a", "hypoglycemia_l2", 100 * MIN, 130 * MIN, 115 * MIN),
        ("a", "hypoglycemia_l1", 90 * MIN, 140 * MIN, 105 * MIN),
        ("a", "tachycardia_at_rest", 500 * MIN, 530 * MIN, 510 * MIN),
        ("b", "bradycardia", 10 * MIN, 15 * MIN, 11 * MIN),
    ]
    alerts = [
        _alert("a", "glucose_urgent_low_soon", 80 * MIN, "medium"),  # 20 min lead
        _alert("a", "glucose_urgent_low", 101 * MIN),
        _alert("a", "glucose_low", 105 * MIN, "medium"),
        _alert("a", "tachycardia_at_rest", 512 * MIN),
        _alert("a", "glucose_high", 900 * MIN, "medium"),  # false
        _alert("b", "hr_abrupt_change", 2000 * MIN, "low"),  # false, low
        _alert("b", "sensor_stale", 50 * MIN, "low", "device"),  # device: not counted
        {**_alert("a", "glucose_urgent_low", 120 * MIN), "state": "resolved"},
    ]
    r = ev.score(alerts, eps, patient_days=2.0)
    assert r.per_kind["hypoglycemia_l2"].detected == 1
    assert r.per_kind["hypoglycemia_l2"].delays_min == [-14.0]
    assert r.per_kind["tachycardia_at_rest"].delays_min == [2.0]
    assert r.per_kind["bradycardia"].detected == 0
    assert r.false_alerts == 2 and r.false_alerts_hm == 1
    assert r.false_per_patient_day == 1.0
    assert r.device_findings == 1
    assert r.lead_times_min == [20.0] and r.lead_share == 1.0
    text = ev.format_report(r)
    assert "hypoglycemia_l2" in text and "false alerts per patient-day: 1.00" in text


def test_files_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = tmp_path / "a.jsonl"
    a.write_bytes(b"\n".join(orjson.dumps(x) for x in [_alert("p", "bradycardia", 12 * MIN)]))
    e = tmp_path / "e.csv"
    e.write_text("patient_id,kind,start_ms,end_ms,criterion_met_ms\np,bradycardia,600000,900000,660000\n")
    p = argparse.ArgumentParser()
    ev.add_arguments(p)
    assert ev.run(p.parse_args(["--alerts", str(a), "--episodes", str(e), "--patient-days", "1"])) == 0
    out = capsys.readouterr().out
    assert "bradycardia" in out and "1.00" in out


def test_simulate_small_cohort() -> None:
    report, res = ev.evaluate_cohort(2, 1.0, seed=77)
    assert res.readings > 30_000
    assert report.patient_days == 2.0


def test_nab_scores_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--nab scores a `wearwatch nab` results folder with the labels given."""
    data = tmp_path / "data" / "c"
    data.mkdir(parents=True)
    rows = "".join(f"2024-01-01 00:{m:02d}:00,{1.0 + (m % 3)}\n" for m in range(40))
    (data / "f.csv").write_text("timestamp,value\n" + rows)
    res = tmp_path / "res" / "c"
    res.mkdir(parents=True)
    alarm = [1 if m == 35 else 0 for m in range(40)]
    (res / "f.csv").write_text("timestamp,value,anomaly_score,alarm\n" + "".join(
        f"2024-01-01 00:{m:02d}:00,1,0.0,{alarm[m]}\n" for m in range(40)))
    labels = tmp_path / "labels.json"
    labels.write_text('{"c/f.csv": [["2024-01-01 00:30:00.000000", "2024-01-01 00:39:00.000000"]]}')
    p = argparse.ArgumentParser()
    ev.add_arguments(p)
    assert ev.run(p.parse_args(["--nab", str(tmp_path / "res"), "--labels", str(labels)])) == 0
    out = capsys.readouterr().out
    assert "(1 of the 1 labelled series, alarm column)" in out
    std = next(ln for ln in out.splitlines() if ln.startswith("standard"))
    assert std.split()[3:7] == ["1", "1", "0", "0"]


def test_wilson_and_poisson_intervals() -> None:
    # reference values: Wilson 95 % for 9/10 is [0.5958, 0.9821]; exact Poisson 95 % for 0 events is [0, 3.689],
    # for 10 events [4.795, 18.39]
    lo, hi = ev.wilson_ci(9, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.5958, 0.9821)
    assert ev.wilson_ci(0, 20)[0] == 0.0 and ev.wilson_ci(20, 20)[1] == 1.0
    assert all(x != x for x in ev.wilson_ci(0, 0))  # no episodes: no interval (NaN), not 0-1
    lo, hi = ev.poisson_rate_ci(0, 2.0)
    assert lo == 0.0 and hi == pytest.approx(3.6889 / 2, abs=1e-4)
    lo, hi = ev.poisson_rate_ci(10, 1.0)
    assert (lo, hi) == (pytest.approx(4.7954, abs=1e-3), pytest.approx(18.3904, abs=1e-3))


def test_json_report_with_intervals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = tmp_path / "a.jsonl"
    a.write_bytes(b"\n".join(orjson.dumps(x) for x in [
        _alert("p", "bradycardia", 12 * MIN), _alert("p", "glucose_high", 900 * MIN, "medium")]))
    e = tmp_path / "e.csv"
    e.write_text("patient_id,kind,start_ms,end_ms,criterion_met_ms\n"
                 "p,bradycardia,600000,900000,660000\np,bradycardia,6000000,6300000,6060000\n")
    p = argparse.ArgumentParser()
    ev.add_arguments(p)
    assert ev.run(p.parse_args(["--alerts", str(a), "--episodes", str(e), "--patient-days", "2", "--json"])) == 0
    doc = orjson.loads(capsys.readouterr().out)
    brady = doc["episode_kinds"]["bradycardia"]
    assert (brady["episodes"], brady["detected"], brady["sensitivity"]) == (2, 1, 0.5)
    lo, hi = ev.wilson_ci(1, 2)
    assert brady["sensitivity_ci95"] == [round(lo, 6), round(hi, 6)]
    fa = doc["false_alerts"]["all"]
    assert (fa["count"], fa["per_patient_day"]) == (1, 0.5)
    lo, hi = ev.poisson_rate_ci(1, 2.0)
    assert fa["ci95"] == [round(lo, 6), round(hi, 6)]
    assert doc["intervals"] == {"proportions": "Wilson score", "rates per patient-day": "exact Poisson (Garwood)"}
    assert doc["predicted_urgent_low"]["share_ci95"] == [None, None]  # no level-2 hypoglycemia labelled
