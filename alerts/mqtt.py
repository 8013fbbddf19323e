"""Alerts to nurse apps over MQTT, and their acknowledgements and snoozes back.

Topics (all QoS 1):

=================================================  ==========  =============================================
topic                                              direction   payload
=================================================  ==========  =============================================
``wearwatch/v1/alerts/{ward}/{patient_id}``        to apps     **retained** state: the patient's open alerts
``wearwatch/v1/notify/{ward}/{route}``             to apps     one notifying :class:`AlertEvent` (not retained)
``wearwatch/v1/acks/{ward}/{patient_id}``          from apps   ``{"alert_id", "by", "ts"}`` → :class:`Ack`
``wearwatch/v1/snoozes/{ward}/{patient_id}``       from apps   ``{"kind", "until", "by", "ts"}`` → :class:`Snooze`
=================================================  ==========  =============================================

Retained state format
---------------------
The retained message on the alerts topic is always a JSON object, never a bare
list, so it can carry a version and a timestamp::

    {"schema_version": 1, "patient_id": "p-0042", "ward": "3B", "updated_ms": 1800000000000,
     "alerts": [<AlertEvent as JSON>, ...]}

``alerts`` holds the latest event of each open (not resolved) alert, and is
``[]`` when none is open — an explicit "nothing open" that a nurse app which
connects later sees at once. Only when a patient leaves a ward (discharge,
transfer) is the retained message deleted, with an empty payload
(:meth:`MqttAlertPublisher.clear_state`). Apps should ignore a state whose
``updated_ms`` is older than one they already showed.

``route`` on the notify topic is the event's ``audience_route``: ``clinical``
(the ward's nurses), ``device`` (technicians) or ``charge_nurse`` (escalations).
Only events with ``notify=True`` are sent there; escalated events go to both
``charge_nurse`` and ``clinical`` (the ward's nurses keep being reminded).

Time stamps ``ts``/``until`` in commands are epoch milliseconds or RFC 3339
strings with an offset. Patient identifiers never appear in INFO logs.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alerts.models import AlertEvent
from wearwatch.config import Settings
from wearwatch.errors import WearwatchError

__all__ = [
    "ACK_TOPIC_FILTER",
    "SNOOZE_TOPIC_FILTER",
    "TOPIC_ROOT",
    "Ack",
    "InvalidCommand",
    "MqttAlertPublisher",
    "Note",
    "Snooze",
    "ack_topic",
    "alert_topic",
    "attach_command_handlers",
    "command_record",
    "notify_topic",
    "parse_ack",
    "parse_command_record",
    "parse_snooze",
    "snooze_topic",
    "state_payload",
]

log = logging.getLogger(__name__)

TOPIC_ROOT = "wearwatch/v1"
#: Subscribe here for acknowledgements from nurse apps.
ACK_TOPIC_FILTER = f"{TOPIC_ROOT}/acks/+/+"
#: Subscribe here for snoozes from nurse apps.
SNOOZE_TOPIC_FILTER = f"{TOPIC_ROOT}/snoozes/+/+"
#: Largest command payload accepted.
MAX_COMMAND_BYTES = 4096

_ID = r"[A-Za-z0-9_.:\-]{1,64}"
_ID_RE = re.compile(rf"^{_ID}$")
_ALERT_ID = r"^al-[0-9a-f]{20}$"
_BY = r"^[A-Za-z0-9_.:@\-]{1,64}$"
_ROUTES = ("clinical", "device", "charge_nurse")


class InvalidCommand(WearwatchError):
    """An ack or snooze message breaks its contract.

    ``reason`` is machine-readable (``bad_topic``, ``too_large``, ``invalid_json``,
    ``invalid_field``), the message explains it without echoing patient data.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _segment(name: str, value: str) -> str:
    if not _ID_RE.match(value):
        raise ValueError(f"{name} must be 1-64 characters of [A-Za-z0-9_.:-], got {value!r}")
    return value


def alert_topic(ward: str, patient_id: str) -> str:
    """The retained per-patient alert state topic.

    >>> alert_topic("3B", "p-0042")
    'wearwatch/v1/alerts/3B/p-0042'
    >>> alert_topic("3B", "p/1")
    Traceback (most recent call last):
    ...
    ValueError: patient_id must be 1-64 characters of [A-Za-z0-9_.:-], got 'p/1'
    """
    return f"{TOPIC_ROOT}/alerts/{_segment('ward', ward)}/{_segment('patient_id', patient_id)}"


def ack_topic(ward: str, patient_id: str) -> str:
    """Where a nurse app publishes acknowledgements for one patient.

    >>> ack_topic("3B", "p-0042")
    'wearwatch/v1/acks/3B/p-0042'
    """
    return f"{TOPIC_ROOT}/acks/{_segment('ward', ward)}/{_segment('patient_id', patient_id)}"


def snooze_topic(ward: str, patient_id: str) -> str:
    """Where a nurse app publishes snoozes for one patient.

    >>> snooze_topic("3B", "p-0042")
    'wearwatch/v1/snoozes/3B/p-0042'
    """
    return f"{TOPIC_ROOT}/snoozes/{_segment('ward', ward)}/{_segment('patient_id', patient_id)}"


def notify_topic(ward: str, route: str) -> str:
    """Where notifying events for one ward and route go (not retained).

    >>> notify_topic("3B", "charge_nurse")
    'wearwatch/v1/notify/3B/charge_nurse'
    """
    if route not in _ROUTES:
        raise ValueError(f"route must be one of {', '.join(_ROUTES)}, got {route!r}")
    return f"{TOPIC_ROOT}/notify/{_segment('ward', ward)}/{route}"


def _ts_ms(v: Any) -> int:
    """Epoch ms (int) or RFC 3339 with offset -> epoch ms."""
    if isinstance(v, bool):
        raise ValueError("must be epoch milliseconds or an RFC 3339 string")
    if isinstance(v, int):
        if v <= 0:
            raise ValueError("must be positive epoch milliseconds")
        return v
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v)
        except ValueError:
            raise ValueError("is not an RFC 3339 time stamp") from None
        if dt.tzinfo is None:
            raise ValueError("needs a UTC offset")
        return int(dt.timestamp() * 1000)
    raise ValueError("must be epoch milliseconds or an RFC 3339 string")


class Ack(BaseModel):
    """A nurse acknowledged one alert (from ``wearwatch/v1/acks/{ward}/{patient_id}``).

    ``ward`` and ``patient_id`` come from the topic (the broker's ACL decides who
    may publish there), the rest from the payload. Feed it to
    :meth:`alerts.lifecycle.AlertBook.ack` of that patient.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    ward: str = Field(pattern=rf"^{_ID}$")
    patient_id: str = Field(pattern=rf"^{_ID}$")
    alert_id: str = Field(pattern=_ALERT_ID)
    by: str = Field(pattern=_BY)
    ts_ms: int = Field(gt=0)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump())


class Snooze(BaseModel):
    """A nurse snoozed one kind of alert for a patient until ``until_ms`` (capped by the lifecycle)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    ward: str = Field(pattern=rf"^{_ID}$")
    patient_id: str = Field(pattern=rf"^{_ID}$")
    kind: str = Field(pattern=r"^[a-z0-9_]{1,64}$")
    until_ms: int = Field(gt=0)
    by: str = Field(pattern=_BY)
    ts_ms: int = Field(gt=0)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump())


class Note(BaseModel):
    """A nurse wrote a note on one alert (from the console; applied by :meth:`alerts.lifecycle.AlertBook.note`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    ward: str = Field(pattern=rf"^{_ID}$")
    patient_id: str = Field(pattern=rf"^{_ID}$")
    alert_id: str = Field(pattern=_ALERT_ID)
    text: str = Field(min_length=1, max_length=1000)
    by: str = Field(pattern=_BY)
    ts_ms: int = Field(gt=0)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump())


def _parse_command(
    kind: str, topic: str, payload: bytes | str, fields: dict[str, str]
) -> tuple[str, str, dict[str, Any]]:
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != f"{TOPIC_ROOT}/{kind}":
        raise InvalidCommand("bad_topic", f"expected {TOPIC_ROOT}/{kind}/{{ward}}/{{patient_id}}")
    ward, pid = parts[3], parts[4]
    if not _ID_RE.match(ward) or not _ID_RE.match(pid):
        raise InvalidCommand("bad_topic", "ward and patient_id must be 1-64 characters of [A-Za-z0-9_.:-]")
    if len(payload) > MAX_COMMAND_BYTES:
        raise InvalidCommand("too_large", f"payload over {MAX_COMMAND_BYTES} bytes")
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidCommand("invalid_json", "payload is not valid UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise InvalidCommand("invalid_json", "payload must be a JSON object")
    allowed = {"schema_version", *fields}
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise InvalidCommand("invalid_field", f"unknown field(s): {', '.join(unknown)}")
    missing = [k for k in fields if k not in doc]
    if missing:
        raise InvalidCommand("invalid_field", f"missing field(s): {', '.join(missing)}")
    out: dict[str, Any] = {"ward": ward, "patient_id": pid}
    if "schema_version" in doc:
        out["schema_version"] = doc["schema_version"]
    for src, dst in fields.items():
        v = doc[src]
        if dst.endswith("_ms"):
            try:
                v = _ts_ms(v)
            except ValueError as exc:
                raise InvalidCommand("invalid_field", f"{src} {exc}") from None
        out[dst] = v
    return ward, pid, out


def _validate(model: type[BaseModel], values: dict[str, Any]) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "?"
        raise InvalidCommand("invalid_field", f"{loc}: {err['msg']}") from None


def parse_ack(topic: str, payload: bytes | str) -> Ack:
    """Validate one acknowledgement message; raise :class:`InvalidCommand` saying what is wrong.

    >>> a = parse_ack("wearwatch/v1/acks/3B/p-0042",
    ...               b'{"alert_id": "al-7c35ac37f0732fad6862", "by": "nurse.kim", "ts": 1800000000000}')
    >>> (a.ward, a.patient_id, a.by, a.ts_ms)
    ('3B', 'p-0042', 'nurse.kim', 1800000000000)
    >>> parse_ack("wearwatch/v1/acks/3B/p-0042", b'{"alert_id": "x", "by": "kim", "ts": 1}')
    Traceback (most recent call last):
    ...
    alerts.mqtt.InvalidCommand: invalid_field: alert_id: String should match pattern '^al-[0-9a-f]{20}$'
    """
    _w, _p, values = _parse_command("acks", topic, payload, {"alert_id": "alert_id", "by": "by", "ts": "ts_ms"})
    ack: Ack = _validate(Ack, values)
    return ack


def parse_snooze(topic: str, payload: bytes | str) -> Snooze:
    """Validate one snooze message; raise :class:`InvalidCommand` saying what is wrong.

    >>> s = parse_snooze("wearwatch/v1/snoozes/3B/p-0042",
    ...                  b'{"kind": "glucose_high", "until": "2027-01-15T08:30:00Z", "by": "kim", "ts": 1800000000000}')
    >>> (s.kind, s.until_ms)
    ('glucose_high', 1800001800000)
    """
    _w, _p, values = _parse_command(
        "snoozes", topic, payload, {"kind": "kind", "until": "until_ms", "by": "by", "ts": "ts_ms"}
    )
    snooze: Snooze = _validate(Snooze, values)
    return snooze


def state_payload(patient_id: str, ward: str, alerts: Sequence[AlertEvent], updated_ms: int) -> bytes:
    """The retained state message: the patient's open alerts (``[]`` when none).

    >>> state_payload("p-0042", "3B", [], 1800000000000)
    b'{"schema_version":1,"patient_id":"p-0042","ward":"3B","updated_ms":1800000000000,"alerts":[]}'
    """
    return orjson.dumps(
        {
            "schema_version": 1,
            "patient_id": patient_id,
            "ward": ward,
            "updated_ms": updated_ms,
            "alerts": [a.model_dump() for a in alerts],
        }
    )


class MqttAlertPublisher:
    """Publishes alert state and notifications to nurse apps; never blocks the caller for long.

    paho queues QoS 1 messages and its network thread (``loop_start``) sends
    them, so :meth:`publish_state` and :meth:`publish_event` return at once. The
    outgoing queue is bounded (``max_queued``): beyond it messages are dropped
    and counted in ``stats["dropped"]`` (a newer retained state supersedes a
    dropped one anyway). While disconnected paho keeps the queued messages and
    sends them after its automatic reconnect.

    Parameters
    ----------
    client
        A paho-mqtt 2.x client, connected with its loop running (see :meth:`from_settings`).
    qos
        QoS of every publish (1).
    max_queued
        Bound of paho's outgoing queue; 0 leaves the client's setting alone. paho
        accepts it only before the client connects (else a WARNING is logged).
    """

    def __init__(self, client: Any, *, qos: int = 1, max_queued: int = 10_000) -> None:
        self.client = client
        self.qos = qos
        if max_queued:
            try:
                client.max_queued_messages_set(max_queued)
            except RuntimeError:  # paho only allows it before connecting
                log.warning("MQTT client already connected: outgoing queue bound not applied")
        self.stats: dict[str, int] = {"published": 0, "dropped": 0, "errors": 0}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
        **kwargs: Any,
    ) -> MqttAlertPublisher:
        """Connect a client (credentials from settings unless given) and wrap it.

        Raises :class:`~wearwatch.errors.StackUnavailable` if the broker refuses or does not answer.
        """
        from wearwatch.transport import mqtt_client, mqtt_connect

        client = mqtt_client(settings, client_id, username=username, password=password)
        client.max_queued_messages_set(kwargs.pop("max_queued", 10_000))
        mqtt_connect(client, settings, timeout_s=timeout_s)
        return cls(client, max_queued=0, **kwargs)

    def _publish(self, topic: str, payload: bytes, retain: bool) -> bool:
        import paho.mqtt.client as mqtt

        try:
            info = self.client.publish(topic, payload, qos=self.qos, retain=retain)
        except (ValueError, OSError) as exc:
            with self._lock:
                self.stats["errors"] += 1
            log.warning("MQTT publish failed: %s", type(exc).__name__)
            return False
        rc = info.rc
        with self._lock:
            if rc == mqtt.MQTT_ERR_SUCCESS or rc == mqtt.MQTT_ERR_NO_CONN:  # NO_CONN: queued, sent on reconnect
                self.stats["published"] += 1
                return True
            key = "dropped" if rc == mqtt.MQTT_ERR_QUEUE_SIZE else "errors"
            self.stats[key] += 1
            n = self.stats[key]
        if n == 1 or n % 1000 == 0:
            log.warning("MQTT alert publish %s (%d so far): %s", key, n, mqtt.error_string(rc))
        return False

    def publish_state(self, ward: str, patient_id: str, alerts: Sequence[AlertEvent], updated_ms: int) -> bool:
        """Publish (retained) the patient's open alerts, e.g. ``book.open_alerts()``; False if dropped."""
        return self._publish(alert_topic(ward, patient_id), state_payload(patient_id, ward, alerts, updated_ms), True)

    def clear_state(self, ward: str, patient_id: str) -> bool:
        """Delete the retained state (patient discharged or moved to another ward)."""
        return self._publish(alert_topic(ward, patient_id), b"", True)

    def publish_event(self, event: AlertEvent) -> bool:
        """Send a notifying event to its route's topic (not retained); events with ``notify=False`` are skipped.

        Escalated events (route ``charge_nurse``) go to the ward's ``clinical`` topic as well.
        """
        if not event.notify:
            return False
        route = event.audience_route or event.audience
        ward = event.ward or "unassigned"
        body = event.to_json()
        ok = self._publish(notify_topic(ward, route), body, False)
        if route == "charge_nurse":  # escalated: the ward's nurses keep getting it too
            ok = self._publish(notify_topic(ward, "clinical"), body, False) and ok
        return ok

    def close(self) -> None:
        """Stop the network loop and disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def attach_command_handlers(
    client: Any,
    on_ack: Callable[[Ack], None],
    on_snooze: Callable[[Snooze], None] | None = None,
    on_invalid: Callable[[str, InvalidCommand], None] | None = None,
    *,
    qos: int = 1,
) -> None:
    """Route acknowledgements (and snoozes) arriving on ``client`` to callbacks.

    Call before :func:`wearwatch.transport.mqtt_connect`: the subscriptions are
    (re)made on every connect. Invalid messages go to ``on_invalid(topic, error)``
    or are logged at WARNING (reason only). Callbacks run on paho's network thread:
    keep them short (e.g. produce to Kafka keyed by ``patient_id``).
    """
    previous = client.on_connect

    def on_connect(c: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        subs = [(ACK_TOPIC_FILTER, qos)]
        if on_snooze is not None:
            subs.append((SNOOZE_TOPIC_FILTER, qos))
        c.subscribe(subs)
        if previous is not None:
            previous(c, userdata, flags, reason_code, properties)

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        topic = msg.topic
        try:
            if topic.startswith(f"{TOPIC_ROOT}/acks/"):
                on_ack(parse_ack(topic, msg.payload))
            elif on_snooze is not None and topic.startswith(f"{TOPIC_ROOT}/snoozes/"):
                on_snooze(parse_snooze(topic, msg.payload))
        except InvalidCommand as exc:
            if on_invalid is not None:
                on_invalid(topic, exc)
            else:
                log.warning("invalid nurse command dropped: %s", exc.reason)

    client.on_connect = on_connect
    client.on_message = on_message


_COMMAND_TYPES: dict[str, type[Ack] | type[Snooze] | type[Note]] = {"ack": Ack, "snooze": Snooze, "note": Note}


def command_record(cmd: Ack | Snooze | Note) -> bytes:
    """The ``alerts.commands`` value for a nurse command (key = patient_id).

    >>> n = Note(ward="3B", patient_id="p-1", alert_id="al-" + "0" * 20, text="called", by="kim", ts_ms=1)
    >>> parse_command_record(command_record(n)) == n
    True
    """
    kind = next(k for k, t in _COMMAND_TYPES.items() if isinstance(cmd, t))
    return orjson.dumps({"type": kind, "body": cmd.model_dump()})


def parse_command_record(value: bytes) -> Ack | Snooze | Note:
    """Inverse of :func:`command_record`; raises :class:`InvalidCommand` (reason bad_command)."""
    try:
        doc = orjson.loads(value)
        model = _COMMAND_TYPES.get(doc["type"])
        if model is not None:
            return model.model_validate(doc["body"])
        raise KeyError(f"unknown command type {str(doc['type'])[:20]!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidCommand("bad_command", f"not a nurse command record: {str(exc)[:200]}") from exc
