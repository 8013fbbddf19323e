"""Everything wearwatch holds about one patient, as one FHIR R4 Bundle (a subject-access request).

``wearwatch patients export ID [--out FILE]`` gathers, by the patient's real id:

* the **enrolment** from the ``enrollment`` topic: a ``Patient`` (the id only: wearwatch keeps no name,
  birth date or address) and an ``EpisodeOfCare`` (status ``active`` while enrolled, ``finished`` once
  discharged; the ward as its type's text; the detector overrides in the text);
* every **alert with its lifecycle** from Kafka ``alerts`` (the source of truth, kept
  ``WEARWATCH_RETENTION_ALERTS_DAYS``): one ``DetectedIssue`` per alert event, all with the alert's id and
  ``meta.versionId`` = the event's revision, oldest first — opened, updated, acknowledged (by whom),
  snoozed, noted, resolved (cleared or discharged), the mapping of :mod:`alerts.fhir`;
* the **1-minute series** from InfluxDB (queried by the patient's pseudonym, over the whole
  retention ``WEARWATCH_INFLUX_RETENTION_DAYS``): one ``Observation`` per closed minute and signal, as
  ``wearwatch export fhir`` writes them.

The Bundle's type is ``collection`` (a document to hand over, not a request to replay). Readings
themselves are not kept beyond ``vitals.raw``'s few days of transit and are not part of it;
dead letters are payloads as devices sent them, looked up per vendor (``wearwatch dlq``).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.episodeofcare import EpisodeOfCare

from alerts.fhir import detected_issue
from alerts.models import AlertEvent
from tools.export import export_bundle, fetch_minutes
from wearwatch.config import Settings
from wearwatch.contract.enrollment import EnrollmentRecord
from wearwatch.contract.times import format_rfc3339
from wearwatch.enrollment_topic import read_enrollment
from wearwatch.partitioning import patient_partition
from wearwatch.privacy import pseudonym
from wearwatch.transport import read_to_end

__all__ = ["alert_events_of", "episode_of_care", "subject_access_bundle"]

_DAY_MS = 86_400_000
#: codes of the episode's type (the monitoring programme) and of the ward in it
EPISODE_SYSTEM = "urn:wearwatch:episode"


def alert_events_of(settings: Settings, patient_id: str, timeout_s: float = 60.0) -> list[AlertEvent]:
    """Every alert event of the patient still in Kafka ``alerts``, in order (their partition, read to its end)."""
    mark = b'"patient_id":' + orjson.dumps(patient_id)
    # every event of the patient is in the partition their id hashes to; its key is the event's own
    records = read_to_end(settings, settings.topic_alerts, lambda n: patient_partition(patient_id, n),
                          client_id="wearwatch-export", timeout_s=timeout_s)
    events = (AlertEvent.from_json(r.value) for r in records if r.value is not None and mark in r.value)
    return [e for e in events if e.patient_id == patient_id]


def episode_of_care(record: EnrollmentRecord) -> dict[str, Any]:
    """The enrolment as an R4 ``EpisodeOfCare`` (validated)."""
    overrides = ", ".join(f"{k}={v}" for k, v in sorted(record.overrides.items())) or "none"
    period: dict[str, str] = ({"start": format_rfc3339(record.since_ms)} if record.enrolled
                              else {"end": format_rfc3339(record.since_ms)})
    doc: dict[str, Any] = {
        "resourceType": "EpisodeOfCare",
        "id": "enrolment",
        "status": "active" if record.enrolled else "finished",
        "type": [{"coding": [{"system": EPISODE_SYSTEM, "code": "remote-monitoring"}],
                  "text": f"wearwatch remote monitoring, ward {record.ward}"}],
        "patient": {"reference": f"Patient/{record.patient_id}"},
        "period": period,
        "text": {"status": "generated",
                 "div": f'<div xmlns="http://www.w3.org/1999/xhtml">ward {record.ward}; {record.status}; '
                        f"detector overrides: {overrides}</div>"},
    }
    EpisodeOfCare.model_validate(doc)
    return doc


def subject_access_bundle(settings: Settings, patient_id: str, now_ms: int | None = None) -> dict[str, Any]:
    """The whole Bundle for ``patient_id`` (see the module docs)."""
    settings.require("influx_token", "pseudonym_key")
    assert settings.pseudonym_key is not None
    now = int(time.time() * 1000) if now_ms is None else now_ms
    entries: list[dict[str, Any]] = [{"fullUrl": f"urn:wearwatch:patient:{patient_id}",
                                      "resource": {"resourceType": "Patient", "id": patient_id}}]
    record = read_enrollment(settings).get(patient_id)
    if record is not None:
        entries.append({"fullUrl": f"urn:wearwatch:episode:{patient_id}", "resource": episode_of_care(record)})
    seen: set[str] = set()
    for ev in alert_events_of(settings, patient_id):
        if ev.event_id in seen:  # at-least-once: an event written twice is the same event
            continue
        seen.add(ev.event_id)
        entries.append({"fullUrl": f"urn:wearwatch:detectedissue:{ev.alert_id}", "resource": detected_issue(ev)})
    start = now - int(settings.influx_retention_days * _DAY_MS)
    rows = fetch_minutes(settings, patient_id, start, now + 1)
    minutes = export_bundle(patient_id, rows, id_prefix=pseudonym(settings.pseudonym_key, patient_id),
                            bundle_type="collection")
    entries.extend(minutes["entry"])
    doc: dict[str, Any] = {"resourceType": "Bundle", "type": "collection", "timestamp": format_rfc3339(now),
                           "entry": entries}
    Bundle.model_validate(doc)
    return doc
