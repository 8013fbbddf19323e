"""Erasure on the real stack: after ``wearwatch patients erase``, the compacted topics (the worker's changelog,
``alerts.state``, ``enrollment``), InfluxDB and the retained MQTT alert state hold nothing for the patient or their
pseudonym, another patient's data is intact, and the audit trail says that an erasure happened, not whom it was about.

The test's compacted topics are created beforehand with aggressive segment and compaction settings, so that Kafka's
log cleaner removes the records the tombstones replace (and then the tombstones) within a minute instead of
``WEARWATCH_ERASURE_COMPACTION_HOURS``."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import orjson
import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from alerts.models import AlertEvent
from tests.integration.conftest import consume_all
from tests.integration.test_enrollment_flow import glucose, patients
from tests.integration.test_pipeline import MIN, publish
from wearwatch.config import Settings
from wearwatch.influxdb import flux_string, influx_client
from wearwatch.privacy import pseudonym
from wearwatch.retention import changelog_topic
from wearwatch.transport import kafka_client_config, kafka_producer, mqtt_client, mqtt_connect

pytestmark = [pytest.mark.stack, pytest.mark.timeout(480)]

#: compaction within seconds: segments roll every half second, any dirty ratio is cleaned, tombstones go at once
FAST_COMPACTION = {"cleanup.policy": "compact", "segment.ms": "500", "min.cleanable.dirty.ratio": "0.01",
                   "delete.retention.ms": "0", "min.compaction.lag.ms": "0", "max.compaction.lag.ms": "1000"}


def compacted_topics(s: Settings) -> dict[str, int]:
    return {changelog_topic(s): s.partitions, s.topic_alert_state: s.partitions, s.topic_enrollment: 1}


def points_of(settings: Settings, tag: str) -> int:
    """How many field values InfluxDB holds under the pseudonym, over every measurement and all time."""
    query = (f"from(bucket: {flux_string(settings.influx_bucket)}) |> range(start: 0)"
             f" |> filter(fn: (r) => r.patient == {flux_string(tag)}) |> count()")
    with influx_client(settings, timeout_ms=30_000) as client:
        tables = client.query_api().query(query)
    return sum(int(r.get_value()) for t in tables for r in t.records)


def retained_states(settings: Settings, run_id: str) -> dict[str, dict[str, Any]]:
    """Every retained alert-state message a nurse app gets when it connects (topic -> payload)."""
    got: dict[str, dict[str, Any]] = {}
    seen = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if msg.retain and msg.payload:
            got[msg.topic] = orjson.loads(msg.payload)
            seen.set()

    client = mqtt_client(settings, f"ww-test-erase-{run_id}-{time.monotonic_ns()}", username="nurse",
                         password=os.environ["STACK_MQTT_PASSWORD_NURSE"])
    client.on_message = on_message
    mqtt_connect(client, settings)
    client.subscribe([("wearwatch/v1/alerts/+/+", 1)])
    seen.wait(5)
    time.sleep(1.5)  # the rest of the retained messages
    client.disconnect()
    client.loop_stop()
    return got


def keys_in(settings: Settings, topic: str) -> list[bytes]:
    return [r.key for r in consume_all(settings, topic, idle_s=0.5, timeout_s=20)]


def test_erasure_leaves_nothing_readable_for_the_patient(settings: Settings, spawn: Any, run_id: str) -> None:
    s = settings
    admin = KafkaAdminClient(**kafka_client_config(s), client_id="wearwatch-test-admin")
    try:
        admin.create_topics([NewTopic(name, n, 1, topic_configs=FAST_COMPACTION)
                             for name, n in compacted_topics(s).items()])
    finally:
        admin.close()
    gone, kept = f"X-{run_id}", f"Y-{run_id}"
    for pid in (gone, kept):
        patients(s, "enrol", pid, "--ward", "3B")
    gateway = spawn("gateway", s, "gateway", "--stats-every", "2")
    worker = spawn("worker", s, "worker")
    gateway.wait_log("gateway up")
    start = int(time.time() * 1000) - 30 * MIN
    publish(s, [glucose(pid, start + i * 5 * MIN, v) for pid in (gone, kept) for i, v in enumerate([120.0, 50.0])])
    events = [AlertEvent.from_json(r.value) for r in consume_all(s, s.topic_alerts, expect=2, idle_s=1.0)]
    assert sorted((e.patient_id, e.kind, e.state) for e in events) == [
        (gone, "glucose_urgent_low", "open"), (kept, "glucose_urgent_low", "open")]
    assert {f"wearwatch/v1/alerts/3B/{gone}", f"wearwatch/v1/alerts/3B/{kept}"} <= set(retained_states(s, run_id))

    patients(s, "discharge", gone)
    consume_all(s, s.topic_alerts, expect=3, idle_s=1.0)  # the discharge resolved the alert
    assert s.pseudonym_key is not None
    tag_gone, tag_kept = pseudonym(s.pseudonym_key, gone), pseudonym(s.pseudonym_key, kept)
    deadline = time.monotonic() + 60
    while points_of(s, tag_gone) == 0 or points_of(s, tag_kept) == 0:  # minutes and alert points written
        assert time.monotonic() < deadline, "no InfluxDB points for the patients"
        time.sleep(1)
    kept_points = points_of(s, tag_kept)

    out = patients(s, "erase", gone)
    assert "enrolment tombstoned, InfluxDB points deleted" in out
    worker.wait_log("erasure: 1 patient state(s) erased", timeout=30)

    # the compacted topics: wait until the log cleaner removed every record keyed by the patient (a tombstone of
    # an unrelated key, written now and then, rolls the segments of a topic that is otherwise quiet)
    producer = kafka_producer(s, client_id="wearwatch-test")
    remaining: dict[str, int] = {}
    deadline = time.monotonic() + 300
    try:
        while True:
            for topic, n in compacted_topics(s).items():
                for partition in range(n):
                    producer.send(topic, key=b"roll", value=None, partition=partition)
            producer.flush(10)
            remaining = {topic: keys_in(s, topic).count(gone.encode()) for topic in compacted_topics(s)}
            if not any(remaining.values()) or time.monotonic() > deadline:
                break
            time.sleep(5)
    finally:
        producer.close(10)
    assert remaining == dict.fromkeys(compacted_topics(s), 0)
    # the other patient is intact: state, open alert, enrolment
    for topic in compacted_topics(s):
        assert kept.encode() in keys_in(s, topic), topic
    assert f"{kept}\t3B" in "\n".join("\t".join(line.split()[:2]) for line in patients(s, "list").splitlines())
    assert gone not in patients(s, "list", "--all")

    # InfluxDB: nothing under the erased pseudonym; the other patient's points untouched
    assert points_of(s, tag_gone) == 0
    assert points_of(s, tag_kept) >= kept_points  # none deleted (its last minutes may still have been written since)
    # MQTT: no retained alert state for the patient in any ward; the other's is there
    retained = retained_states(s, run_id)
    assert [t for t in retained if t.endswith(f"/{gone}")] == []
    assert retained[f"wearwatch/v1/alerts/3B/{kept}"]["alerts"][0]["patient_id"] == kept
    # the audit trail: that an erasure happened, not whom it was about
    audit = consume_all(s, s.topic_audit, expect=1, idle_s=0.5, timeout_s=20)
    erasures = [orjson.loads(r.value) for r in audit if orjson.loads(r.value)["action"] == "patient_erase"]
    assert len(erasures) == 1 and erasures[0].get("patient_id") is None
    assert gone.encode() not in audit[0].value and tag_gone.encode() not in audit[0].value
