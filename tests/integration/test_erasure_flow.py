"""Erasure on the real stack: after ``wearwatch patients erase``, the compacted topics (the worker's changelog,
``alerts.state``, ``enrollment``, ``datakeys``), the long-lived logs keyed per record (``alerts``, ``audit``),
InfluxDB and the retained MQTT alert state hold nothing for the patient or their pseudonym, the transit logs
(``vitals.raw``, ``vitals.1m``, ``vitals.dlq``, ``alerts.commands``) nothing readable (sealed under the patient's
data keys, which are gone), another patient's data is intact and readable, the console answers nothing about the
patient, and the audit trail says that an erasure happened, not whom it was about.

The test's compacted topics are created beforehand with aggressive segment and compaction settings, so that Kafka's
log cleaner removes the records the tombstones replace (and then the tombstones) within a minute instead of
``WEARWATCH_ERASURE_COMPACTION_HOURS``. ``alerts`` and ``audit`` also get records as an older version wrote them
(an alert event keyed by its patient, audit records keyed by their actor), which the erasure removes too."""

from __future__ import annotations

import base64
import os
import threading
import time
from typing import Any

import orjson
import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from alerts.influx import minute_docs
from alerts.models import AlertEvent
from console.models import AuditRecord
from ingest.contract import DeadLetter, decode_record
from tests.integration.conftest import consume_all, free_port
from tests.integration.test_console_service import PASSWORDS, Client, users_cli, wait_for, wait_ready
from tests.integration.test_enrollment_flow import glucose, patients
from tests.integration.test_pipeline import MIN, publish
from tools.erasure import erase_from_logs
from wearwatch.config import Settings
from wearwatch.contract.commands import parse_command_record
from wearwatch.datakeys import KeyRing, is_sealed, kek_of, open_layers, open_sealed, read_data_keys
from wearwatch.influxdb import flux_string, influx_client
from wearwatch.partitioning import patient_partition
from wearwatch.privacy import pseudonym
from wearwatch.retention import changelog_topic
from wearwatch.transport import ensure_topics, kafka_client_config, kafka_producer, mqtt_client, mqtt_connect

pytestmark = [pytest.mark.stack, pytest.mark.timeout(480)]

#: compaction within seconds: segments roll every half second, any dirty ratio is cleaned, tombstones go at once
FAST_COMPACTION = {"cleanup.policy": "compact", "segment.ms": "500", "min.cleanable.dirty.ratio": "0.01",
                   "delete.retention.ms": "0", "min.compaction.lag.ms": "0", "max.compaction.lag.ms": "1000"}


#: the long-lived logs: compacted the same, and kept by time (a year here) as well
FAST_LOG = {**FAST_COMPACTION, "cleanup.policy": "compact,delete", "retention.ms": str(365 * 86_400_000)}


def compacted_topics(s: Settings) -> dict[str, int]:
    return {changelog_topic(s): s.partitions, s.topic_alert_state: s.partitions, s.topic_enrollment: 1}


def transit_topics(s: Settings) -> list[str]:
    return [s.topic_vitals, s.topic_minutes, s.topic_dlq, s.topic_commands]


def transit_contents(s: Settings) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """What the transit logs hold, read from the beginning and opened with the data keys ``datakeys`` holds now:
    (topic -> patient -> readings, minute aggregates, dead letters or commands readable), and (topic -> sealed
    entries that cannot be opened: their key is gone). A clear-text record counts under the patient it names."""
    ring = KeyRing(kek_of(s.data_key_secret))
    for key_id, rec in read_data_keys(s).items():
        ring.apply(key_id, rec.model_dump_json().encode())
    readable: dict[str, dict[str, int]] = {t: {} for t in transit_topics(s)}
    unreadable = dict.fromkeys(transit_topics(s), 0)

    def count(topic: str, pid: str, n: int = 1) -> None:
        readable[topic][pid] = readable[topic].get(pid, 0) + n

    for topic in transit_topics(s):
        for _, _, value in records_in(s, topic):
            if topic == s.topic_dlq:  # one entry, sealed under each patient it names in turn
                plain = open_layers(value, "vitals.dlq", ring.cipher_of)
                if plain is None:
                    unreadable[topic] += 1
                    continue
                letter = DeadLetter.model_validate_json(plain)
                named = sorted({str(d["patient_id"]) for d in _items(orjson.loads(letter.payload))})
                count(topic, ",".join(named) if is_sealed(value) else f"clear:{','.join(named)}")
                continue
            purpose = topic.removeprefix(s.topic_prefix)
            entries = open_sealed(value, purpose, ring.cipher_of) if is_sealed(value) else []  # type: ignore[arg-type]
            unreadable[topic] += sum(e.plaintext is None for e in entries)
            plains = [e.plaintext for e in entries if e.plaintext is not None]
            for plain in plains if is_sealed(value) else [value]:
                tag = "" if is_sealed(value) else "clear:"
                if topic == s.topic_vitals:
                    for r, _ in decode_record(plain):
                        count(topic, tag + r.patient_id)  # type: ignore[union-attr]
                elif topic == s.topic_minutes:
                    for doc in minute_docs(plain):
                        count(topic, tag + doc["patient_id"])
                else:
                    count(topic, tag + parse_command_record(plain).patient_id)
    return readable, unreadable


def _items(doc: object) -> list[dict[str, object]]:
    return [d for d in (doc if isinstance(doc, list) else [doc]) if isinstance(d, dict) and "patient_id" in d]


def log_topics(s: Settings) -> dict[str, int]:
    return {s.topic_alerts: s.partitions, s.topic_audit: 1}


def records_in(settings: Settings, topic: str) -> list[tuple[int, bytes | None, bytes]]:
    """(partition, key, value) of every record of ``topic`` with a value, from the beginning."""
    return [(r.partition, r.key, r.value) for r in consume_all(settings, topic, idle_s=0.5, timeout_s=20, raw=True)
            if r.value is not None]


def naming(records: list[tuple[int, bytes | None, bytes]], *names: str) -> list[tuple[int, bytes | None, bytes]]:
    """The records whose key or value names any of ``names`` (as a JSON string, or as the whole key)."""
    quoted = [orjson.dumps(n) for n in names]
    return [r for r in records if r[1] in {n.encode() for n in names} or any(q in r[2] for q in quoted)]


def legacy_records(s: Settings, gone: str, kept: str) -> None:
    """Records as a version keyed by patient (``alerts``) and by actor (``audit``) wrote them."""
    producer = kafka_producer(s, client_id="wearwatch-test")
    an_hour_ago = int(time.time() * 1000) - 60 * MIN
    try:
        for pid in (gone, kept):
            ev = AlertEvent.model_validate({
                "alert_id": f"al-legacy-{pid}", "patient_id": pid, "ward": "3B", "state": "resolved",
                "signal": "glucose", "kind": "glucose_low", "priority": "medium", "audience": "clinical",
                "source": "rule", "message": "Low glucose", "ts_ms": an_hour_ago, "onset_ms": an_hour_ago,
                "emitted_ms": an_hour_ago,
                "explanation": {}})
            producer.send(s.topic_alerts, key=pid.encode(), value=ev.to_json(),
                          partition=patient_partition(pid, s.partitions))
            audit = AuditRecord(ts_ms=int(time.time() * 1000), actor=f"legacy-{pid}", action="patient_view",
                                patient_id=pid)
            producer.send(s.topic_audit, key=audit.actor.encode(), value=audit.to_json())
        producer.flush(30)
    finally:
        producer.close(10)


def points_of(settings: Settings, tag: str) -> int:
    """How many field values InfluxDB holds under the pseudonym, over every measurement and all time."""
    query = (f"from(bucket: {flux_string(settings.influx_bucket)}) |> range(start: 0)"
             f" |> filter(fn: (r) => r.patient == {flux_string(tag)}) |> count()")
    with influx_client(settings, timeout_ms=30_000) as client:
        tables = client.query_api().query(query)
    return sum(int(r.get_value()) for t in tables for r in t.records)


def retained_states(settings: Settings, run_id: str, patients: list[str]) -> dict[str, dict[str, Any]]:
    """Every retained alert-state message of ``patients``, in any ward, a nurse app gets when it connects (topic ->
    payload). Only theirs: the broker may hold many other patients' states, more than a short wait receives."""
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
    client.subscribe([(f"wearwatch/v1/alerts/+/{pid}", 1) for pid in patients])
    seen.wait(5)
    time.sleep(1.5)  # the rest of the retained messages
    client.disconnect()
    client.loop_stop()
    return got


def keys_in(settings: Settings, topic: str) -> list[bytes]:
    return [r.key for r in consume_all(settings, topic, idle_s=0.5, timeout_s=20)]


def test_erasure_leaves_nothing_readable_for_the_patient(settings: Settings, spawn: Any, run_id: str) -> None:
    port = free_port()
    s = settings.model_copy(update={"console_port": port, "console_secret": f"secret-{run_id}-" + "x" * 32,
                                    "data_key_secret": base64.b64encode(os.urandom(32)).decode()})
    base = f"http://127.0.0.1:{port}"
    admin = KafkaAdminClient(**kafka_client_config(s), client_id="wearwatch-test-admin")
    try:
        admin.create_topics([NewTopic(name, n, 1, topic_configs=FAST_COMPACTION)
                             for name, n in {**compacted_topics(s), s.topic_datakeys: 1}.items()]
                            + [NewTopic(name, n, 1, topic_configs=FAST_LOG) for name, n in log_topics(s).items()])
    finally:
        admin.close()
    gone, kept = f"X-{run_id}", f"Y-{run_id}"
    for pid in (gone, kept):
        patients(s, "enrol", pid, "--ward", "3B")
    legacy_records(s, gone, kept)
    users_cli(s, "add", "kim", "--role", "nurse", "--ward", "3B", "--password-stdin", password=PASSWORDS["kim"])
    gateway = spawn("gateway", s, "gateway", "--stats-every", "2")
    worker = spawn("worker", s, "worker")
    console = spawn("console", s, "console")
    gateway.wait_log("gateway up")
    wait_ready(base, console)
    start = int(time.time() * 1000) - 30 * MIN
    publish(s, [glucose(pid, start + i * 5 * MIN, v) for pid in (gone, kept) for i, v in enumerate([120.0, 50.0])])
    events = [AlertEvent.from_json(r.value) for r in consume_all(s, s.topic_alerts, expect=4, idle_s=1.0)]
    assert sorted((e.patient_id, e.kind, e.state) for e in events if e.revision == 0 and e.state == "open") == [
        (gone, "glucose_urgent_low", "open"), (kept, "glucose_urgent_low", "open")]
    opened = {e.patient_id: e for e in events if e.state == "open"}
    # a dead letter of each at the gateway (a value no sensor gives) and at the worker (20 minutes late)
    publish(s, [glucose(pid, start + 10 * MIN, 5000.0) for pid in (gone, kept)]
            + [glucose(pid, start - 20 * MIN, 100.0) for pid in (gone, kept)])
    assert {f"wearwatch/v1/alerts/3B/{gone}", f"wearwatch/v1/alerts/3B/{kept}"} <= set(
        retained_states(s, run_id, [gone, kept]))

    # nurse actions through the console: audited with the patient, applied by the worker as alert events
    kim = Client(base)
    assert kim.login("kim")[0] == 200
    wait_for("both alerts in the console", lambda: {r["alert_id"] for r in kim.get("/api/alerts")[1]["alerts"]}
             >= {opened[gone].alert_id, opened[kept].alert_id})
    assert kim.post(f"/api/alerts/{opened[gone].alert_id}/ack")[0] == 202
    assert kim.post(f"/api/alerts/{opened[kept].alert_id}/notes", {"text": "seen, eating"})[0] == 202
    status, detail = kim.get(f"/api/patients/{gone}")
    assert status == 200 and detail["patient_id"] == gone
    consume_all(s, s.topic_alerts, expect=6, idle_s=1.0)  # acknowledged, noted

    patients(s, "discharge", gone)
    consume_all(s, s.topic_alerts, expect=7, idle_s=1.0)  # the discharge resolved the alert
    assert s.pseudonym_key is not None
    tag_gone, tag_kept = pseudonym(s.pseudonym_key, gone), pseudonym(s.pseudonym_key, kept)
    deadline = time.monotonic() + 60
    while points_of(s, tag_gone) == 0 or points_of(s, tag_kept) == 0:  # minutes and alert points written
        assert time.monotonic() < deadline, "no InfluxDB points for the patients"
        time.sleep(1)
    kept_points = points_of(s, tag_kept)
    # the other patient's records on the logs, and the erased one's: alert events (legacy, open, noted) and audit
    # records (legacy, note; the erased one's: legacy, ack, patient_view)
    kept_before = {t: set(naming(records_in(s, t), kept, tag_kept)) for t in log_topics(s)}
    assert {t: len(r) for t, r in kept_before.items()} == {s.topic_alerts: 3, s.topic_audit: 2}
    gone_before = {t: len(naming(records_in(s, t), gone, tag_gone)) for t in log_topics(s)}
    assert gone_before == {s.topic_alerts: 4, s.topic_audit: 3}

    # the transit logs, every record sealed: readings (two each, and the late one), minute aggregates, dead
    # letters (one of the gateway, one of the worker each), the nurse commands (an ack for one, a note for the other)
    readable, unreadable = transit_contents(s)
    assert readable[s.topic_vitals] == {gone: 3, kept: 3} and readable[s.topic_dlq] == {gone: 2, kept: 2}
    assert readable[s.topic_commands] == {gone: 1, kept: 1}
    assert set(readable[s.topic_minutes]) == {gone, kept}
    kept_minutes = readable[s.topic_minutes][kept]
    assert unreadable == dict.fromkeys(transit_topics(s), 0)
    sealed_before = {t: len(records_in(s, t)) for t in transit_topics(s)}

    out = patients(s, "erase", gone)
    assert "enrolment tombstoned, InfluxDB points deleted" in out
    assert f"{s.topic_alerts}: 4 record(s) of the patient, 4 tombstone(s) written" in out
    assert f"{s.topic_audit}: 3 record(s) of the patient, 3 tombstone(s) written" in out
    assert f"{s.topic_datakeys}: 1 data key(s) of the patient destroyed" in out
    assert f"{s.topic_vitals}: sealed records unreadable now" in out
    worker.wait_log("erasure: 1 patient state(s) erased", timeout=30)

    # the transit logs, read from the beginning: no record names the patient or their pseudonym, nothing of theirs
    # can be opened any more (their key is gone), and the other patient's records are all there, readable
    for topic in transit_topics(s):
        assert naming(records_in(s, topic), gone, tag_gone) == [], topic
    readable, unreadable = transit_contents(s)
    assert readable[s.topic_vitals] == {kept: 3} and readable[s.topic_dlq] == {kept: 2}
    assert readable[s.topic_commands] == {kept: 1} and set(readable[s.topic_minutes]) == {kept}
    assert readable[s.topic_minutes][kept] >= kept_minutes  # its last minutes may have been written since
    assert unreadable[s.topic_dlq] == 2 and unreadable[s.topic_commands] == 1
    assert unreadable[s.topic_vitals] >= 1 and unreadable[s.topic_minutes] >= 1  # sealed per record and patient
    for topic in (s.topic_vitals, s.topic_dlq, s.topic_commands):  # nothing written since: the same records
        assert len(records_in(s, topic)) == sealed_before[topic], topic

    # the compacted topics and logs: wait until the log cleaner removed every record of the patient (a tombstone
    # of an unrelated key, written now and then, rolls the segments of a topic that is otherwise quiet)
    every = {**compacted_topics(s), **log_topics(s), s.topic_datakeys: 1}
    producer = kafka_producer(s, client_id="wearwatch-test")
    remaining: dict[str, int] = {}
    deadline = time.monotonic() + 300
    try:
        while True:
            for topic, n in every.items():
                for partition in range(n):
                    producer.send(topic, key=b"roll", value=None, partition=partition)
            producer.flush(10)
            remaining = {topic: keys_in(s, topic).count(gone.encode()) for topic in compacted_topics(s)}
            remaining |= {topic: len(naming(records_in(s, topic), gone, tag_gone)) for topic in log_topics(s)}
            remaining[s.topic_datakeys] = len(naming(records_in(s, s.topic_datakeys), gone))
            if not any(remaining.values()) or time.monotonic() > deadline:
                break
            time.sleep(5)
    finally:
        producer.close(10)
    assert remaining == dict.fromkeys(every, 0)
    assert [r.patient_id for r in read_data_keys(s).values()] == [kept]  # the other patient's key is there
    # the other patient is intact: state, open alert, enrolment, every alert event and audit record
    for topic in compacted_topics(s):
        assert kept.encode() in keys_in(s, topic), topic
    assert {t: set(naming(records_in(s, t), kept, tag_kept)) for t in log_topics(s)} == kept_before
    assert f"{kept}\t3B" in "\n".join("\t".join(line.split()[:2]) for line in patients(s, "list").splitlines())
    assert gone not in patients(s, "list", "--all")

    # InfluxDB: nothing under the erased pseudonym; the other patient's points untouched
    assert points_of(s, tag_gone) == 0
    assert points_of(s, tag_kept) >= kept_points  # none deleted (its last minutes may still have been written since)
    # MQTT: no retained alert state for the patient in any ward; the other's is there
    retained = retained_states(s, run_id, [gone, kept])
    assert [t for t in retained if t.endswith(f"/{gone}")] == []
    assert retained[f"wearwatch/v1/alerts/3B/{kept}"]["alerts"][0]["patient_id"] == kept
    # the audit trail: that an erasure happened, not whom it was about
    audit = records_in(s, s.topic_audit)
    erasures = [orjson.loads(v) for _, _, v in audit if orjson.loads(v)["action"] == "patient_erase"]
    assert len(erasures) == 1 and erasures[0].get("patient_id") is None
    assert erasures[0]["detail"][s.topic_alerts] == {"tombstones": 4, "records": 4, "shared": 0}
    # the console: nothing about the erased patient (asked last: viewing is audited), the other's history intact
    status, detail = kim.get(f"/api/patients/{gone}")
    assert status == 404 or (status == 200 and detail["alerts"] == []), (status, detail)
    status, detail = kim.get(f"/api/patients/{kept}")
    assert status == 200, detail
    assert sorted((e["alert_id"], e["revision"]) for e in detail["alerts"]) == sorted(
        [(f"al-legacy-{kept}", 0), (opened[kept].alert_id, 0), (opened[kept].alert_id, 1)])


def test_a_key_other_records_share_is_not_tombstoned(settings: Settings, run_id: str) -> None:
    """An audit record as an earlier version keyed it (by actor) shares its key with the actor's other records: a
    tombstone would remove those too, so the erasure leaves it (counted as shared) and tombstones only keys that
    are the patient's alone."""
    s = settings
    gone, kept = f"X-{run_id}", f"Y-{run_id}"
    ensure_topics(s, [s.topic_alerts])
    ensure_topics(s, [s.topic_audit], partitions=1)
    records = [AuditRecord(ts_ms=1, actor="legacy-both", action="patient_view", patient_id=gone),
               AuditRecord(ts_ms=2, actor="legacy-both", action="patient_view", patient_id=kept),
               AuditRecord(ts_ms=3, actor="legacy-alone", action="patient_view", patient_id=gone),
               AuditRecord(ts_ms=4, actor="nurse-7", action="patient_view", patient_id=gone)]
    producer = kafka_producer(s, client_id="wearwatch-test")
    try:
        for i, rec in enumerate(records):
            key = rec.record_key if i == 3 else rec.actor.encode()  # the last one as this version keys it
            producer.send(s.topic_audit, key=key, value=rec.to_json())
        producer.flush(30)
    finally:
        producer.close(10)
    assert s.pseudonym_key is not None
    alerts, audit = erase_from_logs(s, gone, pseudonym(s.pseudonym_key, gone))
    assert (alerts.records, alerts.tombstones) == (0, 0)
    assert (audit.scanned, audit.records, audit.tombstones, audit.shared) == (4, 3, 2, 1)
    tombstoned = sorted(r.key for r in consume_all(s, s.topic_audit, expect=6, idle_s=0.5) if r.value is None)
    assert tombstoned == sorted([b"legacy-alone", records[3].record_key])
