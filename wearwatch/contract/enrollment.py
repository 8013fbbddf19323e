"""The enrolment record: who is monitored, in which ward, with which detector overrides.

Enrolment lives in the compacted Kafka topic ``enrollment`` (one partition, key =
patient id, value = :class:`EnrollmentRecord` as JSON). Compaction keeps each
patient's latest record, so the topic *is* the current roster; a tombstone (a
record with no value) removes a patient altogether (erasure). Every gateway, worker
and console follows it from the beginning and applies each change within seconds,
without a restart.

A discharge is the same record with ``status`` ``discharged``: the worker closes the
patient's open alerts (cause ``discharged``) and stops new ones; readings for the
patient from then on go to ``vitals.dlq`` with reason :data:`NOT_ENROLLED`.

>>> r = EnrollmentRecord(patient_id="p-1", ward="3B", overrides={"glucose_low_mgdl": 75}, since_ms=0)
>>> r.status, r.enrolled
('enrolled', True)
>>> EnrollmentRecord.from_json(r.to_json()) == r
True
>>> r.discharged(5).status
'discharged'
"""

from __future__ import annotations

from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wearwatch.contract.ids import PatientId, WardId

__all__ = ["NOT_ENROLLED", "EnrollmentRecord", "EnrollmentStatus", "decode_enrollment"]

#: dead-letter reason of a reading for a patient who is discharged (or never enrolled, when enrolment is required)
NOT_ENROLLED = "not_enrolled"

EnrollmentStatus = Literal["enrolled", "discharged"]


class EnrollmentRecord(BaseModel):
    """One patient's enrolment: the value of an ``enrollment`` record (key = ``patient_id``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    patient_id: PatientId
    ward: WardId
    #: detector settings that differ for this patient (``detectors.config.DetectorConfig`` field names)
    overrides: dict[str, float | int | bool] = Field(default_factory=dict)
    status: EnrollmentStatus = "enrolled"
    #: when the current status began (epoch milliseconds)
    since_ms: int = Field(ge=0)

    @property
    def enrolled(self) -> bool:
        return self.status == "enrolled"

    def discharged(self, now_ms: int) -> EnrollmentRecord:
        """The same enrolment, discharged at ``now_ms``."""
        return self.model_copy(update={"status": "discharged", "since_ms": now_ms})

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump())

    @classmethod
    def from_json(cls, value: bytes | str) -> EnrollmentRecord:
        return cls.model_validate_json(value)


def decode_enrollment(value: bytes | None) -> EnrollmentRecord | None:
    """A record's value as an :class:`EnrollmentRecord`; None for a tombstone.

    Raises ValueError for a malformed value (the follower skips and counts it).

    >>> decode_enrollment(None) is None
    True
    """
    if value is None:
        return None
    try:
        return EnrollmentRecord.from_json(value)
    except ValidationError as exc:
        raise ValueError(f"malformed enrollment record: {exc.error_count()} error(s)") from exc
