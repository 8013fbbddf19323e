"""TLS and SASL on the real local stack: MQTT over TLS (Mosquitto's 8883) and Kafka over SASL_SSL
(SCRAM-SHA-512 on 9094), with the services' ACLs, exercised the way production uses them.

* the gateway and the worker run with nothing but the secure ports (their own Kafka accounts, TLS to
  both brokers); readings go in over TLS and come out as the exact alerts and InfluxDB minutes;
* the gateway's account is confined by its ACLs (refused reading or producing ``alerts``, writing
  ``gateway.tokens``), and so is the worker's;
* a client that does not trust the stack's CA, a server certificate that has expired or is for
  another host, and a wrong SCRAM password are all refused.

Each test applies the services' ACLs (``wearwatch.kafka_acls``, exactly as for production) to its own
topic prefix and app id with the stack's admin account, and removes them afterwards. Credentials and
the CA come from ``.stack/credentials.env`` (``make test-stack`` sources it).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

import tests.integration.test_pipeline as pipeline
from alerts.models import AlertEvent
from ingest.contract import vitals_topic
from tests.integration.conftest import consume_all, free_port, readings_in
from wearwatch.config import Settings
from wearwatch.errors import StackUnavailable
from wearwatch.kafka_acls import ACCOUNTS, Grant, apply_grants, remove_grants, service_grants
from wearwatch.privacy import pseudonym
from wearwatch.transport import (
    aiokafka_client_config,
    ensure_topics,
    kafka_client_config,
    kafka_producer,
    mqtt_client,
    mqtt_connect,
)

pytestmark = pytest.mark.stack

MIN = 60_000


@dataclass(frozen=True)
class SecureStack:
    ca_file: str
    kafka_bootstrap: str
    mqtt_tls_port: int
    passwords: dict[str, str]  # Kafka password per account key of ACCOUNTS


@pytest.fixture(scope="module")
def secure() -> SecureStack:
    names = ["STACK_CA_FILE", "STACK_KAFKA_SASL_BOOTSTRAP", "STACK_MQTT_TLS_PORT",
             *(f"STACK_KAFKA_PASSWORD_{a.upper()}" for a in ACCOUNTS)]
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not set: run `make stack-up` (it adds them to .stack/credentials.env) "
                    "and run through `make test-stack`")
    return SecureStack(os.environ["STACK_CA_FILE"], os.environ["STACK_KAFKA_SASL_BOOTSTRAP"],
                       int(os.environ["STACK_MQTT_TLS_PORT"]),
                       {a: os.environ[f"STACK_KAFKA_PASSWORD_{a.upper()}"] for a in ACCOUNTS})


def secured(settings: Settings, sec: SecureStack, account: str | None = None, **extra: Any) -> Settings:
    """``settings`` on the secure ports only: Kafka SASL_SSL as ``account`` (a key of ACCOUNTS), MQTT over TLS."""
    changes: dict[str, Any] = {
        "kafka_bootstrap": sec.kafka_bootstrap, "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512", "kafka_ca_file": sec.ca_file,
        "mqtt_port": sec.mqtt_tls_port, "mqtt_tls": True, "mqtt_ca_file": sec.ca_file,
    }
    if account is not None:
        changes |= {"kafka_sasl_username": ACCOUNTS[account], "kafka_sasl_password": sec.passwords[account]}
    return Settings(**{**settings.model_dump(), **changes, **extra})


@pytest.fixture
def acls(settings: Settings, secure: SecureStack) -> Iterator[list[Grant]]:
    """The services' ACLs for this test's topics, created with the admin account (SASL_SSL) and removed afterwards."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**kafka_client_config(secured(settings, secure, "admin")), client_id="ww-test-acls")
    grants = service_grants(settings)
    try:
        assert apply_grants(admin, grants) == len(grants)  # all new: the prefix is this test's own
        yield grants
        assert remove_grants(admin, grants) == len(grants)
    finally:
        admin.close()


# ------------------------------------------------------------------ end to end
def test_pipeline_over_tls_and_sasl(settings: Settings, secure: SecureStack, acls: list[Grant], spawn: Any,
                                    run_id: str) -> None:
    """Vendor → MQTT TLS → gateway → Kafka SASL_SSL → worker → alerts and InfluxDB, exact counts; every
    service on its own account with the production ACLs, no plaintext port in any of them."""
    gateway = spawn("gateway", secured(settings, secure, "gateway"), "gateway", "--stats-every", "2")
    worker = spawn("worker", secured(settings, secure, "worker"), "worker")
    gateway.wait_log("gateway up")

    now = int(time.time() * 1000)
    per_patient = pipeline.cohort(run_id, now - MIN)
    mine = set(per_patient)
    keyed: list[tuple[tuple[int, str, str], str, bytes]] = []
    for pid, rows in per_patient.items():
        by_minute: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for r in rows:
            by_minute.setdefault((r["ts"] // MIN, r["signal"]), []).append(r)
        for (minute, signal), chunk in by_minute.items():
            keyed.append(((minute, pid, signal), vitals_topic("sim", f"{pid}-{signal}"), orjson.dumps(chunk)))
    keyed.sort()
    pipeline.publish(secured(settings, secure), [(topic, payload) for _, topic, payload in keyed])  # as 'sim', TLS
    n_valid = sum(len(rows) for rows in per_patient.values())

    # every gateway on the shared broker receives every device message: count only this test's patients
    def own_readings(record: Any) -> int:
        return sum(1 for doc in readings_in(record) if doc["patient_id"] in mine)

    records = consume_all(settings, settings.topic_vitals, expect=n_valid, count=own_readings)
    raw = [doc for rec in records for doc in readings_in(rec) if doc["patient_id"] in mine]
    assert len(raw) == n_valid

    order: dict[str, list[dict[str, Any]]] = {}
    for doc in raw:
        order.setdefault(doc["patient_id"], []).append(
            {"signal": doc["signal"], "ts": doc["ts_ms"], "value": doc["value"]})
    expected = {pid: pipeline.offline_alerts(pid, rows) for pid, rows in order.items()}
    n_expected = sum(len(v) for v in expected.values())
    assert "glucose_urgent_low" in {k for k, _, state, _ in expected[f"A-{run_id}"] if state == "open"}
    assert "tachycardia_at_rest" in {k for k, _, state, _ in expected[f"B-{run_id}"] if state == "open"}

    def own_findings(record: Any) -> int:
        ev = AlertEvent.from_json(record.value)
        return int(ev.patient_id in mine and ev.cause not in pipeline.TIME_DRIVEN)

    alert_records = consume_all(settings, settings.topic_alerts, expect=n_expected, idle_s=4.0, count=own_findings)
    got: dict[str, list[tuple[str, str, str, str]]] = {}
    for rec in alert_records:
        ev = AlertEvent.from_json(rec.value)
        if ev.patient_id in mine and ev.cause not in pipeline.TIME_DRIVEN:
            got.setdefault(ev.patient_id, []).append((ev.kind, ev.alert_id, ev.state, ev.cause))
    assert {p: Counter(v) for p, v in got.items()} == {p: Counter(v) for p, v in expected.items() if v}

    # InfluxDB: one vitals_1m point per patient, signal and minute, with the exact counts; one alerts point per
    # alert event on Kafka (reminders go on coming while the worker runs: both sides are read until they agree)
    key = settings.pseudonym_key
    assert key is not None
    patients = " or ".join(f'r.patient == "{pseudonym(key, p)}"' for p in order)
    expected_minutes = sum(len({(r["signal"], r["ts"] // MIN) for r in rows}) for rows in order.values())
    epoch = datetime(1970, 1, 1, tzinfo=UTC)

    def kafka_points() -> set[tuple[str, str, str, int]]:
        events = [AlertEvent.from_json(r.value) for r in consume_all(settings, settings.topic_alerts, idle_s=1.0)]
        return {(pseudonym(key, e.patient_id), e.kind, e.state, e.ts_ms * 1000 + min(e.revision, 999))
                for e in events if e.patient_id in mine}

    deadline = time.monotonic() + 90
    while True:
        minutes = pipeline.flux_rows(settings, f'''
            from(bucket: "{settings.influx_bucket}") |> range(start: -3h)
              |> filter(fn: (r) => r._measurement == "vitals_1m" and r._field == "count")
              |> filter(fn: (r) => {patients})''')
        influx_points = {(r.values["patient"], r.values["kind"], r.values["state"],
                          (r.get_time() - epoch) // timedelta(microseconds=1))
                         for r in pipeline.flux_rows(settings, f'''
            from(bucket: "{settings.influx_bucket}") |> range(start: -3h)
              |> filter(fn: (r) => r._measurement == "alerts" and r._field == "alert_id")
              |> filter(fn: (r) => {patients})''')}
        on_kafka = kafka_points()
        if (len(minutes) == expected_minutes and influx_points == on_kafka) or time.monotonic() > deadline:
            break
        time.sleep(1)
    if len(minutes) != expected_minutes:  # which (patient, signal, minute) are missing, and what the worker said
        tag = {pseudonym(key, p): p for p in order}
        have = {(tag[r.values["patient"]], r.values["signal"], (r.get_time() - epoch) // timedelta(milliseconds=1))
                for r in minutes}
        want = {(p, r["signal"], r["ts"] // MIN * MIN) for p, rows in order.items() for r in rows}
        last = {p: max(r["ts"] for r in rows) for p, rows in order.items()}
        missing = sorted((p, s, (last[p] - m) // 1000) for p, s, m in want - have)
        raise AssertionError(f"{len(minutes)} of {expected_minutes} minutes in InfluxDB; missing (patient, signal, "
                             f"s before the last reading): {missing}; worker log:\n{worker.log_text()[-6000:]}")
    assert len(on_kafka) >= n_expected
    assert influx_points == on_kafka
    counts: Counter[tuple[str, str]] = Counter()
    for rec in minutes:
        counts[(rec.values["patient"], rec.values["signal"])] += int(rec.get_value())
    for pid, rows in order.items():
        for sig in ("heart_rate", "steps", "glucose"):
            assert counts[(pseudonym(key, pid), sig)] == sum(1 for r in rows if r["signal"] == sig)

    # the worker delivered alert state to nurse apps over TLS too (retained, per patient)
    nurse = secured(settings, secure)
    states: dict[str, dict[str, Any]] = {}
    client = mqtt_client(nurse, f"ww-test-nurse-{run_id}", username="nurse",
                         password=os.environ["STACK_MQTT_PASSWORD_NURSE"])
    client.on_message = lambda c, u, msg: states.__setitem__(msg.topic.rsplit("/", 1)[1], json.loads(msg.payload))
    mqtt_connect(client, nurse)
    try:
        for pid in (f"A-{run_id}", f"B-{run_id}"):
            client.subscribe(f"wearwatch/v1/alerts/unassigned/{pid}", qos=1)
        deadline = time.monotonic() + 15
        while len(states) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        client.disconnect()
        client.loop_stop()
    assert {p: s["patient_id"] for p, s in states.items()} == {f"A-{run_id}": f"A-{run_id}",
                                                                 f"B-{run_id}": f"B-{run_id}"}

    # nothing was refused along the way (a missing grant shows in a log before it shows anywhere else)
    logs = gateway.log_text() + worker.log_text()
    assert "AuthorizationFailed" not in logs and "not authorized" not in logs.lower(), logs[-3000:]


# ------------------------------------------------------------------ Kafka ACLs and logins
def test_gateway_account_is_confined_by_its_acls(settings: Settings, secure: SecureStack, acls: list[Grant]) -> None:
    """The gateway's account may produce readings (idempotently) and read the tokens, and nothing else:
    reading or producing ``alerts`` and writing ``gateway.tokens`` are refused (TopicAuthorizationFailed)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

    from ingest.tokens import ensure_token_topic, read_tokens

    ensure_topics(settings, [settings.topic_alerts])  # exists (made over the plaintext listener), so only ACLs refuse
    gw = secured(settings, secure, "gateway")
    ensure_topics(gw, [gw.topic_vitals, gw.topic_dlq, gw.topic_commands])  # the gateway's own CREATE grants
    ensure_token_topic(gw)
    assert read_tokens(gw, timeout_s=30).records() == []  # READ on gateway.tokens

    producer = kafka_producer(gw, client_id=f"ww-test-gw-{settings.app_id}")  # acks=all, idempotent
    try:
        meta = producer.send(gw.topic_vitals, key=b"p-1", value=b'{"probe": 1}').get(timeout=30)
        assert meta.topic == gw.topic_vitals and meta.offset == 0
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(gw.topic_alerts, key=b"p-1", value=b'{"forged": true}').get(timeout=30)
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(gw.topic_tokens, key=b"t", value=b"{}").get(timeout=30)
    finally:
        producer.close(timeout=10)

    consumer = KafkaConsumer(**kafka_client_config(gw), group_id=None, enable_auto_commit=False)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            consumer.end_offsets([TopicPartition(gw.topic_alerts, 0)], timeout_ms=20_000)
    finally:
        consumer.close()
    grouped = KafkaConsumer(gw.topic_vitals, **kafka_client_config(gw), group_id=f"{settings.app_id}-gw",
                            enable_auto_commit=False)
    try:
        with pytest.raises(GroupAuthorizationFailedError):
            grouped.poll(timeout_ms=5000)
    finally:
        grouped.close()

    # aiokafka (the worker's and the console's client) gets the same answer
    async def read_alerts_as_gateway() -> None:
        from aiokafka import AIOKafkaConsumer

        c = AIOKafkaConsumer(gw.topic_alerts, **aiokafka_client_config(gw), enable_auto_commit=False)
        try:
            await c.start()
            await c.getmany(timeout_ms=5000)
        finally:
            await c.stop()

    from aiokafka.errors import TopicAuthorizationFailedError as AioTopicAuthorizationFailedError

    with pytest.raises(AioTopicAuthorizationFailedError):
        asyncio.run(read_alerts_as_gateway())
    # the record the gateway was refused never reached alerts
    assert consume_all(settings, settings.topic_alerts, idle_s=1.0, timeout_s=20) == []


def test_worker_account_is_confined_by_its_acls(settings: Settings, secure: SecureStack, acls: list[Grant]) -> None:
    """The worker may produce alerts but not readings, and may use only the consumer group of its app id."""
    from kafka import KafkaConsumer
    from kafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

    ensure_topics(settings, [settings.topic_vitals, settings.topic_alerts])
    wk = secured(settings, secure, "worker")
    producer = kafka_producer(wk, client_id=f"ww-test-wk-{settings.app_id}")
    try:
        assert producer.send(wk.topic_alerts, key=b"p-1", value=b"{}").get(timeout=30).offset == 0
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(wk.topic_vitals, key=b"p-1", value=b"{}").get(timeout=30)
    finally:
        producer.close(timeout=10)
    other = KafkaConsumer(wk.topic_vitals, **kafka_client_config(wk), group_id=f"{settings.app_id}x",
                          enable_auto_commit=False)
    try:
        with pytest.raises(GroupAuthorizationFailedError):
            other.poll(timeout_ms=5000)
    finally:
        other.close()


def test_wrong_scram_password_is_refused(settings: Settings, secure: SecureStack, caplog: Any) -> None:
    """A wrong SCRAM password fails the SASL handshake (the broker says so); the right one logs in."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError

    async def login(password: str) -> None:
        s = secured(settings, secure, "gateway", kafka_sasl_password=password)
        p = AIOKafkaProducer(**aiokafka_client_config(s), request_timeout_ms=10_000)
        try:
            await p.start()
        finally:
            await p.stop()

    asyncio.run(login(secure.passwords["gateway"]))
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        asyncio.run(login(secure.passwords["gateway"] + "x"))
    assert "SaslAuthenticationFailed" in caplog.text
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in caplog.text


def test_kafka_certificate_is_checked(secure: SecureStack, tmp_path: Path) -> None:
    """Kafka's SASL_SSL listener presents the stack's certificate for 127.0.0.1: trusted with the stack's CA,
    refused under another host name, and refused without that CA."""
    host, _, port = secure.kafka_bootstrap.rpartition(":")
    assert _tls_handshake(host, int(port), secure.ca_file, host) == "ok"
    assert "Hostname mismatch" in _tls_handshake(host, int(port), secure.ca_file, "kafka.elsewhere.example")
    other_ca = _throwaway_ca(tmp_path)
    # (the broker sends its chain up to the stack's CA, which this client does not trust)
    assert "CERTIFICATE_VERIFY_FAILED" in _tls_handshake(host, int(port), str(other_ca.crt), host)


# ------------------------------------------------------------------ MQTT TLS
def test_mqtt_tls_listener_uses_the_same_accounts_and_acl(settings: Settings, secure: SecureStack,
                                                          run_id: str) -> None:
    """8883 speaks TLS with the stack's certificate; the password file and ACL are those of 1883; a client
    that does not trust the stack's CA (the system's trust store only) is refused."""
    tls = secured(settings, secure)
    vendor = os.environ["STACK_MQTT_PASSWORD_ACME"]

    ok = mqtt_client(tls, f"ww-test-tls-{run_id}", username="acme", password=vendor)
    mqtt_connect(ok, tls)
    ok.disconnect()
    ok.loop_stop()

    no_ca = secured(settings, secure, mqtt_ca_file=None)
    with pytest.raises(StackUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        mqtt_connect(mqtt_client(no_ca, f"ww-test-noca-{run_id}", username="acme", password=vendor), no_ca)
    with pytest.raises(StackUnavailable, match="refused"):
        mqtt_connect(mqtt_client(tls, f"ww-test-badpw-{run_id}", username="acme", password=vendor + "x"), tls)

    # the ACL: the worker may publish alert state, a vendor may not (a nurse app sees only the worker's)
    ward = f"ward-{run_id}"
    got: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    nurse = mqtt_client(tls, f"ww-test-nurse-{run_id}", username="nurse",
                        password=os.environ["STACK_MQTT_PASSWORD_NURSE"])
    nurse.on_message = lambda c, u, msg: got.append((msg.topic, bytes(msg.payload)))
    nurse.on_subscribe = lambda *a: subscribed.set()
    mqtt_connect(nurse, tls)
    try:
        nurse.subscribe(f"wearwatch/v1/alerts/{ward}/#", qos=1)
        assert subscribed.wait(10)
        forger = mqtt_client(tls, f"ww-test-forger-{run_id}", username="acme", password=vendor)
        mqtt_connect(forger, tls)
        forger.publish(f"wearwatch/v1/alerts/{ward}/p-1", b"forged", qos=1).wait_for_publish(10)
        forger.disconnect()
        forger.loop_stop()
        worker = mqtt_client(tls, f"ww-test-worker-{run_id}", username="worker",
                             password=os.environ["WEARWATCH_ALERTS_MQTT_PASSWORD"])
        mqtt_connect(worker, tls)
        worker.publish(f"wearwatch/v1/alerts/{ward}/p-1", b"real", qos=1).wait_for_publish(10)
        worker.disconnect()
        worker.loop_stop()
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the forged one was published first, on its own connection: it had its chance
    finally:
        nurse.disconnect()
        nurse.loop_stop()
    assert got == [(f"wearwatch/v1/alerts/{ward}/p-1", b"real")]


@dataclass(frozen=True)
class Ca:
    dir: Path
    crt: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def _throwaway_ca(tmp: Path) -> Ca:
    d = tmp / "ca"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=throwaway test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    (d / "index.txt").write_text("")
    (d / "ca.cnf").write_text(
        "[ca]\ndefault_ca = throwaway\n[throwaway]\ndatabase = index.txt\nnew_certs_dir = .\n"
        "certificate = ca.crt\nprivate_key = ca.key\ndefault_md = sha256\npolicy = anything\n"
        "rand_serial = yes\nunique_subject = no\n[anything]\ncommonName = supplied\n")
    return Ca(d, d / "ca.crt", d / "ca.key")


def _issue(ca: Ca, name: str, san: str, start: str, end: str) -> tuple[Path, Path]:
    """A server certificate (and key) signed by ``ca``, valid from ``start`` to ``end`` (YYYYMMDDHHMMSSZ)."""
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", cwd=ca.dir)
    (ca.dir / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    _openssl("ca", "-batch", "-config", "ca.cnf", "-notext", "-startdate", start, "-enddate", end,
             "-extfile", f"{name}.ext", "-in", f"{name}.csr", "-out", f"{name}.crt", cwd=ca.dir)
    return ca.dir / f"{name}.crt", ca.dir / f"{name}.key"


def _tls_handshake(host: str, port: int, cafile: str, server_hostname: str) -> str:
    """'ok', or the reason the client refused the server's certificate."""
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        with socket.create_connection((host, port), timeout=10) as sock, \
                ctx.wrap_socket(sock, server_hostname=server_hostname):
            return "ok"
    except ssl.SSLCertVerificationError as exc:
        return str(exc)


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"mosquitto did not listen on {port}:\n{log.read_text()}")


def test_expired_and_wrong_host_certificates_are_refused(settings: Settings, tmp_path: Path, run_id: str) -> None:
    """A second Mosquitto (this test's own, on free ports) presents three certificates from a throwaway CA that
    the client trusts: a good one (connects), an expired one and one for another host (both refused)."""
    ca = _throwaway_ca(tmp_path)
    now = time.gmtime()
    start = time.strftime("%Y%m%d%H%M%SZ", time.gmtime(time.time() - 3600))
    end = time.strftime("%Y%m%d%H%M%SZ", time.gmtime(time.time() + 86400))
    good = _issue(ca, "good", "DNS:localhost,IP:127.0.0.1", start, end)
    expired = _issue(ca, "expired", "DNS:localhost,IP:127.0.0.1", f"{now.tm_year - 1}0101000000Z",
                     f"{now.tm_year - 1}0201000000Z")
    wrong_host = _issue(ca, "elsewhere", "DNS:mqtt.elsewhere.example", start, end)
    ports = {"good": free_port(), "expired": free_port(), "wrong_host": free_port()}
    conf = tmp_path / "mosquitto.conf"
    # run as this user (started as root, Mosquitto would switch to its own, which cannot read tmp_path)
    conf.write_text(f"user {getpass.getuser()}\nallow_anonymous true\npersistence false\nlog_dest stdout\n" + "".join(
        f"listener {ports[name]} 127.0.0.1\ncertfile {crt}\nkeyfile {key}\n"
        for name, (crt, key) in {"good": good, "expired": expired, "wrong_host": wrong_host}.items()))
    log = tmp_path / "mosquitto.log"
    with log.open("wb") as fh:
        broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=fh, stderr=subprocess.STDOUT)
    try:
        for port in ports.values():
            _wait_port(port, broker, log)

        def connect(port: int) -> str:
            s = Settings(**{**settings.model_dump(), "mqtt_port": port, "mqtt_tls": True,
                            "mqtt_ca_file": str(ca.crt), "mqtt_username": None, "mqtt_password": None})
            client = mqtt_client(s, f"ww-test-cert-{run_id}-{port}")
            try:
                mqtt_connect(client, s, timeout_s=10)
            except StackUnavailable as exc:
                return str(exc)
            client.disconnect()
            client.loop_stop()
            return "ok"

        assert connect(ports["good"]) == "ok"
        assert "certificate has expired" in connect(ports["expired"])
        assert "IP address mismatch" in connect(ports["wrong_host"])
        # the same under the host name the certificate does not carry either
        assert "Hostname mismatch" in _tls_handshake("127.0.0.1", ports["wrong_host"], str(ca.crt), "localhost")
    finally:
        broker.terminate()
        broker.wait(10)
