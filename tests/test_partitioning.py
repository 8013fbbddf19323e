"""Alert events and audit records carry a key per record, and an alert event still goes to the partition of its
patient: the partition every producer (kafka-python, aiokafka, Faust) gives the patient's id as key."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from alerts.models import AlertEvent
from console.models import AuditRecord
from streams.processing import Outputs
from wearwatch.partitioning import alert_record_key, audit_record_key, patient_partition

PATIENTS = [f"p-{i:04d}" for i in range(500)] + ["X-run-1", "Y-run-1", "ward-3B-bed-12", "ü-utf8"]


@pytest.mark.parametrize("partitions", [1, 3, 8, 12])
def test_patient_partition_is_the_partition_of_the_patient_key(partitions: int) -> None:
    ordered = list(range(partitions))
    partitioner = DefaultPartitioner()
    got = [patient_partition(pid, partitions) for pid in PATIENTS]
    assert got == [partitioner(pid.encode(), ordered, ordered) for pid in PATIENTS]
    if partitions > 1:  # spread over the partitions, not a constant
        assert len(set(got)) == partitions


def test_patient_partition_refuses_no_partitions() -> None:
    with pytest.raises(ValueError):
        patient_partition("p-0001", 0)


def event(pid: str, revision: int, state: str) -> AlertEvent:
    return AlertEvent.model_validate({
        "alert_id": f"al-{pid}", "revision": revision, "patient_id": pid, "ward": "3B", "ts_ms": 1, "onset_ms": 1,
        "emitted_ms": 1, "state": state, "kind": "glucose_low", "signal": "glucose", "priority": "medium",
        "audience": "clinical", "source": "rule", "message": "Low glucose", "explanation": {}})


def test_alert_records_are_keyed_per_event() -> None:
    events = [event("p-1", 0, "open"), event("p-1", 1, "acknowledged"), event("p-1", 2, "resolved")]
    out = Outputs(events=events)
    keys = [k for k, _ in out.alerts]
    assert keys == [b"al-p-1:0:open", b"al-p-1:1:acknowledged", b"al-p-1:2:resolved"]
    assert len(set(keys)) == 3
    # the erasure scan finds the same key from the record's JSON
    assert [alert_record_key(AlertEvent.from_json(v).model_dump()) for _, v in out.alerts] == keys


def test_audit_records_are_keyed_per_record() -> None:
    a = AuditRecord(ts_ms=1, actor="nurse-7", action="login")
    b = AuditRecord(ts_ms=2, actor="nurse-7", action="login")
    assert a.record_key == a.id.encode() != b.record_key
    assert audit_record_key(a.model_dump()) == a.record_key
