"""The gateway's HTTP server without services: health and readiness, Prometheus metrics (exact counts,
no identifiers in them), the FHIR endpoint's bearer tokens (401/403/201) and its CapabilityStatement.

Kafka is replaced by a recording producer here (the real one is exercised by
tests/integration/test_gateway_ops.py on the local stack)."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from ingest.fhir import observation_for
from ingest.gateway import KAFKA_STALL_S, Gateway, _Pending
from ingest.http_server import ROUTES, GatewayHttpServer
from ingest.tokens import new_token
from wearwatch.config import load_settings

ACME, ACME_REC = new_token("acme")
BETA, BETA_REC = new_token("beta")
GONE, GONE_REC = new_token("acme")


class _Future:
    def get(self, timeout: float) -> None:
        return None

    def add_callback(self, fn: Any, *args: Any) -> None:
        fn(*args, None)

    def add_errback(self, fn: Any, *args: Any) -> None:
        pass


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    def send(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> _Future:
        self.sent.append((topic, key, value))
        return _Future()


class Client:
    def __init__(self, gw: Gateway, port: int, producer: _Producer) -> None:
        self.gw, self.port, self.producer = gw, port, producer

    def call(self, method: str, path: str, body: Any = None, token: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            h = dict(headers or {})
            if body is not None:
                h.setdefault("Content-Type", "application/fhir+json")
            if token is not None:
                h["Authorization"] = f"Bearer {token}"
            conn.request(method, path, body=orjson.dumps(body) if body is not None else None, headers=h)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value from GET /metrics (0 if absent)."""
        _, _, text = self.call("GET", "/metrics")
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        for line in text.decode().splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            if _canonical(series) == want:
                return float(value)
        return 0.0


def _canonical(series: str) -> str:
    if "{" not in series:
        return series
    name, _, rest = series.partition("{")
    pairs = sorted(p for p in rest.rstrip("}").split(",") if p)
    return name + "{" + ",".join(pairs) + "}"


@pytest.fixture
def client() -> Iterator[Client]:
    gw = Gateway(load_settings({}, topic_prefix="t."))
    producer = _Producer()
    for rec in (ACME_REC, BETA_REC, GONE_REC.model_copy(update={"revoked_ms": 1})):
        gw.tokens.table.apply(rec)
    server = GatewayHttpServer(("127.0.0.1", 0), sink=gw, telemetry=gw.telemetry, metrics=gw.metrics,
                               tokens=gw.tokens.table, version="9.9")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Client(gw, server.server_address[1], producer)
    finally:
        server.shutdown()
        server.server_close()


def _ready(gw: Gateway, producer: _Producer) -> None:
    gw._producer = producer
    gw._subscribed.set()
    gw.tokens._caught_up.set()
    gw.enrollment._caught_up.set()
    gw.datakeys.follower._caught_up.set()


def test_health_and_readiness(client: Client) -> None:
    gw = client.gw
    status, headers, body = client.call("GET", "/healthz")
    assert status == 200 and headers["content-type"] == "application/json"
    status, _, body = client.call("GET", "/readyz")
    doc = orjson.loads(body)
    assert status == 503 and doc["ready"] is False
    assert {k: v["ready"] for k, v in doc["checks"].items()} == {"mqtt": False, "kafka": False, "tokens": False,
                                                                   "enrollment": False, "datakeys": False}
    assert doc["checks"]["mqtt"]["detail"] == "not connected yet"
    assert client.metric("wearwatch_ready", component="gateway") == 0.0

    _ready(gw, client.producer)
    status, _, body = client.call("GET", "/readyz")
    assert status == 200 and orjson.loads(body)["ready"] is True
    assert client.metric("wearwatch_ready", component="gateway") == 1.0
    assert client.metric("wearwatch_ready_check", component="gateway", check="tokens") == 1.0
    assert client.metric("wearwatch_gateway_mqtt_connected") == 1.0

    # a message Kafka has not acknowledged for longer than KAFKA_STALL_S makes the gateway not ready
    stuck = _Pending(1, 1, [("t.vitals.raw", b"k", b"v")])
    stuck.born = time.monotonic() - KAFKA_STALL_S - 1
    gw._inflight.add(stuck)
    status, _, body = client.call("GET", "/readyz")
    kafka = orjson.loads(body)["checks"]["kafka"]
    assert status == 503 and kafka["ready"] is False and "1 message(s) waiting for Kafka" in kafka["detail"]
    assert client.metric("wearwatch_gateway_inflight_messages") == 1.0
    gw._inflight.clear()
    # Kafka silent (the token follower's end-offset questions unanswered) while nothing flows
    gw.tokens.last_contact = time.monotonic() - 25
    status, _, body = client.call("GET", "/readyz")
    kafka = orjson.loads(body)["checks"]["kafka"]
    assert status == 503 and kafka["detail"] == "no answer from Kafka for 25 s"
    gw.tokens.last_contact = time.monotonic()
    assert client.call("GET", "/readyz")[0] == 200
    gw._on_disconnect(None, None, None, "Unspecified error", None)  # the broker went away
    status, _, body = client.call("GET", "/readyz")
    mqtt = orjson.loads(body)["checks"]["mqtt"]
    assert status == 503 and mqtt == {"ready": False, "detail": "disconnected (Unspecified error); reconnecting"}
    assert client.metric("wearwatch_gateway_mqtt_connected") == 0.0
    assert client.metric("wearwatch_gateway_mqtt_disconnects_total") == 1.0


def test_fhir_needs_a_vendor_token(client: Client) -> None:
    _ready(client.gw, client.producer)
    obs = observation_for("p-auth-1", "heart_rate", 72, int(time.time() * 1000) - 60_000, device_id="watch-9")
    status, headers, body = client.call("POST", "/fhir/Observation", obs)
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="wearwatch"'
    assert orjson.loads(body)["issue"][0]["code"] == "login"
    assert client.call("POST", "/fhir/Observation", obs, headers={"Authorization": f"Basic {ACME}"})[0] == 401
    status, headers, _ = client.call("POST", "/fhir/Observation", obs, token=ACME[:-2] + "xx")
    assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    assert client.call("POST", "/fhir/Observation", obs, token="not-a-token")[0] == 401
    status, _, body = client.call("POST", "/fhir/Observation", obs, token=GONE)
    assert status == 403 and orjson.loads(body)["issue"][0]["diagnostics"] == "this token was revoked"
    assert client.call("POST", "/fhir/acme/Observation", obs, token=BETA)[0] == 403  # another vendor's base
    assert client.call("POST", "/fhir/acme", {"resourceType": "Bundle", "type": "batch"}, token=BETA)[0] == 403
    assert client.producer.sent == []  # nothing refused reached Kafka

    assert client.call("POST", "/fhir/Observation", obs, token=ACME)[0] == 201
    assert client.call("POST", "/fhir/beta/Observation", obs, token=BETA)[0] == 201
    vendors = [orjson.loads(v)["vendor"] for _, _, v in client.producer.sent]
    assert vendors == ["acme", "beta"]  # the token's vendor, whatever the payload says
    assert {k: client.metric("wearwatch_gateway_fhir_requests_total", status=k) for k in ("201", "401", "403")} == {
        "201": 2.0, "401": 4.0, "403": 3.0}
    assert client.metric("wearwatch_readings_total", signal="heart_rate") == 2.0


def test_routes_metadata_and_methods(client: Client) -> None:
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    for path in ("/fhir/metadata", "/fhir/acme/metadata"):
        status, headers, body = client.call("GET", path)  # no token needed
        assert status == 200 and headers["content-type"] == "application/fhir+json"
        cs = CapabilityStatement.model_validate_json(body)
        rest = cs.rest[0]
        assert cs.software.version == "9.9"
        assert [(r.type, [i.code for i in r.interaction]) for r in rest.resource] == [("Observation", ["create"])]
        assert sorted(i.code for i in rest.interaction) == ["batch", "transaction"]
        assert "Bearer" in rest.security.service[0].text
    assert client.call("GET", "/fhir/Observation")[0] == 405
    assert client.call("POST", "/fhir/metadata", {}, token=ACME)[0] == 404
    assert client.call("POST", "/fhir/Patient", {}, token=ACME)[0] == 404  # a FHIR type is never a vendor
    assert client.call("GET", "/nothing")[0] == 404
    assert client.call("DELETE", "/fhir/Observation")[0] == 405
    status, headers, body = client.call("GET", "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    assert {m for m, _ in ROUTES} == {"GET", "POST"}


def test_mqtt_path_metrics_are_exact_and_carry_no_identifiers(client: Client) -> None:
    gw = client.gw
    now = int(time.time() * 1000)
    ok = [{"patient_id": "PID-SECRET-1", "signal": "heart_rate", "value": 70, "unit": "bpm", "ts": now - 1000 * i}
          for i in range(5)]
    ok.append({"patient_id": "PID-SECRET-2", "signal": "glucose", "value": 5.5, "unit": "mmol/L", "ts": now})
    bad_unit = {"patient_id": "PID-SECRET-1", "signal": "heart_rate", "value": 70, "unit": "mg/dL", "ts": now}
    topic = "wearwatch/v1/vitals/vendor-x/DEVICE-SECRET"
    gw.records_for(topic, orjson.dumps(ok))  # accepted
    gw.records_for(topic, orjson.dumps([*ok[:2], bad_unit]))  # partial
    gw.records_for(topic, b"{not json")  # dead-lettered
    gw.records_for("wearwatch/v1/acks/3B/PID-SECRET-1", b'{"alert_id": "al-x"}')  # bad command
    assert client.metric("wearwatch_readings_total", signal="heart_rate") == 7.0
    assert client.metric("wearwatch_readings_total", signal="glucose") == 1.0
    assert client.metric("wearwatch_readings_total", signal="steps") == 0.0
    assert client.metric("wearwatch_dead_letters_total", reason="unit_mismatch") == 1.0
    assert client.metric("wearwatch_dead_letters_total", reason="invalid_json") == 1.0
    for outcome, n in (("accepted", 1.0), ("partial", 1.0), ("dead_lettered", 1.0)):
        assert client.metric("wearwatch_gateway_messages_total", kind="vitals", outcome=outcome) == n
    assert client.metric("wearwatch_gateway_messages_total", kind="command", outcome="dead_lettered") == 1.0
    _, _, text = client.call("GET", "/metrics")
    for ident in (b"PID-SECRET", b"DEVICE-SECRET", b"vendor-x", b"3B", b"al-x", ACME_REC.token_id.encode()):
        assert ident not in text


def test_kafka_ack_latency_is_observed(client: Client) -> None:
    gw = client.gw
    _ready(gw, client.producer)
    before = client.metric("wearwatch_gateway_kafka_ack_seconds_count")
    assert gw._produce_and_wait([("t.vitals.raw", b"k", b"v")] * 3, 1.0)
    assert client.metric("wearwatch_gateway_kafka_ack_seconds_count") == before + 3
    assert client.metric("wearwatch_gateway_kafka_ack_seconds_bucket", le="+Inf") == before + 3


def test_metric_labels_never_identify() -> None:
    from prometheus_client import CollectorRegistry

    from wearwatch.metrics import _counter

    with pytest.raises(ValueError, match="must not identify"):
        _counter("wearwatch_x", "x", ["patient_id"], CollectorRegistry())


def test_settings_of_the_http_server() -> None:
    from wearwatch.errors import ConfigError

    s = load_settings({})
    assert (s.gateway_http_host, s.gateway_http_port) == ("127.0.0.1", 8081)
    assert load_settings({"WEARWATCH_GATEWAY_HTTP_PORT": "0"}).gateway_http_port == 0  # any free port
    for old in ("WEARWATCH_FHIR_HTTP_PORT", "WEARWATCH_FHIR_HTTP_HOST"):  # renamed: refused, never ignored
        with pytest.raises(ConfigError, match=f"{old} is no longer read; use WEARWATCH_GATEWAY_HTTP_"):
            load_settings({old: "8090"})


def test_port_in_use_is_a_clear_error() -> None:
    import socket

    from wearwatch.errors import ConfigError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        gw = Gateway(load_settings({"WEARWATCH_GATEWAY_HTTP_PORT": str(busy.getsockname()[1])}))
        with pytest.raises(ConfigError, match="cannot listen"):
            gw._start_http()
