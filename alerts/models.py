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

__all__ = ["AlertEvent", "AlertState", "alert_id_for"]

AlertState = Literal["open", "updated", "acknowledged", "resolved"]


def alert_id_for(patient_id: str, kind: str, onset_ms: int) -> str:
    """Deterministic alert id for one episode.

    >>> alert_id_for("p1", "glucose_urgent_low", 1_700_000_000_000)
    'al-7c35ac37f0732fad6862'
    """
    h = hashlib.sha256(f"{patient_id}\x1f{kind}\x1f{onset_ms}".encode()).hexdigest()
    return f"al-{h[:20]}"


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

    @property
    def event_id(self) -> str:
        return f"{self.alert_id}:{self.revision}:{self.state}"

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
        )

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump())

    @classmethod
    def from_json(cls, data: bytes | str) -> AlertEvent:
        return cls.model_validate_json(data)
