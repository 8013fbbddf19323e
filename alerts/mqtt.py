"""Alerts to nurse apps over MQTT (the publisher), and a router for the commands coming back.

Topics (all QoS 1):

=================================================  ==========  =============================================
topic                                              direction   payload
=================================================  ==========  =============================================
``wearwatch/v1/alerts/{ward}/{patient_id}``        to apps     **retained** state: the patient's open alerts
``wearwatch/v1/notify/{ward}/{route}``             to apps     one notifying :class:`AlertEvent` (not retained)
``wearwatch/v1/acks/{ward}/{patient_id}``          from apps   an :class:`~wearwatch.contract.commands.Ack`
``wearwatch/v1/snoozes/{ward}/{patient_id}``       from apps   a :class:`~wearwatch.contract.commands.Snooze`
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

The commands (their payloads, validation and Kafka records) are part of the shared
contract, :mod:`wearwatch.contract.commands`: the gateway validates them, the worker
applies them, and neither imports this module for it. Patient identifiers never
appear in INFO logs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from alerts.models import AlertEvent
from wearwatch.config import Settings
from wearwatch.contract.commands import (
    ACK_TOPIC_FILTER,
    SNOOZE_TOPIC_FILTER,
    TOPIC_ROOT,
    Ack,
    InvalidCommand,
    Snooze,
    parse_ack,
    parse_snooze,
)
from wearwatch.contract.ids import topic_segment
from wearwatch.transport import mqtt_client, mqtt_connect

__all__ = [
    "MqttAlertPublisher",
    "alert_topic",
    "attach_command_handlers",
    "notify_topic",
    "state_payload",
]

log = logging.getLogger(__name__)

_ROUTES = ("clinical", "device", "charge_nurse")


def alert_topic(ward: str, patient_id: str) -> str:
    """The retained per-patient alert state topic.

    >>> alert_topic("3B", "p-0042")
    'wearwatch/v1/alerts/3B/p-0042'
    >>> alert_topic("3B", "p/1")
    Traceback (most recent call last):
    ...
    ValueError: patient_id must be 1-64 characters of [A-Za-z0-9_.:-], got 'p/1'
    """
    return f"{TOPIC_ROOT}/alerts/{topic_segment('ward', ward)}/{topic_segment('patient_id', patient_id)}"


def notify_topic(ward: str, route: str) -> str:
    """Where notifying events for one ward and route go (not retained).

    >>> notify_topic("3B", "charge_nurse")
    'wearwatch/v1/notify/3B/charge_nurse'
    """
    if route not in _ROUTES:
        raise ValueError(f"route must be one of {', '.join(_ROUTES)}, got {route!r}")
    return f"{TOPIC_ROOT}/notify/{topic_segment('ward', ward)}/{route}"


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
        client = mqtt_client(settings, client_id, username=username, password=password)
        client.max_queued_messages_set(kwargs.pop("max_queued", 10_000))
        mqtt_connect(client, settings, timeout_s=timeout_s)
        return cls(client, max_queued=0, **kwargs)

    def _publish(self, topic: str, payload: bytes, retain: bool) -> bool:
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


