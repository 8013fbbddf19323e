"""Offline tools behave like production: the gateway's contract, clear one-line errors, outputs untouched.

Every bad input ends with exit code 2 and one line on stderr naming the problem (no
traceback), and an existing ``--out`` file keeps its bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import orjson
import pytest

from wearwatch.cli import main

HEADER = "ts,patient_id,signal,value,unit\n"
GOOD = "2026-01-05T00:00:00Z,p1,glucose,50,mg/dL\n"  # urgent low: one finding
OLD = b'{"kept": "the previous output"}\n'


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    p = tmp_path / "alerts.jsonl"
    p.write_bytes(OLD)
    return p


def _untouched(out: Path) -> None:
    assert out.read_bytes() == OLD
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_replay_refuses_rows_as_the_gateway_does(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.csv"
    src.write_text(HEADER + GOOD
                   + "2026-01-05T00:01:00Z,p1,heart_rate,nan,bpm\n"
                   + "2026-01-05T00:01:05Z,p1,heart_rate,inf,bpm\n"
                   + "2026-01-05T00:01:10Z,p1,heart_rate,-5,bpm\n"
                   + "2026-01-05T00:01:15Z,,heart_rate,70,bpm\n"
                   + "2026-01-05T00:01:20Z,p/1,heart_rate,70,bpm\n"
                   + '2026-01-05T00:01:25Z,"p 1",heart_rate,70,bpm\n'
                   + "2026-01-05T00:01:30Z,p1,heart_rate,seventy,bpm\n"
                   + "2026-01-05t00:01:35z,p1,heart_rate,71,bpm\n"  # lowercase: valid RFC 3339
                   + "2026-01-05T00:01:40,p1,heart_rate,72,bpm\n"  # no offset
                   + "2026-01-05T00:01:45Z,p1,heart_rate\n")
    assert main(["replay", str(src), "--out", str(out), "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert "replayed 2 readings of 1 patients" in summary
    assert ("rows refused by the device contract (as vitals.dlq would): 9 — bad_patient_id 3, bad_ts 1, "
            "bad_value 3, missing_field 1, value_out_of_range 1") in summary
    recs = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert [(r["patient_id"], r["kind"], r["state"]) for r in recs] == [("p1", "glucose_urgent_low", "open")]


def test_replay_missing_input(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "nope.csv"), "--out", str(out)]) == 2
    assert _err_line(capsys) == f"wearwatch replay: error: input file not found: {tmp_path / 'nope.csv'}"
    _untouched(out)


def test_replay_bad_header_keeps_the_output(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.csv"
    src.write_text("time,patient,signal,value,unit\n" + GOOD)
    assert main(["replay", str(src), "--out", str(out), "--no-progress"]) == 2
    line = _err_line(capsys)
    assert line.startswith(f"wearwatch replay: error: {src}: the header must start with "
                           "ts,patient_id,signal,value,unit")
    _untouched(out)


def test_replay_empty_file(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.csv"
    src.write_text("")
    assert main(["replay", str(src), "--out", str(out), "--no-progress"]) == 2
    assert "empty file" in _err_line(capsys)
    _untouched(out)


def test_replay_failure_midway_keeps_the_output(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes((HEADER + GOOD * 50).encode() + b"2026-01-05T00:00:00Z,p\xff,glucose,50,mg/dL\n")
    assert main(["replay", str(src), "--out", str(out), "--no-progress"]) == 2
    assert f"{src}: not UTF-8 text" in _err_line(capsys)
    _untouched(out)


def test_replay_out_in_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.csv"
    src.write_text(HEADER + GOOD)
    target = tmp_path / "no" / "such" / "alerts.jsonl"
    assert main(["replay", str(src), "--out", str(target), "--no-progress"]) == 2
    assert _err_line(capsys) == f"wearwatch replay: error: --out {target}: folder {target.parent} does not exist"
    assert not (tmp_path / "no").exists()


def test_replay_overrides_inline_and_file(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.csv"
    # an hour at 65 mg/dL, below the default low (70): one glucose_low alert
    src.write_text(HEADER + "".join(f"2026-01-05T00:{m:02d}:00Z,p1,glucose,65,mg/dL\n" for m in range(0, 60, 5)))
    assert main(["replay", str(src), "--out", str(out), "--no-progress"]) == 0
    assert [orjson.loads(x)["kind"] for x in out.read_bytes().splitlines()] == ["glucose_low"]
    inline = '{"p1": {"glucose_low_mgdl": 60}}'  # 65 is no longer low for p1
    assert main(["replay", str(src), "--out", str(out), "--no-progress", "--overrides", inline]) == 0
    assert out.read_bytes() == b""
    f = tmp_path / "ov.json"
    f.write_text('{"p1": {"glucose_low_mgdl": 66}}')
    assert main(["replay", str(src), "--out", str(out), "--no-progress", "--overrides", str(f)]) == 0
    assert [orjson.loads(x)["kind"] for x in out.read_bytes().splitlines()] == ["glucose_low"]
    capsys.readouterr()


@pytest.mark.parametrize(("overrides", "message"), [
    ('{"p1": {"glucose_low_mgdl": 60}', "--overrides: not valid JSON"),
    ('{"p1": {"glucose_low": 60}}', "--overrides: p1: unknown detector setting(s): glucose_low"),
    ('{"p1": {"glucose_low_mgdl": "low"}}', "--overrides: p1: glucose_low_mgdl must be of type float"),
    ('{"p/1": {}}', "--overrides: patient ids must be 1-64 characters of [A-Za-z0-9_.:-]"),
    ("missing.json", "--overrides missing.json: cannot read (No such file or directory)"),
])
def test_replay_bad_overrides(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str], overrides: str,
                              message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "in.csv"
    src.write_text(HEADER + GOOD)
    assert main(["replay", str(src), "--out", str(out), "--no-progress", "--overrides", overrides]) == 2
    assert _err_line(capsys).startswith(f"wearwatch replay: error: {message}")
    _untouched(out)


def test_evaluate_missing_and_malformed_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    eps = tmp_path / "e.csv"
    eps.write_text("patient_id,kind,start_ms,end_ms,criterion_met_ms\np,bradycardia,600000,900000,660000\n")
    assert main(["evaluate", "--alerts", str(tmp_path / "none.jsonl"), "--episodes", str(eps)]) == 2
    assert _err_line(capsys) == (f"wearwatch evaluate: error: --alerts {tmp_path / 'none.jsonl'}: cannot read "
                                 "(No such file or directory)")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"patient_id": "p", "kind": "bradycardia", "state": "open", "audience": "clinical", '
                   '"ts_ms": 1}\nnot json\n')
    assert main(["evaluate", "--alerts", str(bad), "--episodes", str(eps)]) == 2
    assert _err_line(capsys) == (f"wearwatch evaluate: error: --alerts {bad} line 2: not JSON "
                                 "(expected `wearwatch replay` output)")
    bad.write_text('{"patient_id": "p"}\n')
    assert main(["evaluate", "--alerts", str(bad), "--episodes", str(eps)]) == 2
    assert "line 1: expected an object with audience, kind, patient_id, state, ts_ms" in _err_line(capsys)
    good = tmp_path / "a.jsonl"
    good.write_text("")
    assert main(["evaluate", "--alerts", str(good), "--episodes", str(tmp_path / "none.csv")]) == 2
    assert "--episodes" in _err_line(capsys)
    eps.write_text("patient,kind\np,bradycardia\n")
    assert main(["evaluate", "--alerts", str(good), "--episodes", str(eps)]) == 2
    assert "the header must have patient_id,kind,start_ms,end_ms,criterion_met_ms" in _err_line(capsys)
    eps.write_text("patient_id,kind,start_ms,end_ms,criterion_met_ms\np,bradycardia,soon,900000,660000\n")
    assert main(["evaluate", "--alerts", str(good), "--episodes", str(eps)]) == 2
    assert f"--episodes {eps} line 2: start_ms, end_ms and criterion_met_ms must be integers" in _err_line(capsys)


def test_unknown_log_level_is_a_config_error(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in.csv"
    src.write_text(HEADER + GOOD)
    monkeypatch.setenv("WEARWATCH_LOG_LEVEL", "verbose")
    assert main(["replay", str(src), "--out", str(out)]) == 2
    assert _err_line(capsys) == ("wearwatch replay: error: WEARWATCH_LOG_LEVEL: unknown log level 'verbose' "
                                 "(use DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    _untouched(out)


def test_version_and_help_from_the_installed_command() -> None:
    exe = Path(sys.executable).parent / "wearwatch"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEARWATCH_")}
    got = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert (got.returncode, got.stdout.strip()) == (0, f"wearwatch {version('wearwatch')}")
    # --help names every command without importing any command's module
    probe = ("import sys; from wearwatch.cli import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tools', 'streams', 'ingest', 'alerts', "
             "'detectors', 'faust', 'kafka')))")
    got = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip().splitlines()[-1] == "[]"
    assert "replay" in got.stdout and "validate" in got.stdout and "dlq" in got.stdout


def test_export_out_in_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEARWATCH_INFLUX_TOKEN", "u:p")
    monkeypatch.setenv("WEARWATCH_PSEUDONYM_KEY", "k" * 16)
    target = tmp_path / "no" / "p.json"
    assert main(["export", "fhir", "--patient", "p-1", "--out", str(target)]) == 2
    assert _err_line(capsys) == f"wearwatch export: error: --out {target}: folder {target.parent} does not exist"


def test_contract_check_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "asyncapi.yaml"
    doc.write_text("asyncapi: 2.0.0\n")
    assert main(["contract", "--check", "--out", str(doc)]) == 1
    assert capsys.readouterr().err.strip() == f"{doc} is stale: run `wearwatch contract --write`"
    assert main(["contract", "--write", "--out", str(doc)]) == 0
    assert main(["contract", "--check", "--out", str(doc)]) == 0
    capsys.readouterr()
    assert main(["contract", "--write", "--out", str(tmp_path / "no" / "a.yaml")]) == 2
    assert "folder" in _err_line(capsys)
