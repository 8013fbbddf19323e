"""Alerts out as FHIR R4 ``DetectedIssue`` resources.

Why DetectedIssue and not Flag
------------------------------
An alert is a *finding about the patient's data* with a severity, a reason and
the data it rests on. ``DetectedIssue`` ("an actual or potential clinical issue
… detected by a system, e.g. a monitoring application") has exactly those
elements: ``severity`` (high | moderate | low), ``identified[x]``, ``detail``
(free-text explanation), ``evidence`` (codes and references to the supporting
resources) and ``mitigation`` (what was done about it, by whom, when). ``Flag``
is a standing "be aware of this" banner (``status`` active/inactive, a
``period``, a ``code``) with no severity, no evidence and no detail: the
priority, the explanation and the readings behind an alert would all have to go
into extensions.

The mapping of one :class:`~alerts.models.AlertEvent` (the alert's latest event):

==========================  =================================================================================
DetectedIssue               from the alert
==========================  =================================================================================
``id``, ``identifier``      ``alert_id`` (deterministic, stable over the lifecycle); ``meta.versionId`` = revision
``status``                  lifecycle state, see :data:`FHIR_STATUS` (plus the state itself in an extension)
``severity``                priority: high → ``high``, medium → ``moderate``, low → ``low``
``code``                    the alert kind (system :data:`KIND_SYSTEM`), text = the message
``patient``                 ``Patient/{patient_id}``
``identifiedDateTime``      ``onset_ms`` (when the detector first saw the episode)
``detail``                  the message and the explanation (rule or model, value, threshold or baseline,
                            window, trend, contributing signals)
``evidence``                per signal involved: its LOINC code; for the alert's own signal a reference to a
                            contained Observation with the value (UCUM) and the reading's time
``mitigation``              ``acknowledged`` (by, when), ``snoozed`` (until), ``resolved``
``author``                  the wearwatch detector (rule or model), as a display-only Device reference
==========================  =================================================================================

R4's DetectedIssue status is the ObservationStatus value set (there is no
"resolved"/"mitigated" status before R5), so the lifecycle maps as:
``open`` → ``preliminary`` (raised, not reviewed), ``updated`` → ``amended``
(changed since it was raised — new episode, higher priority or re-opened — and
to be reviewed again), ``acknowledged`` → ``final`` (reviewed by a nurse; the
mitigation says who), ``resolved`` → ``final`` with a ``resolved`` mitigation.
The exact lifecycle state is also in the extension :data:`STATE_EXTENSION`.

Evidence uses the signal's canonical LOINC coding (:data:`wearwatch.contract.codes.SIGNAL_CODING`,
glucose as CGM mg/dL): the alert carries the value in the canonical unit, not
the code the reading arrived with.
"""

from __future__ import annotations

import time
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.detectedissue import DetectedIssue

from alerts.models import AlertEvent, AlertState
from wearwatch.contract.codes import LOINC_SYSTEM, SIGNAL_CODING, UCUM_SYSTEM
from wearwatch.contract.times import format_rfc3339

__all__ = [
    "FHIR_STATUS",
    "KIND_SYSTEM",
    "SEVERITY",
    "STATE_EXTENSION",
    "detected_issue",
    "explanation_text",
    "search_bundle",
]

_BASE = "https://wearwatch.example/fhir"
KIND_SYSTEM = f"{_BASE}/CodeSystem/alert-kind"
ACTION_SYSTEM = f"{_BASE}/CodeSystem/alert-action"
ALERT_ID_SYSTEM = f"{_BASE}/alert-id"
STATE_EXTENSION = f"{_BASE}/StructureDefinition/alert-state"

FHIR_STATUS: dict[AlertState, str] = {
    "open": "preliminary",
    "updated": "amended",
    "acknowledged": "final",
    "resolved": "final",
}
SEVERITY: dict[str, str] = {"high": "high", "medium": "moderate", "low": "low"}
#: every status DetectedIssue can have in R4 (the ObservationStatus value set)
R4_STATUSES = frozenset(
    {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"}
)


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def explanation_text(ev: AlertEvent) -> str:
    """The alert's message and explanation as one readable sentence (``DetectedIssue.detail``).

    >>> from alerts.models import AlertEvent
    >>> ev = AlertEvent(alert_id="al-00000000000000000000", state="open", patient_id="p1", signal="glucose",
    ...                 kind="glucose_urgent_low", priority="high", audience="clinical", source="rule",
    ...                 message="glucose 52 mg/dL below 54", ts_ms=0, onset_ms=0, emitted_ms=0,
    ...                 explanation={"source": "rule", "value": 52.0, "threshold": 54.0, "window_s": 900.0})
    >>> explanation_text(ev)
    'glucose 52 mg/dL below 54 (rule; value 52 mg/dL; threshold 54 mg/dL; window 900 s)'
    """
    x = ev.explanation
    unit = SIGNAL_CODING[ev.signal].ucum[0] if ev.signal in SIGNAL_CODING else ""
    unit = {"/min": "bpm", "{steps}": "steps"}.get(unit, unit)
    parts = [str(x.get("source", ev.source))]
    u = f" {unit}" if unit else ""
    for key, label, suffix in (
        ("value", "value", u),
        ("threshold", "threshold", u),
        ("baseline", "baseline", u),
        ("window_s", "window", " s"),
        ("trend_per_min", "trend", f"{u}/min"),
    ):
        if x.get(key) is not None:
            parts.append(f"{label} {_num(x[key])}{suffix}")
    contributing = [c for c in x.get("contributing") or [] if c]
    if contributing:
        parts.append("contributing: " + ", ".join(map(str, contributing)))
    known = {"source", "value", "threshold", "baseline", "window_s", "trend_per_min", "contributing", "message",
             "onset_ms"}
    for key in sorted(set(x) - known):
        parts.append(f"{key} {_num(x[key])}")
    return f"{ev.message} ({'; '.join(parts)})"


def _coding(signal: str) -> dict[str, Any] | None:
    m = SIGNAL_CODING.get(signal)
    if m is None:
        return None
    return {"system": LOINC_SYSTEM, "code": m.code, "display": m.display}


def _evidence(ev: AlertEvent) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(contained Observations, evidence entries)."""
    contained: list[dict[str, Any]] = []
    evidence: list[dict[str, Any]] = []
    value = ev.explanation.get("value")
    coding = _coding(ev.signal)
    if coding is not None:
        entry: dict[str, Any] = {"code": [{"coding": [coding], "text": ev.signal}]}
        if isinstance(value, (int, float)):
            m = SIGNAL_CODING[ev.signal]
            contained.append({
                "resourceType": "Observation",
                "id": "reading",
                "status": "final",
                "code": {"coding": [coding]},
                "subject": {"reference": f"Patient/{ev.patient_id}"},
                "effectiveDateTime": format_rfc3339(ev.ts_ms),
                "valueQuantity": {"value": float(value), "unit": m.ucum[0], "system": UCUM_SYSTEM, "code": m.ucum[0]},
            })
            entry["detail"] = [{"reference": "#reading", "display": f"{ev.signal} {_num(float(value))} {m.ucum[0]}"}]
        evidence.append(entry)
    seen = {ev.signal}
    for other in ev.explanation.get("contributing") or []:
        c = _coding(str(other))
        if c is not None and other not in seen:
            seen.add(str(other))
            evidence.append({"code": [{"coding": [c], "text": str(other)}]})
    return contained, evidence


def _mitigations(ev: AlertEvent) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def action(code: str, when_ms: int | None, by: str | None, text: str) -> None:
        m: dict[str, Any] = {"action": {"coding": [{"system": ACTION_SYSTEM, "code": code}], "text": text}}
        if when_ms is not None:
            m["date"] = format_rfc3339(when_ms)
        if by:
            m["author"] = {"type": "Practitioner", "display": by}
        out.append(m)

    if ev.acked_by is not None or ev.acked_ms is not None:
        action("acknowledged", ev.acked_ms, ev.acked_by, "acknowledged by a nurse")
    if ev.snoozed_until_ms is not None:
        action("snoozed", None, ev.snoozed_by, f"snoozed until {format_rfc3339(ev.snoozed_until_ms)}")
    if ev.state == "resolved":
        action("resolved", ev.ts_ms, None, "resolved: every detector episode of the alert cleared")
    return out


def detected_issue(ev: AlertEvent) -> dict[str, Any]:
    """The alert (its latest event) as an R4 DetectedIssue, validated by the ``fhir.resources`` model."""
    contained, evidence = _evidence(ev)
    doc: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "id": ev.alert_id,
        "meta": {"versionId": str(ev.revision), "lastUpdated": format_rfc3339(ev.emitted_ms)},
    }
    if contained:
        doc["contained"] = contained
    doc.update({
        "extension": [{"url": STATE_EXTENSION, "valueCode": ev.state}],
        "identifier": [{"system": ALERT_ID_SYSTEM, "value": ev.alert_id}],
        "status": FHIR_STATUS[ev.state],
        "code": {"coding": [{"system": KIND_SYSTEM, "code": ev.kind}], "text": ev.message},
        "severity": SEVERITY[ev.priority],
        "patient": {"reference": f"Patient/{ev.patient_id}"},
        "identifiedDateTime": format_rfc3339(ev.onset_ms),
        "author": {"type": "Device", "display": f"wearwatch {ev.source} detector"},
        "detail": explanation_text(ev),
    })
    if evidence:
        doc["evidence"] = evidence
    mitigations = _mitigations(ev)
    if mitigations:
        doc["mitigation"] = mitigations
    DetectedIssue.model_validate(doc)
    return doc


def search_bundle(
    events: list[AlertEvent], self_url: str, base_url: str, *, note: str | None = None
) -> dict[str, Any]:
    """A ``searchset`` Bundle of the alerts as DetectedIssues (``note``: an OperationOutcome entry, mode outcome)."""
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{base_url}/DetectedIssue/{ev.alert_id}", "resource": detected_issue(ev),
         "search": {"mode": "match"}}
        for ev in events
    ]
    if note:
        entries.append({
            "resource": {"resourceType": "OperationOutcome",
                         "issue": [{"severity": "information", "code": "informational", "diagnostics": note}]},
            "search": {"mode": "outcome"},
        })
    doc: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": format_rfc3339(int(time.time() * 1000)),
        "total": len(events),
        "link": [{"relation": "self", "url": self_url}],
        "entry": entries,
    }
    Bundle.model_validate(doc)
    return doc
