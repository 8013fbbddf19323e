"""End to end on the real stack: paho → Mosquitto → gateway → Kafka → Faust worker
→ Kafka ``alerts`` and InfluxDB. Exact counts throughout.

The expected alerts are what the very same detector code yields offline for the
very same readings in the same order, so the test proves the pipeline delivers
each finding exactly once — and, independently, that the injected events are
among them and the control patient has none.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import Counter
from typing import Any

import orjson
import pytest

from alerts.models import AlertEvent
from ingest.contract import vitals_topic
from tests.integration.conftest import consume_all, consume_readings
from wearwatch.config import Settings
from wearwatch.partitioning import patient_partition
from wearwatch.privacy import pseudonym
from wearwatch.transport import mqtt_client, mqtt_connect

pytestmark = pytest.mark.stack

MIN = 60_000


def cohort(run_id: str, end_ms: int, minutes: int = 45) -> dict[str, list[dict[str, Any]]]:
    """Readings per patient in time order: A falls into hypoglycemia, B has a
    tachycardia at rest, C is a control. HR every 5 s, steps every minute, CGM every 5 min."""
    rng = random.Random(7)
    start = end_ms - minutes * MIN
    start -= start % MIN
    out: dict[str, list[dict[str, Any]]] = {}
    for role in "ABC":
        pid = f"{role}-{run_id}"
        rows: list[dict[str, Any]] = []
        for t in range(start, start + minutes * MIN, 5000):
            m = (t - start) / MIN
            hr = 68 + 4 * math.sin(m / 7) + rng.gauss(0, 1.5)
            if role == "B" and 15 <= m < 32:
                hr = 142 + rng.gauss(0, 2)
            rows.append({"patient_id": pid, "signal": "heart_rate", "value": round(hr, 1), "unit": "bpm", "ts": t})
            if (t - start) % MIN == 0:
                walking = role == "C" and 5 <= m < 12
                steps = 0 if role == "B" else (rng.randint(80, 110) if walking else rng.randint(0, 3))
                rows.append({"patient_id": pid, "signal": "steps", "value": steps, "unit": "steps", "ts": t})
            if (t - start) % (5 * MIN) == 0:
                glu = 115 + rng.gauss(0, 3)
                if role == "A":
                    glu = max(48.0, 130 - 4.2 * max(0.0, m - 10)) if m < 40 else 90.0
                rows.append({"patient_id": pid, "signal": "glucose", "value": round(glu, 1), "unit": "mg/dL", "ts": t})
        out[pid] = rows
    return out


#: events the worker emits on its timer (reminders, escalation): their number depends on wall time
TIME_DRIVEN = ("renotify", "escalated")


def offline_alerts(pid: str, rows: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(kind, alert_id, state, cause) of every finding-driven alert event the same code yields offline."""
    from alerts.lifecycle import AlertBook
    from detectors import PatientMonitor

    m, book = PatientMonitor(), AlertBook(pid, ward="unassigned")
    out: list[tuple[str, str, str, str]] = []
    for r in rows:
        for f in m.update(r["signal"], r["ts"], float(r["value"])):
            out += [(e.kind, e.alert_id, e.state, e.cause) for e in book.on_finding(f) if e.cause not in TIME_DRIVEN]
    return out


def publish(settings: Settings, messages: list[tuple[str, bytes]], pace_s: float = 0.0,
            timeout_s: float = 150.0) -> int:
    """Publish at QoS 1 as vendor 'sim' over ``pace_s`` seconds, like a device that retries:
    a message without PUBACK (broker restarted, connection lost) is sent again once the
    client is connected (also one that failed while the client was disconnected: paho's
    ``is_published`` raises then). Returns when every message is acknowledged, with the number
    of resends."""
    client = mqtt_client(settings, f"ww-test-sim-{os.getpid()}-{time.monotonic_ns()}",
                         username="sim", password=os.environ["STACK_MQTT_PASSWORD_SIM"])
    client.max_inflight_messages_set(200)
    mqtt_connect(client, settings)

    def published(info: Any, wait_s: float) -> bool:
        try:
            info.wait_for_publish(wait_s)
            return bool(info.is_published())
        except (RuntimeError, ValueError):  # publish failed (not connected) or message gone
            return False

    deadline = time.monotonic() + timeout_s
    resends = 0
    try:
        infos = []
        for topic, payload in messages:
            infos.append((topic, payload, client.publish(topic, payload, qos=1)))
            if pace_s:
                time.sleep(pace_s / len(messages))
        while infos:
            # a message not acknowledged within 10 s is sent again (a copy is allowed, a loss is not)
            retry = [(t, p) for t, p, info in infos
                     if not published(info, min(10.0, max(0.1, deadline - time.monotonic())))]
            assert time.monotonic() < deadline, f"{len(retry)} messages never acknowledged"
            if retry:
                while not client.is_connected() and time.monotonic() < deadline:
                    time.sleep(0.2)
                resends += len(retry)
            infos = [(t, p, client.publish(t, p, qos=1)) for t, p in retry]
    finally:
        client.disconnect()
        client.loop_stop()
    return resends


def flux_rows(settings: Settings, query: str) -> list[Any]:
    from influxdb_client import InfluxDBClient

    with InfluxDBClient(url=settings.influx_url, token=settings.influx_token, org=settings.influx_org) as c:
        return [rec for table in c.query_api().query(query) for rec in table.records]


def test_end_to_end_exact(settings: Settings, spawn: Any, run_id: str) -> None:
    gateway = spawn("gateway", settings, "gateway", "--stats-every", "2")
    worker = spawn("worker", settings, "worker")
    gateway.wait_log("gateway up")

    now = int(time.time() * 1000)
    per_patient = cohort(run_id, now - MIN)
    # devices publish one minute of readings per message, all patients interleaved in time
    keyed: list[tuple[tuple[int, str, str], str, bytes]] = []
    for pid, rows in per_patient.items():
        by_minute: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for r in rows:
            by_minute.setdefault((r["ts"] // MIN, r["signal"]), []).append(r)
        for (minute, signal), chunk in by_minute.items():
            keyed.append(((minute, pid, signal), vitals_topic("sim", f"{pid}-{signal}"), orjson.dumps(chunk)))
    keyed.sort()
    mqtt_messages = [(topic, payload) for _, topic, payload in keyed]
    n_valid = sum(len(rows) for rows in per_patient.values())
    # bad input: not JSON; a mixed array with one wrong unit; a future timestamp
    good = {"patient_id": f"D-{run_id}", "signal": "heart_rate", "value": 70, "unit": "bpm"}
    bad_messages = [
        (vitals_topic("sim", "broken-1"), b"{this is not json"),
        (vitals_topic("sim", "broken-2"), orjson.dumps([
            {**good, "ts": now - 30 * MIN}, {**good, "unit": "mg/dL", "ts": now - 30 * MIN + 1000},
            {**good, "ts": now - 30 * MIN + 5000}])),
        (vitals_topic("sim", "broken-3"), orjson.dumps({**good, "ts": now + 3_600_000})),
    ]
    publish(settings, mqtt_messages + bad_messages)
    n_valid += 2  # the two good readings of the mixed array

    raw = consume_readings(settings, expect=n_valid)
    assert len(raw) == n_valid
    dlq = consume_all(settings, settings.topic_dlq, expect=3)
    assert sorted(orjson.loads(r.value)["reason"] for r in dlq) == ["invalid_json", "ts_in_future", "unit_mismatch"]

    # expected alerts: the same detectors over the same per-patient order
    order: dict[str, list[dict[str, Any]]] = {}
    for doc in raw:
        order.setdefault(doc["patient_id"], []).append(
            {"signal": doc["signal"], "ts": doc["ts_ms"], "value": doc["value"]})
    # (records of one patient share a partition: their order here is the worker's order)
    expected = {pid: offline_alerts(pid, rows) for pid, rows in order.items()}
    n_expected = sum(len(v) for v in expected.values())
    kinds_a = {k for k, _, state, _ in expected[f"A-{run_id}"] if state == "open"}
    kinds_b = {k for k, _, state, _ in expected[f"B-{run_id}"] if state == "open"}
    assert "glucose_urgent_low" in kinds_a
    assert "tachycardia_at_rest" in kinds_b
    assert [f for f in expected[f"C-{run_id}"] if f[0].startswith(("glucose", "tachy"))] == []

    alert_records = consume_all(settings, settings.topic_alerts, expect=n_expected, idle_s=4.0)
    got: dict[str, list[tuple[str, str, str, str]]] = {}
    timed = 0
    for rec in alert_records:
        ev = AlertEvent.from_json(rec.value)
        # one key per event, in the partition of the patient's key (as their readings)
        assert (rec.key, rec.partition) == (ev.record_key, patient_partition(ev.patient_id, settings.partitions))
        if ev.cause in TIME_DRIVEN:
            timed += 1
            continue
        got.setdefault(ev.patient_id, []).append((ev.kind, ev.alert_id, ev.state, ev.cause))
    assert {p: Counter(v) for p, v in got.items()} == {p: Counter(v) for p, v in expected.items() if v}
    n_expected += timed  # every event, reminders included, is one InfluxDB point

    # InfluxDB: alerts under pseudonyms only, and one vitals_1m point per patient, signal, minute
    key = settings.pseudonym_key
    deadline = time.monotonic() + 60
    while True:
        rows = flux_rows(settings, f'''
            from(bucket: "{settings.influx_bucket}") |> range(start: -3h)
              |> filter(fn: (r) => r._measurement == "vitals_1m" and r._field == "count")
              |> filter(fn: (r) => {" or ".join(f'r.patient == "{pseudonym(key, p)}"' for p in order)})''')
        alert_rows = flux_rows(settings, f'''
            from(bucket: "{settings.influx_bucket}") |> range(start: -3h)
              |> filter(fn: (r) => r._measurement == "alerts" and r._field == "alert_id")
              |> filter(fn: (r) => {" or ".join(f'r.patient == "{pseudonym(key, p)}"' for p in order)})''')
        expected_minutes = sum(
            len({(r["signal"], r["ts"] // MIN) for r in rows_}) for rows_ in order.values())
        if (len(rows) >= expected_minutes and len(alert_rows) >= n_expected) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(alert_rows) == n_expected
    assert len(rows) == expected_minutes
    counts: Counter[tuple[str, str]] = Counter()
    for rec in rows:
        counts[(rec.values["patient"], rec.values["signal"])] += int(rec.get_value())
    for pid, rows_ in order.items():
        for sig in ("heart_rate", "steps", "glucose"):
            assert counts[(pseudonym(key, pid), sig)] == sum(1 for r in rows_ if r["signal"] == sig)
    assert all(p not in str(alert_rows) + str(rows) for p in order)  # no real ids in InfluxDB
    # privacy: at INFO the gateway and worker log counts, never patient ids
    logs = gateway.log_text() + worker.log_text()
    assert "INFO" in logs
    assert [p for p in order if p in logs] == []
