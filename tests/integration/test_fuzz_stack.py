"""Fuzzed payloads through the real gateway: every reading is accounted for.

2,000 seeded, mutated MQTT payloads (the generator of tests/test_fuzz_ingest.py:
wrong types, missing fields, NaN/Infinity, huge numbers, wrong units, bad
timestamps, broken bytes, arrays of mixed validity) go over Mosquitto to the
gateway. What the contract accepts must be on ``vitals.raw`` and everything
else on ``vitals.dlq`` with a reason — exactly as many as the parser predicts,
and the gateway must still be up afterwards.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import orjson
import pytest

from ingest.contract import parse_payload, vitals_topic
from tests.integration.conftest import consume_all, consume_readings
from tests.integration.test_pipeline import publish
from tests.test_fuzz_ingest import mutated_payload
from wearwatch.config import Settings

pytestmark = pytest.mark.stack

N_PAYLOADS = 2000


def test_fuzzed_payloads_are_accepted_or_dead_lettered_exactly(settings: Settings, spawn: Any,
                                                               run_id: str) -> None:
    gateway = spawn("gateway", settings, "gateway", "--stats-every", "2")
    gateway.wait_log("gateway up")
    rng = random.Random(7)
    now = int(time.time() * 1000)
    messages = []
    expect_ok, expect_dead = 0, Counter[str]()
    for i in range(N_PAYLOADS):
        payload = mutated_payload(rng)
        # the fuzzer's timestamps are relative to its own NOW: re-anchor them to the wall clock
        payload = payload.replace(b"1780000000000", str(now).encode())
        payload = payload.replace(b"1779999940000", str(now - 60_000).encode())
        topic = vitals_topic("sim", f"fz-{run_id}-{i % 17}")
        ok, bad = parse_payload(topic, payload, now)
        expect_ok += len(ok)
        expect_dead.update(d.reason for d in bad)
        messages.append((topic, payload))
    assert expect_ok > 100 and sum(expect_dead.values()) > 100
    publish(settings, messages)

    raw = consume_readings(settings, expect=expect_ok, idle_s=3.0)
    dlq = consume_all(settings, settings.topic_dlq, expect=sum(expect_dead.values()), idle_s=3.0)
    assert len(raw) == expect_ok
    got_dead = Counter(orjson.loads(r.value)["reason"] for r in dlq)
    # (the gateway judges with its clock seconds later; no fuzzed timestamp sits that close to an edge)
    assert got_dead == expect_dead
    assert gateway.alive()
    assert "Traceback" not in gateway.log_text()
