"""Prometheus metrics and readiness, shared by every wearwatch process.

Each process (gateway, worker, console) builds one :class:`Telemetry`: its own
:class:`prometheus_client.CollectorRegistry` holding the process collectors
(``process_resident_memory_bytes``, ``process_cpu_seconds_total``, …), its
:class:`Readiness` checks (exported as ``wearwatch_ready{component}`` and
``wearwatch_ready_check{component,check}``), and the metric families of its
role (:class:`GatewayMetrics`, :class:`WorkerMetrics`). The HTTP side only
calls :func:`health_answer`, :func:`ready_answer` and :func:`exposition` for
``GET /healthz``, ``/readyz`` and ``/metrics``, so the worker and the console serve the
same answers from their own web servers (with these same paths: :data:`HEALTH_PATH`, …).

Names follow Prometheus conventions: ``wearwatch_`` prefix, base units
(seconds), ``_total`` for counters (added by prometheus-client). Labels hold
only bounded, non-identifying values — a signal, a dead-letter reason, an alert
kind, an HTTP status, a partition number; never a patient, device or vendor id
(:data:`FORBIDDEN_LABELS` is refused when a family is defined, and the tests
scrape a gateway that took readings and look for the ids).

This module is the bottom layer: it imports prometheus-client and nothing of
wearwatch's, so any package may use it.

>>> t = Telemetry("gateway")
>>> m = GatewayMetrics(t.registry)
>>> m.readings.labels(signal="glucose").inc(3)
>>> t.readiness.register("mqtt", lambda: (False, "not connected"))
>>> t.readiness.status()
(False, {'mqtt': {'ready': False, 'detail': 'not connected'}})
>>> body, ctype = exposition(t.registry, "")
>>> b'wearwatch_readings_total{signal="glucose"} 3.0' in body, b'wearwatch_ready{component="gateway"} 0.0' in body
(True, True)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

__all__ = [
    "FORBIDDEN_LABELS",
    "HEALTH_PATH",
    "KAFKA_ACK_BUCKETS",
    "METRICS_PATH",
    "PROCESSING_BUCKETS",
    "READY_PATH",
    "BrokerStats",
    "GatewayMetrics",
    "Readiness",
    "Telemetry",
    "WorkerMetrics",
    "exposition",
    "health_answer",
    "ready_answer",
]

log = logging.getLogger(__name__)

# counters carry no ``_created`` series: every process starts them at 0 anyway, and they double the series count
prometheus_client.disable_created_metrics()

#: the routes every wearwatch HTTP server answers for operations
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"

#: label names that would identify a person or a device: refused for any wearwatch metric
FORBIDDEN_LABELS = frozenset({
    "patient", "patient_id", "pseudonym", "device", "device_id", "vendor", "user", "nurse", "alert_id", "token",
    "token_id", "topic_name", "mqtt_topic", "ip", "address",
})

#: Kafka acknowledgement (acks=all): a healthy cluster answers in milliseconds, a struggling one in seconds
KAFKA_ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
#: one worker batch (up to WEARWATCH_WORKER_BATCH_SIZE records)
PROCESSING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: a commit's state write, around the commit interval (2 s by default) that it should stay well within
STATE_WRITE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

Check = Callable[[], tuple[bool, str]]


def _labels(names: Sequence[str]) -> list[str]:
    bad = FORBIDDEN_LABELS.intersection(names)
    if bad:
        raise ValueError(f"metric labels must not identify people or devices: {sorted(bad)}")
    return list(names)


def _counter(name: str, doc: str, labels: Sequence[str], registry: CollectorRegistry) -> Counter:
    return Counter(name, doc, _labels(labels), registry=registry)


def _gauge(name: str, doc: str, labels: Sequence[str], registry: CollectorRegistry) -> Gauge:
    return Gauge(name, doc, _labels(labels), registry=registry)


def _histogram(name: str, doc: str, labels: Sequence[str], buckets: Iterable[float],
               registry: CollectorRegistry) -> Histogram:
    return Histogram(name, doc, _labels(labels), buckets=tuple(buckets), registry=registry)


class Readiness:
    """Named readiness checks of one process; ready only when every check passes.

    A check is a callable returning ``(ready, detail)``; it must be cheap and never block
    (it runs on every ``GET /readyz`` and every scrape). A check that raises counts as
    not ready, with the exception's class as detail. With no check registered the
    process is not ready (nothing said it is).
    """

    def __init__(self, component: str) -> None:
        self.component = component
        self._checks: dict[str, Check] = {}
        self._lock = threading.Lock()

    def register(self, name: str, check: Check) -> None:
        with self._lock:
            self._checks[name] = check

    def status(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        """``(ready, {check: {"ready": bool, "detail": str}})``."""
        with self._lock:
            checks = list(self._checks.items())
        out: dict[str, dict[str, Any]] = {}
        for name, check in checks:
            try:
                ok, detail = check()
            except Exception as exc:  # a broken check means "not ready", never a crashed probe
                ok, detail = False, f"check failed: {type(exc).__name__}"
            out[name] = {"ready": bool(ok), "detail": detail}
        return bool(out) and all(c["ready"] for c in out.values()), out


class _ReadinessCollector(Collector):
    def __init__(self, readiness: Readiness) -> None:
        self.readiness = readiness

    def collect(self) -> Iterable[Metric]:
        ok, checks = self.readiness.status()
        comp = self.readiness.component
        ready = GaugeMetricFamily("wearwatch_ready", "1 when the process is ready (every check passes), else 0",
                                  labels=["component"])
        ready.add_metric([comp], 1.0 if ok else 0.0)
        yield ready
        per = GaugeMetricFamily("wearwatch_ready_check", "1 when this readiness check passes, else 0",
                                labels=["component", "check"])
        for name, c in checks.items():
            per.add_metric([comp, name], 1.0 if c["ready"] else 0.0)
        yield per


class Telemetry:
    """One process's registry (with process/platform/GC collectors) and its :class:`Readiness`."""

    def __init__(self, component: str) -> None:
        self.component = component
        self.registry = CollectorRegistry(auto_describe=True)
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        prometheus_client.GCCollector(registry=self.registry)
        self.readiness = Readiness(component)
        self.registry.register(_ReadinessCollector(self.readiness))


def _shared(registry: CollectorRegistry) -> tuple[Counter, Counter]:
    readings = _counter("wearwatch_readings", "valid readings seen, by signal", ["signal"], registry)
    dead = _counter("wearwatch_dead_letters", "records sent to vitals.dlq, by reason", ["reason"], registry)
    for sig in ("heart_rate", "glucose", "steps"):  # the series exist from the start ("no readings" alerts see 0)
        readings.labels(signal=sig)
    return readings, dead


class BrokerStats(Collector):
    """What the MQTT broker holds, as the gateway last heard it from its ``$SYS`` topics:
    ``wearwatch_gateway_broker_stored_messages``, messages queued for its clients, in flight and retained. It has no
    sample until the broker has sent it (a broker that publishes no ``$SYS``, or an ACL that keeps it from the
    gateway), rather than a made-up 0. (What the broker drops is a plain counter of :class:`GatewayMetrics`.)

    >>> from prometheus_client import generate_latest
    >>> r = CollectorRegistry()
    >>> stats = BrokerStats(r)
    >>> "\\nwearwatch_gateway_broker_stored" in generate_latest(r).decode()
    False
    >>> stats.stored = 53
    >>> "\\nwearwatch_gateway_broker_stored_messages 53.0" in generate_latest(r).decode()
    True
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.stored: int | None = None
        registry.register(self)

    def collect(self) -> Iterable[Metric]:
        stored = GaugeMetricFamily("wearwatch_gateway_broker_stored_messages",
                                   "messages the MQTT broker holds: queued for its clients, in flight and retained")
        if self.stored is not None:
            stored.add_metric([], float(self.stored))
        yield stored


class GatewayMetrics:
    """The gateway's metric families (see the README's Operations section for each one's meaning)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.readings, self.dead_letters = _shared(r)
        self.messages = _counter(
            "wearwatch_gateway_messages",
            "MQTT messages handled, by kind (vitals, fhir, command) and outcome "
            "(accepted, partial: some readings dead-lettered, dead_lettered)", ["kind", "outcome"], r)
        self.kafka_ack_seconds = _histogram(
            "wearwatch_gateway_kafka_ack_seconds", "time from handing a record to the Kafka producer to its "
            "acknowledgement (acks=all)", [], KAFKA_ACK_BUCKETS, r)
        self.mqtt_connected = _gauge("wearwatch_gateway_mqtt_connected",
                                     "1 while connected and subscribed to the MQTT broker", [], r)
        self.inflight = _gauge("wearwatch_gateway_inflight_messages",
                               "MQTT messages received and not yet acknowledged (waiting for Kafka)", [], r)
        self.fhir_requests = _counter("wearwatch_gateway_fhir_requests",
                                      "FHIR HTTP requests answered, by HTTP status", ["status"], r)
        self.kafka_send_failures = _counter("wearwatch_gateway_kafka_send_failures",
                                            "MQTT messages whose Kafka delivery failed (they are re-sent)", [], r)
        self.kafka_resends = _counter("wearwatch_gateway_kafka_resends", "MQTT messages sent to Kafka again", [], r)
        self.producer_renewals = _counter("wearwatch_gateway_kafka_producer_renewals",
                                          "Kafka producers replaced after a failed delivery", [], r)
        self.mqtt_disconnects = _counter("wearwatch_gateway_mqtt_disconnects",
                                         "unexpected MQTT disconnections", [], r)
        self.internal_errors = _counter("wearwatch_gateway_internal_errors",
                                        "unexpected errors (the message stays unacknowledged)", [], r)
        self.tokens = _gauge("wearwatch_gateway_tokens", "vendor API tokens known, by state (active, revoked)",
                             ["state"], r)
        self.datakeys_created = _counter(
            "wearwatch_gateway_datakeys_created", "data keys the gateway created itself, waiting for Kafka on its "
            "MQTT thread: patients without one from their enrolment (enrolled before keys were made there, or named "
            "by a dead letter and never enrolled)", [], r)
        self.broker_dropped = _counter(
            "wearwatch_gateway_broker_dropped_messages", "messages the MQTT broker dropped while this gateway "
            "followed its count (ingest.gateway.dropped_since), its clients' queues being full "
            "(max_queued_messages): readings or commands lost before any gateway took them", [], r)
        self.broker = BrokerStats(r)
        self.rescued_sessions = _counter(
            "wearwatch_gateway_rescued_sessions", "MQTT sessions of gone gateways of the share group this one took "
            "over and ended (ingest.gateway.Gateway.rescue), by outcome: ended, or taken back by their gateway",
            ["outcome"], r)
        self.rescued_messages = _counter(
            "wearwatch_gateway_rescued_messages", "MQTT messages this gateway took from the sessions of gone "
            "gateways of its share group", [], r)
        for outcome in ("ended", "taken_back"):
            self.rescued_sessions.labels(outcome=outcome)
        for kind in ("vitals", "fhir"):
            for outcome in ("accepted", "partial", "dead_lettered"):
                self.messages.labels(kind=kind, outcome=outcome)
        for outcome in ("accepted", "dead_lettered"):
            self.messages.labels(kind="command", outcome=outcome)


class WorkerMetrics:
    """The worker's metric families (registered by the worker on its own :class:`Telemetry`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.readings, self.dead_letters = _shared(r)
        self.alert_events = _counter("wearwatch_alert_events", "alert events emitted, by kind, priority and state",
                                     ["kind", "priority", "state"], r)
        self.consumer_lag = _gauge("wearwatch_consumer_lag",
                                   "records of vitals.raw not yet processed, per partition this worker holds",
                                   ["partition"], r)
        self.processing_seconds = _histogram("wearwatch_processing_seconds", "time to process one batch of records",
                                             [], PROCESSING_BUCKETS, r)
        self.state_write_seconds = _histogram(
            "wearwatch_worker_state_write_seconds",
            "one commit's write of the changed patient states, the batches between its slices included", [],
            STATE_WRITE_BUCKETS, r)
        self.patients = _gauge("wearwatch_worker_patients",
                               "patients whose live state this worker holds in memory", [], r)
        self.store_memory = _gauge("wearwatch_store_memory_bytes",
                                   "memory of the worker's RocksDB store (its shared cache, memtables and index "
                                   "blocks charged to it); 0 with the memory store", [], r)
        self.state_cache = _counter("wearwatch_worker_state_cache",
                                    "patient states packed in memory past WEARWATCH_WORKER_LIVE_STATES (packed) "
                                    "and decoded again when needed (unpacked), by event", ["event"], r)


def health_answer() -> tuple[int, bytes]:
    """``GET /healthz``: (status, JSON body) — the process runs."""
    return 200, b'{"status":"alive"}'


def ready_answer(readiness: Readiness) -> tuple[int, bytes]:
    """``GET /readyz``: 200 when every check passes, else 503; the body names each check and why.

    >>> r = Readiness("worker")
    >>> r.register("kafka", lambda: (True, "ok"))
    >>> ready_answer(r)
    (200, b'{"ready":true,"checks":{"kafka":{"ready":true,"detail":"ok"}}}')
    """
    import json

    ok, checks = readiness.status()
    return (200 if ok else 503), json.dumps({"ready": ok, "checks": checks}, separators=(",", ":")).encode()


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The registry in the format the scraper asked for (``Accept``): Prometheus text or OpenMetrics."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
