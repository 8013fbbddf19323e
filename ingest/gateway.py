"""The MQTT → Kafka gateway.

Subscribes to ``wearwatch/v1/vitals/+/+`` at QoS 1 with a persistent MQTT v5
session and *manual acknowledgement*: a message is acknowledged to the broker
only after every record it produced (readings to ``vitals.raw``, dead letters to
``vitals.dlq``) is acknowledged by Kafka (acks=all, idempotent producer). If the
gateway dies in between, the broker redelivers the message to the same session
when the gateway comes back, so nothing is lost; a redelivered message may be
produced twice, which the worker drops as a duplicate (same patient, signal, ts).

Readings bound for the same ``vitals.raw`` partition that arrive within
``WEARWATCH_GATEWAY_LINGER_MS`` (5 ms) go out as one record
(:class:`ingest.contract.ReadingBatch`, built by :class:`Grouper`): the worker's
cost is per record, not per reading. A message's acknowledgement then waits for
every record holding one of its readings; if one of them fails, the whole message
is re-sent (its other readings arrive twice, and the worker drops the copies).

Bad input never crashes the gateway: :func:`ingest.contract.parse_payload` turns
it into dead letters with a reason.

The gateway is the project's only MQTT edge, so it also bridges the nurses'
commands the other way: acknowledgements (``wearwatch/v1/acks/{ward}/{patient}``)
and snoozes (``wearwatch/v1/snoozes/{ward}/{patient}``) are validated with
:mod:`wearwatch.contract.commands` and produced to ``alerts.commands`` keyed by patient, which
the worker applies to that patient's alert lifecycle.

FHIR (:mod:`ingest.fhir`): R4 Observations, or Bundles of them, arrive on MQTT
``wearwatch/v1/fhir/{vendor}/{device_id}`` (same manual-ack path as the vitals)
and over HTTP (:mod:`ingest.http_server`, with a vendor's bearer token:
:mod:`ingest.tokens`): ``POST /fhir/Observation`` and ``POST /fhir`` (a Bundle). An
HTTP request is answered only after Kafka acknowledged every record made from it
(readings and dead letters): 201/200 with an OperationOutcome per resource, 4xx with
an OperationOutcome for what was rejected (and dead-lettered), 503 if Kafka did not
take the records within :data:`HTTP_KAFKA_TIMEOUT_S` (the client retries; a duplicate
is dropped by the worker). Its readings carry the token's vendor.

Operations: the same HTTP server answers ``/healthz``, ``/readyz`` (MQTT connected and
subscribed, Kafka acknowledging, vendor tokens loaded) and ``/metrics``
(:class:`wearwatch.metrics.GatewayMetrics`). The server starts first and the gateway
keeps trying to reach the MQTT broker, so a gateway whose broker is away runs, says
why it is not ready, and connects when the broker is back.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import signal
import threading
import time
from collections import Counter
from typing import Any, Literal

import orjson
from kafka.partitioner.default import murmur2

from ingest.contract import TOPIC_FILTER, DeadLetter, Limits, Reading, encode_batch, parse_payload, payload_dead_letter
from ingest.fhir import (
    FHIR_TOPIC_FILTER,
    FHIR_TOPIC_PREFIX,
    EntryResult,
    http_answer,
    operation_outcome,
    parse_fhir,
    parse_fhir_payload,
)
from ingest.http_server import GatewayHttpServer
from ingest.tokens import TokenFollower, ensure_token_topic
from wearwatch.config import Settings, load_settings
from wearwatch.contract.commands import (
    ACK_TOPIC_FILTER,
    SNOOZE_TOPIC_FILTER,
    TOPIC_ROOT,
    InvalidCommand,
    command_record,
    parse_ack,
    parse_snooze,
)
from wearwatch.contract.enrollment import NOT_ENROLLED, EnrollmentRecord
from wearwatch.datakeys import KEY_ID_BYTES, DataKeys, KeySource, seal, sealed_record
from wearwatch.enrollment_topic import EnrollmentFollower
from wearwatch.errors import ConfigError
from wearwatch.metrics import GatewayMetrics, Telemetry
from wearwatch.transport import ensure_topics, kafka_producer, mqtt_client

__all__ = ["Gateway", "Grouper", "add_arguments", "run", "subscriptions"]

log = logging.getLogger(__name__)

ACK_PREFIX = f"{TOPIC_ROOT}/acks/"
SNOOZE_PREFIX = f"{TOPIC_ROOT}/snoozes/"
#: how long an HTTP request waits for Kafka to acknowledge its records before answering 503
HTTP_KAFKA_TIMEOUT_S = 10.0
#: the gateway is not ready while a message waited this long for Kafka's acknowledgement,
#: or while Kafka left the token follower's periodic question unanswered this long
KAFKA_STALL_S = 10.0
KAFKA_SILENT_S = 20.0
#: the broker's reason for closing a connection whose client id another connection took (MQTT v5)
SESSION_TAKEN_OVER = 0x8E
#: MQTT v5 session: kept by the broker this long while the gateway is away; messages in flight at once
MQTT_SESSION_EXPIRY_S = 7 * 86400
MQTT_RECEIVE_MAXIMUM = 1000


def _session_properties() -> Any:
    """CONNECT properties of a gateway's persistent MQTT v5 session (its own, or one it rescues)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = MQTT_SESSION_EXPIRY_S
    props.ReceiveMaximum = MQTT_RECEIVE_MAXIMUM
    return props


class _Pending:
    """Counts the Kafka acks still owed for one MQTT message (and the producer they are owed by).

    ``remaining`` counts records: each dead letter or command, and each reading (a
    reading is acknowledged with the :class:`_Group` record that carries it).
    """

    __slots__ = ("born", "client", "failed", "lock", "mid", "producer", "qos", "records", "remaining")

    def __init__(self, mid: int, qos: int, records: list[tuple[str, bytes, bytes]], client: Any = None) -> None:
        self.mid, self.qos, self.records, self.remaining = mid, qos, records, len(records)
        #: the MQTT client the message came through, when not the gateway's own (a rescued session's)
        self.client = client
        self.born = time.monotonic()
        self.failed = False
        self.producer: Any = None
        self.lock = threading.Lock()


class _Group:
    """Readings bound for one ``vitals.raw`` partition, sent as one record (:meth:`record`)."""

    __slots__ = ("key", "keys", "members", "opened", "partition", "sent_at", "values")

    def __init__(self, partition: int, key: bytes, opened: float) -> None:
        self.partition, self.key, self.opened = partition, key, opened
        self.sent_at = 0.0
        self.values: list[bytes] = []
        #: the patient of each value
        self.keys: list[bytes] = []
        #: the MQTT messages whose readings are in this record, and how many of each
        self.members: dict[_Pending, int] = {}

    def record(self) -> bytes:
        """The record's value in clear text: the reading itself if it is alone, else a :class:`ReadingBatch`."""
        return self.values[0] if len(self.values) == 1 else encode_batch(self.values)

    def sealed_record(self, keys: KeySource) -> tuple[bytes, bytes]:
        """The record's key and value sealed under the data keys (:mod:`wearwatch.datakeys`): one entry per
        patient, their readings (one, or a :class:`ReadingBatch`) under their key; the first entry's key id as
        the record's key. May create a patient's first key (written to Kafka and acknowledged)."""
        per_patient: dict[bytes, list[bytes]] = {}
        for k, v in zip(self.keys, self.values, strict=True):
            per_patient.setdefault(k, []).append(v)
        entries = []
        for k, vs in per_patient.items():
            key_id, cipher = keys.cipher_for(k.decode())
            entries.append(seal(cipher, key_id, vs[0] if len(vs) == 1 else encode_batch(vs), "vitals.raw"))
        return entries[0][:KEY_ID_BYTES], sealed_record(entries)


class Grouper:
    """Groups the readings bound for each ``vitals.raw`` partition into one record.

    A group is sent when it holds ``max_readings`` or when it is ``linger_s`` old
    (:meth:`due`, polled by the gateway's flusher thread). The partition is the one
    Kafka's default partitioner gives the patient's key (murmur2), so every
    reading of a patient stays on the partition of its table state and of its
    nurse commands. Thread-safe: MQTT callbacks add, the flusher takes.

    >>> g = Grouper(partitions=8, max_readings=2, linger_s=0.005)
    >>> m = _Pending(1, 1, [])
    >>> g.add(b"p1", b"r1", m, now=0.0) is None
    True
    >>> full = g.add(b"p1", b"r2", m, now=0.001)  # same patient, same partition: full
    >>> full.values, full.members[m]
    ([b'r1', b'r2'], 2)
    >>> g.add(b"p1", b"r3", m, now=0.002) is None
    True
    >>> [grp.values for grp in g.due(now=0.003)], [grp.values for grp in g.due(now=0.008)]
    ([], [[b'r3']])
    """

    def __init__(self, partitions: int, max_readings: int, linger_s: float) -> None:
        self.partitions, self.max_readings, self.linger_s = partitions, max_readings, linger_s
        self._open: dict[int, _Group] = {}
        self._partition_of: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def partition(self, key: bytes) -> int:
        """The partition Kafka's default partitioner gives ``key`` (cached: murmur2 is pure Python)."""
        p = self._partition_of.get(key)
        if p is None:
            if len(self._partition_of) > 1_000_000:
                self._partition_of.clear()
            p = self._partition_of[key] = (murmur2(key) & 0x7FFFFFFF) % self.partitions
        return p

    def add(self, key: bytes, value: bytes, pending: _Pending | None, now: float) -> _Group | None:
        """Add one reading (of the MQTT message ``pending``, if any); the group it filled,
        if it is now full (to be sent)."""
        part = self.partition(key)
        with self._lock:
            grp = self._open.get(part)
            if grp is None:
                grp = self._open[part] = _Group(part, key, now)
            grp.values.append(value)
            grp.keys.append(key)
            if pending is not None:
                grp.members[pending] = grp.members.get(pending, 0) + 1
            if len(grp.values) < self.max_readings:
                return None
            del self._open[part]
            return grp

    def due(self, now: float) -> list[_Group]:
        """Take the groups that waited ``linger_s`` or longer."""
        with self._lock:
            out = [g for g in self._open.values() if now - g.opened >= self.linger_s]
            for g in out:
                del self._open[g.partition]
        return out

    def take_all(self) -> list[_Group]:
        """Take every open group (shutdown, or a producer renewal)."""
        with self._lock:
            out, self._open = list(self._open.values()), {}
        return out


#: what a gateway reads: device readings (MQTT and FHIR) and nurses' acknowledgements and snoozes
TOPIC_FILTERS = (TOPIC_FILTER, FHIR_TOPIC_FILTER, ACK_TOPIC_FILTER, SNOOZE_TOPIC_FILTER)


#: the broker's own figures the gateway reports (Mosquitto's ``$SYS`` tree): how many messages it dropped since it
#: started, and how many it holds. Mosquitto sends a figure when it has changed, at most every ``sys_interval``
#: seconds, and keeps it as a retained message for a minute after that. Every gateway subscribes to them for
#: itself (never shared), at QoS 0 (a figure missed is replaced by the next)
BROKER_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
BROKER_STORED_TOPIC = "$SYS/broker/store/messages/count"


#: where the gateways of a share group say they are in it (retained, one topic per group and client id,
#: ``wearwatch/v1/gateways/<group>/<client id>``): ``up`` while in the
#: group, ``leaving`` while one decides whether it may leave, nothing once stopped; ``gone`` is a crashed one's will
#: (kept until it is back, or another gateway has rescued its session: :meth:`Gateway.rescue`)
PRESENCE_TOPIC = "wearwatch/v1/gateways"
#: a gateway's word expires (MQTT v5 message expiry, and for the others that heard it) this long after it said it,
#: and a gateway in the group says it again every :data:`PRESENCE_REFRESH_S`. A will is not always sent: the
#: broker sends none for a gateway that died while the broker itself was down, and a broker that keeps its
#: retained messages across restarts would keep that one's ``up`` for good, so a stopping gateway would count on a
#: member that is not there, leave, and leave the group with no subscriber
PRESENCE_TTL_S = 90
PRESENCE_REFRESH_S = 30.0


def dropped_since(last: int | None, figure: int) -> int:
    """The messages the broker dropped between its count ``last`` (None: not seen yet) and its count ``figure``.

    The broker's count starts at 0 with the broker, and a figure is only sent, or kept for a new subscriber,
    within a minute of a change. So a first figure above 0 means drops within the last minute, how many of
    them not known: it counts 1. A figure below the last one is a broker that restarted: all of it is new.

    >>> dropped_since(None, 0), dropped_since(None, 549_536)  # the first figure: nothing, or recent drops
    (0, 1)
    >>> dropped_since(500, 620), dropped_since(620, 20)  # 120 more; a restarted broker's 20
    (120, 20)
    """
    if last is None:
        return 1 if figure > 0 else 0
    return figure - last if figure >= last else figure


def subscriptions(share_group: str = "") -> tuple[list[str], list[str]]:
    """The topic filters a gateway subscribes to on every connection, and those it then unsubscribes from.

    Alone (no group), a gateway takes every message. Gateways sharing a group subscribe through MQTT
    shared subscriptions, so the broker hands each message to one of them and the fleet's readings are
    split between gateways instead of copied to each. Its persistent session keeps what a gateway
    subscribed to before joining the group, so the plain filters are unsubscribed after the shared ones
    are in place: in between a message may come twice (the worker drops the copy as a duplicate), never
    not at all.

    >>> subscriptions()[0][0], subscriptions()[1]
    ('wearwatch/v1/vitals/+/+', [])
    >>> subscribe, unsubscribe = subscriptions("gateways")
    >>> subscribe[0], unsubscribe[0]
    ('$share/gateways/wearwatch/v1/vitals/+/+', 'wearwatch/v1/vitals/+/+')
    """
    if not share_group:
        return list(TOPIC_FILTERS), []
    return [f"$share/{share_group}/{f}" for f in TOPIC_FILTERS], list(TOPIC_FILTERS)


def patients_named(letter: bytes, key: bytes = b"") -> list[str]:
    """The patients a dead letter (JSON of a :class:`DeadLetter`) names, sorted: ``patient_id`` values and
    ``Patient/…`` references anywhere in its payload, and the patient segment of a nurse command's topic.

    >>> dl = DeadLetter(reason="r", detail="d", payload='[{"patient_id": "p2"}, {"patient_id": "p1"}]', received_ms=0)
    >>> patients_named(dl.to_json()), patients_named(b"not json")
    (['p1', 'p2'], [])
    >>> patients_named(DeadLetter(reason="r", detail="d", payload="{", received_ms=0).to_json(),
    ...                b"wearwatch/v1/acks/3B/p7")
    ['p7']
    """
    found: set[str] = set()
    if key.startswith((ACK_PREFIX.encode(), SNOOZE_PREFIX.encode())):
        found.add(key.rsplit(b"/", 1)[-1].decode(errors="replace"))
    try:
        doc = orjson.loads(letter)
        payload = orjson.loads(doc["payload"]) if doc.get("payload_encoding") == "utf-8" else None
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        payload = None
    todo = [payload]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "patient_id" and isinstance(v, str) and v:
                    found.add(v)
                elif k == "reference" and isinstance(v, str) and v.startswith("Patient/"):
                    found.add(v[len("Patient/"):])
                else:
                    todo.append(v)
        elif isinstance(node, list):
            todo.extend(node)
    return sorted(found)


class Gateway:
    """Bridge MQTT device readings into Kafka without losing any.

    Parameters
    ----------
    settings
        Connection settings; the gateway uses ``mqtt_username``/``mqtt_password``.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = Limits.from_settings(settings)
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._producer: Any = None
        self._client: Any = None
        self._retry: list[_Pending] = []
        self._retry_lock = threading.Lock()
        # messages whose Kafka acks are still owed: re-sent on a new producer if the old one fails
        self._inflight: set[_Pending] = set()
        self._renew = False
        self._stop = threading.Event()
        self._http: GatewayHttpServer | None = None
        self._http_thread: threading.Thread | None = None
        #: groups readings per vitals.raw partition (set up in start: needs the partition count)
        self._grouper: Grouper | None = None
        self._flusher: threading.Thread | None = None
        #: held from taking a group to handing it to the producer, by the MQTT callbacks and the flusher alike:
        #: a partition's groups then reach Kafka in the order they were taken, so a patient's readings stay in
        #: order (a group the flusher had taken but not yet sent was overtaken by a newer one an MQTT message
        #: filled meanwhile, and its readings came minutes late to the worker's minute aggregates)
        self._group_send_lock = threading.Lock()
        # operations: metrics, readiness, vendor tokens (followed from Kafka)
        self.telemetry = Telemetry("gateway")
        self.metrics = GatewayMetrics(self.telemetry.registry)
        self.tokens = TokenFollower(settings)
        self._subscribed = threading.Event()  # connected to MQTT and subscribed (SUBACK)
        self._data_mid: int | None = None  # the message id of the last subscription to the data topics
        self._broker_mid: int | None = None  # ... and of the one to the broker's figures
        self._broker_refused = False  # the broker refused its figures (logged once)
        self._broker_dropped: int | None = None  # the broker's count of dropped messages, as last heard
        #: the other gateways of the share group, what they last said (``up``, ``leaving``) and until when it holds
        #: (monotonic time): see :meth:`stop`
        self.members: dict[str, tuple[str, float]] = {}
        self._presence: threading.Thread | None = None
        self._leaving = False  # stopping: the refreshes no longer say ``up``
        #: gateways of the group gone without leaving it (their will said ``gone``, or their ``up`` expired), and since
        #: when (monotonic): their sessions are rescued after ``mqtt_rescue_after_s`` (:meth:`rescue`)
        self.gone: dict[str, float] = {}
        self._rescuing: threading.Thread | None = None
        self._last_message = 0.0  # monotonic time the last MQTT message came (a gateway leaving its group waits)
        self._mqtt_state = "not connected yet"
        readiness = self.telemetry.readiness
        readiness.register("mqtt", self._mqtt_ready)
        readiness.register("kafka", self._kafka_ready)
        readiness.register("tokens", self.tokens.ready)
        # the live enrolment: patient id -> enrolled (True) or discharged (False); absent: never enrolled
        self.roster: dict[str, bool] = {}
        self.enrollment = EnrollmentFollower(settings, self._on_enrollment)
        readiness.register("enrollment", self.enrollment.ready)
        # the per-patient data keys readings are sealed under (wearwatch/datakeys.py); sealing starts in start()
        self.datakeys = DataKeys(settings)
        # enrolment creates a patient's key (wearwatch.datakeys.ensure_data_keys); one made here is the fallback
        self.datakeys.on_created = self.metrics.datakeys_created.inc
        readiness.register("datakeys", self.datakeys.ready)
        self._sealing: KeySource | None = None
        self.metrics.mqtt_connected.set_function(lambda: 1.0 if self._subscribed.is_set() else 0.0)
        self.metrics.inflight.set_function(self._inflight_count)
        self.metrics.tokens.labels(state="active").set_function(lambda: self.tokens.table.counts()[0])
        self.metrics.tokens.labels(state="revoked").set_function(lambda: self.tokens.table.counts()[1])

    @property
    def max_payload_bytes(self) -> int:
        return self.settings.max_payload_bytes

    @property
    def http_address(self) -> tuple[str, int] | None:
        """(host, port) the HTTP server listens on, once started."""
        if self._http is None:
            return None
        host, port = self._http.server_address[:2]
        return str(host), int(port)

    # -- readiness -------------------------------------------------------
    def _mqtt_ready(self) -> tuple[bool, str]:
        if self._subscribed.is_set():
            return True, f"connected to {self.settings.mqtt_host}:{self.settings.mqtt_port} and subscribed"
        return False, self._mqtt_state

    def _inflight_count(self) -> int:
        with self._retry_lock:
            return len(self._inflight) + len(self._retry)

    def _kafka_ready(self) -> tuple[bool, str]:
        if self._producer is None:
            return False, "Kafka producer not started"
        if self._renew:
            return False, "Kafka producer being replaced after a failed delivery"
        now = time.monotonic()
        with self._retry_lock:
            waiting = [p.born for p in self._inflight] + [p.born for p in self._retry]
        oldest = now - min(waiting) if waiting else 0.0
        if oldest > KAFKA_STALL_S:
            return False, f"{len(waiting)} message(s) waiting for Kafka, the oldest for {oldest:.0f} s"
        contact = self.tokens.last_contact
        if contact and now - contact > KAFKA_SILENT_S:
            return False, f"no answer from Kafka for {now - contact:.0f} s"
        return True, f"acknowledging ({len(waiting)} message(s) in flight)"

    # -- lifecycle -------------------------------------------------------
    def start(self, abort: threading.Event | None = None) -> None:
        """Serve HTTP, connect Kafka, follow the tokens, then connect MQTT; return once subscribed
        (or when ``abort`` is set). An unreachable MQTT broker is retried, not fatal: the gateway
        stays up and not ready (``/readyz``) until it is back."""
        s = self.settings
        self._start_http()
        ensure_topics(s, [s.topic_vitals, s.topic_dlq, s.topic_commands])
        ensure_token_topic(s)
        self.tokens.start()
        self.enrollment.start()
        self.datakeys.start()
        self._producer = kafka_producer(s)
        partitions = len(self._producer.partitions_for(s.topic_vitals))
        # readings are sealed per patient when their record is made, so they always go through a grouper
        # (of one reading when grouping is off)
        self._grouper = Grouper(partitions, s.gateway_batch_readings, s.gateway_linger_ms / 1000)
        if not self.datakeys.wait_ready(30.0):
            log.warning("data keys not loaded yet: a patient's first reading may create a key they already have")
        self._sealing = self.datakeys
        if s.gateway_batch_readings > 1:
            self._flusher = threading.Thread(target=self._flush_groups, name="group-flusher", daemon=True)
            self._flusher.start()
        self._client = mqtt_client(s, s.mqtt_client_id, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_connect_fail = self._on_connect_fail
        for topic in (BROKER_DROPPED_TOPIC, BROKER_STORED_TOPIC):  # these never reach the ingest path
            self._client.message_callback_add(topic, self._on_broker_figure)
        if s.mqtt_share_group:
            self._client.message_callback_add(self._presence_of("+"), self._on_presence)
            # a gateway that dies is out of the group, its session still in it: the broker says so for it
            self._client.will_set(self._presence_topic, b"gone", qos=1, retain=True)
            self._presence = threading.Thread(target=self._refresh_presence, name="presence", daemon=True)
            self._presence.start()
        self._connect_mqtt()
        waited = 0.0
        while not self._subscribed.wait(1.0):
            if self._stop.is_set() or (abort is not None and abort.is_set()):
                return
            waited += 1.0
            if waited % 30 == 0:
                log.warning("MQTT broker %s:%d not reached yet (%s); still trying", s.mqtt_host, s.mqtt_port,
                            self._mqtt_state)
        if not self.tokens.wait_ready(30.0):
            log.warning("vendor tokens not loaded yet: FHIR requests are refused until they are")
        log.info("gateway up: MQTT %s:%d%s -> Kafka %s", s.mqtt_host, s.mqtt_port,
                 f" (shared with group {s.mqtt_share_group})" if s.mqtt_share_group else "", s.topic_vitals)

    def _start_http(self) -> None:
        import wearwatch

        s = self.settings
        try:
            self._http = GatewayHttpServer((s.gateway_http_host, s.gateway_http_port), sink=self,
                                           telemetry=self.telemetry, metrics=self.metrics, tokens=self.tokens.table,
                                           version=wearwatch.__version__)
        except OSError as exc:
            raise ConfigError(f"WEARWATCH_GATEWAY_HTTP_HOST/_PORT {s.gateway_http_host}:{s.gateway_http_port}: "
                              f"cannot listen ({exc.strerror or exc})") from exc
        self._http_thread = threading.Thread(target=self._http.serve_forever, name="gateway-http", daemon=True)
        self._http_thread.start()
        host, port = self.http_address or ("?", 0)
        log.info("gateway HTTP server on http://%s:%d (/healthz, /readyz, /metrics, /fhir)", host, port)

    def _connect_mqtt(self) -> None:
        """Connect in paho's network thread, which retries until the broker answers (persistent v5 session)."""
        s = self.settings
        self._client.connect_async(s.mqtt_host, s.mqtt_port, keepalive=30, clean_start=False,
                                   properties=_session_properties())
        self._client.loop_start()

    #: how long a gateway leaving its share group waits for the broker to confirm, then for what it holds to be
    #: on Kafka and acknowledged
    LEAVE_TIMEOUT_S = 20.0
    #: ... and how long no message may have come before it is sure none is still on its way to it
    LEAVE_QUIET_S = 0.5

    @property
    def _presence_topic(self) -> str:
        return self._presence_of(self.settings.mqtt_client_id)

    def _presence_of(self, cid: str) -> str:
        """Where gateway ``cid`` of this gateway's share group says where it stands."""
        return f"{PRESENCE_TOPIC}/{self.settings.mqtt_share_group}/{cid}"

    def _say(self, word: bytes, wait: bool = True) -> None:
        """Tell the share group's other gateways where this one stands (retained, expiring after
        :data:`PRESENCE_TTL_S`; empty: stopped). ``wait=False`` from paho's network thread, which brings the
        acknowledgement."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        assert self._client is not None
        props = None
        if word:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = PRESENCE_TTL_S
        with contextlib.suppress(RuntimeError, ValueError):  # not connected: the will says it
            sent = self._client.publish(self._presence_topic, word, qos=1, retain=True, properties=props)
            if wait:
                sent.wait_for_publish(2.0)

    def _refresh_presence(self) -> None:
        """Say ``up`` again before the word expires, while in the group and not stopping; rescue the sessions of
        gateways gone without leaving (:meth:`due_rescue`)."""
        said = time.monotonic()
        while not self._stop.wait(1.0):
            if self._subscribed.is_set() and not self._leaving:
                if time.monotonic() - said >= PRESENCE_REFRESH_S:
                    self._say(b"up", wait=False)
                    said = time.monotonic()
                cid = self.due_rescue()
                if cid is not None and (self._rescuing is None or not self._rescuing.is_alive()):
                    self._rescuing = threading.Thread(target=self.rescue, args=(cid,), name="rescue", daemon=True)
                    self._rescuing.start()

    def due_rescue(self) -> str | None:
        """The gateway whose session this one should rescue now, if any: one gone (without leaving the group) for
        ``mqtt_rescue_after_s``, while this gateway is the first by client id of those in the group (so that one
        gateway, not all, takes it over)."""
        after = self.settings.mqtt_rescue_after_s
        if not after:
            return None
        now = time.monotonic()
        for cid, (word, until) in list(self.members.items()):
            if word == "up" and until <= now:  # not said again in its term: as gone as a will says
                self.members.pop(cid, None)
                self.gone.setdefault(cid, until)
        due = sorted(cid for cid, since in list(self.gone.items()) if now - since >= after)
        if not due or min([self.settings.mqtt_client_id, *self.others_in_group()]) != self.settings.mqtt_client_id:
            return None
        return due[0]

    def rescue(self, cid: str) -> str:
        """Take over the MQTT session of gateway ``cid`` of the share group, gone without leaving it, and end it.

        A crashed gateway's persistent session stays in the share group, and Mosquitto goes on handing it its
        share: queued until the gateway is back, dropped past ``max_queued_messages``. A gateway that does not come
        back (its node lost, or scaled away while down) would lose its share for as long as the session lives.
        So one gateway of the group connects with that client id, which hands it the session: it forwards what
        the broker queued there to Kafka like its own messages, acknowledging each once Kafka has it, leaves the
        share group for that session, and ends the session once all is acknowledged. If the gateway comes back
        meanwhile, its connection takes the session back (the broker disconnects this one) and it gets what is
        not acknowledged yet: the worker drops a reading it gets twice. Returns the outcome: ``ended``,
        ``taken_back`` or ``failed``."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        s = self.settings
        self.gone.pop(cid, None)
        client = mqtt_client(s, cid, manual_ack=True)
        connected, lost, unsubscribed = threading.Event(), threading.Event(), threading.Event()
        took = [0, time.monotonic()]  # messages taken, when the last came
        why: list[Any] = []  # the broker's reason when it closed the connection

        def on_disconnect(c: Any, u: Any, flags: Any, reason_code: Any, props: Any) -> None:
            why.append(reason_code)
            lost.set()

        def on_connect(c: Any, u: Any, flags: Any, reason_code: Any, props: Any) -> None:
            (lost if reason_code.is_failure else connected).set()

        def on_message(c: Any, u: Any, msg: Any) -> None:
            took[0] += 1
            took[1] = time.monotonic()
            self._take(msg, client)

        client.on_connect = on_connect
        client.on_message = on_message
        client.on_disconnect = on_disconnect
        client.on_unsubscribe = lambda *_: unsubscribed.set()
        outcome = "failed"
        try:  # as the gateway itself: the session is kept until all it holds is acknowledged
            client.connect(s.mqtt_host, s.mqtt_port, keepalive=30, clean_start=False, properties=_session_properties())
        except OSError as exc:
            log.warning("cannot rescue the session of gateway %s: %s", cid, exc)
            return outcome

        def pump(until: Any, timeout: float) -> bool:
            """Run the client's network loop here (it never reconnects: a lost connection ends the rescue) until
            ``until()`` holds or the connection is lost."""
            deadline = time.monotonic() + timeout
            while not until() and not lost.is_set() and time.monotonic() < deadline and not self._stop.is_set():
                client.loop(0.05)
            return bool(until()) and not lost.is_set()

        def mine() -> int:
            with self._retry_lock:
                return sum(1 for p in (*self._inflight, *self._retry) if p.client is client)

        try:
            if not pump(connected.is_set, 10.0):
                log.warning("cannot rescue the session of gateway %s: not connected", cid)
                return outcome
            shared, _ = subscriptions(s.mqtt_share_group)
            client.unsubscribe(shared)  # the broker hands that session no more of the group's messages
            pump(unsubscribed.is_set, 5.0)
            quiet = self.LEAVE_QUIET_S
            pump(lambda: time.monotonic() - took[1] > quiet and mine() == 0, self.LEAVE_TIMEOUT_S)
            if lost.is_set() and why and getattr(why[0], "value", None) == SESSION_TAKEN_OVER:
                outcome = "taken_back"
                log.warning("gateway %s came back during the rescue of its session and took it back, with what "
                            "was not on Kafka yet (%d messages rescued)", cid, took[0])
            elif lost.is_set():
                log.warning("rescue of the session of gateway %s: the connection was lost (%s); the session keeps "
                            "what is not on Kafka yet", cid, why[0] if why else "?")
            elif mine():
                log.warning("rescue of the session of gateway %s stopped with %d messages unacknowledged: the "
                            "session keeps them", cid, mine())
            else:
                # the group's word for it, as of a gateway that stopped; then nothing is left in the session: the
                # broker forgets it
                client.publish(self._presence_of(cid), b"", qos=1, retain=True)
                end = Properties(PacketTypes.DISCONNECT)
                end.SessionExpiryInterval = 0
                client.disconnect(properties=end)
                pump(lost.is_set, 2.0)
                outcome = "ended"
                log.info("rescued the session of gateway %s, gone without leaving share group %s: %d messages "
                         "from it on Kafka, session ended", cid, s.mqtt_share_group, took[0])
        finally:
            if outcome != "ended":
                with contextlib.suppress(Exception):
                    client.disconnect()
                    pump(lost.is_set, 1.0)
            if outcome != "failed":
                self.metrics.rescued_sessions.labels(outcome=outcome).inc()
            elif not self._stop.is_set():  # tried again after mqtt_rescue_after_s, unless it is back by then
                self.gone.setdefault(cid, time.monotonic())
            self.metrics.rescued_messages.inc(took[0])
        return outcome

    def others_in_group(self) -> list[str]:
        """The other gateways of the share group that are in it and staying (their ``up`` not expired)."""
        said = list(self.members.items())  # one step: the network thread updates it meanwhile
        now = time.monotonic()
        return sorted(cid for cid, (word, until) in said if word == "up" and until > now)

    def stop(self) -> None:
        if self.settings.mqtt_share_group and self._client is not None and self._subscribed.is_set():
            # The broker keeps nothing for a shared subscription that no session holds: the last gateway to
            # leave would leave the devices' messages without a subscriber until one is back. So a gateway
            # leaves only while another one stays; the last one keeps its session subscribed, and the broker
            # queues for it until it is back, as for a lone gateway. Two that stop together both see the other
            # leaving, and both stay.
            self._leaving = True
            self._say(b"leaving")
            time.sleep(self.LEAVE_QUIET_S)  # the others' word, if they are deciding too
            others = self.others_in_group()
            if others:
                self._leave_group()
            else:
                log.warning("gateway stays subscribed in share group %s: no other gateway is in it, and the broker "
                            "keeps nothing for a group without one; its session keeps the messages until it is "
                            "back", self.settings.mqtt_share_group)
            self._say(b"")
        self._stop.set()
        self._subscribed.clear()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self.tokens.stop()
        self.enrollment.stop()
        self.datakeys.stop()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        for thread in (self._presence, self._rescuing):  # a rescue stops at once; its session keeps what is left
            if thread is not None:
                thread.join(timeout=5)
        if self._grouper is not None and self._producer is not None:
            with self._group_send_lock:
                for grp in self._grouper.take_all():
                    self._send_group(grp)
        if self._producer is not None:
            self._producer.flush(timeout=30)
            self._producer.close(timeout=30)
        log.info("gateway stopped: %s", dict(self.stats))

    def _leave_group(self) -> None:
        """Before a gateway of a share group stops: unsubscribe, so that the broker hands the group's messages to
        the other gateways from now on, and wait, still connected, until what it took is on Kafka and
        acknowledged. Otherwise its persistent session would keep its share of the messages, and those it had
        not acknowledged, until it came back: a restart's delay, but never for a gateway scaled away for good.
        A gateway that cannot finish in :attr:`LEAVE_TIMEOUT_S` stops anyway, and its session keeps what is
        left for its return. Only called while another gateway stays in the group (:meth:`stop`)."""
        assert self._client is not None
        unsubscribed = threading.Event()
        self._client.on_unsubscribe = lambda *_: unsubscribed.set()
        shared, _ = subscriptions(self.settings.mqtt_share_group)
        self._client.unsubscribe(shared)
        deadline = time.monotonic() + self.LEAVE_TIMEOUT_S
        if unsubscribed.wait(min(5.0, self.LEAVE_TIMEOUT_S)):
            while time.monotonic() < deadline:
                if self._inflight_count() == 0 and time.monotonic() - self._last_message > self.LEAVE_QUIET_S:
                    log.info("gateway left share group %s with every message it took acknowledged",
                             self.settings.mqtt_share_group)
                    return
                time.sleep(0.05)
        log.warning("gateway stops in share group %s with %d messages unacknowledged: its session keeps them "
                    "until it is back", self.settings.mqtt_share_group, self._inflight_count())

    def run_forever(self, stats_every_s: float = 10.0) -> None:
        last = time.monotonic()
        while not self._stop.wait(1.0):
            self._drain_retries()
            if time.monotonic() - last >= stats_every_s:
                last = time.monotonic()
                log.info("gateway stats %s", dict(self.stats))

    # -- MQTT callbacks --------------------------------------------------
    def _subscribe(self) -> None:
        subscribe, unsubscribe = subscriptions(self.settings.mqtt_share_group)
        _, self._data_mid = self._client.subscribe([(f, 1) for f in subscribe])
        if unsubscribe:
            self._client.unsubscribe(unsubscribe)
        figures = [(BROKER_DROPPED_TOPIC, 0), (BROKER_STORED_TOPIC, 0)]
        if self.settings.mqtt_share_group:  # what the group's other gateways say (QoS 0: nothing to acknowledge)
            figures.append((self._presence_of("+"), 0))
        _, self._broker_mid = self._client.subscribe(figures)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if reason_code.is_failure:
            self._mqtt_state = f"connection refused by the broker: {reason_code}"
            log.error("MQTT connect refused: %s", reason_code)
            return
        self._mqtt_state = "connected, subscribing"
        self._subscribe()
        self._count("mqtt_connects")

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        s = self.settings
        self._mqtt_state = f"cannot reach the MQTT broker at {s.mqtt_host}:{s.mqtt_port}; retrying"

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, props: Any) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if mid == self._broker_mid:  # the broker's figures: the gateway works without them
            if failed and not self._broker_refused:
                self._broker_refused = True
                log.warning("the MQTT broker refused its figures (%s): the gateway cannot report the messages it "
                            "drops; grant the gateway `topic read $SYS/broker/#` (deploy/mosquitto/acl)",
                            ", ".join(failed))
            return
        if mid != self._data_mid:
            return  # an earlier connection's
        if failed:
            self._mqtt_state = f"subscription refused: {', '.join(failed)}"
            log.error("MQTT subscription refused: %s", ", ".join(failed))
            return
        self._subscribed.set()
        if self.settings.mqtt_share_group and not self._leaving:
            self._say(b"up", wait=False)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        was_up = self._subscribed.is_set()
        self._subscribed.clear()
        if self._stop.is_set():
            return
        self._mqtt_state = f"disconnected ({reason_code}); reconnecting"
        if was_up:
            log.warning("MQTT disconnected (%s); paho reconnects", reason_code)
            self._count("mqtt_disconnects")
            self.metrics.mqtt_disconnects.inc()
        else:
            log.debug("MQTT broker not reachable (%s)", reason_code)

    def _on_broker_figure(self, client: Any, userdata: Any, msg: Any) -> None:
        """One of the broker's figures (:data:`BROKER_DROPPED_TOPIC`, :data:`BROKER_STORED_TOPIC`): kept for
        ``/metrics``; messages the broker dropped are also logged, counts only."""
        try:
            value = int(msg.payload)
        except ValueError:
            log.debug("broker figure %s not a number: %r", msg.topic, msg.payload[:40])
            return
        if msg.topic != BROKER_DROPPED_TOPIC:
            self.metrics.broker.stored = value
            return
        last, self._broker_dropped = self._broker_dropped, value
        dropped = dropped_since(last, value)
        if not dropped:
            return
        self.metrics.broker_dropped.inc(dropped)
        if last is None:
            log.warning("the MQTT broker dropped messages within the last minute (%d since it started): clients' "
                        "queues were full (max_queued_messages), so readings or nurse commands were lost", value)
        else:
            log.warning("the MQTT broker dropped %d messages (%d since it started): clients' queues were full "
                        "(max_queued_messages); readings or nurse commands were lost. Are the gateways too few "
                        "for the fleet, or one of a share group down?", dropped, value)

    def _on_presence(self, client: Any, userdata: Any, msg: Any) -> None:
        """Another gateway of the share group says where it stands (:data:`PRESENCE_TOPIC`)."""
        cid = msg.topic.rsplit("/", 1)[-1]
        if cid == self.settings.mqtt_client_id:
            return
        word = msg.payload.decode("ascii", "replace")
        if word == "gone":  # its will: it died with its session in the group (its rescue: due_rescue)
            self.gone.setdefault(cid, time.monotonic())
        else:  # back, stopped, or its session rescued
            self.gone.pop(cid, None)
        if word in ("up", "leaving"):
            # a retained word comes with what is left of its expiry; one without any holds for the full term
            left = getattr(getattr(msg, "properties", None), "MessageExpiryInterval", None)
            self.members[cid] = (word, time.monotonic() + min(left if left is not None else PRESENCE_TTL_S,
                                                              PRESENCE_TTL_S))
        else:
            self.members.pop(cid, None)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._last_message = time.monotonic()
        self._take(msg)

    def _take(self, msg: Any, client: Any = None) -> None:
        """One MQTT message, of this gateway's session or of one it rescues (``client``: the session's)."""
        try:
            self.handle(msg.topic, msg.payload, msg.mid, msg.qos, client)
        except Exception:  # never let one message kill the network loop
            log.exception("unexpected error handling a message; it stays unacknowledged")
            self._count("internal_errors")
            self.metrics.internal_errors.inc()

    # -- the work ----------------------------------------------------------
    def records_for(self, topic: str, payload: bytes) -> list[tuple[str, bytes, bytes]]:
        """(kafka topic, key, value) for one MQTT message: readings and dead letters."""
        s = self.settings
        if topic.startswith((ACK_PREFIX, SNOOZE_PREFIX)):
            return self._command_records(topic, payload)
        parse = parse_fhir_payload if topic.startswith(FHIR_TOPIC_PREFIX) else parse_payload
        now = int(time.time() * 1000)
        readings, dead = parse(topic, payload, now, self.limits)
        readings, dead = self._enrolled(readings, dead, topic, now)
        out: list[tuple[str, bytes, bytes]] = [
            (s.topic_vitals, r.patient_id.encode(), r.to_json()) for r in readings
        ]
        out.extend((s.topic_dlq, (d.mqtt_topic or "").encode(), d.to_json()) for d in dead)
        self._count("messages")
        outcome = "dead_lettered" if not readings else "partial" if dead else "accepted"
        kind = "fhir" if parse is parse_fhir_payload else "vitals"
        self.metrics.messages.labels(kind=kind, outcome=outcome).inc()
        self._count_readings(readings, dead)
        return out

    # -- enrolment ---------------------------------------------------------
    def _on_enrollment(self, patient_id: str, record: EnrollmentRecord | None) -> None:
        if record is None:
            self.roster.pop(patient_id, None)
        else:
            self.roster[patient_id] = record.enrolled

    def admits(self, patient_id: str) -> bool:
        """Whether a patient's readings go on: not once discharged, nor when never enrolled and
        enrolment is required (``WEARWATCH_REQUIRE_ENROLLMENT``)."""
        enrolled = self.roster.get(patient_id)
        return enrolled if enrolled is not None else not self.settings.require_enrollment

    def _refused(self, r: Reading, topic: str | None, now: int) -> DeadLetter:
        text = r.to_json().decode()
        return DeadLetter(reason=NOT_ENROLLED, detail="the patient is not enrolled (discharged, or never enrolled)",
                          mqtt_topic=topic, payload=text, received_ms=now)

    def _enrolled(self, readings: list[Reading], dead: list[DeadLetter], topic: str,
                  now: int) -> tuple[list[Reading], list[DeadLetter]]:
        """Readings of patients not enrolled become ``not_enrolled`` dead letters."""
        if all(self.admits(r.patient_id) for r in readings):
            return readings, dead
        ok = [r for r in readings if self.admits(r.patient_id)]
        return ok, dead + [self._refused(r, topic, now) for r in readings if not self.admits(r.patient_id)]

    def _enrolled_fhir(self, res: Any) -> Any:
        """The same for a parsed FHIR request, entry by entry (the answer says which were refused)."""
        if all(self.admits(r.patient_id) for r in res.readings):
            return res
        entries = [e if e.reading is None or self.admits(e.reading.patient_id)
                   else EntryResult(e.index, dead=self._refused(e.reading, None, e.reading.received_ms))
                   for e in res.entries]
        return dataclasses.replace(res, entries=entries)

    def _count_readings(self, readings: list[Any], dead: list[Any]) -> None:
        self._count("readings", len(readings))
        self._count("dead_letters", len(dead))
        per_signal = Counter(r.signal for r in readings)
        for sig, n in per_signal.items():
            self.metrics.readings.labels(signal=sig).inc(n)
        for d in dead:
            self._count(f"dlq:{d.reason}")
            self.metrics.dead_letters.labels(reason=d.reason).inc()

    def _command_records(self, topic: str, payload: bytes) -> list[tuple[str, bytes, bytes]]:
        s = self.settings
        try:
            cmd = parse_ack(topic, payload) if topic.startswith(ACK_PREFIX) else parse_snooze(topic, payload)
        except InvalidCommand as exc:
            dl = payload_dead_letter(f"command_{exc.reason}", exc.detail, payload, topic[:512],
                                     int(time.time() * 1000))
            self._count("dead_letters")
            self.metrics.messages.labels(kind="command", outcome="dead_lettered").inc()
            self.metrics.dead_letters.labels(reason=dl.reason).inc()
            return [(s.topic_dlq, topic[:512].encode(), dl.to_json())]
        self._count("commands")
        self.metrics.messages.labels(kind="command", outcome="accepted").inc()
        return [(s.topic_commands, cmd.patient_id.encode(), command_record(cmd))]

    def handle(self, topic: str, payload: bytes, mid: int, qos: int, client: Any = None) -> None:
        """Send one MQTT message's records to Kafka; it is acknowledged on ``client`` (None: this gateway's own
        session) once Kafka has them all."""
        records = self.records_for(topic, payload)
        self._send(_Pending(mid, qos, records, client))

    def _send(self, pending: _Pending) -> None:
        if not pending.records:  # cannot happen (every payload yields a record), but never hang an ack
            self._ack(pending)
            return
        producer = pending.producer = self._producer
        with self._retry_lock:
            self._inflight.add(pending)
        grouper, vitals, now = self._grouper, self.settings.topic_vitals, time.monotonic()
        commands, sealing = self.settings.topic_commands, self._sealing
        if sealing is not None and grouper is not None:
            # a patient's key comes with their enrolment; one without (enrolled before that) has it created
            # (written, acknowledged) here, before their readings join a group: making a group's record then never
            # waits, so the records of a partition keep their order (counted: wearwatch_gateway_datakeys_created).
            # A message naming several patients without a key (a hub's) creates theirs in one write, not one each
            try:
                sealing.ensure_keys([key.decode() for topic, key, _ in pending.records if topic == vitals])
            except Exception as exc:  # StackUnavailable: Kafka did not take the key
                self._on_failed(pending, exc)
                return
        for topic, key, value in pending.records:
            if grouper is not None and topic == vitals:
                with self._group_send_lock:
                    full = grouper.add(key, value, pending, now)
                    if full is not None:
                        self._send_group(full)
                continue
            try:
                if topic == self.settings.topic_dlq and sealing is not None:
                    key, value = self._sealed_dead_letter(sealing, key, value)
                if topic == commands and sealing is not None and grouper is not None:
                    # a nurse command: sealed under the patient's key, to the patient's partition, keyed by key id
                    key_id, cipher = sealing.cipher_for(key.decode())
                    fut = producer.send(topic, key=key_id, partition=grouper.partition(key),
                                        value=sealed_record([seal(cipher, key_id, value, "alerts.commands")]))
                else:
                    fut = producer.send(topic, key=key, value=value)
            except Exception as exc:  # buffer full / no metadata within max_block_ms, producer closed
                self._on_failed(pending, exc)
                return
            fut.add_callback(self._on_record_sent, pending, time.monotonic())
            fut.add_errback(self._on_failed, pending)

    @staticmethod
    def _sealed_dead_letter(keys: KeySource, key: bytes, value: bytes) -> tuple[bytes, bytes]:
        """A dead letter sealed under the data key of every patient it names (:func:`patients_named`), in turn:
        erasing any of them leaves it unreadable. One that names no patient (a payload that is not JSON, or
        has no patient id where the contract puts it) cannot be attributed and stays readable: it expires
        with ``vitals.dlq``'s retention. The key of a refused nurse command's letter loses the patient segment."""
        pids = patients_named(value, key)
        for pid in pids:
            key_id, cipher = keys.cipher_for(pid)
            value = sealed_record([seal(cipher, key_id, value, "vitals.dlq")])
        if pids and key.startswith((ACK_PREFIX.encode(), SNOOZE_PREFIX.encode())):
            key = key.rsplit(b"/", 1)[0]
        return key, value

    def _send_group(self, grp: _Group) -> None:
        """One vitals.raw record for a group (see :meth:`_Group.record`)."""
        try:
            key, value = grp.sealed_record(self._sealing) if self._sealing is not None else (grp.key, grp.record())
            fut = self._producer.send(self.settings.topic_vitals, key=key, value=value, partition=grp.partition)
        except Exception as exc:  # buffer full / no metadata within max_block_ms, producer closed
            self._on_group_failed(grp, exc)
            return
        self._count("records_grouped", 1)
        grp.sent_at = time.monotonic()
        fut.add_callback(self._on_group_sent, grp)
        fut.add_errback(self._on_group_failed, grp)

    def _on_group_sent(self, grp: _Group, _meta: Any) -> None:
        self.metrics.kafka_ack_seconds.observe(time.monotonic() - grp.sent_at)
        for pending, n in grp.members.items():
            self._on_sent(pending, _meta, n)

    def _on_group_failed(self, grp: _Group, exc: Any) -> None:
        for pending in grp.members:
            self._on_failed(pending, exc)

    def _send_due(self, grouper: Grouper, now: float) -> None:
        """Send the groups that waited long enough, each taken and sent before any newer one is (see
        :attr:`_group_send_lock`)."""
        with self._group_send_lock:
            for grp in grouper.due(now):
                self._send_group(grp)

    def _flush_groups(self) -> None:
        """Send the groups that waited long enough (a thread: MQTT callbacks only add)."""
        grouper = self._grouper
        assert grouper is not None
        tick = max(grouper.linger_s / 2, 0.001)
        while not self._stop.wait(tick):
            try:
                self._send_due(grouper, time.monotonic())
            except Exception:  # never let the flusher die: its groups' messages stay unacknowledged
                log.exception("unexpected error sending grouped readings")
                self._count("internal_errors")
                self.metrics.internal_errors.inc()

    def _on_record_sent(self, pending: _Pending, sent_at: float, meta: Any) -> None:
        self.metrics.kafka_ack_seconds.observe(time.monotonic() - sent_at)
        self._on_sent(pending, meta)

    def _on_sent(self, pending: _Pending, _meta: Any, n: int = 1) -> None:
        with pending.lock:
            pending.remaining -= n
            done = pending.remaining == 0 and not pending.failed
        if done:
            self._ack(pending)

    def _requeue(self, pending: _Pending) -> bool:
        """Mark the message failed and queue it for a re-send (once); False if it already was."""
        with pending.lock:
            first = not pending.failed
            pending.failed = True
        if first:
            with self._retry_lock:
                self._inflight.discard(pending)
                self._retry.append(pending)
                # a failed delivery is final only once the producer gave up (delivery timeout):
                # kafka-python's idempotent producer then resets its producer id and, in 3.0.x,
                # never asks for a new one, so it would hold every later record forever.
                # Re-send on a fresh producer instead.
                if pending.producer is self._producer:
                    self._renew = True
        return first

    def _on_failed(self, pending: _Pending, exc: Any) -> None:
        if self._requeue(pending):
            log.warning("Kafka send failed (%s); message will be re-sent", type(exc).__name__)
            self._count("kafka_send_failures")
            self.metrics.kafka_send_failures.inc()

    def _drain_retries(self) -> None:
        if self._renew:
            self._renew_producer()
        with self._retry_lock:
            todo, self._retry = self._retry, []
        for old in todo:
            self._count("kafka_resends")
            self.metrics.kafka_resends.inc()
            self._send(_Pending(old.mid, old.qos, old.records, old.client))

    def _renew_producer(self) -> None:
        """Replace the producer; every message still owed by the old one is re-sent on the new one."""
        try:
            new = kafka_producer(self.settings)
        except Exception as exc:  # Kafka still unreachable: try again on the next round
            log.warning("new Kafka producer not created yet (%s)", exc)
            return
        with self._retry_lock:
            old, self._producer, self._renew = self._producer, new, False
            stranded = [p for p in self._inflight if p.producer is old]
        requeued = sum(self._requeue(p) for p in stranded)  # not acked by the old producer: re-send
        self._count("kafka_producer_renewals")
        self.metrics.producer_renewals.inc()
        log.warning("Kafka producer replaced after a failed delivery; %d more messages re-sent", requeued)
        # best effort: stop the old producer's I/O thread without waiting for what it holds
        try:
            sender = getattr(old, "_sender", None)
            if sender is not None:
                sender.force_close()
            old.close(timeout=0)
        except Exception as exc:
            log.debug("closing the old Kafka producer: %s", exc)

    def _ack(self, pending: _Pending) -> None:
        with self._retry_lock:
            self._inflight.discard(pending)
        client = pending.client if pending.client is not None else self._client
        if pending.qos > 0 and client is not None:
            client.ack(pending.mid, pending.qos)
        self._count("acked")

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    # -- FHIR over HTTP (ingest.http_server authenticates, then calls this) ---------------
    def fhir_http(self, kind: Literal["Observation", "Bundle"], body: bytes, vendor: str) -> tuple[int, dict[str, Any]]:
        """Handle one authenticated FHIR POST body for ``vendor``: (HTTP status, FHIR JSON body).

        Blocks until Kafka acknowledged every record (readings and dead letters), or answers 503.
        """
        s = self.settings
        res = parse_fhir(
            body, int(time.time() * 1000), vendor=vendor, device_id="unknown", topic=None,
            expect=kind, limits=self.limits,
        )
        res = self._enrolled_fhir(res)
        # the key names the authenticated vendor: `wearwatch dlq --vendor` finds its HTTP dead letters by it
        key = f"http:{vendor}:POST {kind}".encode()
        records = [(s.topic_vitals, r.patient_id.encode(), r.to_json()) for r in res.readings]
        records.extend((s.topic_dlq, key, d.to_json()) for d in res.dead)
        self._count("http_requests")
        if not self._produce_and_wait(records, HTTP_KAFKA_TIMEOUT_S):
            self._count("http_kafka_timeouts")
            return 503, operation_outcome("error", "Kafka did not acknowledge the records in time; retry the request")
        self._count_readings(res.readings, res.dead)
        return http_answer(res)

    def _http_records(self, records: list[tuple[str, bytes, bytes]]) -> list[tuple[str, bytes, bytes, int | None]]:
        """(topic, key, value, partition) of an HTTP request's records: sealed like the MQTT path's once
        :meth:`start` set up sealing (each patient's readings one record in their partition), else as they are."""
        sealing, grouper, s = self._sealing, self._grouper, self.settings
        if sealing is None or grouper is None:
            return [(t, k, v, None) for t, k, v in records]
        out: list[tuple[str, bytes, bytes, int | None]] = []
        readings: dict[bytes, list[bytes]] = {}
        for t, k, v in records:
            if t == s.topic_vitals:
                readings.setdefault(k, []).append(v)
            elif t == s.topic_dlq:
                out.append((t, *self._sealed_dead_letter(sealing, k, v), None))
            else:
                out.append((t, k, v, None))
        sealing.ensure_keys([pid.decode() for pid in readings])  # a bundle's patients without a key: one write
        for pid, values in readings.items():
            grp = _Group(grouper.partition(pid), pid, 0.0)
            grp.values, grp.keys = values, [pid] * len(values)
            key, value = grp.sealed_record(sealing)
            out.append((s.topic_vitals, key, value, grp.partition))
        return out

    def _produce_and_wait(self, records: list[tuple[str, bytes, bytes]], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        ack = self.metrics.kafka_ack_seconds

        def acked(sent_at: float, _meta: Any) -> None:
            ack.observe(time.monotonic() - sent_at)

        try:
            futures = []
            for t, k, v, part in self._http_records(records):
                fut = (self._producer.send(t, key=k, value=v) if part is None
                       else self._producer.send(t, key=k, value=v, partition=part))
                fut.add_callback(acked, time.monotonic())
                futures.append(fut)
            for fut in futures:
                fut.get(timeout=max(0.1, deadline - time.monotonic()))
        except Exception as exc:  # KafkaTimeoutError, KafkaError: the client gets a 503 and retries
            log.warning("Kafka did not take an HTTP request's records (%s)", type(exc).__name__)
            return False
        return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stats-every", type=float, default=10.0, help="seconds between stats logs")


def run(args: argparse.Namespace) -> int:
    gw = Gateway(load_settings())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        gw.start(abort=stop)
        t = threading.Thread(target=gw.run_forever, args=(args.stats_every,), daemon=True)
        t.start()
        stop.wait()
    finally:
        gw.stop()
    return 0




