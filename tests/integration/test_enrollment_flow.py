"""The live enrolment on the real stack: a patient the worker already monitors is enrolled with a ward and an
override, both take effect without a restart; a discharge closes the open alert, and the patient's later
readings go to ``vitals.dlq`` with reason ``not_enrolled``; ``wearwatch patients export`` then holds all of it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from alerts.models import AlertEvent
from ingest.contract import vitals_topic
from tests.integration.conftest import ROOT, consume_all
from tests.integration.test_pipeline import MIN, publish
from wearwatch.config import Settings
from wearwatch.contract.enrollment import NOT_ENROLLED, EnrollmentRecord

pytestmark = pytest.mark.stack


def patients(settings: Settings, *args: str) -> str:
    """Run ``wearwatch patients ARGS`` with the test's settings; its standard output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEARWATCH_")}
    env.update(settings.env())
    out = subprocess.run([sys.executable, "-m", "wearwatch.cli", "patients", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def alert_events(settings: Settings, expect: int) -> list[AlertEvent]:
    return [AlertEvent.from_json(r.value)
            for r in consume_all(settings, settings.topic_alerts, expect=expect, idle_s=1.0, timeout_s=60)]


def glucose(pid: str, ts: int, value: float) -> tuple[str, bytes]:
    row = {"patient_id": pid, "signal": "glucose", "value": value, "unit": "mg/dL", "ts": ts}
    return vitals_topic("sim", f"{pid}-cgm"), orjson.dumps(row)


def test_enrol_live_then_discharge_and_export(settings: Settings, spawn: Any, run_id: str, tmp_path: Path) -> None:
    gateway = spawn("gateway", settings, "gateway", "--stats-every", "2")
    worker = spawn("worker", settings, "worker")
    gateway.wait_log("gateway up")
    pid = f"E-{run_id}"
    start = int(time.time() * 1000) - 30 * MIN

    # monitored before anyone enrolled them: ward unassigned, default thresholds (100 mg/dL is no alert)
    publish(settings, [glucose(pid, start, 100.0), glucose(pid, start + 5 * MIN, 100.0)])
    worker.wait_log("'readings': 2,", timeout=90)
    assert consume_all(settings, settings.topic_alerts, idle_s=0.5, timeout_s=5) == []

    # enrolled live: ward 3B, urgent low from 110 mg/dL for this patient
    out = patients(settings, "enrol", pid, "--ward", "3B", "--overrides", '{"glucose_urgent_low_mgdl": 110}')
    assert f"{pid} enrolled in ward 3B" in out
    worker.wait_log("enrollment: 1 change(s) applied to patient states, 0 alert(s) closed", timeout=30)
    listed = patients(settings, "list", "--ward", "3B")
    assert pid in listed and '{"glucose_urgent_low_mgdl":110}' in listed

    publish(settings, [glucose(pid, start + 10 * MIN, 100.0)])
    opened = alert_events(settings, 1)
    assert [(e.kind, e.state, e.ward, e.priority) for e in opened] == [("glucose_urgent_low", "open", "3B", "high")]
    state = consume_all(settings, settings.topic_alert_state, expect=1, idle_s=0.5, timeout_s=30)
    assert orjson.loads(state[-1].value)["ward"] == "3B"

    # discharged: the open alert resolves with the discharge, nothing new opens
    assert f"{pid} discharged from ward 3B" in patients(settings, "discharge", pid)
    events = alert_events(settings, 2)
    assert [(e.alert_id, e.state, e.cause, e.notify) for e in events[1:]] == [
        (opened[0].alert_id, "resolved", "discharged", False)]
    assert patients(settings, "list").count(pid) == 0  # only enrolled patients are listed
    assert "discharged" in patients(settings, "list", "--all")

    publish(settings, [glucose(pid, start + 15 * MIN, 40.0), glucose(pid, start + 20 * MIN, 38.0)])
    dead = [orjson.loads(r.value) for r in consume_all(settings, settings.topic_dlq, expect=2, idle_s=2.0,
                                                        timeout_s=60)]
    assert [(d["reason"], orjson.loads(d["payload"])["patient_id"]) for d in dead] == [(NOT_ENROLLED, pid)] * 2
    assert len(alert_events(settings, 2)) == 2  # no alert for 40 mg/dL: the patient is not monitored any more

    roster = consume_all(settings, settings.topic_enrollment, expect=2, idle_s=0.5, timeout_s=10)
    recs = [EnrollmentRecord.from_json(r.value) for r in roster]
    assert [(r.patient_id, r.status, r.ward) for r in recs] == [(pid, "enrolled", "3B"), (pid, "discharged", "3B")]

    # subject access: everything held about the patient in one Bundle (minutes land in InfluxDB within seconds)
    out_file = tmp_path / "export.json"
    deadline = time.monotonic() + 60
    while True:
        patients(settings, "export", pid, "--out", str(out_file))
        bundle = orjson.loads(out_file.read_bytes())
        by_type: dict[str, list[dict[str, Any]]] = {}
        for e in bundle["entry"]:
            by_type.setdefault(e["resource"]["resourceType"], []).append(e["resource"])
        if len(by_type.get("Observation", [])) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert bundle["type"] == "collection"
    assert sorted(by_type) == ["DetectedIssue", "EpisodeOfCare", "Observation", "Patient"]
    assert [p["id"] for p in by_type["Patient"]] == [pid]
    episode = by_type["EpisodeOfCare"][0]
    assert episode["status"] == "finished" and "ward 3B" in episode["type"][0]["text"]
    assert "glucose_urgent_low_mgdl=110" in episode["text"]["div"]
    issues = by_type["DetectedIssue"]
    assert [(d["id"], d["meta"]["versionId"], d["extension"][0]["valueCode"]) for d in issues] == [
        (opened[0].alert_id, "0", "open"), (opened[0].alert_id, "1", "resolved")]
    assert all(d["patient"]["reference"] == f"Patient/{pid}" for d in issues)
    minutes = sorted((o["effectivePeriod"]["start"], o["valueQuantity"]["value"]) for o in by_type["Observation"])
    assert [v for _, v in minutes] == [100.0, 100.0, 100.0]  # the three monitored readings' minutes, no later one
