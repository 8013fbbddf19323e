"""An upgrade across a change of the stored state format, on the real stack.

A worker writing the plain pickle of earlier versions (``WEARWATCH_WORKER_STATE_VERSION=0``, the first
phase of the upgrade) is SIGKILLed mid-stream; its successor writes the current version and takes the
patients over from the changelog the first one left. What must hold: no alert lost and none invented
(the alerts on Kafka are what the detectors give offline), the changelog holds states of both versions,
and the newest state of every patient is in the current version and loads.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from typing import Any

import pytest

from alerts.models import AlertEvent
from streams.state_codec import WRITTEN_BY_DEFAULT, decode_state, stored_version
from tests.integration.conftest import consume_all, free_port
from tests.integration.test_pipeline import TIME_DRIVEN, offline_alerts, publish
from tests.integration.test_worker_faults import _messages, _readings_processed
from wearwatch.config import Settings
from wearwatch.retention import changelog_topic

pytestmark = pytest.mark.stack


def test_states_written_by_the_first_phase_are_taken_over_by_the_current_format(
    settings: Settings, spawn: Any, run_id: str,
) -> None:
    s = settings.model_copy(update={"worker_batch_size": 50})
    gateway = spawn("gateway", s, "gateway", "--stats-every", "2")
    first = spawn("worker-v0", s.model_copy(update={"worker_state_version": 0}), "worker")
    gateway.wait_log("gateway up")
    first.wait_log("worker assigned", timeout=90)

    messages, per_patient = _messages(run_id, copies=2)
    n_readings = sum(len(r) for r in per_patient.values())
    sender = threading.Thread(target=publish, args=(s, messages, 15.0))
    sender.start()
    # the first worker commits some of the stream (so it has stored states), then is killed
    deadline = time.monotonic() + 120
    while _readings_processed(first.log_text()) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3 * s.worker_commit_interval_s)
    first.stop(signal.SIGKILL)
    processed_before_kill = _readings_processed(first.log_text())
    assert 0 < processed_before_kill < n_readings, "the kill must land mid-stream"
    second = spawn("worker-v1", s.model_copy(update={"web_port": free_port()}), "worker")
    sender.join(120)

    from tests.integration.test_service_faults import check_raw  # (that module imports test_worker_faults)

    order, _ = check_raw(s, per_patient)
    assert sum(len(rows) for rows in order.values()) == n_readings
    expected = Counter((pid, *f) for pid, rows in order.items() for f in offline_alerts(pid, rows))

    def ours(rec: Any) -> int:
        return int(AlertEvent.from_json(rec.value).patient_id in per_patient)

    events = [rec for rec in consume_all(s, s.topic_alerts, expect=len(expected), idle_s=6.0, timeout_s=180,
                                         count=ours) if ours(rec)]
    distinct: dict[str, AlertEvent] = {}
    for rec in events:
        ev = AlertEvent.from_json(rec.value)
        distinct.setdefault(ev.event_id, ev)
    got = Counter((e.patient_id, e.kind, e.alert_id, e.state, e.cause) for e in distinct.values()
                  if e.cause not in TIME_DRIVEN)
    assert got == expected  # none lost, none invented
    assert _readings_processed(second.log_text()) > 0

    # the changelog: the first phase's plain pickles, then the current version; each patient's newest loads
    records = [r for r in consume_all(s, changelog_topic(s), idle_s=3.0) if r.value is not None]
    versions = Counter(stored_version(r.value) for r in records)
    assert versions[0] > 0 and versions[WRITTEN_BY_DEFAULT] > 0 and set(versions) == {0, WRITTEN_BY_DEFAULT}
    newest = {r.key: r.value for r in records}
    assert {k.decode() for k in newest} == set(per_patient)
    assert {stored_version(v) for v in newest.values()} == {WRITTEN_BY_DEFAULT}
    for key, blob in newest.items():
        assert decode_state(blob).book.patient_id == key.decode()
