"""Smoke tests of the local stack itself (``make stack-up``), before any wearwatch code.

They prove that each service the project relies on answers the way its client
libraries need: Kafka 4 with aiokafka, kafka-python and Faust (groups, tables,
transactions); Mosquitto with its password file and ACL; InfluxDB 1.8 through
influxdb-client's v2 API and Flux. Every name (topic, app id, client id,
measurement) carries a fresh run id, so reruns and parallel runs never collide.

Credentials come from the environment: ``make test-stack`` sources
``.stack/credentials.env`` first (by hand: ``set -a; . .stack/credentials.env; set +a``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.stack

N = 200  # messages per Kafka round trip
KAFKA_TIMEOUT = 60.0


# ------------------------------------------------------------------ fixtures
def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run through `make test-stack` (it sources .stack/credentials.env)")
    return value


@pytest.fixture(scope="module")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def bootstrap() -> str:
    return os.environ.get("WEARWATCH_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


@pytest.fixture(scope="module")
def admin(bootstrap: str) -> Iterator[Any]:
    from kafka import KafkaAdminClient

    client = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="stack-smoke")
    yield client
    client.close()


@pytest.fixture
def topic(admin: Any, run_id: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh 4-partition topic for one test, deleted afterwards."""
    from kafka.admin import NewTopic

    name = f"smoke-{run_id}-{request.node.name.replace('[', '-').rstrip(']')}"
    admin.create_topics([NewTopic(name, 4, 1)])
    yield name
    with contextlib.suppress(Exception):  # best effort: the broker expires test topics anyway
        admin.delete_topics([name])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ Kafka
def test_kafka_python_roundtrip(bootstrap: str, topic: str) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for i in range(N):
        producer.send(topic, key=str(i % 13).encode(), value=f"m{i}".encode())
    producer.flush(30)
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-g",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
        consumer_timeout_ms=1000,
    )
    got: list[bytes] = []
    deadline = time.monotonic() + KAFKA_TIMEOUT
    try:
        while len(got) < N and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                got.extend(r.value for r in batch)
        consumer.commit()
        # nothing more arrives
        extra = consumer.poll(timeout_ms=1000)
    finally:
        consumer.close()
    assert len(got) == N
    assert sorted(got) == sorted(f"m{i}".encode() for i in range(N))
    assert not any(extra.values())


def test_aiokafka_roundtrip(bootstrap: str, topic: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    async def main() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(topic, key=str(i % 13).encode(), value=f"m{i}".encode()) for i in range(N)]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"{topic}-g",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=2000,
        )
        await consumer.start()
        got: list[bytes] = []
        try:
            deadline = time.monotonic() + KAFKA_TIMEOUT
            while len(got) < N and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(r.value for r in batch)
            await consumer.commit()
            extra = await consumer.getmany(timeout_ms=1000)
            assert not any(extra.values())
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(main())
    assert len(got) == N
    assert sorted(got) == sorted(f"m{i}".encode() for i in range(N))


def test_aiokafka_transactions(bootstrap: str, topic: str, run_id: str) -> None:
    """A committed transaction is visible to read_committed consumers, an aborted one is not."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    async def main() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"smoke-{run_id}-tx")
        await producer.start()  # InitProducerId against the transaction coordinator
        try:
            async with producer.transaction():
                for i in range(10):
                    await producer.send(topic, key=b"k", value=f"committed-{i}".encode())
            await producer.begin_transaction()
            await producer.send(topic, key=b"k", value=b"aborted")
            await producer.abort_transaction()
            async with producer.transaction():
                await producer.send(topic, key=b"k", value=b"end")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        got: list[bytes] = []
        try:
            deadline = time.monotonic() + KAFKA_TIMEOUT
            while b"end" not in got and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(r.value for r in batch)
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(main())
    assert got == [f"committed-{i}".encode() for i in range(10)] + [b"end"]


FAUST_APP = textwrap.dedent(
    """
    import faust

    app = faust.App(
        {app_id!r},
        broker={broker!r},
        store="memory://",
        datadir={datadir!r},
        broker_session_timeout=6,
        broker_heartbeat_interval=2,
        topic_partitions=4,
        processing_guarantee={guarantee!r},
    )
    source = app.topic({topic!r}, key_type=str, value_type=str, partitions=4,
                       key_serializer="json", value_serializer="json")
    counts = app.Table("counts", default=int, partitions=4)


    @app.agent(source)
    async def count(stream):
        async for key, value in stream.items():
            counts[key] += 1


    if __name__ == "__main__":
        app.main()
    """
)


def _changelog_counts(bootstrap: str, changelog: str) -> dict[str, int]:
    """The latest value per key in a Faust table's changelog topic."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        consumer_timeout_ms=1500,
    )
    try:
        parts = consumer.partitions_for_topic(changelog) or set()
        if not parts:
            return {}
        from kafka import TopicPartition

        consumer.assign([TopicPartition(changelog, p) for p in parts])
        latest: dict[str, int] = {}
        for record in consumer:
            if record.value is not None:
                latest[json.loads(record.key)] = json.loads(record.value)
        return latest
    finally:
        consumer.close()


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_faust_agent_and_table(bootstrap: str, topic: str, run_id: str, tmp_path: Path, guarantee: str) -> None:
    """A Faust worker (subprocess) counts N messages per key into a table: exact counts."""
    from kafka import KafkaProducer

    app_id = f"smoke-{run_id}-faust-{guarantee}"
    (tmp_path / "smokeapp.py").write_text(
        FAUST_APP.format(
            app_id=app_id,
            broker=f"kafka://{bootstrap}",
            datadir=str(tmp_path / "data"),
            topic=topic,
            guarantee=guarantee,
        )
    )
    log_path = tmp_path / "worker.log"
    port = free_port()
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "smokeapp.py",
                "worker",
                "-l",
                "info",
                "--web-bind",
                "127.0.0.1",
                "--web-port",
                str(port),
                "--web-host",
                "127.0.0.1",
            ],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while b"Ready" not in log_path.read_bytes():
            assert worker.poll() is None, f"worker exited:\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"worker not ready:\n{log_path.read_text()[-4000:]}"
            time.sleep(0.2)
        # its web server listens on loopback only
        ss = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        local = [line.split()[3] for line in ss.splitlines() if line.strip()]
        assert local == [f"127.0.0.1:{port}"], ss

        keys = [f"p{i}" for i in range(7)]
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        for i in range(N):
            producer.send(topic, key=json.dumps(keys[i % len(keys)]).encode(), value=json.dumps(f"v{i}").encode())
        producer.flush(30)
        producer.close()
        expected = {k: sum(1 for i in range(N) if keys[i % len(keys)] == k) for k in keys}

        changelog = f"{app_id}-counts-changelog"
        counts: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while counts != expected and time.monotonic() < deadline:
            assert worker.poll() is None, f"worker exited:\n{log_path.read_text()[-4000:]}"
            time.sleep(1.0)
            counts = _changelog_counts(bootstrap, changelog)
        time.sleep(2.0)  # nothing more is counted after that
        counts = _changelog_counts(bootstrap, changelog)
        assert counts == expected, f"{counts} != {expected}\n{log_path.read_text()[-3000:]}"
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
    log_text = log_path.read_text(errors="replace")
    assert "Traceback" not in log_text, log_text[-4000:]


# ------------------------------------------------------------------ MQTT
MQTT_HOST = os.environ.get("WEARWATCH_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("WEARWATCH_MQTT_PORT", "1883"))


class Mqtt:
    """A small synchronous wrapper around a paho-mqtt 2.x (MQTT v5) client."""

    def __init__(self, run_id: str, username: str | None, password: str | None) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.connected = threading.Event()
        self.connack: Any = None
        self.messages: list[tuple[str, bytes]] = []
        self.subacks: list[Any] = []
        self.pubacks: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"smoke-{run_id}-{username}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self.connack = reason_code
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload))

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        self.subacks.extend(reason_codes)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        self.pubacks[mid] = reason_code

    def connect(self) -> Any:
        self.client.connect(MQTT_HOST, MQTT_PORT, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(10), "no CONNACK"
        return self.connack

    def subscribe(self, topic: str) -> Any:
        n = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        deadline = time.monotonic() + 10
        while len(self.subacks) == n:
            assert time.monotonic() < deadline, "no SUBACK"
            time.sleep(0.02)
        return self.subacks[-1]

    def publish(self, topic: str, payload: bytes) -> Any:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        deadline = time.monotonic() + 5
        while info.mid not in self.pubacks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.pubacks.get(info.mid)

    def wait_for(self, payload: bytes, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if any(p == payload for _, p in self.messages):
                    return True
            time.sleep(0.02)
        return False

    def payloads(self) -> list[bytes]:
        with self._lock:
            return [p for _, p in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_clients(run_id: str) -> Iterator[Any]:
    made: list[Mqtt] = []

    def make(username: str | None, password: str | None = None, *, connect: bool = True) -> Mqtt:
        c = Mqtt(run_id, username, password)
        made.append(c)
        if connect:
            rc = c.connect()
            assert not rc.is_failure, f"{username} could not connect: {rc}"
        return c

    yield make
    for c in made:
        c.close()


def _pw(user: str) -> str:
    if user == "gateway":
        return _env("WEARWATCH_MQTT_PASSWORD")
    if user == "worker":
        return _env("WEARWATCH_ALERTS_MQTT_PASSWORD")
    return _env(f"STACK_MQTT_PASSWORD_{user.upper()}")


def test_mqtt_anonymous_and_wrong_password_refused(mqtt_clients: Any) -> None:
    assert _env("WEARWATCH_MQTT_USERNAME") == "gateway"
    anon = mqtt_clients(None, connect=False)
    assert anon.connect().is_failure
    wrong = mqtt_clients("gateway", "not-the-password", connect=False)
    assert wrong.connect().is_failure
    unknown = mqtt_clients("mallory", _pw("acme"), connect=False)
    assert unknown.connect().is_failure


def test_mqtt_vendor_publishes_only_under_its_own_name(mqtt_clients: Any, run_id: str) -> None:
    gateway = mqtt_clients("gateway", _pw("gateway"))
    assert not gateway.subscribe("wearwatch/v1/vitals/#").is_failure
    acme = mqtt_clients("acme", _pw("acme"))
    forged = f"forged-{run_id}".encode()
    own = f"own-{run_id}".encode()
    acme.publish("wearwatch/v1/vitals/globex/dev-1", forged)
    acme.publish("wearwatch/v1/vitals/acme/dev-1", own)  # sent after the forged one, on the same connection
    assert gateway.wait_for(own), "acme's reading under its own prefix did not reach the gateway"
    time.sleep(0.5)
    assert forged not in gateway.payloads(), "acme published under globex's prefix"
    # every vendor account works for its own prefix, fhir included
    for vendor in ("sim", "globex"):
        c = mqtt_clients(vendor, _pw(vendor))
        mark = f"{vendor}-{run_id}".encode()
        c.publish(f"wearwatch/v1/vitals/{vendor}/dev-9", mark)
        assert gateway.wait_for(mark), vendor
    assert not gateway.subscribe("wearwatch/v1/fhir/#").is_failure
    fhir = f"fhir-{run_id}".encode()
    acme.publish("wearwatch/v1/fhir/acme/bundle-1", fhir)
    assert gateway.wait_for(fhir)


def test_mqtt_nurse_and_vendor_roles(mqtt_clients: Any, run_id: str) -> None:
    gateway = mqtt_clients("gateway", _pw("gateway"))
    assert not gateway.subscribe("wearwatch/v1/vitals/#").is_failure
    assert not gateway.subscribe("wearwatch/v1/acks/#").is_failure
    nurse = mqtt_clients("nurse", _pw("nurse"))
    assert not nurse.subscribe("wearwatch/v1/alerts/#").is_failure
    acme = mqtt_clients("acme", _pw("acme"))
    # a vendor may not read alerts. Mosquitto 2.0's ACL grants the SUBSCRIBE itself
    # (SUBACK "Granted QoS 1") and checks `read` at delivery: nothing reaches it.
    acme.subscribe("wearwatch/v1/alerts/#")

    # the nurse cannot publish vitals, not even under its own name
    for t in ("wearwatch/v1/vitals/acme/dev-1", "wearwatch/v1/vitals/nurse/dev-1", "wearwatch/v1/fhir/nurse/x"):
        nurse.publish(t, f"nurse-vitals-{run_id}".encode())
    ack = f"ack-{run_id}".encode()
    nurse.publish("wearwatch/v1/acks/alert-1", ack)  # allowed, and sent after the refused ones
    assert gateway.wait_for(ack), "the nurse's acknowledgement did not reach the gateway"

    # only the worker's account publishes alerts; the gateway's no longer can
    assert _env("WEARWATCH_ALERTS_MQTT_USERNAME") == "worker"
    worker = mqtt_clients("worker", _pw("worker"))
    worker.subscribe("wearwatch/v1/vitals/#")  # it reads nothing (checked at delivery, see above)
    gateway.publish("wearwatch/v1/alerts/p-1", f"gateway-alert-{run_id}".encode())
    for t in ("wearwatch/v1/vitals/acme/dev-1", "wearwatch/v1/vitals/worker/dev-1"):
        worker.publish(t, f"worker-vitals-{run_id}".encode())
    alert = f"alert-{run_id}".encode()
    worker.publish("wearwatch/v1/alerts/p-1", alert)
    assert nurse.wait_for(alert), "the worker's alert did not reach the nurse"
    time.sleep(0.5)
    assert f"gateway-alert-{run_id}".encode() not in nurse.payloads(), "the gateway published an alert"
    assert f"worker-vitals-{run_id}".encode() not in gateway.payloads(), "the worker published vitals"
    assert worker.payloads() == [], "the worker read device data"
    assert f"nurse-vitals-{run_id}".encode() not in gateway.payloads(), "the nurse published vitals"
    assert acme.payloads() == [], "a vendor read alerts"
    # a vendor cannot publish alerts either
    acme.publish("wearwatch/v1/alerts/p-1", b"fake-" + alert)
    time.sleep(0.5)
    assert b"fake-" + alert not in nurse.payloads()


def test_mqtt_qos1_survives_broker_restart(mqtt_clients: Any, run_id: str) -> None:
    """Messages queued for an offline persistent session (QoS 1) survive a Mosquitto restart."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    got: list[bytes] = []
    subscribed = threading.Event()
    connected = threading.Event()
    session_present: list[bool] = []

    def nurse_session() -> Any:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"smoke-{run_id}-nurse-persistent", protocol=mqtt.MQTTv5)
        c.username_pw_set("nurse", _pw("nurse"))

        def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            session_present.append(bool(flags.session_present))
            connected.set()

        c.on_connect = on_connect
        c.on_subscribe = lambda *a: subscribed.set()
        c.on_message = lambda client, userdata, msg: got.append(bytes(msg.payload))
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        c.connect(MQTT_HOST, MQTT_PORT, keepalive=30, clean_start=False, properties=props)
        c.loop_start()
        assert connected.wait(10)
        return c

    nurse = nurse_session()
    # a topic of its own: other runs may publish real alerts meanwhile
    nurse.subscribe(f"wearwatch/v1/alerts/smoke-{run_id}/#", qos=1)
    assert subscribed.wait(10)
    nurse.disconnect()  # offline now; its session and subscription stay
    nurse.loop_stop()

    worker = mqtt_clients("worker", _pw("worker"))  # the account that publishes alerts
    sent = [f"queued-{run_id}-{i}".encode() for i in range(5)]
    for payload in sent:
        worker.publish(f"wearwatch/v1/alerts/smoke-{run_id}/p-1", payload)
    worker.close()

    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        ["bash", str(root / "deploy/stack/stack.sh"), "restart-service", "mosquitto"], check=True, timeout=120
    )

    connected.clear()
    nurse = nurse_session()
    try:
        deadline = time.monotonic() + 15
        while len(got) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert session_present[-1], "the persistent session did not survive the restart"
        assert got == sent
    finally:
        # end the session for good
        nurse.disconnect()
        nurse.loop_stop()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"smoke-{run_id}-nurse-persistent", protocol=mqtt.MQTTv5)
        c.username_pw_set("nurse", _pw("nurse"))
        c.connect(MQTT_HOST, MQTT_PORT, clean_start=True)
        c.loop_start()
        time.sleep(0.3)
        c.disconnect()
        c.loop_stop()


# ------------------------------------------------------------------ InfluxDB
def test_influx_write_and_flux_query(run_id: str) -> None:
    from influxdb_client import InfluxDBClient, Point, WritePrecision
    from influxdb_client.client.exceptions import InfluxDBError
    from influxdb_client.client.write_api import SYNCHRONOUS

    url = _env("WEARWATCH_INFLUX_URL")
    token = _env("WEARWATCH_INFLUX_TOKEN")
    org = _env("WEARWATCH_INFLUX_ORG")
    bucket = _env("WEARWATCH_INFLUX_BUCKET")
    measurement = f"smoke_{run_id}"
    now_ns = time.time_ns()
    with InfluxDBClient(url=url, token=token, org=org, timeout=10_000) as client:
        assert client.ping()  # /ping answers (health() is deprecated)
        points = [
            Point(measurement)
            .tag("patient", f"p{i}")
            .field("value", 60.0 + i)
            .time(now_ns - i * 1_000_000_000, WritePrecision.NS)
            for i in range(3)
        ]
        client.write_api(write_options=SYNCHRONOUS).write(bucket=bucket, record=points)
        flux = f'''
            from(bucket: "{bucket}/autogen")
              |> range(start: -1h)
              |> filter(fn: (r) => r._measurement == "{measurement}")
        '''
        records = [r for table in client.query_api().query(flux) for r in table.records]
        assert len(records) == 3
        assert sorted(r.get_value() for r in records) == [60.0, 61.0, 62.0]
        assert sorted(r.values["patient"] for r in records) == ["p0", "p1", "p2"]
        # the plain database name works as a bucket for Flux too
        plain = client.query_api().query(flux.replace(f"{bucket}/autogen", bucket))
        assert sum(len(t.records) for t in plain) == 3

    import urllib.parse
    import urllib.request

    user, _, password = token.partition(":")
    req = urllib.request.Request(
        f"{url}/query?"
        + urllib.parse.urlencode({"db": bucket, "u": user, "p": password, "q": f'DROP MEASUREMENT "{measurement}"'}),
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200

    # auth is on: a wrong token cannot write
    with InfluxDBClient(url=url, token="nobody:nothing", org=org, timeout=10_000) as bad, pytest.raises(InfluxDBError):
        bad.write_api(write_options=SYNCHRONOUS).write(bucket=bucket, record=f"{measurement} value=1")
