"""Retention on the real stack: every topic the services create carries its declared cleanup policy and retention,
``wearwatch retention --apply``'s function brings an existing topic up to date, and InfluxDB takes the retention
policy ``make stack-up`` sets."""

from __future__ import annotations

import base64
import os
import time
import urllib.parse
import urllib.request
from typing import Any

import orjson
import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from console.topics import ensure_console_topics
from ingest.tokens import ensure_token_topic
from tests.integration.conftest import consume_all
from wearwatch.config import Settings
from wearwatch.datakeys import ensure_datakeys_topic
from wearwatch.enrollment_topic import ensure_enrollment_topic
from wearwatch.log_rekey import rekey_log
from wearwatch.partitioning import alert_record_key, patient_partition
from wearwatch.retention import (
    apply_topic_configs,
    described_configs,
    influx_retention_statement,
    per_record_logs,
    topic_configs,
)
from wearwatch.transport import ensure_topics, kafka_client_config, kafka_producer

pytestmark = pytest.mark.stack


def _described(admin: Any, names: list[str], timeout_s: float = 20.0,
               expect: dict[str, dict[str, str]] | None = None) -> dict[str, dict[str, str]]:
    """Topic configurations, waiting until Kafka reports each (a topic just created may not show yet)
    and, with ``expect``, until they show those values (a config just altered reaches the broker
    that answers a describe a moment later)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = described_configs(admin, names)
        shown = all(got.get(n, {}).get("cleanup.policy") for n in names)
        if expect is not None:
            shown = shown and all({k: got.get(n, {}).get(k) for k in c} == c for n, c in expect.items())
        if shown or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def test_every_topic_the_services_create_has_its_retention(settings: Settings) -> None:
    s = settings
    wanted = topic_configs(s)
    # what the gateway, the worker, the console and the tools create on their first start
    ensure_topics(s, [s.topic_vitals, s.topic_dlq, s.topic_commands, s.topic_alerts, s.topic_minutes])
    ensure_enrollment_topic(s)
    ensure_token_topic(s)
    ensure_datakeys_topic(s)
    ensure_console_topics(s)
    admin = KafkaAdminClient(**kafka_client_config(s), client_id="wearwatch-test-admin")
    try:
        service_topics = sorted(n for n in wanted if not n.endswith("-changelog"))  # the worker's: Faust's own
        got = _described(admin, service_topics)
        for name in service_topics:
            assert {k: got[name].get(k) for k in wanted[name]} == wanted[name], name

        # the rest (the changelog) is created, and a changed setting reaches an existing topic
        changed = s.model_copy(update={"retention_raw_days": 3.0, "retention_alerts_days": 3650.0})
        created, altered = apply_topic_configs(admin, changed)
        assert (created, altered) == (1, 3)  # changelog; vitals.raw, vitals.1m, alerts
        names = sorted(wanted)
        got = _described(admin, names, expect=topic_configs(changed))
        for name, config in topic_configs(changed).items():
            assert {k: got[name].get(k) for k in config} == config, name
        assert got[s.topic_vitals]["retention.ms"] == str(3 * 86_400_000)
        assert apply_topic_configs(admin, changed) == (0, 0)  # idempotent
    finally:
        admin.close()


def test_an_older_alert_log_is_rekeyed_before_it_is_compacted(settings: Settings) -> None:
    """``alerts`` as an earlier version wrote it (policy delete, key = patient): applying the declared configuration
    without re-keying leaves the policy; with it, every event is written again under its own key, in its partition
    and with its timestamp, before the topic is compacted; a second run writes nothing."""
    s = settings
    admin = KafkaAdminClient(**kafka_client_config(s), client_id="wearwatch-test-admin")
    old = [("p-a", "al-a", 0, "open"), ("p-a", "al-a", 1, "acknowledged"), ("p-b", "al-b", 0, "open")]
    t0 = int(time.time() * 1000) - 3_600_000  # an hour ago: the re-keyed copies keep these times
    try:
        admin.create_topics([NewTopic(s.topic_alerts, s.partitions, 1, topic_configs={"cleanup.policy": "delete"})])
        producer = kafka_producer(s, client_id="wearwatch-test")
        try:
            for i, (pid, aid, rev, state) in enumerate(old):
                doc = {"alert_id": aid, "revision": rev, "state": state, "patient_id": pid}
                producer.send(s.topic_alerts, key=pid.encode(), value=orjson.dumps(doc),
                              partition=patient_partition(pid, s.partitions), timestamp_ms=t0 + i)
            producer.flush(30)
        finally:
            producer.close(10)
        apply_topic_configs(admin, s)  # no re-keying: the policy stays
        assert _described(admin, [s.topic_alerts])[s.topic_alerts]["cleanup.policy"] == "delete"

        keys = per_record_logs(s)

        def rekey(topic: str) -> int:
            return rekey_log(kafka_client_config(s), topic, keys[topic])

        copied: dict[str, int] = {}

        def rekey_counted(topic: str) -> int:
            copied[topic] = rekey(topic)
            return copied[topic]

        apply_topic_configs(admin, s, rekey=rekey_counted)
        assert copied == {s.topic_alerts: 3}  # audit: created compacted by the console topics, nothing to re-key
        deadline = time.monotonic() + 20
        while _described(admin, [s.topic_alerts])[s.topic_alerts]["cleanup.policy"] != "compact,delete":
            assert time.monotonic() < deadline, "the policy was not switched"
            time.sleep(0.5)
        records = consume_all(s, s.topic_alerts, expect=6, idle_s=1.0, timeout_s=30)
        rekeyed = sorted((r.key, r.partition, r.timestamp) for r in records if r.key != orjson.loads(r.value)[
            "patient_id"].encode())
        assert rekeyed == sorted((alert_record_key({"alert_id": aid, "revision": rev, "state": state}),
                                  patient_partition(pid, s.partitions), t0 + i)
                                 for i, (pid, aid, rev, state) in enumerate(old))
        assert rekey(s.topic_alerts) == 0  # already re-keyed
    finally:
        admin.close()


def _influxql(settings: Settings, q: str) -> dict[str, Any]:
    """InfluxQL as the stack's administrator (creating a database and its policies needs one)."""
    login = f"{os.environ['STACK_INFLUX_USERNAME']}:{os.environ['STACK_INFLUX_PASSWORD']}"
    req = urllib.request.Request(f"{settings.influx_url}/query", data=urllib.parse.urlencode({"q": q}).encode(),
                                 headers={"Authorization": f"Basic {base64.b64encode(login.encode()).decode()}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        doc: dict[str, Any] = orjson.loads(r.read())
    assert "error" not in orjson.dumps(doc).decode(), doc
    return doc


def test_influxdb_takes_the_declared_retention_policy(settings: Settings, run_id: str) -> None:
    if not os.environ.get("STACK_INFLUX_PASSWORD"):
        pytest.fail("stack credentials missing")
    db = f"wwtest_{run_id}"  # a database of its own: the shared one is left as stack-up set it
    _influxql(settings, f'CREATE DATABASE "{db}"')
    try:
        _influxql(settings, influx_retention_statement(settings, db))
        doc = _influxql(settings, f'SHOW RETENTION POLICIES ON "{db}"')
        series = doc["results"][0]["series"][0]
        rows = [dict(zip(series["columns"], v, strict=True)) for v in series["values"]]
        assert [(r["name"], r["duration"], r["default"]) for r in rows] == [("autogen", "8760h0m0s", True)]
    finally:
        _influxql(settings, f'DROP DATABASE "{db}"')
