"""What the gateway learns from the MQTT broker: its own figures (``$SYS``: what it dropped, what it holds) and
where the other gateways of a share group stand (who may leave the group).

The broker's messages are stood in for by plain objects with a topic and a payload (pure unit test of
the gateway's handling); ``tests/integration/test_gateway_ops.py`` has a real Mosquitto drop messages.
"""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from ingest.gateway import (
    BROKER_DROPPED_TOPIC,
    BROKER_STORED_TOPIC,
    PRESENCE_TOPIC,
    PRESENCE_TTL_S,
    Gateway,
    subscriptions,
)
from wearwatch.config import load_settings
from wearwatch.metrics import exposition


def _figure(gw: Gateway, topic: str, payload: bytes) -> None:
    gw._on_broker_figure(None, None, SimpleNamespace(topic=topic, payload=payload))


def _samples(gw: Gateway) -> dict[str, float]:
    text = exposition(gw.telemetry.registry, None)[0].decode()
    return {name: float(value) for name, value in
            (line.split(" ") for line in text.splitlines() if line.startswith("wearwatch_gateway_broker_"))}


def test_the_broker_figures_reach_metrics() -> None:
    gw = Gateway(load_settings({}))
    # dropped messages are counted from 0 while the gateway follows them; what the broker holds is not made up
    assert _samples(gw) == {"wearwatch_gateway_broker_dropped_messages_total": 0.0}
    _figure(gw, BROKER_STORED_TOPIC, b"53")
    _figure(gw, BROKER_STORED_TOPIC, b"not a number")  # ignored, the last figure stays
    assert _samples(gw) == {"wearwatch_gateway_broker_dropped_messages_total": 0.0,
                            "wearwatch_gateway_broker_stored_messages": 53.0}


def test_drops_are_counted_and_logged_with_counts_only(caplog: pytest.LogCaptureFixture) -> None:
    gw = Gateway(load_settings({}))
    caplog.set_level(logging.INFO, logger="ingest.gateway")

    def warnings() -> list[str]:
        out = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "ingest.gateway"]
        caplog.clear()
        return out

    def dropped() -> float:
        return _samples(gw)["wearwatch_gateway_broker_dropped_messages_total"]

    _figure(gw, BROKER_DROPPED_TOPIC, b"0")  # a broker that never dropped one
    _figure(gw, BROKER_DROPPED_TOPIC, b"0")
    assert warnings() == [] and dropped() == 0.0
    _figure(gw, BROKER_DROPPED_TOPIC, b"20")
    (msg,) = warnings()
    assert msg.startswith("the MQTT broker dropped 20 messages (20 since it started)")
    assert dropped() == 20.0
    _figure(gw, BROKER_DROPPED_TOPIC, b"20")
    assert warnings() == [] and dropped() == 20.0
    _figure(gw, BROKER_DROPPED_TOPIC, b"0")  # the broker restarted: its count starts again, nothing dropped
    assert warnings() == [] and dropped() == 20.0
    _figure(gw, BROKER_DROPPED_TOPIC, b"3")
    (msg,) = warnings()
    assert msg.startswith("the MQTT broker dropped 3 messages (3 since it started)")
    assert dropped() == 23.0

    # a gateway that starts while the broker's count is fresh (it changed within the last minute) counts one
    late = Gateway(load_settings({}))
    _figure(late, BROKER_DROPPED_TOPIC, b"7")
    (msg,) = warnings()
    assert msg.startswith("the MQTT broker dropped messages within the last minute (7 since it started)")
    assert _samples(late)["wearwatch_gateway_broker_dropped_messages_total"] == 1.0
    _figure(late, BROKER_DROPPED_TOPIC, b"9")
    assert _samples(late)["wearwatch_gateway_broker_dropped_messages_total"] == 3.0


def test_a_broker_refusing_its_figures_leaves_the_gateway_subscribed(caplog: pytest.LogCaptureFixture) -> None:
    gw = Gateway(load_settings({}))
    gw._data_mid, gw._broker_mid = 1, 2
    refused = [ReasonCode(PacketTypes.SUBACK, identifier=0x87)] * 2  # Not authorized (an ACL without $SYS)
    granted = [ReasonCode(PacketTypes.SUBACK, identifier=1)] * 4
    gw._on_subscribe(None, None, 2, refused, None)
    gw._on_subscribe(None, None, 2, refused, None)  # a reconnection: said once
    assert not gw._subscribed.is_set()
    assert [r.getMessage()[:42] for r in caplog.records
               if r.levelno == logging.WARNING and r.name == "ingest.gateway"] == [
        "the MQTT broker refused its figures (Not a"]
    gw._on_subscribe(None, None, 1, granted, None)
    assert gw._subscribed.is_set() and gw._mqtt_ready()[0]
    gw._subscribed.clear()
    gw._on_subscribe(None, None, 1, [ReasonCode(PacketTypes.SUBACK, identifier=0x87)] * 4, None)
    assert not gw._subscribed.is_set()  # the data topics refused: not ready, as before
    assert gw._mqtt_state.startswith("subscription refused")


def test_the_group_members_a_gateway_knows() -> None:
    gw = Gateway(load_settings({"WEARWATCH_MQTT_CLIENT_ID": "gw-0", "WEARWATCH_MQTT_SHARE_GROUP": "gateways"}))

    def say(cid: str, word: bytes) -> None:
        gw._on_presence(None, None, SimpleNamespace(topic=f"{PRESENCE_TOPIC}/gateways/{cid}", payload=word))

    assert gw.others_in_group() == []
    say("gw-0", b"up")  # its own word
    say("gw-1", b"up")
    say("gw-2", b"up")
    assert gw.others_in_group() == ["gw-1", "gw-2"]
    say("gw-1", b"leaving")  # deciding whether it may leave: not one to count on
    say("gw-2", b"")  # stopped
    say("gw-3", b"up")
    say("gw-3", b"gone")  # its will: it crashed
    assert gw.others_in_group() == [] and list(gw.members) == ["gw-1"] and gw.members["gw-1"][0] == "leaving"
    say("gw-1", b"\xff")  # nothing it understands: as gone
    assert gw.members == {}


def test_a_members_word_holds_only_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway that died while the broker was down sent no will: its retained ``up`` must not make a
    stopping gateway leave the group as if another one stayed."""
    gw = Gateway(load_settings({"WEARWATCH_MQTT_CLIENT_ID": "gw-0", "WEARWATCH_MQTT_SHARE_GROUP": "gateways"}))
    clock = [1000.0]
    monkeypatch.setattr("ingest.gateway.time.monotonic", lambda: clock[0])

    def say(cid: str, word: bytes, left: int | None = None) -> None:
        props = SimpleNamespace(MessageExpiryInterval=left) if left is not None else SimpleNamespace()
        msg = SimpleNamespace(topic=f"{PRESENCE_TOPIC}/gateways/{cid}", payload=word, properties=props)
        gw._on_presence(None, None, msg)

    say("gw-1", b"up")  # said just now: the full term
    say("gw-2", b"up", left=10)  # a retained word the broker has held for 80 of its 90 s
    say("gw-3", b"up", left=10_000)  # a longer term than this gateway's own is not believed
    assert gw.others_in_group() == ["gw-1", "gw-2", "gw-3"]
    clock[0] += 10.5
    assert gw.others_in_group() == ["gw-1", "gw-3"]
    clock[0] += PRESENCE_TTL_S - 10.5 - 0.5
    assert gw.others_in_group() == ["gw-1", "gw-3"]
    clock[0] += 1.0  # nobody said it again within the term
    assert gw.others_in_group() == []
    say("gw-1", b"up")  # the refresh of a live gateway
    assert gw.others_in_group() == ["gw-1"]


def test_a_gateway_says_where_it_stands_with_an_expiry() -> None:
    gw = Gateway(load_settings({"WEARWATCH_MQTT_CLIENT_ID": "gw-0", "WEARWATCH_MQTT_SHARE_GROUP": "gateways"}))
    sent: list[tuple[str, bytes, object]] = []

    class Client:
        def publish(self, topic: str, payload: bytes, qos: int, retain: bool, properties: object) -> object:
            assert qos == 1 and retain
            sent.append((topic, payload, properties))
            return SimpleNamespace(wait_for_publish=lambda timeout: None)

    gw._client = Client()  # type: ignore[assignment]
    gw._say(b"up", wait=False)
    gw._say(b"")
    (t1, w1, p1), (t2, w2, p2) = sent
    assert (t1, w1, t2, w2) == (f"{PRESENCE_TOPIC}/gateways/gw-0", b"up", f"{PRESENCE_TOPIC}/gateways/gw-0", b"")
    assert p1.MessageExpiryInterval == PRESENCE_TTL_S  # type: ignore[attr-defined]
    assert p2 is None  # an empty retained message clears the word: nothing to expire


def test_which_gone_gateway_is_rescued_and_by_whom(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway whose will says ``gone`` (it died) or whose ``up`` expired is gone; one whose word is cleared
    stopped (and left the group, or stays as its last member), or had its session rescued already. After
    ``mqtt_rescue_after_s`` the first gateway of the group by client id rescues a gone one's session."""
    clock = [1000.0]
    monkeypatch.setattr("ingest.gateway.time.monotonic", lambda: clock[0])

    def gateway(cid: str, after: str = "15") -> Gateway:
        return Gateway(load_settings({"WEARWATCH_MQTT_CLIENT_ID": cid, "WEARWATCH_MQTT_SHARE_GROUP": "gateways",
                                      "WEARWATCH_MQTT_RESCUE_AFTER_S": after}))

    def say(gw: Gateway, cid: str, word: bytes) -> None:
        gw._on_presence(None, None, SimpleNamespace(topic=f"{PRESENCE_TOPIC}/gateways/{cid}", payload=word))

    first, later, never = gateway("gw-0"), gateway("gw-1"), gateway("gw-0", after="0")
    for gw in (first, later, never):
        for cid in ("gw-0", "gw-1", "gw-2", "gw-3"):
            say(gw, cid, b"up")
        say(gw, "gw-2", b"gone")  # its will
        say(gw, "gw-3", b"leaving")  # a stop
        say(gw, "gw-3", b"")
    assert first.gone == {"gw-2": 1000.0} and first.others_in_group() == ["gw-1"]
    say(later, "gw-4", b"gone")  # a will kept by the broker from before this gateway started
    say(later, "gw-4", b"")  # ... cleared by the gateway that rescued its session
    assert set(later.gone) == {"gw-2"}
    assert first.due_rescue() is None  # not gone long enough: a restarted gateway is back within seconds
    clock[0] += 15.0
    assert first.due_rescue() == "gw-2"
    assert later.due_rescue() is None  # gw-0 is in the group and comes first
    assert never.due_rescue() is None  # 0: never
    say(first, "gw-2", b"up")  # back in time: nothing to rescue
    assert first.gone == {} and first.due_rescue() is None
    # a gateway whose up expires without a word (it died while the broker was down: no will) is gone from then
    clock[0] += PRESENCE_TTL_S - 1.0  # gw-1 and gw-2 said nothing more since
    say(first, "gw-1", b"up")
    clock[0] += 2.0
    assert first.due_rescue() is None and set(first.gone) == {"gw-2"} and list(first.members) == ["gw-1"]
    clock[0] += 14.0
    assert first.due_rescue() == "gw-2"


class _Session:
    """paho's client as :meth:`Gateway.rescue` drives it (its own loop, no thread): at each ``loop()`` the broker
    does the next thing of ``script``."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.acked: list[int] = []
        self.published: list[tuple[str, bytes, bool]] = []
        self.unsubscribed: list[str] = []
        self.ended: Any = "not disconnected"
        self.clean_start: bool | None = None
        self.on_connect = self.on_message = self.on_disconnect = self.on_unsubscribe = None

    def connect(self, host: str, port: int, keepalive: int, clean_start: bool, properties: Any) -> None:
        self.clean_start = clean_start

    def loop(self, timeout: float) -> None:
        if self.script:
            self.script.pop(0)(self)
        else:
            time.sleep(0.01)

    def unsubscribe(self, topics: list[str]) -> None:
        self.unsubscribed = topics
        self.script.insert(0, lambda c: c.on_unsubscribe(c, None, 1, [], None))

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append(mid)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.published.append((topic, payload, retain))

    def disconnect(self, properties: Any = None) -> None:
        self.ended = properties
        self.on_disconnect(self, None, None, ReasonCode(PacketTypes.DISCONNECT, identifier=0), None)


def _connack(c: _Session) -> None:
    c.on_connect(c, None, None, ReasonCode(PacketTypes.CONNACK, identifier=0), None)


def _reading(mid: int) -> Any:
    payload = b'{"patient_id": "p-1", "signal": "heart_rate", "value": 70, "unit": "bpm", "ts": 1700000000000}'
    return lambda c: c.on_message(c, None, SimpleNamespace(topic="wearwatch/v1/vitals/sim/dev-1", payload=payload,
                                                           mid=mid, qos=1))


def _rescuer(monkeypatch: pytest.MonkeyPatch, session: _Session, kafka_acks: bool) -> Gateway:
    gw = Gateway(load_settings({"WEARWATCH_MQTT_CLIENT_ID": "gw-0", "WEARWATCH_MQTT_SHARE_GROUP": "gateways"}))
    monkeypatch.setattr("ingest.gateway.mqtt_client", lambda settings, cid, manual_ack: session)
    monkeypatch.setattr(gw, "LEAVE_QUIET_S", 0.05)

    def send(pending: Any) -> None:  # Kafka takes each message at once, or never
        gw._inflight.add(pending)
        if kafka_acks:
            gw._ack(pending)

    monkeypatch.setattr(gw, "_send", send)
    return gw


def _rescues(gw: Gateway) -> dict[str, float]:
    return {name: float(value) for name, value in
            (line.split(" ") for line in exposition(gw.telemetry.registry, None)[0].decode().splitlines()
             if line.startswith("wearwatch_gateway_rescued_"))}


def test_a_rescue_forwards_what_the_session_holds_and_ends_it(monkeypatch: pytest.MonkeyPatch) -> None:
    session = _Session([_connack, _reading(7), _reading(8)])
    gw = _rescuer(monkeypatch, session, kafka_acks=True)
    gw.gone["gw-2"] = 0.0
    assert gw.rescue("gw-2") == "ended"
    assert session.clean_start is False  # the crashed gateway's session, not a new one
    assert session.unsubscribed == subscriptions("gateways")[0]  # out of the group: the shared filters
    assert all(f.startswith("$share/gateways/") for f in session.unsubscribed)
    assert session.acked == [7, 8]  # each once Kafka had it
    assert session.published == [(f"{PRESENCE_TOPIC}/gateways/gw-2", b"", True)]  # its will's word cleared
    assert session.ended.SessionExpiryInterval == 0  # the broker forgets the session
    assert gw.gone == {}
    assert _rescues(gw) == {'wearwatch_gateway_rescued_sessions_total{outcome="ended"}': 1.0,
                            'wearwatch_gateway_rescued_sessions_total{outcome="taken_back"}': 0.0,
                            "wearwatch_gateway_rescued_messages_total": 2.0}


def test_a_gateway_back_during_its_rescue_takes_its_session_back(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E)  # session taken over
    session = _Session([_connack, _reading(7), lambda c: c.on_disconnect(c, None, None, taken, None)])
    gw = _rescuer(monkeypatch, session, kafka_acks=False)
    assert gw.rescue("gw-2") == "taken_back"
    assert session.acked == [] and session.published == []  # the gateway back gets message 7 again
    assert session.ended is None  # a plain disconnect: the session is its gateway's now
    assert gw.gone == {}
    assert _rescues(gw)['wearwatch_gateway_rescued_sessions_total{outcome="taken_back"}'] == 1.0


def test_a_rescue_cut_short_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    session = _Session([lambda c: c.on_disconnect(c, None, None, ReasonCode(PacketTypes.DISCONNECT,
                                                                              identifier=0x87), None)])
    gw = _rescuer(monkeypatch, session, kafka_acks=True)
    assert gw.rescue("gw-2") == "failed"  # refused (not authorized)
    assert list(gw.gone) == ["gw-2"]
    assert _rescues(gw)['wearwatch_gateway_rescued_sessions_total{outcome="ended"}'] == 0.0
