"""Nurse commands: acknowledgements, snoozes and notes from nurse apps and the console, their MQTT topics and
Kafka records.

=================================================  ==========  =============================================
topic                                              direction   payload
=================================================  ==========  =============================================
``wearwatch/v1/acks/{ward}/{patient_id}``          from apps   ``{"alert_id", "by", "ts"}`` → :class:`Ack`
``wearwatch/v1/snoozes/{ward}/{patient_id}``       from apps   ``{"kind", "until", "by", "ts"}`` → :class:`Snooze`
=================================================  ==========  =============================================

The gateway validates them (:func:`parse_ack`, :func:`parse_snooze`) and produces
them to Kafka ``alerts.commands`` (:func:`command_record`, key = patient id); the
worker reads them back (:func:`parse_command_record`) and applies them to the
patient's alert lifecycle; the console produces the same records, and notes
(:class:`Note`, console only: a note is written by a logged-in account). Time stamps
``ts``/``until`` follow :mod:`wearwatch.contract.times`.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wearwatch.contract.ids import ID_RULE, AlertId, NurseId, PatientId, WardId, is_patient_id, topic_segment
from wearwatch.contract.times import TIMESTAMP_SCHEMA, TimestampError, parse_timestamp
from wearwatch.errors import InvalidCommand

__all__ = [
    "ACK_TOPIC_FILTER",
    "MAX_COMMAND_BYTES",
    "NOTE_MAX_CHARS",
    "SNOOZE_TOPIC_FILTER",
    "TOPIC_ROOT",
    "Ack",
    "AckPayload",
    "InvalidCommand",
    "Note",
    "Snooze",
    "SnoozePayload",
    "ack_topic",
    "command_record",
    "parse_ack",
    "parse_command_record",
    "parse_snooze",
    "snooze_topic",
]

TOPIC_ROOT = "wearwatch/v1"
#: Subscribe here for acknowledgements from nurse apps.
ACK_TOPIC_FILTER = f"{TOPIC_ROOT}/acks/+/+"
#: Subscribe here for snoozes from nurse apps.
SNOOZE_TOPIC_FILTER = f"{TOPIC_ROOT}/snoozes/+/+"
#: Largest command payload accepted.
MAX_COMMAND_BYTES = 4096
#: Longest note text.
NOTE_MAX_CHARS = 1000


def ack_topic(ward: str, patient_id: str) -> str:
    """Where a nurse app publishes acknowledgements for one patient.

    >>> ack_topic("3B", "p-0042")
    'wearwatch/v1/acks/3B/p-0042'
    """
    return f"{TOPIC_ROOT}/acks/{topic_segment('ward', ward)}/{topic_segment('patient_id', patient_id)}"


def snooze_topic(ward: str, patient_id: str) -> str:
    """Where a nurse app publishes snoozes for one patient.

    >>> snooze_topic("3B", "p-0042")
    'wearwatch/v1/snoozes/3B/p-0042'
    """
    return f"{TOPIC_ROOT}/snoozes/{topic_segment('ward', ward)}/{topic_segment('patient_id', patient_id)}"


def _ts_ms(v: Any) -> int:
    """A command's time stamp (:mod:`wearwatch.contract.times`), which must also be after 1970."""
    try:
        ms = parse_timestamp(v)
    except TimestampError as exc:
        raise ValueError(str(exc)) from None
    if ms <= 0:
        raise ValueError("must be positive epoch milliseconds")
    return ms


class AckPayload(BaseModel):
    """What a nurse app publishes on ``wearwatch/v1/acks/{ward}/{patient_id}`` (the topic names ward and patient).

    The schema of the payload :func:`parse_ack` checks; it becomes an :class:`Ack`.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    alert_id: AlertId
    by: NurseId = Field(description="who acknowledged (1-64 characters of [A-Za-z0-9_.:@-])")
    ts: int | float | str = Field(description="when", json_schema_extra=TIMESTAMP_SCHEMA)


class SnoozePayload(BaseModel):
    """What a nurse app publishes on ``wearwatch/v1/snoozes/{ward}/{patient_id}``; it becomes a :class:`Snooze`.

    ``until`` is capped by the alert lifecycle (kinds that can be high-priority: 5 minutes).
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    kind: str = Field(pattern=r"^[a-z0-9_]{1,64}$", description="the alert kind to snooze, e.g. glucose_high")
    until: int | float | str = Field(description="snoozed until", json_schema_extra=TIMESTAMP_SCHEMA)
    by: NurseId
    ts: int | float | str = Field(description="when", json_schema_extra=TIMESTAMP_SCHEMA)


class Ack(BaseModel):
    """A nurse acknowledged one alert (from ``wearwatch/v1/acks/{ward}/{patient_id}``).

    ``ward`` and ``patient_id`` come from the topic (the broker's ACL decides who
    may publish there), the rest from the payload. Feed it to
    :meth:`alerts.lifecycle.AlertBook.ack` of that patient.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    ward: WardId
    patient_id: PatientId
    alert_id: AlertId
    by: NurseId
    ts_ms: int = Field(gt=0)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump())


class Snooze(BaseModel):
    """A nurse snoozed one kind of alert for a patient until ``until_ms`` (capped by the lifecycle)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    ward: WardId
    patient_id: PatientId
    kind: str = Field(pattern=r"^[a-z0-9_]{1,64}$")
    until_ms: int = Field(gt=0)
    by: NurseId
    ts_ms: int = Field(gt=0)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump())


class Note(BaseModel):
    """A nurse wrote a note on one alert (from the console; applied by :meth:`alerts.lifecycle.AlertBook.note`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    ward: WardId
    patient_id: PatientId
    alert_id: AlertId
    text: str = Field(min_length=1, max_length=NOTE_MAX_CHARS)
    by: NurseId
    ts_ms: int = Field(gt=0)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump())


def _parse_command(
    kind: str, topic: str, payload: bytes | str, fields: dict[str, str]
) -> tuple[str, str, dict[str, Any]]:
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != f"{TOPIC_ROOT}/{kind}":
        raise InvalidCommand("bad_topic", f"expected {TOPIC_ROOT}/{kind}/{{ward}}/{{patient_id}}")
    ward, pid = parts[3], parts[4]
    if not is_patient_id(ward) or not is_patient_id(pid):
        raise InvalidCommand("bad_topic", f"ward and patient_id must be {ID_RULE}")
    if len(payload) > MAX_COMMAND_BYTES:
        raise InvalidCommand("too_large", f"payload over {MAX_COMMAND_BYTES} bytes")
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidCommand("invalid_json", "payload is not valid UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise InvalidCommand("invalid_json", "payload must be a JSON object")
    allowed = {"schema_version", *fields}
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise InvalidCommand("invalid_field", f"unknown field(s): {', '.join(unknown)}")
    missing = [k for k in fields if k not in doc]
    if missing:
        raise InvalidCommand("invalid_field", f"missing field(s): {', '.join(missing)}")
    out: dict[str, Any] = {"ward": ward, "patient_id": pid}
    if "schema_version" in doc:
        out["schema_version"] = doc["schema_version"]
    for src, dst in fields.items():
        v = doc[src]
        if dst.endswith("_ms"):
            try:
                v = _ts_ms(v)
            except ValueError as exc:
                raise InvalidCommand("invalid_field", f"{src} {exc}") from None
        out[dst] = v
    return ward, pid, out


def _validate(model: type[BaseModel], values: dict[str, Any]) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "?"
        raise InvalidCommand("invalid_field", f"{loc}: {err['msg']}") from None


def parse_ack(topic: str, payload: bytes | str) -> Ack:
    """Validate one acknowledgement message; raise :class:`InvalidCommand` saying what is wrong.

    >>> a = parse_ack("wearwatch/v1/acks/3B/p-0042",
    ...               b'{"alert_id": "al-7c35ac37f0732fad6862", "by": "nurse.kim", "ts": 1800000000000}')
    >>> (a.ward, a.patient_id, a.by, a.ts_ms)
    ('3B', 'p-0042', 'nurse.kim', 1800000000000)
    >>> parse_ack("wearwatch/v1/acks/3B/p-0042", b'{"alert_id": "x", "by": "kim", "ts": 1}')
    Traceback (most recent call last):
    ...
    wearwatch.errors.InvalidCommand: invalid_field: alert_id: String should match pattern '^al-[0-9a-f]{20}$'
    """
    _w, _p, values = _parse_command("acks", topic, payload, {"alert_id": "alert_id", "by": "by", "ts": "ts_ms"})
    ack: Ack = _validate(Ack, values)
    return ack


def parse_snooze(topic: str, payload: bytes | str) -> Snooze:
    """Validate one snooze message; raise :class:`InvalidCommand` saying what is wrong.

    >>> s = parse_snooze("wearwatch/v1/snoozes/3B/p-0042",
    ...                  b'{"kind": "glucose_high", "until": "2027-01-15T08:30:00Z", "by": "kim", "ts": 1800000000000}')
    >>> (s.kind, s.until_ms)
    ('glucose_high', 1800001800000)
    """
    _w, _p, values = _parse_command(
        "snoozes", topic, payload, {"kind": "kind", "until": "until_ms", "by": "by", "ts": "ts_ms"}
    )
    snooze: Snooze = _validate(Snooze, values)
    return snooze


_COMMAND_TYPES: dict[str, type[Ack] | type[Snooze] | type[Note]] = {"ack": Ack, "snooze": Snooze, "note": Note}


def command_record(cmd: Ack | Snooze | Note) -> bytes:
    """The ``alerts.commands`` value for a nurse command (key = patient_id).

    >>> n = Note(ward="3B", patient_id="p-1", alert_id="al-" + "0" * 20, text="called", by="kim", ts_ms=1)
    >>> parse_command_record(command_record(n)) == n
    True
    """
    kind = next(k for k, t in _COMMAND_TYPES.items() if isinstance(cmd, t))
    return orjson.dumps({"type": kind, "body": cmd.model_dump()})


def parse_command_record(value: bytes) -> Ack | Snooze | Note:
    """Inverse of :func:`command_record`; raises :class:`InvalidCommand` (reason bad_command)."""
    try:
        doc = orjson.loads(value)
        model = _COMMAND_TYPES.get(doc["type"])
        if model is not None:
            return model.model_validate(doc["body"])
        raise KeyError(f"unknown command type {str(doc['type'])[:20]!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidCommand("bad_command", f"not a nurse command record: {str(exc)[:200]}") from exc
