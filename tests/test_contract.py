"""Unit tests of the device contract: validation, normalization, dead letters."""

from __future__ import annotations

import base64

import orjson
import pytest

from detectors import PatientMonitor
from ingest.contract import (
    DeadLetter,
    Limits,
    Reading,
    decode_reading,
    decode_record,
    encode_batch,
    parse_payload,
)
from wearwatch.contract.units import MMOL_TO_MGDL
from wearwatch.errors import InvalidReading

TOPIC = "wearwatch/v1/vitals/acme/watch-1"
NOW = 1_780_000_000_000


def reading(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "patient_id": "p-1", "signal": "heart_rate", "value": 72, "unit": "bpm", "ts": NOW - 1000,
    }
    base.update(kw)
    return base


def parse(payload: object, topic: str = TOPIC) -> tuple[list[Reading], list[DeadLetter]]:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return parse_payload(topic, raw, NOW)


def test_single_reading_is_normalized() -> None:
    ok, bad = parse(reading(seq=7))
    assert bad == []
    assert len(ok) == 1
    r = ok[0]
    got = (r.patient_id, r.signal, r.value, r.unit, r.ts_ms, r.seq)
    assert got == ("p-1", "heart_rate", 72.0, "bpm", NOW - 1000, 7)
    assert (r.vendor, r.device_id, r.received_ms, r.schema_version) == ("acme", "watch-1", NOW, 1)


def test_mmol_is_converted_to_mgdl() -> None:
    ok, _ = parse(reading(signal="glucose", value=3.0, unit="mmol/L"))
    assert ok[0].value == pytest.approx(3.0 * MMOL_TO_MGDL)
    assert ok[0].unit == "mg/dL"
    assert ok[0].source_unit == "mmol/L"


def test_cgm_low_and_high_are_readings_at_the_sensor_limits() -> None:
    # a CGM shows "LOW" below its floor and "HIGH" above its ceiling: clinical extremes, not bad values
    ok, bad = parse([reading(signal="glucose", value="LOW", unit="mg/dL", ts=NOW - 2000),
                     reading(signal="glucose", value="HIGH", unit="mmol/L", ts=NOW - 1000),
                     reading(signal="glucose", value="low", unit="mg/dL"), reading(value="HIGH")])
    assert [(r.value, r.unit, r.source_unit) for r in ok] == [(39.0, "mg/dL", None), (401.0, "mg/dL", "mmol/L")]
    assert [(d.reason, d.index) for d in bad] == [("bad_value", 2), ("bad_value", 3)]
    m = PatientMonitor()
    found = [f for r in ok for f in m.update(r.signal, r.ts_ms, r.value)]
    assert [f.message for f in found] == [
        "Urgent low glucose: at or below the sensor's lowest reading (40 mg/dL), below 55",
        "High glucose: at or above the sensor's highest reading (400 mg/dL), above 250"]


def test_rfc3339_timestamps() -> None:
    ok, bad = parse([reading(ts="2026-05-28T20:26:39Z"), reading(ts="2026-05-28T22:26:39+02:00")])
    assert bad == []
    assert ok[0].ts_ms == ok[1].ts_ms == 1_780_000_000_000 - 1000


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (reading(unit="mg/dL"), "unit_mismatch"),
        (reading(signal="spo2"), "unknown_signal"),
        (reading(value="72"), "bad_value"),
        (reading(value=True), "bad_value"),
        (reading(value=1e300), "value_out_of_range"),
        (reading(value=-5), "value_out_of_range"),
        (reading(patient_id=""), "bad_patient_id"),
        (reading(patient_id="a b"), "bad_patient_id"),
        (reading(patient_id=12), "bad_patient_id"),
        (reading(ts=NOW + 3_600_000), "ts_in_future"),
        (reading(ts=(NOW - 1000) // 1000), "ts_too_old"),
        (reading(ts="yesterday"), "bad_ts"),
        (reading(ts="2026-05-28T20:26:39"), "bad_ts"),
        (reading(ts=None), "bad_ts"),
        (reading(seq=-1), "bad_seq"),
        ({"patient_id": "p"}, "missing_field"),
        ("just a string", "not_object"),
    ],
)
def test_invalid_single_reading_goes_to_dlq_with_reason(item: object, reason: str) -> None:
    ok, bad = parse(item)
    assert ok == []
    assert [d.reason for d in bad] == [reason]
    assert bad[0].index is None and bad[0].mqtt_topic == TOPIC
    assert bad[0].payload == orjson.dumps(item).decode()


def test_mixed_batch_splits_exactly() -> None:
    items = [reading(), reading(unit="x"), reading(value=80), reading(value=float("nan")), 5]
    raw = orjson.dumps([*items[:3], reading(value=0), 5]).replace(b'"value":0,', b'"value":NaN,')
    ok, bad = parse_payload(TOPIC, raw, NOW)
    # NaN is not JSON: the whole payload is rejected, nothing half-parsed
    assert ok == [] and [d.reason for d in bad] == ["invalid_json"]
    ok, bad = parse([items[0], items[1], items[2], items[4]])
    assert [r.value for r in ok] == [72.0, 80.0]
    assert [(d.reason, d.index) for d in bad] == [("unit_mismatch", 1), ("not_object", 3)]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe\x00garbage", "not_utf8"),
        (b"{not json", "invalid_json"),
        (b"[]", "empty_batch"),
        (b"42", "not_object"),
        (b"x" * (256 * 1024 + 1), "payload_too_large"),
    ],
)
def test_whole_payload_rejections(payload: bytes, reason: str) -> None:
    ok, bad = parse_payload(TOPIC, payload, NOW)
    assert ok == [] and len(bad) == 1 and bad[0].reason == reason
    if reason == "not_utf8":
        assert bad[0].payload_encoding == "base64"
        assert base64.b64decode(bad[0].payload) == payload


def test_bad_topic() -> None:
    ok, bad = parse_payload("wearwatch/v1/vitals/acme", orjson.dumps(reading()), NOW)
    assert ok == [] and bad[0].reason == "bad_topic"


def test_batch_limit() -> None:
    ok, bad = parse_payload(TOPIC, orjson.dumps([reading()] * 3), NOW, Limits(max_batch=2))
    assert ok == [] and bad[0].reason == "batch_too_large"


def test_reading_roundtrip_and_decoder_rejects_tampering() -> None:
    ok, _ = parse(reading())
    assert decode_reading(ok[0].to_json()) == ok[0]
    doc = orjson.loads(ok[0].to_json())
    for change in ({"unit": "mg/dL"}, {"value": 5000.0}, {"schema_version": 2}, {"extra": 1}):
        with pytest.raises(InvalidReading):
            decode_reading(orjson.dumps({**doc, **change}))


def _decode_item_by_item(data: bytes) -> list[tuple[str, str, bytes]]:
    """decode_record's reference: every reading of a batch validated on its own (no whole-batch fast path)."""
    out = []
    for item in orjson.loads(data)["readings"]:
        try:
            r = Reading.model_validate(item)
            out.append(("ok", r.model_dump_json(), b""))
        except ValueError:
            out.append(("bad", "", orjson.dumps(item)))
    return out


def test_batch_fast_path_decodes_exactly_like_item_by_item() -> None:
    import random

    rng = random.Random(11)
    good = {"schema_version": 1, "patient_id": "p-1", "signal": "heart_rate", "value": 72.0, "unit": "bpm",
            "ts_ms": NOW, "vendor": "v", "device_id": "d", "received_ms": NOW + 5}
    breakers: list[tuple[str, object]] = [
        ("value", 1e9), ("value", "72"), ("value", None), ("unit", "mg/dL"), ("ts_ms", 1.5), ("ts_ms", "x"),
        ("patient_id", "bad id!"), ("signal", "spo2"), ("extra", 1), ("schema_version", 2), ("seq", 3),
        ("ts_ms", 12.0), ("value", 40), ("source_unit", None), ("received_ms", True),
    ]
    kinds = set()
    for _ in range(400):
        items = []
        for _ in range(rng.randint(1, 12)):
            item = dict(good, ts_ms=NOW + rng.randint(0, 10**6))
            if rng.random() < 0.15:
                k, v = rng.choice(breakers)
                item[k] = v
            items.append(item)
        data = encode_batch([orjson.dumps(i) for i in items])
        got = [("ok", r.model_dump_json(), raw) if isinstance(r, Reading) else ("bad", "", raw)
               for r, raw in decode_record(data)]
        assert got == _decode_item_by_item(data)
        kinds.add(tuple(sorted({g[0] for g in got})))
    assert kinds == {("ok",), ("bad", "ok"), ("bad",)}  # all-valid (fast path), mixed and all-bad batches
