"""``wearwatch validate``: the gateway's verdict on a payload, offline, per reading, with exit codes 0/1/2."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import orjson
import pytest

from wearwatch.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "fhir"
AT = "2026-01-05T00:00:10Z"


def _reading(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"patient_id": "p-1", "signal": "heart_rate", "value": 72, "unit": "bpm",
                               "ts": "2026-01-05T00:00:00Z"}
    base.update(kw)
    return base


def _run(tmp_path: Path, payload: object, *args: str) -> int:
    f = tmp_path / "payload.json"
    f.write_bytes(payload if isinstance(payload, bytes) else orjson.dumps(payload))
    return main(["validate", str(f), "--received-at", AT, *args])


def test_one_valid_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path, _reading(ts="2026-01-05t00:00:00z")) == 0
    assert capsys.readouterr().out.splitlines() == [
        " payload  ok       heart_rate 72 bpm at 2026-01-05T00:00:00.000Z", "1 valid, 0 invalid"]


def test_an_array_of_mixed_validity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = [_reading(), _reading(patient_id=""), _reading(signal="glucose", value=3, unit="mmol/L"),
               _reading(value=-5), _reading(ts="2026-01-05T00:00:00"), _reading(ts="2026-01-05T01:00:00Z"),
               _reading(ts="2025-12-01T00:00:00Z")]
    assert _run(tmp_path, payload) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[:3] for ln in lines[:-1]] == [
        ["#0", "ok", "heart_rate"], ["#1", "invalid", "bad_patient_id:"], ["#2", "ok", "glucose"],
        ["#3", "invalid", "value_out_of_range:"], ["#4", "invalid", "bad_ts:"], ["#5", "invalid", "ts_in_future:"],
        ["#6", "invalid", "ts_too_old:"]]
    assert lines[-1] == "2 valid, 5 invalid (dead-letter reasons as on vitals.dlq)"
    assert "54.048 mg/dL" in lines[2]


def test_a_payload_refused_as_a_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path, b"{not json") == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["payload", "invalid", "invalid_json:"] and out[-1].startswith("0 valid, 1 invalid")
    assert _run(tmp_path, []) == 1
    assert "empty_batch" in capsys.readouterr().out


def test_fhir_bundle_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = (FIXTURES / "bundle-mixed.json").read_bytes()
    f = tmp_path / "bundle.json"
    f.write_bytes(payload)
    assert main(["validate", str(f), "--fhir", "--json", "--received-at", "2026-11-27T10:30:00Z"]) == 1
    doc = orjson.loads(capsys.readouterr().out)
    assert (doc["valid"], doc["invalid"]) == (6, 7)
    assert [r["reason"] for r in doc["readings"] if r["verdict"] == "invalid"] == [
        "fhir_bad_status", "fhir_unknown_code", "unit_mismatch", "fhir_missing_subject", "fhir_missing_time",
        "unsupported_resource", "fhir_missing_resource"]
    assert [r["index"] for r in doc["readings"]] == list(range(13))


def test_standard_input(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    class Stdin:
        buffer = io.BytesIO(orjson.dumps([_reading(), _reading()]))

    monkeypatch.setattr(sys, "stdin", Stdin)
    assert main(["validate", "-", "--received-at", AT]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 valid, 0 invalid"


@pytest.mark.parametrize(("args", "message"), [
    (["validate", "missing.json"], "wearwatch validate: error: missing.json: cannot read (No such file or directory)"),
    (["validate", "x.json", "--vendor", "a/b"], "wearwatch validate: error: --vendor must be 1-64 characters"),
    (["validate", "x.json", "--received-at", "soon"], "wearwatch validate: error: --received-at 'soon' is not RFC"),
])
def test_usage_errors_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                             args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.json").write_text("{}")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err
