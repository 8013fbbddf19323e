"""Connections to the backing services, built from :class:`~wearwatch.config.Settings`.

One place that knows how to open an MQTT client (auth, TLS, MQTT v5 session),
a Kafka producer (acks=all, idempotent) and how to declare topics, so the
gateway, simulator, sinks, tests and benchmarks all connect the same way.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from wearwatch.config import Settings
from wearwatch.errors import ConfigError, StackUnavailable
from wearwatch.retention import topic_configs

__all__ = [
    "aiokafka_client_config", "delete_topics", "end_mqtt_session", "ensure_topics",
    "kafka_client_config", "kafka_producer", "mqtt_client", "mqtt_connect", "read_to_end", "require_sasl_login",
]

log = logging.getLogger(__name__)


def mqtt_client(
    settings: Settings,
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    manual_ack: bool = False,
) -> Any:
    """A paho-mqtt 2.x MQTT v5 client with credentials and TLS from settings."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    user = username if username is not None else settings.mqtt_username
    pw = password if password is not None else settings.mqtt_password
    if user:
        client.username_pw_set(user, pw)
    if settings.mqtt_tls:
        client.tls_set(ca_certs=settings.mqtt_ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def mqtt_connect(
    client: Any,
    settings: Settings,
    *,
    clean_start: bool = True,
    session_expiry_s: int = 0,
    receive_maximum: int | None = None,
    timeout_s: float = 10.0,
) -> None:
    """Connect and start the network loop; raise StackUnavailable if refused or timed out."""
    props = Properties(PacketTypes.CONNECT)
    if session_expiry_s:
        props.SessionExpiryInterval = session_expiry_s
    if receive_maximum:
        props.ReceiveMaximum = receive_maximum
    connected = threading.Event()
    result: dict[str, Any] = {}
    previous = client.on_connect

    def on_connect(c: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        result["rc"] = reason_code
        connected.set()
        if previous is not None:
            previous(c, userdata, flags, reason_code, properties)

    client.on_connect = on_connect
    try:
        client.connect(
            settings.mqtt_host, settings.mqtt_port, keepalive=30, clean_start=clean_start, properties=props
        )
    except OSError as exc:
        raise StackUnavailable(f"MQTT broker {settings.mqtt_host}:{settings.mqtt_port}: {exc}") from exc
    client.loop_start()
    if not connected.wait(timeout_s):
        client.loop_stop()
        raise StackUnavailable(f"MQTT broker {settings.mqtt_host}:{settings.mqtt_port} did not answer")
    rc = result["rc"]
    if rc.is_failure:
        client.loop_stop()
        raise StackUnavailable(f"MQTT connect refused: {rc}")
    # later reconnects (done by paho's loop) still reach the caller's handler
    client.on_connect = previous if previous is not None else None


def kafka_client_config(settings: Settings) -> dict[str, Any]:
    """Connection settings for kafka-python clients (bootstrap servers, TLS, SASL).

    >>> from wearwatch.config import load_settings
    >>> kafka_client_config(load_settings({}))
    {'bootstrap_servers': ['127.0.0.1:9092']}
    >>> cfg = kafka_client_config(load_settings({"WEARWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    ...     "WEARWATCH_KAFKA_SASL_USERNAME": "gw", "WEARWATCH_KAFKA_SASL_PASSWORD": "pw"}))
    >>> cfg["security_protocol"], cfg["sasl_mechanism"], cfg["sasl_plain_username"]
    ('SASL_SSL', 'SCRAM-SHA-512', 'gw')
    """
    cfg: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap.split(",")}
    proto = settings.kafka_security_protocol
    if proto != "PLAINTEXT":
        cfg["security_protocol"] = proto
    if proto.startswith("SASL"):
        require_sasl_login(settings)
        cfg["sasl_mechanism"] = settings.kafka_sasl_mechanism
        cfg["sasl_plain_username"] = settings.kafka_sasl_username
        cfg["sasl_plain_password"] = settings.kafka_sasl_password
    if proto in ("SSL", "SASL_SSL") and settings.kafka_ca_file:
        cfg["ssl_cafile"] = settings.kafka_ca_file
    return cfg


def require_sasl_login(settings: Settings) -> None:
    """A SASL protocol without an account is a configuration error, said at start (kafka-python would
    only fail each connection with an AttributeError, aiokafka would retry an empty login)."""
    missing = [f"WEARWATCH_KAFKA_SASL_{n.upper()}" for n in ("username", "password")
               if not getattr(settings, f"kafka_sasl_{n}")]
    if missing:
        raise ConfigError(f"WEARWATCH_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol} needs "
                          f"{' and '.join(missing)} (the service's Kafka account)")


def _kafka_unavailable(settings: Settings, exc: Exception) -> StackUnavailable:
    """StackUnavailable for a Kafka client that could not start, with what else it may mean under SASL/TLS."""
    hint = ""
    if settings.kafka_security_protocol != "PLAINTEXT":
        # kafka-python reports a refused login or an untrusted certificate as "Unable to bootstrap"
        hint = (f" (with {settings.kafka_security_protocol} this is also what a refused login or an untrusted "
                "certificate looks like: check WEARWATCH_KAFKA_SASL_USERNAME/_PASSWORD and WEARWATCH_KAFKA_CA_FILE)")
    return StackUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}{hint}")


def end_mqtt_session(settings: Settings, client_id: str) -> None:
    """Discard the broker's persistent session of ``client_id`` (for a gateway that is retired for good).

    A gateway keeps a persistent session (QoS 1, 7-day expiry) so that nothing published
    while it restarts is lost; the broker queues every reading for it meanwhile. A test or
    bench gateway with a one-off client id would leave such a session behind, and the
    broker would keep queueing (on the development stack: 940 MB and seconds of latency).
    """
    client = mqtt_client(settings, client_id)
    mqtt_connect(client, settings, clean_start=True)  # session expiry 0: ends with this connection
    client.disconnect()
    client.loop_stop()


def aiokafka_client_config(settings: Settings) -> dict[str, Any]:
    """The same connection settings for aiokafka clients (``ssl_context`` instead of a CA file).

    >>> from wearwatch.config import load_settings
    >>> aiokafka_client_config(load_settings({}))
    {'bootstrap_servers': ['127.0.0.1:9092']}
    """
    cfg = kafka_client_config(settings)
    cafile = cfg.pop("ssl_cafile", None)
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        cfg["ssl_context"] = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cafile=cafile)
    return cfg


def kafka_producer(settings: Settings, **overrides: Any) -> Any:
    """A kafka-python producer that loses nothing: acks=all, idempotent, retrying."""
    config: dict[str, Any] = {
        **kafka_client_config(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "batch_size": 64 * 1024,
        "compression_type": None,
        "delivery_timeout_ms": 120_000,
        "client_id": "wearwatch",
    }
    config.update(overrides)
    try:
        return KafkaProducer(**config)
    except KafkaError as exc:
        raise _kafka_unavailable(settings, exc) from exc


def ensure_topics(settings: Settings, names: Iterable[str], partitions: int | None = None) -> None:
    """Create topics that do not exist yet (idempotent), with their declared retention (existing ones are
    left as they are: ``make stack-up`` and ``wearwatch retention --apply`` update those)."""
    try:
        admin = KafkaAdminClient(**kafka_client_config(settings), client_id="wearwatch-admin")
    except KafkaError as exc:
        raise _kafka_unavailable(settings, exc) from exc
    try:
        existing = set(admin.list_topics())
        configs = topic_configs(settings)  # cleanup policy and retention (wearwatch/retention.py)
        new = [
            NewTopic(name, partitions or settings.partitions, settings.replication_factor,
                     topic_configs=configs.get(name, {}))
            for name in names
            if name not in existing
        ]
        for topic in new:
            try:
                admin.create_topics([topic])
                log.info("created topic %s (%d partitions)", topic.name, topic.num_partitions)
            except TopicAlreadyExistsError:
                pass
            except KafkaError as exc:  # e.g. TopicAuthorizationFailedError: an account without CREATE on it
                who = f" as {settings.kafka_sasl_username}" if settings.kafka_sasl_username else ""
                raise StackUnavailable(f"Kafka refused to create topic {topic.name}{who}: {type(exc).__name__} "
                                       "(the ACLs each service needs: python -m wearwatch.kafka_acls)") from exc
    finally:
        admin.close()


def delete_topics(settings: Settings, prefixes: Iterable[str]) -> int:
    """Delete every topic whose name starts with one of ``prefixes``; how many were asked to go.

    For test and benchmark runs, which name all their topics (Faust's included) with a
    unique prefix: without it a development broker collects thousands of partitions and
    slows down.
    """
    starts = tuple(p for p in prefixes if p)
    if not starts:
        return 0
    try:
        admin = KafkaAdminClient(**kafka_client_config(settings), client_id="wearwatch-admin")
    except KafkaError as exc:
        raise _kafka_unavailable(settings, exc) from exc
    try:
        doomed = sorted(t for t in admin.list_topics() if t.startswith(starts))
        for i in range(0, len(doomed), 50):
            admin.delete_topics(doomed[i:i + 50], timeout_ms=30_000)
        return len(doomed)
    finally:
        admin.close()


def read_to_end(
    settings: Settings,
    topic: str,
    partition: int | Callable[[int], int] = 0,
    *,
    client_id: str,
    timeout_s: float,
    fetch_max_wait_ms: int = 100,
) -> Generator[Any, None, None]:
    """Every record of one partition of ``topic``, from its beginning up to its end as it is when the reading
    starts (kafka-python ``ConsumerRecord``s, in order), read by a consumer of no group that commits nothing.

    ``partition`` is the partition's number, or a function of the topic's partition count that gives it
    (a topic that does not exist then has no records). The whole reading must end within ``timeout_s``:
    past it, and on any error of the Kafka client, :class:`~wearwatch.errors.StackUnavailable` is raised
    (``from`` the client's error). Stop iterating early, or close the iterator, and the consumer is closed.
    """
    deadline = time.monotonic() + timeout_s

    def left_ms() -> int:
        return max(int((deadline - time.monotonic()) * 1000), 0)

    def too_late(exc: Exception | None = None) -> StackUnavailable:
        return StackUnavailable(f"could not read {topic} to its end in {timeout_s:.0f} s"
                                + (f" ({type(exc).__name__})" if exc is not None else ""))

    try:
        consumer = KafkaConsumer(**kafka_client_config(settings), group_id=None, enable_auto_commit=False,
                                 client_id=client_id, fetch_max_wait_ms=fetch_max_wait_ms)
    except KafkaError as exc:
        raise _kafka_unavailable(settings, exc) from exc
    try:
        if callable(partition):
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                return
            partition = partition(len(parts))
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        try:
            end = consumer.end_offsets([tp], timeout_ms=left_ms())[tp]
        except KafkaTimeoutError as exc:
            raise too_late(exc) from exc
        while True:
            position = consumer.position(tp, timeout_ms=left_ms())
            if position is not None and position >= end:
                return
            if time.monotonic() > deadline:
                raise too_late()
            for records in consumer.poll(timeout_ms=min(500, max(left_ms(), 1))).values():
                yield from records
    except KafkaTimeoutError as exc:
        raise too_late(exc) from exc
    except KafkaError as exc:
        raise _kafka_unavailable(settings, exc) from exc
    finally:
        consumer.close()
