"""The device-facing contract: MQTT topics, payload schema, normalized readings.

Vendors publish UTF-8 JSON to ``wearwatch/v1/vitals/{vendor}/{device_id}`` at
QoS 1: one reading, or an array of readings (devices upload batches after a
Bluetooth re-sync)::

    {"patient_id": "p-001", "signal": "glucose", "value": 5.1, "unit": "mmol/L",
     "ts": "2026-11-27T10:00:00Z", "seq": 42}

:func:`parse_payload` turns one MQTT message into normalized :class:`Reading`
objects and :class:`DeadLetter` records, one per problem. It never raises on
input: everything that is not a valid reading becomes a dead letter with a
machine-readable ``reason`` and a human ``detail``.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from wearwatch.config import Settings
from wearwatch.contract.ids import DEVICE_ID_PATTERN, ID_RULE, VENDOR_PATTERN, PatientId, is_patient_id
from wearwatch.contract.times import TIMESTAMP_SCHEMA, TimestampError, parse_timestamp
from wearwatch.contract.units import CANONICAL_UNIT, MMOL_TO_MGDL, SIGNAL_UNITS
from wearwatch.errors import InvalidReading

__all__ = [
    "BATCH_PREFIX",
    "CGM_LIMIT_VALUES",
    "DEFAULT_LIMITS",
    "HARD_LIMITS",
    "SCHEMA_VERSION",
    "TOPIC_FILTER",
    "DeadLetter",
    "DeviceReading",
    "Limits",
    "Reading",
    "ReadingBatch",
    "decode_reading",
    "decode_record",
    "encode_batch",
    "load_json_payload",
    "parse_payload",
    "parse_topic",
    "payload_dead_letter",
    "payload_text",
    "validate_item",
    "vitals_topic",
]

SCHEMA_VERSION = 1
#: MQTT subscription filter for every vendor and device.
TOPIC_FILTER = "wearwatch/v1/vitals/+/+"
#: device topics per family: wearwatch/v1/{family}/{vendor}/{device_id}
_TOPIC_RES = {
    family: re.compile(rf"^wearwatch/v1/{family}/({VENDOR_PATTERN[1:-1]})/({DEVICE_ID_PATTERN[1:-1]})$")
    for family in ("vitals", "fhir")
}
#: Values outside these bounds (canonical units) cannot be measurements at all:
#: they are rejected at the door. Values inside them that are still
#: physiologically implausible are reported by the detectors as device findings.
HARD_LIMITS: dict[str, tuple[float, float]] = {
    "heart_rate": (0.0, 400.0),
    "glucose": (0.0, 1500.0),
    "steps": (0.0, 100_000.0),
}
_REQUIRED = ("patient_id", "signal", "value", "unit", "ts")
#: what a CGM shows beyond its reporting range ("LOW" below its floor, "HIGH" above its ceiling), and the
#: mg/dL value that stands for it: just outside the 40-400 mg/dL range every CGM reports, so the detectors
#: read it as at or beyond the sensor's limit (``glucose_sensor_floor_mgdl`` / ``_ceiling_mgdl``)
CGM_LIMIT_VALUES: dict[str, float] = {"LOW": 39.0, "HIGH": 401.0}


@dataclass(frozen=True, slots=True)
class Limits:
    """The gateway's limits on one message: clock skew, reading age, payload size, readings per message."""

    max_skew_s: float = 300.0
    max_age_s: float = 7 * 86400.0
    max_payload_bytes: int = 256 * 1024
    max_batch: int = 5000

    @classmethod
    def from_settings(cls, s: Settings) -> Limits:
        """The limits the settings give (WEARWATCH_MAX_CLOCK_SKEW_S, _READING_AGE_S, _PAYLOAD_BYTES, _BATCH_READINGS)"""
        return cls(s.max_clock_skew_s, s.max_reading_age_s, s.max_payload_bytes, s.max_batch_readings)

    @property
    def max_skew_ms(self) -> int:
        return int(self.max_skew_s * 1000)

    @property
    def max_age_ms(self) -> int:
        return int(self.max_age_s * 1000)


#: the defaults of :class:`~wearwatch.config.Settings`
DEFAULT_LIMITS = Limits()


def _device_reading_rules() -> dict[str, Any]:
    """JSON Schema conditions tying unit and value range to the signal (from the same tables as the checks)."""
    rules: list[dict[str, Any]] = []
    for signal, units in SIGNAL_UNITS.items():
        lo, hi = HARD_LIMITS[signal]
        per_unit = []
        for unit in sorted(units):
            top = hi / MMOL_TO_MGDL if unit == "mmol/L" else hi
            per_unit.append({"if": {"properties": {"unit": {"const": unit}}},
                             "then": {"properties": {"value": {"minimum": lo, "maximum": top}}}})
        if signal != "glucose":  # only a CGM reports "LOW" / "HIGH" instead of a number
            per_unit.append({"properties": {"value": {"type": "number"}}})
        rules.append({"if": {"properties": {"signal": {"const": signal}}, "required": ["signal"]},
                      "then": {"properties": {"unit": {"enum": sorted(units)}}, "allOf": per_unit}})
    return {"allOf": rules}


class DeviceReading(BaseModel):
    """One reading as a device publishes it: an item of the payload on ``wearwatch/v1/vitals/{vendor}/{device}``.

    This model describes the payload for the vendor contract (the AsyncAPI document,
    ``wearwatch contract``); the gateway checks it with :func:`validate_item`, which
    also names the dead-letter reason, and ``tests/test_asyncapi.py`` checks that the
    two agree. Beyond the schema: ``ts`` at most ``WEARWATCH_MAX_CLOCK_SKEW_S`` in the
    future and ``WEARWATCH_MAX_READING_AGE_S`` in the past, and its date fields in range.
    Other fields are ignored.
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, json_schema_extra=_device_reading_rules())

    patient_id: PatientId = Field(description="the patient's id: 1-64 characters of [A-Za-z0-9_.:-]")
    signal: Literal["heart_rate", "glucose", "steps"]
    value: float | Literal["LOW", "HIGH"] = Field(
        description="finite; heart rate 0-400 bpm, glucose 0-1500 mg/dL (mmol/L: x 18.016), steps 0-100,000; "
                    "glucose may also be \"LOW\" or \"HIGH\": a CGM's reading below its floor or above its "
                    "ceiling (taken as 39 and 401 mg/dL)")
    unit: Literal["bpm", "mg/dL", "mmol/L", "steps"] = Field(description="must fit the signal")
    ts: int | float | str = Field(
        description="measurement time: RFC 3339 with an offset (lowercase t/z accepted), or epoch milliseconds",
        json_schema_extra=TIMESTAMP_SCHEMA,
    )
    seq: int | None = Field(None, ge=0, lt=2**63, description="per-device sequence number (optional)")


class Reading(BaseModel):
    """One normalized reading as it travels on Kafka ``vitals.raw`` (key = patient_id).

    ``value`` is in the canonical unit of the signal (bpm, mg/dL, steps);
    ``ts_ms`` is the device's measurement time in epoch milliseconds;
    ``received_ms`` is when the gateway took it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    schema_version: Literal[1] = 1
    patient_id: PatientId
    signal: Literal["heart_rate", "glucose", "steps"]
    value: float
    unit: Literal["bpm", "mg/dL", "steps"]
    ts_ms: int
    vendor: str
    device_id: str
    seq: int | None = None
    received_ms: int
    source_unit: str | None = None
    #: LOINC code of the source observation (readings that came in as FHIR; see :mod:`ingest.fhir`)
    loinc: str | None = None
    #: UCUM code of the value as the source sent it (``value`` itself is always in the canonical ``unit``)
    ucum: str | None = None

    @model_validator(mode="after")
    def _canonical(self) -> Reading:
        if self.unit != CANONICAL_UNIT[self.signal]:
            raise ValueError(f"unit {self.unit} is not the canonical unit of {self.signal}")
        lo, hi = HARD_LIMITS[self.signal]
        if not lo <= self.value <= hi:
            raise ValueError(f"{self.signal} value outside [{lo:g}, {hi:g}]")
        return self

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(exclude_none=True))


class ReadingBatch(BaseModel):
    """Several readings in one ``vitals.raw`` record.

    The gateway groups the readings bound for one partition that arrive within a
    few milliseconds into one record (:func:`encode_batch`): a Faust worker pays
    ~60 µs per *record* however small, so one record per reading capped a worker
    near 16,000 readings/s. The readings may belong to different patients of that
    partition; the record's key is the first reading's patient (the partition is
    set explicitly, the same one each patient's key hashes to). Single-reading
    records (the :class:`Reading` itself) stay valid: :func:`decode_record` takes both.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    readings: tuple[Reading, ...]


#: how every :class:`ReadingBatch` record starts (what :func:`decode_record` looks for)
BATCH_PREFIX = b'{"schema_version":1,"readings":['


def encode_batch(readings: Sequence[bytes]) -> bytes:
    """One ``vitals.raw`` record from readings already encoded with :meth:`Reading.to_json`.

    The same JSON as the :class:`ReadingBatch` of those readings, without decoding them again.

    >>> r = Reading(patient_id="p1", signal="steps", value=3, unit="steps", ts_ms=1, vendor="v",
    ...             device_id="d", received_ms=2)
    >>> rec = encode_batch([r.to_json(), r.to_json()])
    >>> ReadingBatch.model_validate_json(rec).readings == (r, r)
    True
    """
    return BATCH_PREFIX + b",".join(readings) + b"]}"


def decode_record(data: bytes) -> list[tuple[Reading | InvalidReading, bytes]]:
    """Decode a ``vitals.raw`` record, single reading or :class:`ReadingBatch`.

    Each item is the reading, or the :class:`InvalidReading` error saying why it is
    not one together with that reading's own bytes (for its dead letter; a valid
    reading inside a batch comes with ``b""``): one bad reading in a batch does not
    cost the others.

    >>> rec = encode_batch([b'{"schema_version":1,"patient_id":"p1","signal":"steps","value":3,"unit":"steps",'
    ...                     b'"ts_ms":1,"vendor":"v","device_id":"d","received_ms":2}', b'{"schema_version":7}'])
    >>> [(type(r).__name__, raw[:20]) for r, raw in decode_record(rec)]
    [('Reading', b''), ('InvalidReading', b'{"schema_version":7}')]
    >>> [type(r).__name__ for r, _ in decode_record(b'not json')]
    ['InvalidReading']
    """
    if not data.startswith(BATCH_PREFIX):
        try:
            return [(decode_reading(data), data)]
        except InvalidReading as exc:
            return [(exc, data)]
    try:  # the whole batch in pydantic-core, from the bytes: 1.5 µs a reading instead of 2.6
        return [(r, b"") for r in ReadingBatch.model_validate_json(data).readings]
    except ValueError:
        pass  # the record or some reading in it is bad: item by item, so the others still count
    try:
        items = orjson.loads(data)["readings"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        return [(InvalidReading("bad_record", f"batch record is not valid JSON: {exc}"[:200]), data)]
    out: list[tuple[Reading | InvalidReading, bytes]] = []
    for item in items:
        try:
            out.append((Reading.model_validate(item), b""))
        except ValueError as exc:
            out.append((_invalid(exc), orjson.dumps(item)))
    return out


def _invalid(exc: ValueError) -> InvalidReading:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "record"
        return InvalidReading("bad_record", f"{loc}: {first['msg']}")
    return InvalidReading("bad_record", str(exc)[:200])


class DeadLetter(BaseModel):
    """What went to ``vitals.dlq``: the original payload, where it came from, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    reason: str
    detail: str
    source: Literal["gateway", "worker"] = "gateway"
    mqtt_topic: str | None = None
    #: index of the reading inside an array payload; None when the whole payload is bad
    index: int | None = None
    payload: str
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    received_ms: int

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(exclude_none=True))


def vitals_topic(vendor: str, device_id: str) -> str:
    """The MQTT topic a device publishes to.

    >>> vitals_topic("acme", "watch-7")
    'wearwatch/v1/vitals/acme/watch-7'
    """
    return f"wearwatch/v1/vitals/{vendor}/{device_id}"


def parse_topic(topic: str, family: str = "vitals") -> tuple[str, str]:
    """``(vendor, device_id)`` from a device topic of ``family`` (vitals, fhir), or :class:`InvalidReading`.

    >>> parse_topic("wearwatch/v1/vitals/acme/watch-7")
    ('acme', 'watch-7')
    """
    m = _TOPIC_RES[family].match(topic)
    if m is None:
        raise InvalidReading("bad_topic", f"topic {topic[:200]!r} is not wearwatch/v1/{family}/VENDOR/DEVICE")
    return m.group(1), m.group(2)


def _parse_ts(raw: Any, now_ms: int | None, max_skew_ms: int, max_age_ms: int) -> int:
    """The reading's time (:mod:`wearwatch.contract.times`), within the window around ``now_ms`` (None: any)."""
    try:
        ts = parse_timestamp(raw)
    except TimestampError as exc:
        raise InvalidReading("bad_ts", f"ts {exc}") from None
    if now_ms is None:
        return ts
    if ts > now_ms + max_skew_ms:
        raise InvalidReading("ts_in_future", f"ts is {(ts - now_ms) / 1000:.0f} s ahead of the gateway clock")
    if ts < now_ms - max_age_ms:
        hint = " (epoch seconds given where milliseconds are expected?)" if 0 <= ts < 1e11 else ""
        raise InvalidReading("ts_too_old", f"ts is {(now_ms - ts) / 86_400_000:.1f} days old{hint}")
    return ts


#: what :func:`validate_item` returns: patient, signal, value (canonical unit), ts_ms, seq, source unit
Checked = tuple[str, str, float, int, int | None, str | None]


def validate_item(item: Any, now_ms: int | None, max_skew_ms: int = 300_000,
                  max_age_ms: int = 7 * 86_400_000) -> Checked:
    """Check one reading (a decoded JSON object) against the device contract; raise :class:`InvalidReading`.

    The gateway's rules, in the gateway's order, with its dead-letter reasons.
    ``now_ms`` None skips the time window (future/too old), for offline data whose
    age is the point (``wearwatch replay``).

    >>> validate_item({"patient_id": "p1", "signal": "glucose", "value": 2.0, "unit": "mmol/L",
    ...                "ts": "2026-01-05T00:00:00Z"}, None)
    ('p1', 'glucose', 36.032, 1767571200000, None, 'mmol/L')
    >>> validate_item({"patient_id": "p1", "signal": "glucose", "value": "LOW", "unit": "mg/dL", "ts": 0}, None)
    ('p1', 'glucose', 39.0, 0, None, None)
    >>> validate_item({"patient_id": "p1", "signal": "heart_rate", "value": -1, "unit": "bpm", "ts": 0}, None)
    Traceback (most recent call last):
    ...
    wearwatch.errors.InvalidReading: value_out_of_range: heart_rate must be within [0, 400] bpm
    """
    if not isinstance(item, dict):
        raise InvalidReading("not_object", f"a reading must be a JSON object, got {type(item).__name__}")
    missing = [k for k in _REQUIRED if k not in item]
    if missing:
        raise InvalidReading("missing_field", f"missing {', '.join(missing)}")
    pid = item["patient_id"]
    if not is_patient_id(pid):
        raise InvalidReading("bad_patient_id", f"patient_id must be {ID_RULE}")
    signal = item["signal"]
    if not isinstance(signal, str) or signal not in SIGNAL_UNITS:
        raise InvalidReading("unknown_signal", f"signal must be one of {sorted(SIGNAL_UNITS)}")
    unit = item["unit"]
    if not isinstance(unit, str) or unit not in SIGNAL_UNITS[signal]:
        raise InvalidReading(
            "unit_mismatch", f"unit {str(unit)[:20]!r} is not valid for {signal}; use {sorted(SIGNAL_UNITS[signal])}"
        )
    value = item["value"]
    source_unit = None if unit == CANONICAL_UNIT[signal] else unit
    if signal == "glucose" and isinstance(value, str) and value in CGM_LIMIT_VALUES:
        value = CGM_LIMIT_VALUES[value]  # already mg/dL, whatever unit the device shows
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidReading("bad_value", f"value must be a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise InvalidReading("bad_value", "value is not finite")
        if unit == "mmol/L":
            value = value * MMOL_TO_MGDL
    lo, hi = HARD_LIMITS[signal]
    if not lo <= value <= hi:
        raise InvalidReading("value_out_of_range", f"{signal} must be within [{lo:g}, {hi:g}] {CANONICAL_UNIT[signal]}")
    seq = item.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63):
        raise InvalidReading("bad_seq", "seq must be a non-negative integer")
    ts = _parse_ts(item["ts"], now_ms, max_skew_ms, max_age_ms)
    return pid, signal, value, ts, seq, source_unit


def _normalize(
    item: Any, vendor: str, device_id: str, now_ms: int, max_skew_ms: int, max_age_ms: int
) -> Reading:
    pid, signal, value, ts, seq, source_unit = validate_item(item, now_ms, max_skew_ms, max_age_ms)
    return Reading(
        patient_id=pid,
        signal=signal,  # type: ignore[arg-type]
        value=value,
        unit=CANONICAL_UNIT[signal],  # type: ignore[arg-type]
        ts_ms=ts,
        vendor=vendor,
        device_id=device_id,
        seq=seq,
        received_ms=now_ms,
        source_unit=source_unit,
    )


def payload_text(payload: bytes, limit: int = 900_000) -> tuple[str, Literal["utf-8", "base64"]]:
    """The payload as text for a dead letter: UTF-8 if it is, else base64 (first ``limit`` bytes)."""
    body = payload[:limit]
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"


def payload_dead_letter(reason: str, detail: str, payload: bytes, mqtt_topic: str | None,
                        received_ms: int) -> DeadLetter:
    """The dead letter for a payload refused as a whole (the original payload kept, see :func:`payload_text`)."""
    text, enc = payload_text(payload)
    return DeadLetter(reason=reason, detail=detail, mqtt_topic=mqtt_topic, payload=text, payload_encoding=enc,
                      received_ms=received_ms)


def load_json_payload(payload: bytes, max_payload_bytes: int) -> Any:
    """The checks every device payload passes first (size, UTF-8, JSON); its parsed JSON.

    Raises :class:`InvalidReading` with reason ``payload_too_large``, ``not_utf8`` or ``invalid_json``.

    >>> load_json_payload(b'{"a": 1}', 1024)
    {'a': 1}
    >>> load_json_payload(b"\\xff", 1024)
    Traceback (most recent call last):
    ...
    wearwatch.errors.InvalidReading: not_utf8: payload is not valid UTF-8
    """
    if len(payload) > max_payload_bytes:
        raise InvalidReading("payload_too_large", f"{len(payload)} bytes > limit {max_payload_bytes}")
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidReading("not_utf8", "payload is not valid UTF-8") from exc
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidReading("invalid_json", f"not JSON: {str(exc)[:200]}") from exc


def parse_payload(
    topic: str,
    payload: bytes,
    now_ms: int,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[list[Reading], list[DeadLetter]]:
    """Validate and normalize one MQTT message within ``limits``. Never raises on bad input.

    Every reading in the payload ends up in exactly one of the two lists.

    >>> ok, bad = parse_payload(
    ...     "wearwatch/v1/vitals/acme/w1",
    ...     b'[{"patient_id":"p1","signal":"glucose","value":3.0,"unit":"mmol/L","ts":1700000000000},'
    ...     b' {"patient_id":"p1","signal":"glucose","value":99,"unit":"bpm","ts":1700000000000}]',
    ...     now_ms=1700000001000)
    >>> [(r.signal, round(r.value, 3), r.unit) for r in ok]
    [('glucose', 54.048, 'mg/dL')]
    >>> [(d.reason, d.index) for d in bad]
    [('unit_mismatch', 1)]
    """
    max_skew_ms, max_age_ms = limits.max_skew_ms, limits.max_age_ms

    def whole(reason: str, detail: str) -> tuple[list[Reading], list[DeadLetter]]:
        return [], [payload_dead_letter(reason, detail, payload, topic[:512], now_ms)]

    try:
        vendor, device_id = parse_topic(topic)
        doc = load_json_payload(payload, limits.max_payload_bytes)
    except InvalidReading as exc:
        return whole(exc.reason, exc.detail)
    if isinstance(doc, dict):
        items, is_batch = [doc], False
    elif isinstance(doc, list):
        if not doc:
            return whole("empty_batch", "an empty array holds no readings")
        if len(doc) > limits.max_batch:
            return whole("batch_too_large", f"{len(doc)} readings > limit {limits.max_batch}")
        items, is_batch = doc, True
    else:
        return whole("not_object", f"payload must be a JSON object or array, got {type(doc).__name__}")

    readings: list[Reading] = []
    dead: list[DeadLetter] = []
    for i, item in enumerate(items):
        try:
            readings.append(_normalize(item, vendor, device_id, now_ms, max_skew_ms, max_age_ms))
        except InvalidReading as exc:
            if not is_batch:
                return whole(exc.reason, exc.detail)
            dead.append(
                DeadLetter(reason=exc.reason, detail=exc.detail, mqtt_topic=topic, index=i,
                           payload=orjson.dumps(item).decode("utf-8"), received_ms=now_ms)
            )
    return readings, dead


def decode_reading(data: bytes) -> Reading:
    """Decode a ``vitals.raw`` record (the worker's side of the contract).

    Raises :class:`InvalidReading` for anything that is not a valid schema-1 reading.

    >>> r = decode_reading(b'{"schema_version":1,"patient_id":"p1","signal":"steps","value":3,'
    ...                    b'"unit":"steps","ts_ms":1,"vendor":"v","device_id":"d","received_ms":2}')
    >>> (r.patient_id, r.value)
    ('p1', 3.0)
    >>> decode_reading(b'{"schema_version":2}')
    Traceback (most recent call last):
    ...
    wearwatch.errors.InvalidReading: bad_record: schema_version: Input should be 1
    """
    try:
        return Reading.model_validate_json(data)
    except ValueError as exc:  # pydantic.ValidationError subclasses ValueError
        raise _invalid(exc) from exc
