"""FHIR end to end on the real stack: Observations over MQTT (a Bundle) and over the gateway's HTTP
endpoint → Kafka → worker → a hypoglycaemia alert, fetched back from the worker as a FHIR DetectedIssue;
and a patient's series exported from InfluxDB as a FHIR Bundle going back in through ``POST /fhir``."""

from __future__ import annotations

import http.client
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.fhir import fhir_topic, observation_for
from tests.integration.conftest import consume_all, consume_readings
from tests.integration.test_gateway_ops import issue_token, wait_http
from tests.integration.test_pipeline import MIN, publish
from tools.export import fetch_minutes
from wearwatch.config import Settings
from wearwatch.contract.codes import SIGNAL_CODING

pytestmark = pytest.mark.stack


def _http(method: str, port: int, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/fhir+json"} if body is not None else {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=orjson.dumps(body) if body is not None else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, orjson.loads(resp.read())
    finally:
        conn.close()


def _glucose(pid: str, code: str, unit: str, value: float, ts_ms: int) -> dict[str, Any]:
    obs = observation_for(pid, "glucose", value, ts_ms)
    obs["code"]["coding"] = [{"system": "http://loinc.org", "code": code}]
    obs["valueQuantity"].update(unit=unit, code=unit)
    return obs


def _wait_issue(port: int, query: str, kind: str, timeout: float = 90.0) -> tuple[dict[str, Any], dict[str, Any]]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            status, last = _http("GET", port, f"/fhir/DetectedIssue?{query}")
        except ConnectionError:  # the worker's web server is not up yet
            time.sleep(1.0)
            continue
        assert status == 200, last
        for e in last.get("entry", []):
            res = e["resource"]
            if res["resourceType"] == "DetectedIssue" and res["code"]["coding"][0]["code"] == kind:
                return last, res
        time.sleep(1.0)
    raise AssertionError(f"no {kind} DetectedIssue for {query}; last answer {last}")


def test_fhir_mqtt_and_http_to_detected_issue(settings: Settings, spawn: Any, run_id: str) -> None:
    http_port = settings.gateway_http_port
    token = issue_token(settings, "fhir-http")  # the vendor of the readings posted with it
    gateway = spawn("gateway", settings, "gateway", "--stats-every", "2")
    worker = spawn("worker", settings, "worker")
    wait_http(http_port, "/readyz", 200, gateway)
    now = int(time.time() * 1000)
    start = now - 20 * MIN
    falling = [120, 95, 70, 52]  # mg/dL every 5 min: urgent low at the end

    # patient A: CGM Observations in one batch Bundle over MQTT, with three broken entries
    a = f"FA-{run_id}"
    entries = [_glucose(a, "99504-3", "mg/dL", g, start + i * 5 * MIN) for i, g in enumerate(falling)]
    bad_status = _glucose(a, "99504-3", "mg/dL", 50, start)
    bad_status["status"] = "entered-in-error"
    bad_code = _glucose(a, "8310-5", "Cel", 37, start)
    bad_unit = _glucose(a, "99504-3", "mmol/L", 3.1, start)
    bundle = {"resourceType": "Bundle", "type": "batch",
              "entry": [{"resource": r, "request": {"method": "POST", "url": "Observation"}}
                        for r in [*entries, bad_status, bad_code, bad_unit]]}
    publish(settings, [(fhir_topic("sim", f"{a}-cgm"), orjson.dumps(bundle))])

    # patient B: blood glucose in mmol/L, one Observation per POST, then a Bundle with a heart rate and a broken one
    b = f"FB-{run_id}"
    for i, g in enumerate(falling):
        status, body = _http("POST", http_port, "/fhir/Observation",
                             _glucose(b, "15074-8", "mmol/L", round(g / 18.016, 2), start + i * 5 * MIN), token)
        assert status == 201, body
        assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["severity"] == "information"
    hr = observation_for(b, "heart_rate", 88, now - MIN, device_id=f"{b}-watch")
    no_subject = observation_for(b, "heart_rate", 88, now - MIN)
    del no_subject["subject"]
    status, body = _http("POST", http_port, "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": hr, "request": {"method": "POST", "url": "Observation"}},
        {"resource": no_subject, "request": {"method": "POST", "url": "Observation"}}]}, token)
    assert status == 200 and body["type"] == "transaction-response"
    assert [e["response"]["status"] for e in body["entry"]] == ["201 Created", "422 Unprocessable Entity"]
    status, body = _http("POST", http_port, "/fhir/Observation", bad_code, token)
    assert status == 422 and body["issue"][0]["details"]["coding"][0]["code"] == "fhir_unknown_code"

    # the alerts, fetched back from the worker as FHIR
    bundle_a, issue_a = _wait_issue(settings.web_port, f"patient={a}&status=preliminary,amended",
                                    "glucose_urgent_low")
    assert bundle_a["type"] == "searchset" and bundle_a["total"] >= 1
    assert issue_a["patient"] == {"reference": f"Patient/{a}"}
    assert issue_a["severity"] == "high" and issue_a["status"] == "preliminary"
    assert issue_a["evidence"][0]["code"][0]["coding"][0]["code"] == SIGNAL_CODING["glucose"].code
    (reading,) = issue_a["contained"]
    assert reading["valueQuantity"]["value"] == pytest.approx(52.0) and reading["valueQuantity"]["code"] == "mg/dL"
    assert "52" in issue_a["detail"]
    _, issue_b = _wait_issue(settings.web_port, f"patient=Patient/{b}", "glucose_urgent_low")
    assert issue_b["patient"] == {"reference": f"Patient/{b}"}
    # the explanation's value is rounded to 0.1
    assert issue_b["contained"][0]["valueQuantity"]["value"] == pytest.approx(2.89 * 18.016, abs=0.1)
    status, one = _http("GET", settings.web_port, f"/fhir/DetectedIssue/{issue_a['id']}")
    assert status == 200 and one["id"] == issue_a["id"]
    status, none = _http("GET", settings.web_port, f"/fhir/DetectedIssue?patient={a}&status=final")
    assert status == 200 and none["total"] == 0
    assert _http("GET", settings.web_port, "/fhir/DetectedIssue?status=open")[0] == 400

    # exact counts: 4 + 5 readings, 3 + 2 dead letters, FHIR codes kept in vitals.raw (every gateway on this
    # stack subscribes to every vendor topic, so other tests' readings are in our topics too: keep ours)
    raw = [r for r in consume_readings(settings, expect=9, idle_s=2.0) if r["patient_id"] in (a, b)]
    assert len(raw) == 9
    by_patient: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in raw:
        by_patient[r["patient_id"]].append(r)
    assert sorted((r["loinc"], r["ucum"], r["vendor"]) for r in by_patient[a]) == [("99504-3", "mg/dL", "sim")] * 4
    assert {r["device_id"] for r in by_patient[a]} == {f"{a}-cgm"}
    assert sorted(r["loinc"] for r in by_patient[b]) == ["15074-8"] * 4 + ["8867-4"]
    assert {r["vendor"] for r in by_patient[b]} == {"fhir-http"}
    dlq = [d for d in (orjson.loads(rec.value) for rec in consume_all(settings, settings.topic_dlq, expect=5,
                                                                        idle_s=2.0))
           if "mqtt_topic" not in d or run_id in d["mqtt_topic"]]  # ours: our topics, and HTTP (our gateway only)
    assert sorted(d["reason"] for d in dlq) == sorted(
        ["fhir_bad_status", "fhir_unknown_code", "unit_mismatch", "fhir_missing_subject", "fhir_unknown_code"])
    assert sorted(d.get("index", -1) for d in dlq if d.get("mqtt_topic")) == [4, 5, 6]
    # no patient id in INFO logs
    for proc in (gateway, worker):
        assert a not in proc.log_text() and b not in proc.log_text()


def test_export_round_trips_through_the_ingest_path(settings: Settings, spawn: Any, run_id: str,
                                                     tmp_path: Path) -> None:
    http_port = settings.gateway_http_port
    token = issue_token(settings, "fhir-http")
    gateway = spawn("gateway", settings, "gateway", "--stats-every", "2")
    spawn("worker", settings, "worker")
    wait_http(http_port, "/readyz", 200, gateway)
    pid = f"RT-{run_id}"
    now = int(time.time() * 1000)
    start = now - 12 * MIN
    start -= start % MIN
    rows: list[dict[str, Any]] = []
    for m in range(6):
        t0 = start + m * MIN
        for k in range(12):
            rows.append({"patient_id": pid, "signal": "heart_rate", "value": 64 + m + (k % 3), "unit": "bpm",
                         "ts": t0 + k * 5000})
        rows.append({"patient_id": pid, "signal": "steps", "value": 10 * m, "unit": "steps", "ts": t0})
        rows.append({"patient_id": pid, "signal": "glucose", "value": 100 + m, "unit": "mg/dL", "ts": t0 + 30_000})
    publish(settings, [(f"wearwatch/v1/vitals/sim/{pid}-watch", orjson.dumps(rows))])
    means: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in rows:
        means[(r["signal"], r["ts"] - r["ts"] % MIN)].append(float(r["value"]))
    expected = {k: sum(v) / len(v) for k, v in means.items()}

    # wait for the worker's minutes in InfluxDB (idle close after WEARWATCH_IDLE_CLOSE_S)
    deadline = time.monotonic() + 90
    got: list[Any] = []
    while time.monotonic() < deadline and len(got) < len(expected):
        time.sleep(1.0)
        got = fetch_minutes(settings, pid, start - MIN, now + MIN)
    assert len(got) == len(expected), got

    out = tmp_path / "export.json"
    export = spawn("export", settings, "export", "fhir", "--patient", pid, "--since", "30m", "--out", str(out))
    assert export.popen.wait(60) == 0, export.log_text()
    assert pid not in export.log_text()
    bundle = orjson.loads(out.read_bytes())
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "batch"
    obs = [e["resource"] for e in bundle["entry"]]
    assert len(obs) == len(expected)
    codes = {o["code"]["coding"][0]["code"] for o in obs}
    assert codes == {"8867-4", "55423-8", "99504-3"}

    status, body = _http("POST", http_port, "/fhir", bundle, token)
    assert status == 200 and all(e["response"]["status"] == "201 Created" for e in body["entry"])
    raw = consume_readings(settings, expect=len(rows) + len(obs), idle_s=2.0)
    back = [r for r in raw if r["vendor"] == "fhir-http" and r["patient_id"] == pid]
    assert len(back) == len(expected)
    signal_of = {m.code: s for s, m in SIGNAL_CODING.items()}
    assert {(signal_of[r["loinc"]], r["ts_ms"]): r["value"] for r in back} == pytest.approx(expected)
    assert all(r["patient_id"] == pid and r["signal"] == signal_of[r["loinc"]] for r in back)
