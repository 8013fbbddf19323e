"""The gateway's grouping of readings into vitals.raw records, and acknowledgements across groups.

Kafka and MQTT are stood in for by recorders (pure unit test of the gateway's
bookkeeping); the real path is covered by the stack tests.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson

from ingest.contract import BATCH_PREFIX, decode_record, vitals_topic
from ingest.gateway import Gateway, Grouper
from wearwatch.config import load_settings


class _Future:
    """kafka-python's FutureRecordMetadata, completed by the test."""

    def __init__(self) -> None:
        self.callbacks: list[tuple[Any, tuple[Any, ...]]] = []
        self.errbacks: list[tuple[Any, tuple[Any, ...]]] = []

    def add_callback(self, fn: Any, *args: Any) -> None:
        self.callbacks.append((fn, args))

    def add_errback(self, fn: Any, *args: Any) -> None:
        self.errbacks.append((fn, args))

    def succeed(self) -> None:
        for fn, args in self.callbacks:
            fn(*args, "metadata")

    def fail(self) -> None:
        for fn, args in self.errbacks:
            fn(*args, TimeoutError("expired"))


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, int | None, _Future]] = []

    def send(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> _Future:
        fut = _Future()
        self.sent.append((topic, key, value, partition, fut))
        return fut


class _Mqtt:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append(mid)


def _gateway(batch: int = 50) -> tuple[Gateway, _Producer, _Mqtt]:
    gw = Gateway(load_settings({}, topic_prefix="t.", gateway_batch_readings=batch))
    gw._producer, gw._client = _Producer(), _Mqtt()
    gw._grouper = Grouper(8, batch, linger_s=0.005)
    return gw, gw._producer, gw._client  # type: ignore[return-value]


def _payload(pids: list[str], now_ms: int) -> bytes:
    return orjson.dumps([{"patient_id": p, "signal": "heart_rate", "value": 70 + i, "unit": "bpm",
                          "ts": now_ms - 1000 * i} for i, p in enumerate(pids)])


def test_readings_of_one_partition_share_a_record_and_messages_are_acked_when_all_their_groups_are() -> None:
    gw, producer, mqtt = _gateway()
    grouper = gw._grouper
    assert grouper is not None
    now = int(time.time() * 1000)
    pids = [f"p{i}" for i in range(20)]
    gw.handle(vitals_topic("acme", "d1"), _payload(pids[:12], now), mid=1, qos=1)
    gw.handle(vitals_topic("acme", "d2"), _payload(pids[8:], now), mid=2, qos=1)
    gw.handle(vitals_topic("acme", "d3"), b"{broken", mid=3, qos=1)  # a dead letter, sent at once
    assert [t for t, *_ in producer.sent] == ["t.vitals.dlq"]
    producer.sent[0][4].succeed()
    assert mqtt.acked == [3]
    for grp in grouper.due(time.monotonic() + 1):
        gw._send_group(grp)
    records = producer.sent[1:]
    partitions = {grouper.partition(p.encode()) for p in pids}
    assert len(records) == len(partitions)  # one record per partition, 24 readings in all
    readings = []
    for topic, key, value, part, _ in records:
        assert topic == "t.vitals.raw"
        got = [r for r, _ in decode_record(value)]
        assert {grouper.partition(r.patient_id.encode()) for r in got} == {part}  # type: ignore[union-attr]
        assert grouper.partition(key) == part
        readings += got
    assert len(readings) == 24 and sum(v.startswith(BATCH_PREFIX) for _, _, v, _, _ in records) >= 1
    # message 1 is acknowledged once every record holding one of its readings is
    ones = {grouper.partition(p.encode()) for p in pids[:12]}
    for _, _, _, part, fut in records:
        if part in ones:
            fut.succeed()
    assert mqtt.acked == [3, 1]
    for _, _, _, part, fut in records:
        if part not in ones:
            fut.succeed()
    assert mqtt.acked == [3, 1, 2]


def test_a_failed_group_resends_every_message_with_a_reading_in_it() -> None:
    gw, producer, mqtt = _gateway()
    grouper = gw._grouper
    assert grouper is not None
    now = int(time.time() * 1000)
    gw.handle(vitals_topic("acme", "d1"), _payload(["a", "b", "c"], now), mid=1, qos=1)
    gw.handle(vitals_topic("acme", "d2"), _payload(["a"], now), mid=2, qos=1)
    for grp in grouper.due(time.monotonic() + 1):
        gw._send_group(grp)
    part_a = grouper.partition(b"a")
    failed = [s for s in producer.sent if s[3] == part_a]
    assert len(failed) == 1
    failed[0][4].fail()  # the record with both messages' "a" readings expired
    for s in producer.sent:
        if s is not failed[0]:
            s[4].succeed()
    assert mqtt.acked == []  # neither message is acknowledged
    assert {p.mid for p in gw._retry} == {1, 2}
    gw._renew = False  # (a real failure also renews the producer)
    sent_before = len(producer.sent)
    gw._drain_retries()
    for grp in grouper.due(time.monotonic() + 1):
        gw._send_group(grp)
    for s in producer.sent[sent_before:]:
        s[4].succeed()
    assert sorted(mqtt.acked) == [1, 2]
    resent = [r for s in producer.sent[sent_before:] for r, _ in decode_record(s[2])]
    assert len(resent) == 4  # every reading of both messages again (the worker drops the duplicates)


def test_a_full_group_is_sent_at_once() -> None:
    gw, producer, _ = _gateway(batch=5)
    now = int(time.time() * 1000)
    gw.handle(vitals_topic("acme", "d1"), _payload(["same"] * 12, now), mid=1, qos=1)
    assert [len(decode_record(v)) for _, _, v, _, _ in producer.sent] == [5, 5]  # 2 left open
    assert gw.stats["records_grouped"] == 2


def test_grouping_off_sends_one_record_per_reading() -> None:
    gw, producer, _ = _gateway(batch=1)
    gw._grouper = None  # what start() does when WEARWATCH_GATEWAY_BATCH_READINGS=1
    now = int(time.time() * 1000)
    gw.handle(vitals_topic("acme", "d1"), _payload(["x", "y", "z"], now), mid=1, qos=1)
    assert [(k, p) for _, k, _, p, _ in producer.sent] == [(b"x", None), (b"y", None), (b"z", None)]


def test_group_partitions_are_the_ones_kafka_clients_give_the_patient_key() -> None:
    # the table's changelog (aiokafka, Faust use_partitioner) and nurse commands (kafka-python)
    # hash the patient key: a patient's readings must land on that same partition
    from aiokafka.partitioner import DefaultPartitioner

    aio = DefaultPartitioner()
    grouper = Grouper(12, 100, 0.005)
    keys = [f"patient-{i}".encode() for i in range(500)]
    assert [grouper.partition(k) for k in keys] == [aio(k, list(range(12)), list(range(12))) for k in keys]


class _StallingProducer(_Producer):
    """Holds the first vitals.raw send until released, as a flusher thread descheduled between taking a group
    and handing it to the producer would."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled, self.release = threading.Event(), threading.Event()

    def send(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> _Future:
        if topic == "t.vitals.raw" and not self.stalled.is_set():
            self.stalled.set()
            assert self.release.wait(5)
        return super().send(topic, key, value, partition)


def test_a_group_the_flusher_took_reaches_kafka_before_a_newer_group_of_its_partition() -> None:
    gw, _, _ = _gateway(batch=12)
    producer = gw._producer = _StallingProducer()
    grouper = gw._grouper
    assert grouper is not None
    now = int(time.time() * 1000)
    topic = vitals_topic("acme", "d1")
    gw.handle(topic, _payload(["p1"] * 5, now), mid=1, qos=1)  # an open group of 5 of p1's readings
    flusher = threading.Thread(target=gw._send_due, args=(grouper, time.monotonic() + 1.0))
    flusher.start()
    assert producer.stalled.wait(5)  # the flusher took the group and is still sending it
    # meanwhile the next minute of p1's readings fills a new group of the same partition
    mqtt = threading.Thread(target=gw.handle, args=(topic, _payload(["p1"] * 12, now + 60_000), 2, 1))
    mqtt.start()
    mqtt.join(0.3)
    producer.release.set()
    flusher.join(5)
    mqtt.join(5)
    assert not flusher.is_alive() and not mqtt.is_alive()
    sent = [[r.ts_ms for r, _ in decode_record(v)] for t, _, v, _, _ in producer.sent if t == "t.vitals.raw"]
    assert [len(ts) for ts in sent] == [5, 12]
    assert max(sent[0]) < min(sent[1])  # p1's readings reach Kafka in their order


def test_the_gateway_kafka_client_checksums_record_batches_in_c() -> None:
    """kafka-python computes the CRC-32C of every record batch; in pure Python that took 7 % of a gateway's CPU
    at 10,000 messages/s, so the project installs the C implementation kafka-python picks up when present."""
    from kafka.record import util
    from kafka.record._crc32c import crc as pure_python

    assert util._crc32c is not pure_python
    assert util.calc_crc32c(memoryview(b"123456789")) == 0xE3069283  # CRC-32C's check value
