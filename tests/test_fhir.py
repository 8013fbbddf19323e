"""FHIR R4 in (ingest/fhir.py, the gateway's MQTT route and HTTP endpoint) and out (alerts/fhir.py,
streams/fhir_views.py, wearwatch/export.py), without services."""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from alerts.fhir import FHIR_STATUS, detected_issue, explanation_text, search_bundle
from alerts.models import AlertEvent
from ingest.contract import Limits, parse_payload
from ingest.fhir import (
    fhir_topic,
    http_answer,
    observation_for,
    observation_to_reading,
    parse_fhir,
    parse_fhir_payload,
)
from ingest.gateway import Gateway
from ingest.http_server import GatewayHttpServer
from ingest.tokens import new_token
from streams.fhir_views import FhirError, parse_search, search
from tools.export import export_bundle, minutes_from_records
from wearwatch.config import load_settings
from wearwatch.contract.codes import LOINC_MAP, SIGNAL_CODING
from wearwatch.contract.units import MMOL_TO_MGDL
from wearwatch.errors import InvalidReading

FIXTURES = Path(__file__).parent / "fixtures" / "fhir"
T0 = 1_795_773_600_000  # 2026-11-27T10:00:00Z, the fixtures' time
NOW = T0 + 60_000


def fixture(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads((FIXTURES / name).read_bytes())
    return doc


def parse(doc: Any, **kw: Any) -> Any:
    kw.setdefault("vendor", "acme")
    kw.setdefault("device_id", "dev-1")
    return parse_fhir(orjson.dumps(doc), NOW, **kw)


# ---------------------------------------------------------------------------------------------- mapping
VALID = {
    # fixture: (signal, value in canonical unit, unit, loinc, ucum, source_unit, device)
    "heart-rate-8867-4.json": ("heart_rate", 72.0, "bpm", "8867-4", "/min", None, "watch-7"),
    "glucose-cgm-99504-3.json": ("glucose", 104.0, "mg/dL", "99504-3", "mg/dL", None, "dev-1"),
    "glucose-blood-2339-0.json": ("glucose", 88.5, "mg/dL", "2339-0", "mg/dL", None, "dev-1"),
    "glucose-mmol-15074-8.json": ("glucose", 3.0 * MMOL_TO_MGDL, "mg/dL", "15074-8", "mmol/L", "mmol/L", "dev-1"),
    "glucose-mmol-14743-9.json": ("glucose", 5.5 * MMOL_TO_MGDL, "mg/dL", "14743-9", "mmol/L", "mmol/L", "dev-1"),
    "steps-55423-8.json": ("steps", 96.0, "steps", "55423-8", "{steps}", None, "dev-1"),
}

BROKEN = {
    "broken-status-cancelled.json": "fhir_bad_status",
    "broken-unknown-code.json": "fhir_unknown_code",
    "broken-no-loinc.json": "fhir_unknown_code",
    "broken-unit-heart-rate.json": "unit_mismatch",
    "broken-unit-moles-as-mass.json": "unit_mismatch",
    "broken-unit-not-ucum.json": "unit_mismatch",
    "broken-unit-steps.json": "unit_mismatch",
    "broken-no-subject.json": "fhir_missing_subject",
    "broken-subject-not-patient.json": "bad_patient_id",
    "broken-no-time.json": "fhir_missing_time",
    "broken-date-only.json": "bad_ts",
    "broken-structure.json": "fhir_invalid",
    "broken-value-string.json": "bad_value",
    "broken-out-of-range.json": "value_out_of_range",
}


def test_every_fixture_is_covered() -> None:
    names = {p.name for p in FIXTURES.glob("*.json")}
    assert names == set(VALID) | set(BROKEN) | {"bundle-mixed.json"}
    # an example of each LOINC code the gateway maps
    assert {v[3] for v in VALID.values()} == set(LOINC_MAP)


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_observation_becomes_the_normalized_reading(name: str) -> None:
    signal, value, unit, loinc, ucum, source_unit, device = VALID[name]
    res = parse(fixture(name))
    assert res.kind == "observation" and res.dead == []
    (r,) = res.readings
    assert (r.patient_id, r.signal, r.unit, r.loinc, r.ucum, r.source_unit) == (
        "p-fhir-1", signal, unit, loinc, ucum, source_unit)
    assert r.value == pytest.approx(value)
    assert r.ts_ms == T0
    assert (r.vendor, r.device_id, r.received_ms) == ("acme", device, NOW)
    assert orjson.loads(r.to_json())["loinc"] == loinc


def test_same_reading_as_the_json_contract() -> None:
    """A FHIR glucose in mmol/L and its JSON-contract twin differ only in loinc/ucum (and nothing else)."""
    (fr,) = parse(fixture("glucose-mmol-15074-8.json")).readings
    ok, bad = parse_payload("wearwatch/v1/vitals/acme/dev-1", orjson.dumps(
        {"patient_id": "p-fhir-1", "signal": "glucose", "value": 3.0, "unit": "mmol/L", "ts": T0}), NOW)
    assert bad == []
    assert fr.model_dump(exclude={"loinc", "ucum"}) == ok[0].model_dump(exclude={"loinc", "ucum"})
    # JSON-contract readings are unchanged on the wire: no loinc/ucum keys
    assert "loinc" not in orjson.loads(ok[0].to_json())


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_observation_is_dead_lettered_with_the_reason(name: str) -> None:
    doc = fixture(name)
    res = parse(doc, topic="wearwatch/v1/fhir/acme/dev-1")
    assert res.kind == "invalid" and res.readings == []
    (d,) = res.dead
    assert d.reason == BROKEN[name], d.detail
    assert d.mqtt_topic == "wearwatch/v1/fhir/acme/dev-1" and d.index is None
    assert orjson.loads(d.payload) == doc  # the original payload is kept


def test_time_limits_match_the_json_contract() -> None:
    doc = observation_for("p1", "heart_rate", 70, NOW + 3_600_000)
    assert parse(doc).dead[0].reason == "ts_in_future"
    doc = observation_for("p1", "heart_rate", 70, NOW - 8 * 86_400_000)
    assert parse(doc).dead[0].reason == "ts_too_old"
    doc = observation_for("p1", "heart_rate", 70, T0)
    doc["effectiveDateTime"] = "2026-11"
    assert parse(doc).dead[0].reason == "bad_ts"
    doc["effectiveTiming"] = {"event": ["2026-11-27T10:00:00Z"]}
    del doc["effectiveDateTime"]
    assert parse(doc).dead[0].reason == "fhir_missing_time"


def test_effective_period_without_start_and_absolute_references() -> None:
    doc = observation_for("p1", "steps", 10, T0, end_ms=T0 + 60_000)
    del doc["effectivePeriod"]["start"]
    assert parse(doc).dead[0].reason == "fhir_missing_time"
    doc = observation_for("p1", "heart_rate", 70, T0, device_id="strap-2")
    doc["subject"]["reference"] = "https://ehr.example/fhir/Patient/p1"
    (r,) = parse(doc).readings
    assert (r.patient_id, r.device_id) == ("p1", "strap-2")
    doc["device"]["reference"] = "Device/has a space"
    assert parse(doc).dead[0].reason == "bad_device"


def test_status_missing_and_accepted_statuses() -> None:
    doc = observation_for("p1", "heart_rate", 70, T0)
    for status in ("final", "amended", "preliminary"):
        doc["status"] = status
        assert len(parse(doc).readings) == 1
    for status in ("registered", "corrected", "cancelled", "entered-in-error", "unknown"):
        doc["status"] = status
        assert parse(doc).dead[0].reason == "fhir_bad_status"
    del doc["status"]
    assert parse(doc).dead[0].reason == "fhir_bad_status"


def test_observation_to_reading_raises_invalid_reading() -> None:
    with pytest.raises(InvalidReading) as exc:
        observation_to_reading({"resourceType": "Patient"}, "v", "d", NOW)
    assert exc.value.reason == "unsupported_resource"


# ---------------------------------------------------------------------------------------------- bundles
def test_mixed_bundle_exact_counts() -> None:
    res = parse(fixture("bundle-mixed.json"))
    assert res.kind == "bundle" and res.bundle_type == "batch"
    assert len(res.entries) == 13
    assert len(res.readings) == 6
    assert len(res.dead) == 7
    assert [(d.index, d.reason) for d in res.dead] == [
        (6, "fhir_bad_status"), (7, "fhir_unknown_code"), (8, "unit_mismatch"), (9, "fhir_missing_subject"),
        (10, "fhir_missing_time"), (11, "unsupported_resource"), (12, "fhir_missing_resource"),
    ]
    assert sorted({r.loinc for r in res.readings}) == sorted(LOINC_MAP)


@pytest.mark.parametrize("btype", ["batch", "transaction", "collection"])
def test_bundle_types_accepted(btype: str) -> None:
    doc = fixture("bundle-mixed.json")
    doc["type"] = btype
    assert len(parse(doc).readings) == 6


def test_whole_bundle_rejections() -> None:
    doc = fixture("bundle-mixed.json")
    doc["type"] = "searchset"
    assert parse(doc).dead[0].reason == "fhir_bad_bundle_type"
    assert parse({"resourceType": "Bundle", "type": "batch"}).dead[0].reason == "empty_batch"
    assert parse({"resourceType": "Bundle", "type": "batch", "entry": "x"}).dead[0].reason == "fhir_invalid"
    assert parse(fixture("bundle-mixed.json"), limits=Limits(max_batch=5)).dead[0].reason == "batch_too_large"
    doc = fixture("bundle-mixed.json")
    doc["entry"][0]["request"]["method"] = "DELETE"
    res = parse(doc)
    assert res.dead[0].reason == "fhir_unsupported_request" and res.dead[0].index == 0
    assert parse(fixture("bundle-mixed.json"), expect="Observation").dead[0].reason == "unsupported_resource"
    assert parse(fixture("heart-rate-8867-4.json"), expect="Bundle").dead[0].reason == "unsupported_resource"
    for payload, reason in ((b"{", "invalid_json"), (b"\xff", "not_utf8"), (b"[]", "not_object"),
                            (b'{"resourceType": "Patient"}', "unsupported_resource")):
        res = parse_fhir(payload, NOW, vendor="v", device_id="d")
        assert res.dead[0].reason == reason
    assert parse_fhir(b"{}" + b" " * 2000, NOW, vendor="v", device_id="d",
                      limits=Limits(max_payload_bytes=1024)).dead[0].reason == "payload_too_large"


def test_mqtt_topic_gives_vendor_and_device() -> None:
    topic = fhir_topic("globex", "cgm-9")
    ok, bad = parse_fhir_payload(topic, (FIXTURES / "glucose-cgm-99504-3.json").read_bytes(), NOW)
    assert bad == [] and (ok[0].vendor, ok[0].device_id) == ("globex", "cgm-9")
    ok, bad = parse_fhir_payload("wearwatch/v1/fhir/globex", b"{}", NOW)
    assert ok == [] and bad[0].reason == "bad_topic"


def test_gateway_routes_fhir_topics_to_the_fhir_parser() -> None:
    s = load_settings({}, topic_prefix="t.")
    gw = Gateway(s)
    # the gateway checks times against the real clock: move the fixtures' readings years back
    old = (FIXTURES / "bundle-mixed.json").read_bytes().replace(b"2026-11-27", b"2020-01-01")
    records = gw.records_for(fhir_topic("acme", "d1"), old)
    # every entry is dead-lettered now (too old, or broken), one record per entry
    assert len(records) == 13 and all(t == "t.vitals.dlq" for t, _, _ in records)
    # vitals topics keep going to the JSON contract
    records = gw.records_for("wearwatch/v1/vitals/acme/d1", b"{}")
    assert orjson.loads(records[0][2])["reason"] == "missing_field"


# ---------------------------------------------------------------------------------------------- HTTP answers
def test_http_answers() -> None:
    status, body = http_answer(parse(fixture("heart-rate-8867-4.json")))
    assert status == 201 and body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "information"
    status, body = http_answer(parse(fixture("broken-unit-heart-rate.json")))
    assert status == 422 and body["issue"][0]["details"]["coding"][0]["code"] == "unit_mismatch"
    status, body = http_answer(parse(fixture("broken-structure.json")))
    assert status == 400 and body["issue"][0]["code"] == "structure"
    status, body = http_answer(parse(fixture("bundle-mixed.json")))
    assert status == 200 and body["type"] == "batch-response"
    codes = [e["response"]["status"] for e in body["entry"]]
    assert codes == ["201 Created"] * 6 + ["422 Unprocessable Entity"] * 5 + ["400 Bad Request"] * 2
    assert all(e["response"]["outcome"]["resourceType"] == "OperationOutcome" for e in body["entry"])
    doc = fixture("bundle-mixed.json")
    doc["type"] = "transaction"
    assert http_answer(parse(doc))[1]["type"] == "transaction-response"


class _Future:
    def __init__(self, ok: bool) -> None:
        self.ok = ok

    def get(self, timeout: float) -> None:
        if not self.ok:
            raise TimeoutError("no ack")

    def add_callback(self, fn: Any, *args: Any) -> None:
        if self.ok:
            fn(*args, None)


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.ok = True

    def send(self, topic: str, key: bytes, value: bytes) -> _Future:
        self.sent.append((topic, key, value))
        return _Future(self.ok)


TOKEN, TOKEN_RECORD = new_token("acme", now_ms=T0)


@pytest.fixture
def http_gateway() -> Any:
    gw = Gateway(load_settings({}, topic_prefix="t."))
    gw._producer = producer = _Producer()
    gw.tokens.table.apply(TOKEN_RECORD)
    server = GatewayHttpServer(("127.0.0.1", 0), sink=gw, telemetry=gw.telemetry, metrics=gw.metrics,
                               tokens=gw.tokens.table)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.server_address[1], producer
    server.shutdown()
    server.server_close()


def _post(port: int, path: str, body: bytes, ctype: str = "application/fhir+json") -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": ctype, "Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        return resp.status, orjson.loads(resp.read())
    finally:
        conn.close()


def test_http_endpoint_produces_then_answers(http_gateway: Any) -> None:
    port, producer = http_gateway
    now = int(time.time() * 1000)  # the gateway checks times against the real clock
    fresh = observation_for("p-h", "glucose", 61.0, now - 60_000)
    status, body = _post(port, "/fhir/Observation", orjson.dumps(fresh))
    assert status == 201 and body["resourceType"] == "OperationOutcome"
    assert [(t, k) for t, k, _ in producer.sent] == [("t.vitals.raw", b"p-h")]
    assert orjson.loads(producer.sent[0][2])["loinc"] == "99504-3"
    assert orjson.loads(producer.sent[0][2])["vendor"] == "acme"  # the token's vendor

    bundle = export_bundle("p-h", [("heart_rate", now - 120_000, 70.0, 12), ("steps", now - 120_000, 3.0, 1)],
                           id_prefix="x")
    bundle["entry"].append({"resource": {"resourceType": "Observation", "status": "cancelled",
                                         "code": {"text": "x"}}})
    producer.sent.clear()
    status, body = _post(port, "/fhir", orjson.dumps(bundle))
    assert status == 200 and [e["response"]["status"][:3] for e in body["entry"]] == ["201", "201", "422"]
    assert sorted(t for t, _, _ in producer.sent) == ["t.vitals.dlq", "t.vitals.raw", "t.vitals.raw"]

    status, body = _post(port, "/fhir/Observation", b"not json")
    assert status == 400 and body["issue"][0]["details"]["coding"][0]["code"] == "invalid_json"
    assert _post(port, "/fhir", orjson.dumps(fresh))[0] == 400  # an Observation where a Bundle belongs
    assert _post(port, "/fhir/Patient", b"{}")[0] == 404
    assert _post(port, "/fhir/Observation", orjson.dumps(fresh), ctype="text/plain")[0] == 415

    producer.ok = False
    status, body = _post(port, "/fhir/Observation", orjson.dumps(fresh))
    assert status == 503 and body["issue"][0]["severity"] == "error"


# ---------------------------------------------------------------------------------------------- alerts out
def _event(state: str = "open", **kw: Any) -> AlertEvent:
    base: dict[str, Any] = {
        "alert_id": "al-0123456789abcdef0123", "state": state, "patient_id": "p-7", "signal": "glucose",
        "kind": "glucose_urgent_low", "priority": "high", "audience": "clinical", "source": "rule",
        "message": "glucose 50 mg/dL below 54 mg/dL", "ts_ms": T0, "onset_ms": T0 - 60_000, "emitted_ms": T0,
        "explanation": {"source": "rule", "value": 50.0, "threshold": 54.0, "window_s": 900.0,
                        "trend_per_min": -1.5, "contributing": ["heart_rate"]},
    }
    base.update(kw)
    return AlertEvent(**base)


@pytest.mark.parametrize("state", ["open", "updated", "acknowledged", "resolved"])
def test_detected_issue_follows_the_lifecycle(state: str) -> None:
    kw: dict[str, Any] = {}
    if state == "acknowledged":
        kw = {"acked_by": "nurse.kim", "acked_ms": T0 + 60_000}
    di = detected_issue(_event(state, **kw))
    assert di["status"] == FHIR_STATUS[state]  # type: ignore[index]
    assert di["extension"][0]["valueCode"] == state
    actions = [m["action"]["coding"][0]["code"] for m in di.get("mitigation", [])]
    assert actions == {"open": [], "updated": [], "acknowledged": ["acknowledged"], "resolved": ["resolved"]}[state]
    if state == "acknowledged":
        assert di["mitigation"][0]["author"]["display"] == "nurse.kim"


def test_detected_issue_content() -> None:
    di = detected_issue(_event(priority="medium", revision=3))
    assert di["id"] == "al-0123456789abcdef0123" and di["meta"]["versionId"] == "3"
    assert di["severity"] == "moderate"
    assert di["patient"] == {"reference": "Patient/p-7"}
    assert di["identifiedDateTime"] == "2026-11-27T09:59:00.000Z"
    assert di["code"]["coding"][0]["code"] == "glucose_urgent_low"
    assert "value 50 mg/dL" in di["detail"] and "threshold 54 mg/dL" in di["detail"]
    assert "trend -1.5 mg/dL/min" in di["detail"] and "contributing: heart_rate" in di["detail"]
    codes = [e["code"][0]["coding"][0]["code"] for e in di["evidence"]]
    assert codes == [SIGNAL_CODING["glucose"].code, SIGNAL_CODING["heart_rate"].code]
    assert di["evidence"][0]["detail"][0]["reference"] == "#reading"
    (obs,) = di["contained"]
    assert obs["valueQuantity"] == {"value": 50.0, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                                    "code": "mg/dL"}
    assert obs["code"]["coding"][0]["code"] == "99504-3" and obs["effectiveDateTime"] == "2026-11-27T10:00:00.000Z"
    for prio in ("high", "low"):
        assert detected_issue(_event(priority=prio))["severity"] == prio


def test_detected_issue_without_a_value() -> None:
    ev = _event(kind="sensor_stale", audience="device", signal="heart_rate", priority="low",
                explanation={"source": "rule", "window_s": 1800.0}, message="no heart rate for 30 min")
    di = detected_issue(ev)
    assert "contained" not in di and di["evidence"][0]["code"][0]["coding"][0]["code"] == "8867-4"
    assert explanation_text(ev) == "no heart rate for 30 min (rule; window 1800 s)"


def test_search() -> None:
    events = [_event(), _event("acknowledged", alert_id="al-1123456789abcdef0123", priority="low"),
              _event("updated", alert_id="al-2123456789abcdef0123", patient_id="p-8")]
    assert [e.alert_id[:4] for e in search(events, None, None)] == ["al-0", "al-2", "al-1"]
    assert [e.state for e in search(events, "p-7", None)] == ["open", "acknowledged"]
    assert [e.state for e in search(events, None, frozenset({"preliminary", "amended"}))] == ["open", "updated"]
    assert search(events, None, frozenset({"cancelled"})) == []
    bundle = search_bundle(search(events, "p-7", None), "http://h/fhir/DetectedIssue?patient=p-7", "http://h/fhir",
                           note="scope")
    assert bundle["type"] == "searchset" and bundle["total"] == 2
    assert [e["search"]["mode"] for e in bundle["entry"]] == ["match", "match", "outcome"]
    assert bundle["entry"][0]["fullUrl"] == "http://h/fhir/DetectedIssue/al-0123456789abcdef0123"
    with pytest.raises(FhirError):
        parse_search({"patient": "Patient/a b"})
    with pytest.raises(FhirError):
        parse_search({"status": ""})


# ---------------------------------------------------------------------------------------------- export round trip
def test_export_round_trips_through_ingest() -> None:
    records = [("heart_rate", "mean", T0, 71.25), ("heart_rate", "count", T0, 12),
               ("glucose", "mean", T0 - 300_000, 55.5), ("glucose", "count", T0 - 300_000, 1),
               ("steps", "mean", T0 - 60_000, 42.0), ("steps", "count", T0 - 60_000, 1),
               ("nonsense", "mean", T0, 1.0)]
    rows = minutes_from_records(records)
    assert len(rows) == 3
    for btype in ("batch", "transaction", "collection"):
        bundle = export_bundle("p-rt", rows, id_prefix="0123abcd", bundle_type=btype)
        res = parse_fhir(orjson.dumps(bundle), T0 + 120_000, vendor="fhir-http", device_id="unknown",
                         expect="Bundle")
        assert res.dead == []
        got = sorted((r.signal, r.ts_ms, r.value, r.loinc, r.ucum) for r in res.readings)
        assert got == [
            ("glucose", T0 - 300_000, 55.5, "99504-3", "mg/dL"),
            ("heart_rate", T0, 71.25, "8867-4", "/min"),
            ("steps", T0 - 60_000, 42.0, "55423-8", "{steps}"),
        ]
        assert all(r.patient_id == "p-rt" for r in res.readings)
    entry = export_bundle("p-rt", rows, id_prefix="0123abcd")["entry"][0]
    assert "p-rt" not in entry["resource"]["id"] and entry["request"] == {"method": "POST", "url": "Observation"}
