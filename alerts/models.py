"""Alert records: what goes on Kafka ``alerts`` (key = patient_id), the source of truth.

Every state change of an alert is one :class:`AlertEvent`. ``alert_id`` is a
deterministic hash of (patient, kind, onset), so a reprocessed reading that
raises the same episode again yields the same id, and ``event_id`` (alert id,
state, revision) lets every consumer drop duplicates.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict

from detectors.base import Finding

__all__ = ["AlertCause", "AlertEvent", "AlertNote", "AlertRoute", "AlertState", "alert_id_for"]

AlertState = Literal["open", "updated", "acknowledged", "resolved"]
#: Who an event is delivered to: the ward's nurses, device technicians, or (escalated) the charge nurse.
AlertRoute = Literal["clinical", "device", "charge_nurse"]
#: Why an event was emitted (see :mod:`alerts.lifecycle`).
AlertCause = Literal[
    "onset",  # a new alert opened
    "new_episode",  # another detector episode of the same kind while the alert is active
    "priority_up",  # an active episode of higher priority
    "priority_down",  # the highest-priority episode cleared, a lower one is still active
    "reopened",  # a new onset within the hold-off after resolution: same alert id
    "renotify",  # unacknowledged: reminder at the priority's interval
    "escalated",  # HIGH and unacknowledged too long: goes to the charge nurse
    "acknowledged",
    "snoozed",
    "snooze_ended",
    "cleared",  # every detector episode of the alert ended
    "note",  # a nurse added a note (state unchanged)
    "discharged",  # the patient was discharged: the alert resolved with them
]


def alert_id_for(patient_id: str, kind: str, onset_ms: int) -> str:
    """Deterministic alert id for one episode.

    >>> alert_id_for("p1", "glucose_urgent_low", 1_700_000_000_000)
    'al-7c35ac37f0732fad6862'
    """
    h = hashlib.sha256(f"{patient_id}\x1f{kind}\x1f{onset_ms}".encode()).hexdigest()
    return f"al-{h[:20]}"


class AlertNote(BaseModel):
    """A note a nurse wrote on an alert (part of its lifecycle: :meth:`alerts.lifecycle.AlertBook.note`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    by: str
    ts_ms: int
    text: str


class AlertEvent(BaseModel):
    """One state change of one alert."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    alert_id: str
    revision: int = 0
    state: AlertState
    patient_id: str
    signal: str
    kind: str
    priority: Literal["high", "medium", "low"]
    audience: Literal["clinical", "device"]
    source: str
    message: str
    ts_ms: int
    onset_ms: int
    emitted_ms: int
    explanation: dict[str, Any]
    # --- lifecycle fields (added compatibly: all have defaults) -------------
    #: the patient's ward from the enrollment (None when not known to the emitter)
    ward: str | None = None
    #: delivery route; None for events made without a lifecycle (``from_finding``)
    audience_route: AlertRoute | None = None
    #: why this event was emitted
    cause: AlertCause | None = None
    #: True if the route should be alerted (paged) by this event, False for informational changes
    notify: bool = True
    #: how many notifying events this alert has produced so far, this one included
    notified: int = 0
    #: True once a HIGH alert stayed unacknowledged past the escalation delay (sticky for the alert)
    escalated: bool = False
    acked_by: str | None = None
    acked_ms: int | None = None
    snoozed_until_ms: int | None = None
    snoozed_by: str | None = None
    #: the alert's notes, oldest first (the most recent ``alerts.lifecycle.NOTES_KEPT``)
    notes: tuple[AlertNote, ...] = ()

    @property
    def event_id(self) -> str:
        return f"{self.alert_id}:{self.revision}:{self.state}"

    @property
    def record_key(self) -> bytes:
        """The event's key on Kafka ``alerts`` (compact,delete): its :attr:`event_id`, one key per event, so an
        erasure removes each of the patient's events with a tombstone of its key, and a replayed duplicate
        (the same event sent again) is compacted into one. The record goes to the partition the patient's id
        hashes to (:func:`wearwatch.partitioning.patient_partition`)."""
        return self.event_id.encode()

    @classmethod
    def from_finding(
        cls, patient_id: str, finding: Finding, emitted_ms: int, *, revision: int = 0
    ) -> AlertEvent:
        return cls(
            alert_id=alert_id_for(patient_id, finding.kind, finding.onset_ms),
            revision=revision,
            state="resolved" if finding.cleared else "open",
            patient_id=patient_id,
            signal=finding.signal,
            kind=finding.kind,
            priority=finding.priority.value,
            audience=finding.audience.value,
            source=finding.source,
            message=finding.message,
            ts_ms=finding.ts_ms,
            onset_ms=finding.onset_ms,
            emitted_ms=emitted_ms,
            explanation=finding.explanation(),
            audience_route=finding.audience.value,
        )

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump())

    @classmethod
    def from_json(cls, data: bytes | str) -> AlertEvent:
        return cls.model_validate_json(data)
