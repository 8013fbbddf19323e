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


def test_nab_delegates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    calls: list[tuple[str, str, str]] = []
    fake = types.ModuleType("tools.nab")

    def evaluate_results(r: str, lab: str, d: str) -> int:
        calls.append((r, lab, d))
        return 0

    fake.evaluate_results = evaluate_results  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tools.nab", fake)
    p = argparse.ArgumentParser()
    ev.add_arguments(p)
    assert ev.run(p.parse_args(["--nab", str(tmp_path)])) == 0
    assert calls and calls[0][0] == str(tmp_path)
    assert calls[0][1].endswith("shared/data/nab/labels.json")
