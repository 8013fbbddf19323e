"""Alert delivery: MQTT topics, command parsing and publisher; webhook sink; ward enrollment."""

from __future__ import annotations

import http.server
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from alerts.enrollment import UNASSIGNED, Enrollment, load_enrollment
from alerts.lifecycle import AlertBook
from alerts.models import AlertEvent
from alerts.mqtt import MqttAlertPublisher, alert_topic, attach_command_handlers
from alerts.webhook import WebhookSink
from detectors.base import Audience, Finding, Priority
from detectors.config import DetectorConfig
from wearwatch.contract.commands import (
    ACK_TOPIC_FILTER,
    SNOOZE_TOPIC_FILTER,
    Ack,
    InvalidCommand,
    Snooze,
    ack_topic,
    parse_ack,
    parse_snooze,
)
from wearwatch.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000_000
MIN = 60_000
PID = "p-0042"
AID = "al-7c35ac37f0732fad6862"
ACK_T = f"wearwatch/v1/acks/3B/{PID}"


def make_event(**kw: Any) -> AlertEvent:
    base: dict[str, Any] = dict(
        alert_id=AID, state="open", patient_id=PID, signal="glucose", kind="glucose_urgent_low", priority="high",
        audience="clinical", source="rule", message="glucose 50 mg/dL", ts_ms=T0, onset_ms=T0, emitted_ms=T0,
        explanation={"value": 50.0}, ward="3B", audience_route="clinical", cause="onset", notified=1,
    )
    base.update(kw)
    return AlertEvent(**base)


# --- topics and commands ----------------------------------------------------------------------


def test_topics() -> None:
    assert alert_topic("3B", PID) == "wearwatch/v1/alerts/3B/p-0042"
    assert ack_topic("3B", PID) == ACK_T
    assert ACK_TOPIC_FILTER == "wearwatch/v1/acks/+/+"
    assert SNOOZE_TOPIC_FILTER == "wearwatch/v1/snoozes/+/+"
    for bad in ("", "a+b", "a#", "a/b", "x" * 65, "sp ace"):
        with pytest.raises(ValueError):
            alert_topic(bad, PID)
        with pytest.raises(ValueError):
            alert_topic("3B", bad)


@pytest.mark.parametrize(
    "payload",
    [
        {"alert_id": AID, "by": "nurse.kim", "ts": T0},
        {"alert_id": AID, "by": "nurse.kim", "ts": "2027-01-15T08:00:00Z"},
        {"alert_id": AID, "by": "nurse.kim", "ts": "2027-01-15T09:00:00+01:00"},
        {"schema_version": 1, "alert_id": AID, "by": "kim@ward3b", "ts": T0},
    ],
)
def test_parse_ack_valid(payload: dict[str, Any]) -> None:
    ack = parse_ack(ACK_T, orjson.dumps(payload))
    assert isinstance(ack, Ack)
    assert (ack.ward, ack.patient_id, ack.alert_id, ack.ts_ms) == ("3B", PID, AID, T0)
    assert ack.by == payload["by"]
    assert Ack.model_validate_json(ack.to_json()) == ack
    with pytest.raises(Exception, match="frozen"):
        ack.by = "other"


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "detail"),
    [
        ("wearwatch/v1/alerts/3B/p-0042", b'{"alert_id":"%s","by":"k","ts":1}' % AID.encode(), "bad_topic", "acks"),
        ("wearwatch/v1/acks/3B", b"{}", "bad_topic", "ward"),
        ("wearwatch/v1/acks/3B/p-0042/x", b"{}", "bad_topic", "ward"),
        ("wearwatch/v1/acks/3 B/p-0042", b"{}", "bad_topic", "ward"),
        (ACK_T, b"not json", "invalid_json", "JSON"),
        (ACK_T, b"\xff\xfe", "invalid_json", "JSON"),
        (ACK_T, b'["al-7c35ac37f0732fad6862"]', "invalid_json", "object"),
        (ACK_T, b'{"alert_id":"%s","by":"kim"}' % AID.encode(), "invalid_field", "missing field(s): ts"),
        (ACK_T, b'{"alert_id":"%s","by":"kim","ts":1,"note":"x"}' % AID.encode(), "invalid_field", "unknown"),
        (ACK_T, b'{"alert_id":"al-XYZ","by":"kim","ts":1}', "invalid_field", "alert_id"),
        (ACK_T, b'{"alert_id":"%s","by":"","ts":1}' % AID.encode(), "invalid_field", "by"),
        (ACK_T, b'{"alert_id":"%s","by":7,"ts":1}' % AID.encode(), "invalid_field", "by"),
        (ACK_T, b'{"alert_id":"%s","by":"kim","ts":-5}' % AID.encode(), "invalid_field", "ts must be positive"),
        (ACK_T, b'{"alert_id":"%s","by":"kim","ts":true}' % AID.encode(), "invalid_field", "ts must be"),
        (ACK_T, b'{"alert_id":"%s","by":"kim","ts":"yesterday"}' % AID.encode(), "invalid_field", "RFC 3339"),
        (ACK_T, b'{"alert_id":"%s","by":"kim","ts":"2027-01-15T08:00:00"}' % AID.encode(), "invalid_field",
         "offset"),
        (ACK_T, b'{"schema_version":2,"alert_id":"%s","by":"kim","ts":1}' % AID.encode(), "invalid_field",
         "schema_version"),
        (ACK_T, b'{"alert_id":"%s","by":"kim","ts":1,"pad":"' % AID.encode() + b"x" * 5000 + b'"}', "too_large",
         "4096"),
    ],
)
def test_parse_ack_invalid(topic: str, payload: bytes, reason: str, detail: str) -> None:
    with pytest.raises(InvalidCommand) as info:
        parse_ack(topic, payload)
    assert info.value.reason == reason
    assert detail in info.value.detail
    assert PID not in str(info.value)  # errors never echo the patient id


def test_parse_snooze() -> None:
    s = parse_snooze("wearwatch/v1/snoozes/3B/p-0042",
                     b'{"kind":"glucose_high","until":%d,"by":"kim","ts":%d}' % (T0 + 30 * MIN, T0))
    assert isinstance(s, Snooze)
    assert (s.patient_id, s.kind, s.until_ms, s.by, s.ts_ms) == (PID, "glucose_high", T0 + 30 * MIN, "kim", T0)
    with pytest.raises(InvalidCommand, match="kind"):
        parse_snooze("wearwatch/v1/snoozes/3B/p-0042", b'{"kind":"Glucose High","until":1,"by":"kim","ts":1}')
    with pytest.raises(InvalidCommand, match="bad_topic"):
        parse_snooze(ACK_T, b'{"kind":"glucose_high","until":1,"by":"kim","ts":1}')


# --- MQTT publisher (without a broker) ------------------------------------------------------------


class FakeInfo:
    def __init__(self, rc: int) -> None:
        self.rc = rc


class FakeClient:
    def __init__(self, rc: int = 0) -> None:
        self.rc = rc
        self.published: list[tuple[str, bytes, int, bool]] = []
        self.subscribed: list[Any] = []
        self.on_connect: Any = None
        self.on_message: Any = None
        self.max_queued = 0

    def max_queued_messages_set(self, n: int) -> None:
        self.max_queued = n

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> FakeInfo:
        self.published.append((topic, payload, qos, retain))
        return FakeInfo(self.rc)

    def subscribe(self, subs: Any) -> None:
        self.subscribed.append(subs)


def test_publisher_retained_state_from_alert_book() -> None:
    client = FakeClient()
    pub = MqttAlertPublisher(client, max_queued=500)
    assert client.max_queued == 500
    book = AlertBook(PID, ward="3B")
    f = Finding("glucose_urgent_low", "glucose", Priority.HIGH, Audience.CLINICAL, T0, T0, "rule", "glucose 50")
    [ev] = book.on_finding(f, T0)
    assert pub.publish_state("3B", PID, book.open_alerts(), T0)
    topic, payload, qos, retain = client.published[-1]
    assert (topic, qos, retain) == ("wearwatch/v1/alerts/3B/p-0042", 1, True)
    doc = orjson.loads(payload)
    assert {k: v for k, v in doc.items() if k != "alerts"} == {
        "schema_version": 1, "patient_id": PID, "ward": "3B", "updated_ms": T0}
    assert [AlertEvent.model_validate(a) for a in doc["alerts"]] == [ev]
    # resolved: an explicit empty list, still retained
    book.on_finding(Finding("glucose_urgent_low", "glucose", Priority.HIGH, Audience.CLINICAL, T0 + MIN, T0,
                            "rule", "back up", cleared=True))
    pub.publish_state("3B", PID, book.open_alerts(), T0 + MIN)
    assert orjson.loads(client.published[-1][1])["alerts"] == []
    assert client.published[-1][3] is True
    # discharge: the retained message is deleted with an empty payload
    pub.clear_state("3B", PID)
    assert client.published[-1] == ("wearwatch/v1/alerts/3B/p-0042", b"", 1, True)
    assert pub.stats == {"published": 3, "dropped": 0, "errors": 0}


def test_publisher_notify_routes() -> None:
    client = FakeClient()
    pub = MqttAlertPublisher(client)
    assert pub.publish_event(make_event())
    assert pub.publish_event(make_event(audience_route="charge_nurse", escalated=True, cause="escalated"))
    assert pub.publish_event(make_event(audience="device", audience_route="device", ward=None))
    assert not pub.publish_event(make_event(notify=False, cause="acknowledged", state="acknowledged"))
    assert [(t, r) for t, _p, _q, r in client.published] == [
        ("wearwatch/v1/notify/3B/clinical", False),
        ("wearwatch/v1/notify/3B/charge_nurse", False),
        ("wearwatch/v1/notify/3B/clinical", False),
        ("wearwatch/v1/notify/unassigned/device", False),
    ]
    assert AlertEvent.from_json(client.published[1][1]).escalated
    assert pub.stats["published"] == 4


def test_publisher_bounded_queue_with_real_unconnected_client() -> None:
    """A real paho client that is not connected: publishes queue up to the bound, then are dropped — never block."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ww-test-unconnected", protocol=mqtt.MQTTv5)
    pub = MqttAlertPublisher(client, max_queued=3)
    started = time.monotonic()
    results = [pub.publish_state("3B", f"p-{i}", [], T0) for i in range(10)]
    assert time.monotonic() - started < 1.0
    assert results == [True] * 3 + [False] * 7
    assert pub.stats == {"published": 3, "dropped": 7, "errors": 0}


def test_attach_command_handlers() -> None:
    client = FakeClient()
    acks: list[Ack] = []
    snoozes: list[Snooze] = []
    bad: list[tuple[str, str]] = []
    attach_command_handlers(client, acks.append, snoozes.append, lambda t, e: bad.append((t, e.reason)))
    client.on_connect(client, None, None, None, None)
    assert client.subscribed == [[(ACK_TOPIC_FILTER, 1), (SNOOZE_TOPIC_FILTER, 1)]]

    class Msg:
        def __init__(self, topic: str, payload: bytes) -> None:
            self.topic, self.payload = topic, payload

    client.on_message(client, None, Msg(ACK_T, b'{"alert_id":"%s","by":"kim","ts":%d}' % (AID.encode(), T0)))
    client.on_message(client, None, Msg(ACK_T, b"{"))
    client.on_message(client, None, Msg("wearwatch/v1/snoozes/3B/p-0042",
                                        b'{"kind":"glucose_high","until":%d,"by":"kim","ts":%d}' % (T0 + MIN, T0)))
    assert [a.alert_id for a in acks] == [AID]
    assert [s.kind for s in snoozes] == ["glucose_high"]
    assert bad == [(ACK_T, "invalid_json")]
    # the parsed ack drives the patient's book
    book = AlertBook(PID, ward="3B")
    f = Finding("glucose_urgent_low", "glucose", Priority.HIGH, Audience.CLINICAL, T0, T0, "rule", "low")
    [op] = book.on_finding(f)
    assert [e.state for e in book.ack(op.alert_id, acks[0].by, T0 + MIN)] == ["acknowledged"]


# --- webhook --------------------------------------------------------------------------------------
SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"  # a 24-byte test key (signatures: tests/test_webhook_signing.py)


class _Handler(http.server.BaseHTTPRequestHandler):
    fail_first: ClassVar[int] = 0
    status_on_fail: ClassVar[int] = 500
    requests: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    lock: ClassVar[threading.Lock] = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.lock:
            type(self).requests.append((dict(self.headers), body))
            n = len(type(self).requests)
        code = self.status_on_fail if n <= self.fail_first else 200
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {"requests": [], "fail_first": 0, "status_on_fail": 500})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_retries_then_succeeds(http_server: tuple[str, type[_Handler]]) -> None:
    url, handler = http_server
    handler.fail_first = 2
    sink = WebhookSink(url, secret=SECRET, max_attempts=5, backoff_initial_s=0.05, timeout_s=2.0,
                       headers={"Authorization": "t"})
    ev = make_event()
    started = time.monotonic()
    sink.submit(ev)
    assert sink.flush(10.0)
    elapsed = time.monotonic() - started
    sink.close()
    assert len(handler.requests) == 3  # 500, 500, 200
    assert sink.stats == {"submitted": 1, "sent": 1, "failed": 0, "dropped": 0, "attempts": 3}
    assert elapsed >= 0.05 + 0.1  # backoff 0.05 s then 0.1 s
    headers, body = handler.requests[-1]
    assert AlertEvent.from_json(body) == ev
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Wearwatch-Event-Id"] == ev.event_id
    assert headers["Authorization"] == "t"


def test_webhook_gives_up_and_does_not_retry_client_errors(
    http_server: tuple[str, type[_Handler]], caplog: pytest.LogCaptureFixture
) -> None:
    url, handler = http_server
    handler.fail_first = 100
    handler.status_on_fail = 503
    sink = WebhookSink(url, secret=SECRET, max_attempts=3, backoff_initial_s=0.01)
    with caplog.at_level(logging.WARNING, logger="alerts.webhook"):
        sink.submit(make_event())
        assert sink.flush(10.0)
        assert (len(handler.requests), sink.stats["failed"], sink.stats["attempts"]) == (3, 1, 3)
        handler.status_on_fail = 400  # a client error is not retried
        sink.submit(make_event(revision=1))
        assert sink.flush(10.0)
    sink.close()
    assert (len(handler.requests), sink.stats["failed"], sink.stats["attempts"]) == (4, 2, 4)
    messages = [r.getMessage() for r in caplog.records]
    assert any("HTTP 503" in m for m in messages) and any("HTTP 400" in m for m in messages)
    assert not any(PID in m or AID in m for m in messages)  # no patient data in logs


def test_webhook_unresponsive_endpoint_never_blocks_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    # a listening socket that never accepts: connections hang until the client's timeout
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        sink = WebhookSink(url, secret=SECRET, max_queue=10, max_attempts=3, backoff_initial_s=0.1, timeout_s=0.5)
        started = time.monotonic()
        for i in range(100):
            sink.submit(make_event(revision=i))
        submit_s = time.monotonic() - started
        assert submit_s < 0.5
        assert sink.pending() <= 11  # bounded: 10 queued + 1 in flight
        assert not sink.flush(0.2)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="alerts.webhook"):
            sink.close(timeout_s=2.0)
        assert time.monotonic() - started < 2.5
    st = sink.stats
    assert st["submitted"] == 100 and st["sent"] == 0
    assert st["dropped"] + st["failed"] + (1 if st["attempts"] else 0) >= 99
    assert st["dropped"] >= 89


def test_webhook_refused_connection_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    sink = WebhookSink(f"http://127.0.0.1:{port}/", secret=SECRET, max_attempts=4, backoff_initial_s=0.01)
    with caplog.at_level(logging.WARNING, logger="alerts.webhook"):
        sink.submit({"alert_id": AID})
        assert sink.flush(10.0)
    sink.close()
    assert (sink.stats["attempts"], sink.stats["failed"]) == (4, 1)
    assert "after 4 attempt(s)" in caplog.text and "127.0.0.1" in caplog.text


# --- enrollment -------------------------------------------------------------------------------------


def test_enrollment_example_file() -> None:
    e = load_enrollment(ROOT / "deploy" / "enrollment.example.csv")
    assert e.ward_for("p-0001") == "3B"
    assert e.ward_for("p-0003") == "ICU"
    assert e.ward_for("p-9999") == UNASSIGNED
    assert e.overrides_for("p-0002") == {"glucose_low_mgdl": 75}
    assert e.overrides_for("p-0001") == {} == e.overrides_for("p-9999")
    assert e.detector_config_for("p-0003").hr_rest_high_bpm == 110.0
    assert e.detector_config_for("p-0004").models_enabled is False
    assert e.detector_config_for("p-9999") == DetectorConfig()
    assert e.wards() == {"3B": 2, "ICU": 2, "cardio-2": 1}
    assert "p-0005" in e and len(e) == 5


def test_enrollment_from_env(tmp_path: Path) -> None:
    f = tmp_path / "enr.csv"
    f.write_text("patient_id,ward\np-1,3B\n")
    assert load_enrollment(environ={"WEARWATCH_ENROLLMENT_FILE": str(f)}).ward_for("p-1") == "3B"
    assert len(load_enrollment(environ={"WEARWATCH_ENROLLMENT_FILE": ""})) == 0
    with pytest.raises(ConfigError, match="cannot read"):
        load_enrollment(tmp_path / "missing.csv")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty enrollment"),
        ("ward,patient_id\n", "header"),
        ("patient_id,ward,overrides_json\np-1\n", ":2: expected 2 or 3 columns"),
        ("patient_id,ward,overrides_json\np-1,3B,,extra\n", ":2: expected 2 or 3 columns"),
        ("patient_id,ward,overrides_json\np 1,3B,\n", ":2: patient_id"),
        ("patient_id,ward,overrides_json\np-1,ward/3,\n", ":2: ward"),
        ("patient_id,ward,overrides_json\np-1,3B,\n# c\np-1,ICU,\n", ":4: patient enrolled twice"),
        ("patient_id,ward,overrides_json\np-1,3B,{bad\n", ":2: overrides_json is not valid JSON"),
        ("patient_id,ward,overrides_json\np-1,3B,[1]\n", "JSON object"),
        ('patient_id,ward,overrides_json\np-1,3B,"{""nope"": 1}"\n', "unknown detector setting"),
        ('patient_id,ward,overrides_json\np-1,3B,"{""glucose_low_mgdl"": ""75""}"\n', "glucose_low_mgdl must be"),
        ('patient_id,ward,overrides_json\np-1,3B,"{""hr_median_window"": 5.5}"\n', "hr_median_window must be"),
        ('patient_id,ward,overrides_json\np-1,3B,"{""models_enabled"": 1}"\n', "models_enabled must be"),
    ],
)
def test_enrollment_errors_name_the_line(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Enrollment.from_text(text, source="enr.csv")


# --- on the real broker (make test-stack) ------------------------------------------------------------


def _stack_env() -> tuple[Any, str]:
    from wearwatch.config import load_settings

    nurse_pw = os.environ.get("STACK_MQTT_PASSWORD_NURSE")
    if not os.environ.get("WEARWATCH_MQTT_PASSWORD") or not nurse_pw:
        pytest.fail("stack credentials missing: run through `make test-stack` (sources .stack/credentials.env)")
    return load_settings(), nurse_pw


def _nurse_client(settings: Any, password: str, run: str) -> Any:
    from wearwatch.transport import mqtt_client

    return mqtt_client(settings, f"ww-nurse-{run}", username="nurse", password=password)


@pytest.mark.stack
def test_stack_retained_state_reaches_a_late_nurse_app() -> None:
    from wearwatch.transport import mqtt_connect

    settings, nurse_pw = _stack_env()
    run = uuid.uuid4().hex[:8]
    ward, pid = f"w{run}", f"p-{run}"
    pub = MqttAlertPublisher.from_settings(settings, f"ww-alerts-{run}", username=settings.alerts_mqtt_username,
                                         password=settings.alerts_mqtt_password)  # the worker's account
    nurse = _nurse_client(settings, nurse_pw, run)
    got: list[tuple[str, bytes, bool]] = []
    arrived = threading.Event()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        got.append((msg.topic, msg.payload, bool(msg.retain)))
        arrived.set()

    try:
        book = AlertBook(pid, ward=ward)
        f = Finding("glucose_urgent_low", "glucose", Priority.HIGH, Audience.CLINICAL, T0, T0, "rule", "low")
        [ev] = book.on_finding(f)
        assert pub.publish_state(ward, pid, book.open_alerts(), T0)
        time.sleep(0.5)  # the state is retained before the nurse app connects
        nurse.on_message = on_message
        mqtt_connect(nurse, settings)
        nurse.subscribe(f"wearwatch/v1/alerts/{ward}/+", qos=1)
        assert arrived.wait(10), "no retained state received"
        topic, payload, retained = got[0]
        assert (topic, retained) == (alert_topic(ward, pid), True)
        assert [AlertEvent.model_validate(a) for a in orjson.loads(payload)["alerts"]] == [ev]
    finally:
        pub.clear_state(ward, pid)
        time.sleep(0.3)
        pub.close()
        nurse.disconnect()
        nurse.loop_stop()


@pytest.mark.stack
def test_stack_nurse_ack_is_received_and_parsed() -> None:
    from wearwatch.transport import mqtt_client, mqtt_connect

    settings, nurse_pw = _stack_env()
    run = uuid.uuid4().hex[:8]
    ward, pid = f"w{run}", f"p-{run}"
    listener = mqtt_client(settings, f"ww-acks-{run}")
    acks: list[Ack] = []
    got = threading.Event()

    def on_ack(a: Ack) -> None:
        acks.append(a)
        got.set()

    attach_command_handlers(listener, on_ack)
    mqtt_connect(listener, settings)
    nurse = _nurse_client(settings, nurse_pw, run)
    mqtt_connect(nurse, settings)
    try:
        time.sleep(0.5)  # subscription in place
        nurse.publish(ack_topic(ward, pid), orjson.dumps({"alert_id": AID, "by": "nurse.kim", "ts": T0}), qos=1)
        assert got.wait(10), "ack not received"
        assert (acks[0].ward, acks[0].patient_id, acks[0].alert_id, acks[0].by) == (ward, pid, AID, "nurse.kim")
    finally:
        for c in (listener, nurse):
            c.disconnect()
            c.loop_stop()


def test_publisher_on_connected_client_warns_that_the_bound_is_not_applied(caplog: pytest.LogCaptureFixture) -> None:
    class Connected(FakeClient):
        def max_queued_messages_set(self, n: int) -> None:
            raise RuntimeError("updating max_queued_messages on established connection is not supported")

    with caplog.at_level(logging.WARNING, logger="alerts.mqtt"):
        pub = MqttAlertPublisher(Connected())
    assert "queue bound not applied" in caplog.text
    assert pub.publish_state("3B", PID, [], T0)
