"""Fault tests of the worker on the real stack: SIGKILL mid-stream, restart, fail-over.

Per-patient state comes back from the Faust changelog. With at-least-once
processing an alert *event* may appear twice on Kafka after a crash (same
``event_id``); it may never be missing, and consumers that dedupe by event id
(InfluxDB points keyed by their tags and time) see every alert exactly once.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter
from typing import Any

import orjson
import pytest

from alerts.influx import minute_docs
from alerts.models import AlertEvent
from ingest.contract import vitals_topic
from tests.integration.conftest import consume_all, free_port
from tests.integration.test_pipeline import MIN, TIME_DRIVEN, cohort, flux_rows, offline_alerts, publish
from wearwatch.config import Settings
from wearwatch.privacy import pseudonym

pytestmark = pytest.mark.stack


def _messages(run_id: str, copies: int) -> tuple[list[tuple[str, bytes]], dict[str, list[dict[str, Any]]]]:
    now = int(time.time() * 1000)
    per_patient: dict[str, list[dict[str, Any]]] = {}
    for c in range(copies):
        for pid, rows in cohort(f"{run_id}{c}", now - MIN).items():
            per_patient[pid] = rows
    keyed = []
    for pid, rows in per_patient.items():
        chunks: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for r in rows:
            chunks.setdefault((r["ts"] // MIN, r["signal"]), []).append(r)
        for (minute, sig), chunk in chunks.items():
            keyed.append(((minute, pid, sig), vitals_topic("sim", f"{pid}-{sig}"), orjson.dumps(chunk)))
    keyed.sort()
    return [(t, p) for _, t, p in keyed], per_patient


def _readings_processed(log: str) -> int:
    found = re.findall(r"worker stats \{'readings': (\d+)", log)
    return int(found[-1]) if found else 0


@pytest.mark.parametrize("mode", ["restart", "failover"])
def test_worker_killed_mid_stream_loses_nothing(settings: Settings, spawn: Any, run_id: str, mode: str) -> None:
    s = settings.model_copy(update={"worker_batch_size": 50})
    gateway = spawn("gateway", s, "gateway", "--stats-every", "2")
    first = spawn("worker-1", s, "worker")
    if mode == "failover":
        survivor = spawn("worker-2", s.model_copy(update={"web_port": free_port()}), "worker")
    gateway.wait_log("gateway up")
    first.wait_log("worker assigned", timeout=90)

    messages, per_patient = _messages(run_id, copies=4)
    n_readings = sum(len(r) for r in per_patient.values())
    sender = threading.Thread(target=publish, args=(s, messages, 15.0))
    sender.start()
    # kill the first worker as soon as it has processed part of the stream
    deadline = time.monotonic() + 120
    while _readings_processed(first.log_text()) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    first.stop(signal.SIGKILL)
    processed_before_kill = _readings_processed(first.log_text())
    assert 0 < processed_before_kill < n_readings, "the kill must land mid-stream"
    if mode == "restart":
        survivor = spawn("worker-1b", s.model_copy(update={"web_port": free_port()}), "worker")
    sender.join(120)

    # at-least-once from the device to Kafka: a redelivered MQTT message may be produced twice;
    # the worker drops the copy. Every reading is there, once after dedupe. (The gateway takes every
    # vendor's traffic on the shared broker: other checkouts' patients are not this test's, and ignored.)
    from tests.integration.test_service_faults import check_raw  # (that module imports this one)

    order, _ = check_raw(s, per_patient)
    assert sum(len(rows) for rows in order.values()) == n_readings
    expected = Counter((pid, *f) for pid, rows in order.items() for f in offline_alerts(pid, rows))
    assert sum(1 for k in expected if k[1] == "glucose_urgent_low" and k[3] == "open") == 4  # one per copy of A

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
    rereads = sum(w.log_text().count("reading them again") for w in (first, survivor))
    assert got == expected  # none lost, none invented
    n_points = len(distinct)  # reminders included: each distinct event is one InfluxDB point
    after = _readings_processed(survivor.log_text())
    print(f"{mode}: {len(events)} alert events on Kafka, {len(distinct)} distinct, "
          f"{processed_before_kill} readings processed before SIGKILL, survivor: {after}; "
          f"partitions re-read after Faust skipped records: {rereads}; "
          f"survivor restarted after a stalled table recovery: {survivor.restarts}")

    key = s.pseudonym_key
    patients = " or ".join(f'r.patient == "{pseudonym(key, p)}"' for p in order)
    deadline = time.monotonic() + 60
    while True:
        base = f'from(bucket: "{s.influx_bucket}") |> range(start: -3h) |> filter(fn: (r) => {patients})'
        alert_rows = flux_rows(s, base + ' |> filter(fn: (r) => r._measurement == "alerts" and r._field == "alert_id")')
        minute_rows = flux_rows(s, base + ' |> filter(fn: (r) => r._measurement == "vitals_1m" and r._field == "count")'
                                )
        n_minutes = sum(len({(r["signal"], r["ts"] // MIN) for r in rows}) for rows in order.values())
        if (len(alert_rows) >= n_points and len(minute_rows) >= n_minutes) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(alert_rows) == n_points
    # every minute exactly once, with every reading counted once despite reprocessing
    want: Counter[tuple[str, str, int]] = Counter()
    for pid, rows in order.items():
        for r in rows:
            want[(pseudonym(key, pid), r["signal"], r["ts"] // MIN * MIN)] += 1
    have = Counter({(r.values["patient"], r.values["signal"], int(r.get_time().timestamp() * 1000)):
                    int(r.get_value()) for r in minute_rows})
    if len(minute_rows) != n_minutes or have != want:  # say which minutes, and what Kafka vitals.1m holds
        short = {k: (want[k], have[k]) for k in set(want) | set(have) if want[k] != have[k]}
        by_pseudonym = {pseudonym(key, p): p for p in order}
        history: dict[tuple[str, str, int], list[str]] = {}
        for rec in consume_all(s, s.topic_minutes, idle_s=1.0):
            for doc in minute_docs(rec.value):
                k = (pseudonym(key, doc["patient_id"]), doc["signal"], doc["minute_ms"])
                if k in short:
                    history.setdefault(k, []).append(f"p{rec.partition}@{rec.offset}:{doc['count']}")
        raise AssertionError(f"{len(minute_rows)} vitals_1m points for {n_minutes} minutes; (want, have): {short}; "
                             f"vitals.1m records (partition@offset:count): {history}; "
                             f"patients: {sorted({by_pseudonym.get(k[0], '?') for k in short})}")
    assert sum(have.values()) == n_readings
