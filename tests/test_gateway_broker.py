"""What the gateway learns from the MQTT broker: its own figures (``$SYS``: what it dropped, what it holds) and
where the other gateways of a share group stand (who may leave the group).

The broker's messages are stood in for by plain objects with a topic and a payload (pure unit test of
the gateway's handling); ``tests/integration/test_gateway_ops.py`` has a real Mosquitto drop messages.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from ingest.gateway import BROKER_DROPPED_TOPIC, BROKER_STORED_TOPIC, PRESENCE_TOPIC, Gateway
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
        gw._on_presence(None, None, SimpleNamespace(topic=f"{PRESENCE_TOPIC}/{cid}", payload=word))

    assert gw.others_in_group() == []
    say("gw-0", b"up")  # its own word
    say("gw-1", b"up")
    say("gw-2", b"up")
    assert gw.others_in_group() == ["gw-1", "gw-2"]
    say("gw-1", b"leaving")  # deciding whether it may leave: not one to count on
    say("gw-2", b"")  # gone (stopped, or its will after a crash)
    assert gw.others_in_group() == [] and gw.members == {"gw-1": "leaving"}
    say("gw-1", b"\xff")  # nothing it understands: as gone
    assert gw.members == {}
