"""wearwatch replay: CSV in, alerts JSONL out, same detectors as the worker."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import orjson
import pytest

from detectors import PatientMonitor
from ingest.scenarios import DEFAULT_START_MS, Cohort, Event, simulate_cohort, simulate_patient
from tools import replay as rp
from wearwatch.contract.units import MMOL_TO_MGDL
from wearwatch.errors import WearwatchError

T0 = DEFAULT_START_MS


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    rp.add_arguments(p)
    return p.parse_args(list(argv))


def test_parse_ts_formats() -> None:
    assert rp.parse_ts("1767571200") == T0
    assert rp.parse_ts("1767571200.123") == T0 + 123  # rounded, not truncated: 1767571200.123 * 1000 < ...123
    assert rp.parse_ts(str(T0)) == T0  # epoch milliseconds are recognised
    assert rp.parse_ts("2026-01-05T00:00:00.250Z") == "2026-01-05T00:00:00.250Z"  # left to the contract


def test_read_csv_units_and_bad_rows(tmp_path: Path) -> None:
    f = tmp_path / "in.csv"
    f.write_text(
        "ts,patient_id,signal,value,unit\n"
        "1767571200,p1,glucose,3.0,mmol/L\n"
        "2026-01-05T00:00:05Z,p1,heart_rate,71,bpm\n"
        "2026-01-05t00:00:06z,p1,heart_rate,72,bpm\n"
        "1767571210,p1,glucose,5,bpm\n"
        "nope,p1,glucose,5,mg/dL\n"
        "2026-01-05T00:00:07,p1,heart_rate,70,bpm\n"
        "1767571220,p1,pulse,5,bpm\n"
    )
    errs: Counter[str] = Counter()
    rows = list(rp.read_csv(str(f), errors=errs))
    assert rows == [(T0, "p1", "glucose", pytest.approx(3.0 * MMOL_TO_MGDL)), (T0 + 5000, "p1", "heart_rate", 71.0),
                    (T0 + 6000, "p1", "heart_rate", 72.0)]
    assert errs == {"unit_mismatch": 1, "bad_ts": 2, "unknown_signal": 1}


def test_replay_cli_writes_alerts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evs = [Event("hypoglycemia", T0 + 2 * 3_600_000, 100 * 60_000, 44.0)]
    d = simulate_patient("px", T0, T0 + 6 * 3_600_000, seed=3, events=evs)
    c = Cohort([d], T0, T0 + 6 * 3_600_000)
    src = tmp_path / "in.csv"
    c.write_csv(str(src), ts_format="rfc3339")
    out = tmp_path / "alerts.jsonl"
    assert rp.run(_args(str(src), "--out", str(out), "--no-progress")) == 0
    recs = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    kinds = [(r["kind"], r["state"]) for r in recs if r["audience"] == "clinical"]
    assert ("glucose_urgent_low", "open") in kinds
    assert kinds.count(("glucose_urgent_low", "open")) == 1
    for r in recs:
        assert {"patient_id", "signal", "kind", "priority", "ts", "ts_ms", "explanation"} <= set(r)
        assert r["explanation"]["source"] in ("rule", "model")
    summary = capsys.readouterr().out
    assert "readings/s" in summary and "glucose_urgent_low" in summary


def test_replay_function_is_the_monitor() -> None:
    c = simulate_cohort(2, 0.5, seed=4)
    ts, _a, pidx, sig, val, unit = c.arrays()
    names = ("heart_rate", "glucose", "steps")
    rows = [(int(t), c.patients[p].patient_id, names[s], float(v) * (MMOL_TO_MGDL if u == 2 else 1.0))
            for t, p, s, v, u in zip(ts, pidx, sig, val, unit, strict=True)]
    res = rp.replay(rows, tick_ms=10**12)  # no ticks: compare with bare monitors
    mons: dict[str, PatientMonitor] = {}
    expect = []
    for t, p, s, v in rows:
        for f in mons.setdefault(p, PatientMonitor()).update(s, t, v):
            expect.append(rp.finding_record(p, f))
    assert res.alerts == expect
    assert res.readings == len(rows)


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(WearwatchError):
        rp.run(_args(str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o.jsonl")))
