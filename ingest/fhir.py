"""FHIR R4 Observations in: the same normalized :class:`~ingest.contract.Reading` as the JSON contract.

Devices and vendor clouds that speak FHIR publish R4 ``Observation`` resources —
one, or a ``Bundle`` (``batch``, ``transaction`` or ``collection``) of them — to
MQTT ``wearwatch/v1/fhir/{vendor}/{device_id}`` (QoS 1, same ACL as vitals), or
POST them to the gateway's HTTP endpoint (``POST /fhir/Observation``, ``POST
/fhir`` for a Bundle; see :mod:`ingest.gateway`). Parsing and structural
validation use the ``fhir.resources`` models (``fhir.resources.R4B``: FHIR 4.3,
whose Observation, Bundle, OperationOutcome and DetectedIssue are the R4 ones);
this module then maps what the pipeline understands:

==========  =====================================================  ============================  ===========
LOINC       meaning                                                UCUM code (``valueQuantity``)  signal
==========  =====================================================  ============================  ===========
8867-4      Heart rate                                             ``/min`` (``{beats}/min``)     heart_rate
99504-3     Glucose [Mass/volume] in Interstitial fluid (CGM)      ``mg/dL``                      glucose
2339-0      Glucose [Mass/volume] in Blood                         ``mg/dL``                      glucose
15074-8     Glucose [Moles/volume] in Blood                        ``mmol/L`` (× 18.016 → mg/dL)  glucose
14743-9     Glucose [Moles/volume] in Capillary blood (glucometer) ``mmol/L`` (× 18.016 → mg/dL)  glucose
55423-8     Number of steps in unspecified time (pedometer)        ``{steps}`` (``{step}``, ``1``) steps
==========  =====================================================  ============================  ===========

* patient: ``subject.reference`` = ``Patient/{id}`` (a full URL ending in it is fine);
* time: ``effectiveDateTime`` (with a time of day), ``effectiveInstant`` or ``effectivePeriod.start``;
  the same clock-skew and age limits as the JSON contract;
* device: ``device.reference`` = ``Device/{id}``; without it, the MQTT topic's device (HTTP: ``unknown``);
* status must be ``final``, ``amended`` or ``preliminary``;
* the value is ``valueQuantity`` with ``system`` = ``http://unitsofmeasure.org`` and a UCUM ``code`` from the table.

A valid Observation becomes a :class:`Reading` exactly like one from the JSON
contract (canonical unit, same hard limits) plus ``loinc`` and ``ucum`` (the
source code and unit), so everything downstream is unchanged. Everything else
becomes a :class:`~ingest.contract.DeadLetter` for ``vitals.dlq`` with one of
these reasons (the JSON contract's reasons where the meaning is the same):

``fhir_invalid`` (the FHIR model rejects the resource), ``fhir_bad_status``,
``fhir_unknown_code``, ``unit_mismatch``, ``fhir_missing_subject``,
``bad_patient_id``, ``fhir_missing_time``, ``bad_ts``, ``ts_in_future``,
``ts_too_old``, ``bad_value``, ``value_out_of_range``, ``bad_device``,
``unsupported_resource`` (not an Observation), ``fhir_missing_resource`` (a Bundle
entry without one), ``fhir_unsupported_request`` (an entry whose request is not
POST/PUT), and for a whole message ``fhir_bad_bundle_type``, ``invalid_json``,
``not_utf8``, ``not_object``, ``payload_too_large``, ``empty_batch``,
``batch_too_large``, ``bad_topic``.

A Bundle of mixed validity is split like a JSON array: valid entries go on, each
invalid one is dead-lettered with its ``index``. This holds for ``transaction``
Bundles too: wearwatch is a stream, not a FHIR store, and does not give them
all-or-nothing semantics.

The code table, both directions, is :mod:`wearwatch.contract.codes` (the reverse
mapping, signal → LOINC/UCUM, :data:`~wearwatch.contract.codes.SIGNAL_CODING`, is
also used by the export, :mod:`tools.export`, and the alerts' evidence, :mod:`alerts.fhir`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

import orjson
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from pydantic import ValidationError

from ingest.contract import (
    DEFAULT_LIMITS,
    HARD_LIMITS,
    DeadLetter,
    Limits,
    Reading,
    _parse_ts,
    load_json_payload,
    parse_topic,
    payload_dead_letter,
)
from wearwatch.contract.codes import LOINC_MAP, LOINC_SYSTEM, SIGNAL_CODING, UCUM_SYSTEM, LoincMapping
from wearwatch.contract.ids import DEVICE_ID_PATTERN, ID_RULE, is_patient_id
from wearwatch.contract.times import format_rfc3339
from wearwatch.contract.units import CANONICAL_UNIT
from wearwatch.errors import InvalidReading

__all__ = [
    "ACCEPTED_STATUS",
    "BUNDLE_TYPES",
    "FHIR_TOPIC_FILTER",
    "FHIR_TOPIC_PREFIX",
    "EntryResult",
    "FhirParse",
    "fhir_topic",
    "http_answer",
    "observation_for",
    "observation_to_reading",
    "operation_outcome",
    "parse_fhir",
    "parse_fhir_payload",
    "parse_fhir_topic",
]

FHIR_TOPIC_PREFIX = "wearwatch/v1/fhir/"
#: MQTT subscription filter for FHIR resources of every vendor and device.
FHIR_TOPIC_FILTER = "wearwatch/v1/fhir/+/+"
_PATIENT_REF_RE = re.compile(r"^(?:.*/)?Patient/([^/]+)$")
_DEVICE_REF_RE = re.compile(rf"^(?:.*/)?Device/({DEVICE_ID_PATTERN[1:-1]})$")

ACCEPTED_STATUS = frozenset({"final", "amended", "preliminary"})
BUNDLE_TYPES = frozenset({"batch", "transaction", "collection"})


def fhir_topic(vendor: str, device_id: str) -> str:
    """The MQTT topic a FHIR-speaking device publishes to.

    >>> fhir_topic("acme", "cgm-7")
    'wearwatch/v1/fhir/acme/cgm-7'
    """
    return f"{FHIR_TOPIC_PREFIX}{vendor}/{device_id}"


def parse_fhir_topic(topic: str) -> tuple[str, str]:
    """``(vendor, device_id)`` from a FHIR topic, or :class:`InvalidReading`.

    >>> parse_fhir_topic("wearwatch/v1/fhir/acme/cgm-7")
    ('acme', 'cgm-7')
    """
    return parse_topic(topic, "fhir")


# ------------------------------------------------------------------------ one Observation
def _model_error(exc: ValidationError) -> InvalidReading:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "resource"
    msg = str(first["msg"]).replace("\n", " ")
    msg = re.sub(r"\s+", " ", msg)[:300]
    if loc == "status":
        return InvalidReading("fhir_bad_status", f"status: {msg}")
    return InvalidReading("fhir_invalid", f"{loc}: {msg}")


def _effective_ms(obs: Any, now_ms: int, max_skew_ms: int, max_age_ms: int) -> int:
    if obs.effectiveInstant is not None:
        when: Any = obs.effectiveInstant
        where = "effectiveInstant"
    elif obs.effectiveDateTime is not None:
        when, where = obs.effectiveDateTime, "effectiveDateTime"
    elif obs.effectivePeriod is not None:
        when, where = obs.effectivePeriod.start, "effectivePeriod.start"
        if when is None:
            raise InvalidReading("fhir_missing_time", "effectivePeriod has no start")
    elif obs.effectiveTiming is not None:
        raise InvalidReading("fhir_missing_time", "effectiveTiming is not supported; use effectiveDateTime, "
                                                  "effectiveInstant or effectivePeriod.start")
    else:
        raise InvalidReading("fhir_missing_time", "no effectiveDateTime, effectiveInstant or effectivePeriod")
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise InvalidReading("bad_ts", f"{where} has no time zone offset")
        ms = int(when.timestamp() * 1000)
    elif isinstance(when, date):
        raise InvalidReading("bad_ts", f"{where} is a date without a time of day")
    else:  # partial dates ("2026-11") stay strings in the model
        raise InvalidReading("bad_ts", f"{where} {str(when)[:40]!r} is not a full date and time")
    return _parse_ts(ms, now_ms, max_skew_ms, max_age_ms)


def _mapping(obs: Any) -> LoincMapping:
    codings = obs.code.coding or []
    loinc = [c.code for c in codings if c.system == LOINC_SYSTEM and c.code]
    for code in loinc:
        if code in LOINC_MAP:
            return LOINC_MAP[code]
    if loinc:
        raise InvalidReading("fhir_unknown_code", f"LOINC {', '.join(loinc)[:80]} is not one of {sorted(LOINC_MAP)}")
    raise InvalidReading("fhir_unknown_code", f"code has no LOINC coding (system {LOINC_SYSTEM})")


def _patient(obs: Any) -> str:
    ref = obs.subject.reference if obs.subject is not None else None
    if not ref:
        raise InvalidReading("fhir_missing_subject", "subject.reference (Patient/{id}) is missing")
    m = _PATIENT_REF_RE.match(ref)
    if m is None:
        raise InvalidReading("bad_patient_id", "subject.reference must be Patient/{id}")
    pid = m.group(1)
    if not is_patient_id(pid):
        raise InvalidReading("bad_patient_id", f"the patient id must be {ID_RULE}")
    return pid


def _device(obs: Any, default: str) -> str:
    ref = obs.device.reference if obs.device is not None else None
    if not ref:
        return default
    m = _DEVICE_REF_RE.match(ref)
    if m is None:
        raise InvalidReading("bad_device", "device.reference must be Device/{id} with an id of [A-Za-z0-9_.:-]")
    return m.group(1)


def _value(obs: Any, mapping: LoincMapping) -> tuple[float, str]:
    q = obs.valueQuantity
    if q is None:
        other = next((f for f in ("valueCodeableConcept", "valueString", "valueBoolean", "valueInteger",
                                  "valueRange", "valueRatio", "valueSampledData", "valueTime",
                                  "valueDateTime", "valuePeriod") if getattr(obs, f, None) is not None), None)
        if other:
            raise InvalidReading("bad_value", f"{other} is not supported; use valueQuantity")
        absent = " (dataAbsentReason given)" if obs.dataAbsentReason is not None else ""
        raise InvalidReading("bad_value", f"valueQuantity is missing{absent}")
    if q.value is None:
        raise InvalidReading("bad_value", "valueQuantity.value is missing")
    if q.comparator is not None:
        raise InvalidReading("bad_value", f"valueQuantity.comparator {q.comparator!r} is not a measurement")
    if q.system != UCUM_SYSTEM or q.code not in mapping.ucum:
        got = f"{q.system or 'no system'}|{q.code or 'no code'}"
        raise InvalidReading(
            "unit_mismatch", f"LOINC {mapping.code} needs UCUM {' or '.join(mapping.ucum)} ({UCUM_SYSTEM}), got {got}"
        )
    value = float(q.value)
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidReading("bad_value", "value is not finite")
    return value, q.code


def observation_to_reading(
    resource: Any, vendor: str, device_id: str, now_ms: int, limits: Limits = DEFAULT_LIMITS,
) -> Reading:
    """One Observation (a JSON object) → a normalized :class:`Reading`, or :class:`InvalidReading`.

    >>> r = observation_to_reading(observation_for("p-1", "glucose", 54.0, 1_700_000_000_000), "acme", "d1",
    ...                            now_ms=1_700_000_001_000)
    >>> (r.patient_id, r.signal, r.value, r.unit, r.loinc, r.ucum, r.ts_ms)
    ('p-1', 'glucose', 54.0, 'mg/dL', '99504-3', 'mg/dL', 1700000000000)
    """
    if not isinstance(resource, dict):
        raise InvalidReading("not_object", f"a resource must be a JSON object, got {type(resource).__name__}")
    rtype = resource.get("resourceType")
    if rtype != "Observation":
        raise InvalidReading("unsupported_resource", f"resourceType {str(rtype)[:40]!r} is not Observation")
    try:
        obs = Observation.model_validate(resource)
    except ValidationError as exc:
        raise _model_error(exc) from None
    except (ValueError, TypeError) as exc:  # fhir-core raises plain errors for some malformed inputs
        raise InvalidReading("fhir_invalid", str(exc)[:300]) from None
    if obs.status not in ACCEPTED_STATUS:
        raise InvalidReading("fhir_bad_status",
                             f"status {str(obs.status)[:30]!r} is not one of {sorted(ACCEPTED_STATUS)}")
    mapping = _mapping(obs)
    raw_value, ucum = _value(obs, mapping)
    pid = _patient(obs)
    ts = _effective_ms(obs, now_ms, limits.max_skew_ms, limits.max_age_ms)
    device = _device(obs, device_id)
    value = raw_value * mapping.factor
    signal = mapping.signal
    lo, hi = HARD_LIMITS[signal]
    if not lo <= value <= hi:
        raise InvalidReading("value_out_of_range", f"{signal} must be within [{lo:g}, {hi:g}] {CANONICAL_UNIT[signal]}")
    return Reading(
        patient_id=pid,
        signal=signal,
        value=value,
        unit=CANONICAL_UNIT[signal],  # type: ignore[arg-type]
        ts_ms=ts,
        vendor=vendor,
        device_id=device,
        received_ms=now_ms,
        source_unit=ucum if mapping.factor != 1.0 else None,
        loinc=mapping.code,
        ucum=ucum,
    )


# ------------------------------------------------------------------------ whole messages
@dataclass(frozen=True, slots=True)
class EntryResult:
    """What became of one resource: a reading or a dead letter (exactly one is set)."""

    index: int | None
    reading: Reading | None = None
    dead: DeadLetter | None = None


@dataclass(frozen=True, slots=True)
class FhirParse:
    """The outcome of one FHIR message (MQTT payload or HTTP body).

    ``kind`` is ``observation`` or ``bundle`` when the message was one of those;
    ``invalid`` when the message as a whole was rejected (``entries`` then holds
    one dead letter with ``index`` None).
    """

    kind: Literal["observation", "bundle", "invalid"]
    entries: list[EntryResult]
    bundle_type: str | None = None

    @property
    def readings(self) -> list[Reading]:
        return [e.reading for e in self.entries if e.reading is not None]

    @property
    def dead(self) -> list[DeadLetter]:
        return [e.dead for e in self.entries if e.dead is not None]


def parse_fhir(
    payload: bytes,
    now_ms: int,
    *,
    vendor: str,
    device_id: str,
    topic: str | None = None,
    expect: Literal["any", "Observation", "Bundle"] = "any",
    limits: Limits = DEFAULT_LIMITS,
) -> FhirParse:
    """Validate and normalize one FHIR message (an Observation or a Bundle of them). Never raises on bad input.

    Every entry of a Bundle ends up as exactly one reading or one dead letter.
    ``topic`` goes into the dead letters (None for HTTP).
    """

    def whole(reason: str, detail: str) -> FhirParse:
        dl = payload_dead_letter(reason, detail, payload, topic[:512] if topic else None, now_ms)
        return FhirParse("invalid", [EntryResult(None, dead=dl)])

    try:
        doc = load_json_payload(payload, limits.max_payload_bytes)
    except InvalidReading as exc:
        return whole(exc.reason, exc.detail)
    if not isinstance(doc, dict):
        return whole("not_object", f"payload must be a FHIR resource (JSON object), got {type(doc).__name__}")
    rtype = doc.get("resourceType")

    if rtype == "Observation" and expect in ("any", "Observation"):
        try:
            reading = observation_to_reading(doc, vendor, device_id, now_ms, limits)
        except InvalidReading as exc:
            return whole(exc.reason, exc.detail)
        return FhirParse("observation", [EntryResult(None, reading=reading)])
    if rtype != "Bundle" or expect == "Observation":
        want = {"any": "an Observation or a Bundle", "Observation": "an Observation", "Bundle": "a Bundle"}[expect]
        return whole("unsupported_resource", f"resourceType {str(rtype)[:40]!r}: expected {want}")

    # the Bundle's own structure, validated by the model without its entries' resources (each entry is
    # validated on its own below, so one bad entry does not reject the others)
    entries = doc.get("entry")
    shell = dict(doc)
    if isinstance(entries, list):
        shell["entry"] = [{k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
                          for e in entries]
    try:
        bundle = Bundle.model_validate(shell)
    except ValidationError as exc:
        err = _model_error(exc)
        return whole("fhir_invalid", f"Bundle {err.detail}")
    except (ValueError, TypeError) as exc:
        return whole("fhir_invalid", f"Bundle: {str(exc)[:300]}")
    if bundle.type not in BUNDLE_TYPES:
        return whole("fhir_bad_bundle_type", f"Bundle.type {str(bundle.type)[:30]!r} is not one of "
                                             f"{sorted(BUNDLE_TYPES)}")
    items = entries if isinstance(entries, list) else []
    if not items:
        return whole("empty_batch", "the Bundle has no entries")
    if len(items) > limits.max_batch:
        return whole("batch_too_large", f"{len(items)} entries > limit {limits.max_batch}")

    out: list[EntryResult] = []
    for i, (entry, model_entry) in enumerate(zip(items, bundle.entry or [], strict=True)):
        resource = entry.get("resource")
        try:
            if resource is None:
                raise InvalidReading("fhir_missing_resource", "the entry has no resource")
            req = model_entry.request
            if req is not None and req.method not in ("POST", "PUT"):
                raise InvalidReading("fhir_unsupported_request", f"request.method {req.method!r}: only POST or PUT")
            reading = observation_to_reading(resource, vendor, device_id, now_ms, limits)
        except InvalidReading as exc:
            body = orjson.dumps(entry).decode("utf-8")
            out.append(EntryResult(i, dead=DeadLetter(
                reason=exc.reason, detail=exc.detail, mqtt_topic=topic[:512] if topic else None, index=i,
                payload=body, received_ms=now_ms)))
            continue
        out.append(EntryResult(i, reading=reading))
    return FhirParse("bundle", out, bundle_type=bundle.type)


def parse_fhir_payload(
    topic: str,
    payload: bytes,
    now_ms: int,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[list[Reading], list[DeadLetter]]:
    """One MQTT message on ``wearwatch/v1/fhir/{vendor}/{device}`` → (readings, dead letters), like
    :func:`ingest.contract.parse_payload`. Never raises on bad input."""
    try:
        vendor, device_id = parse_fhir_topic(topic)
    except InvalidReading as exc:
        return [], [payload_dead_letter(exc.reason, exc.detail, payload, topic[:512], now_ms)]
    res = parse_fhir(payload, now_ms, vendor=vendor, device_id=device_id, topic=topic, limits=limits)
    return res.readings, res.dead


# ------------------------------------------------------------------------ writing FHIR
def observation_for(
    patient_id: str,
    signal: str,
    value: float,
    ts_ms: int,
    *,
    end_ms: int | None = None,
    resource_id: str | None = None,
    device_id: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """An R4 Observation (JSON object) for one value of ``signal`` in its canonical unit.

    With ``end_ms`` the time is ``effectivePeriod`` (an aggregate over [ts, end)), else ``effectiveDateTime``.
    """
    m = SIGNAL_CODING[signal]
    obs: dict[str, Any] = {"resourceType": "Observation"}
    if resource_id:
        obs["id"] = resource_id
    obs.update({
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": m.category}]}],
        "code": {"coding": [{"system": LOINC_SYSTEM, "code": m.code, "display": m.display}], "text": m.display},
        "subject": {"reference": f"Patient/{patient_id}"},
    })
    if end_ms is None:
        obs["effectiveDateTime"] = format_rfc3339(ts_ms)
    else:
        obs["effectivePeriod"] = {"start": format_rfc3339(ts_ms), "end": format_rfc3339(end_ms)}
    if device_id:
        obs["device"] = {"reference": f"Device/{device_id}"}
    obs["valueQuantity"] = {"value": value, "unit": m.ucum[0], "system": UCUM_SYSTEM, "code": m.ucum[0]}
    if note:
        obs["note"] = [{"text": note}]
    return obs


_ISSUE_CODE = {
    "invalid_json": "structure", "not_utf8": "structure", "not_object": "structure", "fhir_invalid": "structure",
    "unsupported_resource": "not-supported", "fhir_bad_bundle_type": "not-supported",
    "fhir_unsupported_request": "not-supported", "payload_too_large": "too-long", "batch_too_large": "too-long",
    "fhir_unknown_code": "code-invalid", "fhir_bad_status": "code-invalid", "fhir_missing_subject": "required",
    "fhir_missing_time": "required", "fhir_missing_resource": "required", "empty_batch": "required",
}
#: the code system of wearwatch's dead-letter reasons in OperationOutcome.issue.details
REASON_SYSTEM = "https://wearwatch.example/fhir/CodeSystem/dead-letter-reason"


def operation_outcome(
    severity: Literal["information", "warning", "error"], diagnostics: str, reason: str | None = None
) -> dict[str, Any]:
    """A one-issue OperationOutcome; ``reason`` is a dead-letter reason (``issue.details``).

    >>> operation_outcome("error", "status 'cancelled' ...", "fhir_bad_status")["issue"][0]["code"]
    'code-invalid'
    """
    issue: dict[str, Any] = {
        "severity": severity,
        "code": "informational" if severity == "information" else _ISSUE_CODE.get(reason or "", "invalid"),
        "diagnostics": diagnostics,
    }
    if reason:
        issue["details"] = {"coding": [{"system": REASON_SYSTEM, "code": reason}], "text": reason}
    doc = {"resourceType": "OperationOutcome", "issue": [issue]}
    OperationOutcome.model_validate(doc)
    return doc


# ------------------------------------------------------------------------ HTTP answers
_HTTP_400 = frozenset({"not_utf8", "invalid_json", "not_object", "fhir_invalid", "unsupported_resource",
                       "fhir_bad_bundle_type", "empty_batch", "batch_too_large", "fhir_missing_resource",
                       "fhir_unsupported_request"})
_REASON_PHRASE = {200: "OK", 201: "Created", 400: "Bad Request", 413: "Content Too Large",
                  422: "Unprocessable Entity"}


def _rejected_status(reason: str) -> int:
    if reason == "payload_too_large":
        return 413
    return 400 if reason in _HTTP_400 else 422


def _accepted_outcome(r: Reading) -> dict[str, Any]:
    return operation_outcome("information", f"accepted: a {r.signal} reading (LOINC {r.loinc}) for vitals.raw")


def http_answer(res: FhirParse) -> tuple[int, dict[str, Any]]:
    """The HTTP status and FHIR body for a parsed request (after Kafka took its records).

    * one Observation: ``201`` and an OperationOutcome (information), or ``4xx`` and an
      OperationOutcome (error) saying why it was dead-lettered: ``400`` for what is not a
      well-formed Observation/Bundle, ``413`` too large, ``422`` for a well-formed resource
      the pipeline cannot use (status, code, unit, subject, time, value);
    * a Bundle: ``200`` and a ``batch-response`` (``transaction-response`` for a transaction)
      Bundle with one entry per entry, in order: ``response.status`` ``201 Created`` or the
      entry's 4xx, and ``response.outcome`` an OperationOutcome;
    * a rejected Bundle as a whole: ``4xx`` and an OperationOutcome.
    """
    if res.kind == "invalid":
        dl = res.dead[0]
        return _rejected_status(dl.reason), operation_outcome("error", dl.detail, dl.reason)
    if res.kind == "observation":
        e = res.entries[0]
        if e.reading is not None:
            return 201, _accepted_outcome(e.reading)
        assert e.dead is not None
        return _rejected_status(e.dead.reason), operation_outcome("error", e.dead.detail, e.dead.reason)
    entries: list[dict[str, Any]] = []
    for e in res.entries:
        if e.reading is not None:
            entries.append({"response": {"status": "201 Created", "outcome": _accepted_outcome(e.reading)}})
        else:
            assert e.dead is not None
            code = _rejected_status(e.dead.reason)
            entries.append({"response": {"status": f"{code} {_REASON_PHRASE[code]}",
                                         "outcome": operation_outcome("error", e.dead.detail, e.dead.reason)}})
    rtype = "transaction-response" if res.bundle_type == "transaction" else "batch-response"
    doc = {"resourceType": "Bundle", "type": rtype, "entry": entries}
    Bundle.model_validate(doc)
    return 200, doc
