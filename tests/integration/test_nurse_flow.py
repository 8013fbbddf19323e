"""Nurse-facing delivery on the real stack: retained alert state over MQTT, an
acknowledgement from the nurse app travelling back through the gateway to the
worker, and the resulting ``acknowledged`` event on Kafka ``alerts``."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import orjson
import pytest

from alerts.models import AlertEvent
from ingest.contract import vitals_topic
from tests.integration.conftest import consume_all
from tests.integration.test_pipeline import MIN, publish
from wearwatch.config import Settings
from wearwatch.transport import mqtt_client, mqtt_connect

pytestmark = pytest.mark.stack


class NurseApp:
    """A nurse client: keeps the latest retained state per patient topic."""

    def __init__(self, settings: Settings, run_id: str) -> None:
        self.states: dict[str, dict[str, Any]] = {}
        self.notifications: list[dict[str, Any]] = []
        self.changed = threading.Event()
        self.client = mqtt_client(settings, f"ww-test-nurse-{run_id}", username="nurse",
                                  password=os.environ["STACK_MQTT_PASSWORD_NURSE"])
        self.client.on_message = self._on_message
        mqtt_connect(self.client, settings)
        self.client.subscribe([("wearwatch/v1/alerts/+/+", 1), ("wearwatch/v1/notify/+/+", 1)])

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if not msg.payload:
            return
        doc = orjson.loads(msg.payload)
        if msg.topic.startswith("wearwatch/v1/alerts/"):
            self.states[msg.topic] = doc
        else:
            self.notifications.append(doc)
        self.changed.set()

    def wait_for(self, predicate: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"nurse app state never matched; has {self.states}"
            self.changed.wait(0.5)
            self.changed.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_retained_state_and_acknowledgement_round_trip(settings: Settings, spawn: Any, run_id: str) -> None:
    gateway = spawn("gateway", settings, "gateway", "--stats-every", "2")
    spawn("worker", settings, "worker")
    gateway.wait_log("gateway up")
    pid = f"N-{run_id}"
    now = int(time.time() * 1000)
    start = now - 20 * MIN
    rows = [{"patient_id": pid, "signal": "glucose", "value": g, "unit": "mg/dL", "ts": start + i * 5 * MIN}
            for i, g in enumerate([120, 95, 70, 52])]
    publish(settings, [(vitals_topic("sim", f"{pid}-cgm"), orjson.dumps(rows))])

    topic = f"wearwatch/v1/alerts/unassigned/{pid}"

    def kinds_open() -> set[str]:
        return {a["kind"] for a in nurse.states.get(topic, {}).get("alerts", [])}

    # a nurse app that connects late still sees what is open (retained message)
    time.sleep(3)
    nurse = NurseApp(settings, run_id)
    try:
        nurse.wait_for(lambda: "glucose_urgent_low" in kinds_open())
        urgent = next(a for a in nurse.states[topic]["alerts"] if a["kind"] == "glucose_urgent_low")
        assert urgent["state"] == "open" and urgent["priority"] == "high" and urgent["patient_id"] == pid

        ack = {"alert_id": urgent["alert_id"], "by": "nurse.kim", "ts": int(time.time() * 1000)}
        info = nurse.client.publish(f"wearwatch/v1/acks/unassigned/{pid}", orjson.dumps(ack), qos=1)
        info.wait_for_publish(10)
        nurse.wait_for(lambda: any(a["alert_id"] == urgent["alert_id"] and a["state"] == "acknowledged"
                                   for a in nurse.states[topic]["alerts"]))
    finally:
        nurse.close()

    events = [AlertEvent.from_json(r.value) for r in consume_all(settings, settings.topic_alerts, idle_s=2.0)]
    acked = [e for e in events if e.alert_id == urgent["alert_id"] and e.state == "acknowledged"]
    assert len(acked) == 1
    assert acked[0].acked_by == "nurse.kim"
    commands = consume_all(settings, settings.topic_commands, expect=1, idle_s=1.0)
    assert len(commands) == 1 and commands[0].key == pid.encode()
