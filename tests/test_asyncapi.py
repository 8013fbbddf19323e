"""The AsyncAPI document (docs/asyncapi.yaml): up to date, well-formed, and true to what the code sends and takes.

The schemas are generated from the models; these tests validate real payloads made by the
gateway, the worker and the lifecycle against them, and check that the device-reading and
command schemas accept exactly what the gateway's own checks accept (for the rules a JSON
Schema can express).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import yaml
from jsonschema import Draft202012Validator

from alerts.lifecycle import AlertBook
from alerts.mqtt import state_payload
from detectors.base import Audience, Finding, Priority
from ingest.contract import encode_batch, parse_payload, validate_item
from ingest.gateway import Gateway
from streams.processing import minute_doc, minutes_record
from streams.state import MinuteAggregate
from tools.contract import DEFAULT_PATH, asyncapi_document, render
from wearwatch.config import load_settings
from wearwatch.contract.commands import command_record, parse_ack, parse_snooze
from wearwatch.errors import InvalidCommand, InvalidReading

DOC = asyncapi_document()
NOW = 1_780_000_000_000


def validator(schema: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/components/schemas/{schema}", "components": DOC["components"]})


def valid(schema: str, instance: Any) -> bool:
    return validator(schema).is_valid(instance)


def test_checked_in_document_is_current() -> None:
    assert DEFAULT_PATH.read_text(encoding="utf-8") == render(), "run `wearwatch contract --write`"


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_document_is_well_formed() -> None:
    doc = yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))
    assert doc["asyncapi"] == "3.0.0"
    for ref in set(_refs(doc)):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]  # every reference resolves inside the document
    for name, ch in doc["channels"].items():
        assert set(re.findall(r"{(\w+)}", ch["address"])) == set(ch.get("parameters", {})), name
    used = {op["channel"]["$ref"].split("/")[-1] for op in doc["operations"].values()}
    assert used == set(doc["channels"])  # every channel has an operation
    for op in doc["operations"].values():
        channel = op["channel"]["$ref"].split("/")[-1]
        assert all(m["$ref"].startswith(f"#/channels/{channel}/messages/") for m in op["messages"])
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    expected = {"wearwatch/v1/vitals/{vendor}/{device_id}", "wearwatch/v1/fhir/{vendor}/{device_id}",
                "wearwatch/v1/acks/{ward}/{patient_id}", "wearwatch/v1/snoozes/{ward}/{patient_id}",
                "wearwatch/v1/alerts/{ward}/{patient_id}", "wearwatch/v1/notify/{ward}/{route}",
                "vitals.raw", "vitals.dlq", "vitals.1m", "alerts", "alerts.state", "alerts.commands", "enrollment"}
    assert {ch["address"] for ch in doc["channels"].values()} == expected


def test_the_codes_payloads_match_the_schemas() -> None:
    settings = load_settings({})
    readings, dead = parse_payload(
        "wearwatch/v1/vitals/acme/w-1",
        orjson.dumps([{"patient_id": "p-1", "signal": "glucose", "value": 3.1, "unit": "mmol/L", "ts": NOW - 1000,
                       "seq": 4},
                      {"patient_id": "p-1", "signal": "heart_rate", "value": 72, "unit": "bpm", "ts": NOW - 900},
                      {"patient_id": "p-1", "signal": "steps", "value": 12, "unit": "kg", "ts": NOW}]), NOW)
    assert len(readings) == 2 and len(dead) == 1
    for r in readings:
        assert valid("Reading", orjson.loads(r.to_json()))
    assert valid("ReadingBatch", orjson.loads(encode_batch([r.to_json() for r in readings])))
    assert valid("DeadLetter", orjson.loads(dead[0].to_json()))
    gw = Gateway(settings)
    for _topic, _key, value in gw.records_for("wearwatch/v1/vitals/acme/w-1", b"\xff\xfe") + gw.records_for(
            "wearwatch/v1/acks/3B/p-1", b"{}"):
        assert valid("DeadLetter", orjson.loads(value))

    book = AlertBook("p-1", ward="3B")
    events = book.on_finding(Finding("glucose_urgent_low", "glucose", Priority.HIGH, Audience.CLINICAL,
                                     ts_ms=NOW, onset_ms=NOW, source="rule", message="glucose 50 mg/dL"), NOW)
    assert events
    for ev in events:
        assert valid("AlertEvent", orjson.loads(ev.to_json()))
    assert valid("AlertStateMessage", orjson.loads(state_payload("p-1", "3B", book.open_alerts(), NOW)))
    assert valid("AlertStateMessage", orjson.loads(state_payload("p-1", "3B", [], NOW)))

    ack = parse_ack("wearwatch/v1/acks/3B/p-1", orjson.dumps({"alert_id": events[0].alert_id, "by": "kim",
                                                              "ts": NOW}))
    snooze = parse_snooze("wearwatch/v1/snoozes/3B/p-1", orjson.dumps({"kind": "glucose_high", "until": NOW + 1,
                                                                       "by": "kim", "ts": NOW}))
    assert valid("AckRecord", orjson.loads(command_record(ack)))
    assert valid("SnoozeRecord", orjson.loads(command_record(snooze)))
    assert not valid("AckRecord", orjson.loads(command_record(snooze)))

    agg = MinuteAggregate("heart_rate", NOW - NOW % 60_000, 71.5, 70.0, 73.0, 143.0, 2)
    assert valid("MinutesRecord", orjson.loads(minutes_record([minute_doc("p-1", agg)])))


def _item(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"patient_id": "p-1", "signal": "heart_rate", "value": 72, "unit": "bpm",
                            "ts": "2026-01-05T00:00:00Z"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not ...}


DEVICE_CASES = [
    _item(), _item(ts=1767571200000), _item(ts=1767571200000.5), _item(ts="2026-01-05t00:00:00z"),
    _item(ts="2026-01-05T01:00:00.123456789+01:00"), _item(seq=0), _item(extra="ignored"),
    _item(signal="glucose", unit="mmol/L", value=3.2), _item(signal="glucose", unit="mg/dL", value=1500),
    _item(signal="glucose", unit="mmol/L", value=83.25), _item(signal="steps", unit="steps", value=100_000),
    _item(patient_id=""), _item(patient_id="p/1"), _item(patient_id="x" * 65), _item(patient_id=7),
    _item(patient_id=...), _item(signal="spo2"), _item(signal="heart_rate", unit="mg/dL"),
    _item(signal="glucose", unit="bpm"), _item(value=-1), _item(value=401), _item(value="72"), _item(value=True),
    _item(signal="glucose", unit="mmol/L", value=84), _item(signal="steps", unit="steps", value=100_001),
    _item(ts="2026-01-05T00:00:00"), _item(ts="2026-01-05 00:00:00Z"), _item(ts="20260105T000000Z"),
    _item(ts=True), _item(ts=None), _item(ts=10**16), _item(ts=...), _item(seq=-1), _item(seq=1.5),
    _item(unit=...), _item(value=...),
    _item(signal="glucose", unit="mg/dL", value="LOW"), _item(signal="glucose", unit="mmol/L", value="HIGH"),
    _item(signal="glucose", unit="mg/dL", value="low"), _item(signal="glucose", unit="mg/dL", value="40"),
    _item(value="LOW"), _item(signal="steps", unit="steps", value="HIGH"),
]


@pytest.mark.parametrize("item", DEVICE_CASES, ids=[orjson.dumps(c).decode()[:70] for c in DEVICE_CASES])
def test_device_reading_schema_agrees_with_the_gateway(item: dict[str, Any]) -> None:
    try:
        validate_item(item, None)
        accepted = True
    except InvalidReading:
        accepted = False
    assert valid("DeviceReading", item) == accepted


def test_what_the_schema_cannot_say_is_documented() -> None:
    """Field ranges of a time stamp and the window around now are the gateway's alone (said in the schema)."""
    item = _item(ts="2026-13-05T00:00:00Z")
    assert valid("DeviceReading", item)
    with pytest.raises(InvalidReading, match="bad_ts"):
        validate_item(item, None)
    assert "WEARWATCH_MAX_READING_AGE_S" in DOC["components"]["schemas"]["DeviceReading"]["description"]


ACK_CASES = [
    {"alert_id": "al-7c35ac37f0732fad6862", "by": "nurse.kim@3B", "ts": NOW},
    {"alert_id": "al-7c35ac37f0732fad6862", "by": "kim", "ts": "2027-01-15T08:00:00z", "schema_version": 1},
    {"alert_id": "al-7c35ac37f0732fad6862", "by": "kim"},
    {"alert_id": "al-XYZ", "by": "kim", "ts": NOW},
    {"alert_id": "al-7c35ac37f0732fad6862", "by": "", "ts": NOW},
    {"alert_id": "al-7c35ac37f0732fad6862", "by": "kim", "ts": NOW, "note": "x"},
    {"alert_id": "al-7c35ac37f0732fad6862", "by": "kim", "ts": "yesterday"},
    {"alert_id": "al-7c35ac37f0732fad6862", "by": "kim", "ts": NOW, "schema_version": 2},
]


@pytest.mark.parametrize("payload", ACK_CASES, ids=[str(i) for i in range(len(ACK_CASES))])
def test_ack_schema_agrees_with_the_gateway(payload: dict[str, Any]) -> None:
    try:
        parse_ack("wearwatch/v1/acks/3B/p-1", orjson.dumps(payload))
        accepted = True
    except InvalidCommand:
        accepted = False
    assert valid("AckPayload", payload) == accepted
