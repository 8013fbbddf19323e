"""Readings sealed under per-patient data keys on their way from the gateway to the worker (wearwatch/datakeys.py):
the gateway's records name no patient, the worker opens them, drops what an erased key sealed and never
dead-letters a patient's data readable."""

from __future__ import annotations

import time

import orjson
import pytest

from ingest.contract import DeadLetter, decode_record, vitals_topic
from ingest.gateway import Gateway, Grouper
from streams.app import Pipeline
from streams.processing import BatchProcessor
from wearwatch.config import load_settings
from wearwatch.datakeys import KEY_ID_BYTES, KeyRing, is_sealed, new_data_key, open_sealed, seal, sealed_record
from wearwatch.partitioning import patient_partition

T0 = 1_780_000_000_000


def reading(pid: str, value: float, ts_ms: int) -> bytes:
    return orjson.dumps({"schema_version": 1, "patient_id": pid, "signal": "heart_rate", "value": value,
                         "unit": "bpm", "ts_ms": ts_ms, "vendor": "v", "device_id": "d", "received_ms": ts_ms})


def ring_with(*patients: str) -> KeyRing:
    ring = KeyRing(None)
    for i, pid in enumerate(patients):
        rec, _ = new_data_key(pid, None, now_ms=1000 + i)
        ring.apply(bytes.fromhex(rec.key_id), rec.model_dump_json().encode())
    return ring


def sealed(ring: KeyRing, pid: str, *values: bytes) -> bytes:
    from ingest.contract import encode_batch

    key_id, cipher = ring.cipher_for(pid)
    return sealed_record([seal(cipher, key_id, values[0] if len(values) == 1 else encode_batch(list(values)),
                               "vitals.raw")])


@pytest.fixture
def processor() -> BatchProcessor:
    p = Pipeline(load_settings(influx_token="u:p", pseudonym_key="k" * 16, alerts_mqtt=False))
    proc = BatchProcessor(p._new_state, lambda pid: None, lambda: T0 + 60_000)
    proc.keys = ring_with("pt-a01", "pt-b02")
    return proc


def test_the_gateway_seals_each_patients_readings_under_their_key() -> None:
    ring = ring_with("pt-a01", "pt-b02")
    grouper = Grouper(1, 10, linger_s=1.0)  # one partition: both patients share the record
    for pid, v in [("pt-a01", 70), ("pt-b02", 80), ("pt-a01", 71)]:
        grouper.add(pid.encode(), reading(pid, v, T0 + v), None, 0.0)
    [grp] = grouper.take_all()
    key, value = grp.sealed_record(ring)
    assert is_sealed(value) and b"pt-a01" not in value and b"pt-b02" not in value and b"heart_rate" not in value
    assert b"pt-a01" not in key and len(key) == KEY_ID_BYTES and ring.owner(key) == "pt-a01"
    opened = open_sealed(value, "vitals.raw", ring.cipher_of)
    assert [ring.owner(o.key_id) for o in opened] == ["pt-a01", "pt-b02"]  # one entry per patient, in order of arrival
    assert [[r.value for r, _ in decode_record(o.plaintext or b"")] for o in opened] == [[70, 71], [80]]
    # without keys (unit tests, tools) the same group is the clear-text record it always was
    assert grp.key == b"pt-a01" and len(decode_record(grp.record())) == 3


def test_a_started_gateway_sends_sealed_readings_to_the_patients_partition() -> None:
    from tests.test_gateway_groups import _gateway

    gw, producer, _ = _gateway()
    ring = ring_with(*[f"pt-{i:03d}" for i in range(5)])
    gw._sealing = ring
    now = int(time.time() * 1000)
    payload = orjson.dumps([{"patient_id": f"pt-{i:03d}", "signal": "heart_rate", "value": 70, "unit": "bpm",
                             "ts": now - 1000 * i} for i in range(5)])
    gw.handle(vitals_topic("acme", "d1"), payload, mid=1, qos=1)
    assert gw._grouper is not None
    for grp in gw._grouper.due(time.monotonic() + 1):
        gw._send_group(grp)
    seen = []
    for topic, key, value, part, _ in producer.sent:
        assert topic == "t.vitals.raw" and is_sealed(value) and b"pt-" not in value and not key.startswith(b"pt-")
        for o in open_sealed(value, "vitals.raw", ring.cipher_of):
            pid = ring.owner(o.key_id)
            assert pid is not None and patient_partition(pid, 8) == part
            seen.append(pid)
    assert sorted(seen) == [f"pt-{i:03d}" for i in range(5)]


def test_the_worker_opens_sealed_records_and_still_reads_clear_ones(processor: BatchProcessor) -> None:
    ring = processor.keys
    assert isinstance(ring, KeyRing)
    records = [(b"k", sealed(ring, "pt-a01", reading("pt-a01", 70, T0), reading("pt-a01", 71, T0 + 5000))),
               (b"pt-b02", reading("pt-b02", 80, T0))]  # written before sealing (the transition)
    out = processor.process(records, [(0, 1), (0, 2)])
    assert processor.stats["readings"] == 3 and processor.stats["erased"] == 0 and out.dead == []
    assert processor.state_for("pt-a01").positions == {0: 1} and processor.state_for("pt-b02").positions == {0: 2}


def test_a_record_whose_key_is_erased_is_counted_and_dropped(processor: BatchProcessor) -> None:
    ring = processor.keys
    assert isinstance(ring, KeyRing)
    both = sealed_record([*(
        seal(ring.cipher_for(p)[1], ring.cipher_for(p)[0], reading(p, 70, T0), "vitals.raw")
        for p in ("pt-a01", "pt-b02"))])
    ring.apply(ring.cipher_for("pt-a01")[0], None)  # pa erased
    out = processor.process([(b"k", both)], [(0, 1)])
    assert processor.stats["erased"] == 1 and processor.stats["readings"] == 1 and out.dead == []
    assert "pt-a01" not in processor.cache and "pt-b02" in processor.cache
    # without any key source a sealed record is unreadable too: dropped, never dead-lettered
    processor.keys = None
    assert processor.process([(b"k", both)], [(0, 2)]).dead == [] and processor.stats["erased"] == 3


def test_what_the_worker_dead_letters_of_a_sealed_reading_is_sealed_under_the_same_key(
        processor: BatchProcessor) -> None:
    ring = processor.keys
    assert isinstance(ring, KeyRing)
    processor.process([(b"k", sealed(ring, "pt-a01", reading("pt-a01", 70, T0)))], [(0, 1)])
    late = sealed(ring, "pt-a01", reading("pt-a01", 71, T0 - 3_600_000), b'{"schema_version":7}')
    out = processor.process([(b"k", late)], [(0, 2)])
    assert processor.stats["too_late"] == 1 and processor.stats["dlq:too_late"] == 1 and len(out.dead) == 2
    key_id = ring.cipher_for("pt-a01")[0]
    for key, value in out.dead:
        assert key == key_id and is_sealed(value) and b'"pt-a01"' not in value and b"too_late" not in value
    letters = [DeadLetter.model_validate_json(o.plaintext or b"")
               for _, v in out.dead for o in open_sealed(v, "vitals.dlq", ring.cipher_of)]
    assert [d.reason for d in letters] == ["too_late", "bad_record"] and '"pt-a01"' in letters[0].payload


def test_an_altered_record_is_dead_lettered_unreadable(processor: BatchProcessor) -> None:
    ring = processor.keys
    assert isinstance(ring, KeyRing)
    value = bytearray(sealed(ring, "pt-a01", reading("pt-a01", 70, T0)))
    value[-3] ^= 0xFF
    out = processor.process([(b"k", bytes(value))], [(0, 1)])
    assert processor.stats["dlq:bad_envelope"] == 1 and processor.stats["readings"] == 0
    [(key, letter)] = out.dead
    assert key == b"worker" and b'"pt-a01"' not in letter and b"heart_rate" not in letter


def test_sealed_nurse_commands_are_applied_and_an_erased_patients_dropped(processor: BatchProcessor) -> None:
    from wearwatch.contract.commands import Note, command_record

    ring = processor.keys
    assert isinstance(ring, KeyRing)

    def note(pid: str) -> bytes:
        cmd = Note(ward="3B", patient_id=pid, alert_id="al-" + "0" * 20, text="called", by="kim", ts_ms=T0)
        key_id, cipher = ring.cipher_for(pid)
        return sealed_record([seal(cipher, key_id, command_record(cmd), "alerts.commands")])

    a, b = note("pt-a01"), note("pt-b02")
    assert b'"pt-a01"' not in a and b"called" not in a
    out = processor.commands([(b"k", a), (b"k", b)])
    assert processor.stats["notes"] == 2 and out.dead == []
    ring.apply(ring.cipher_for("pt-a01")[0], None)  # pa erased
    processor.commands([(b"k", a)])
    assert processor.stats["notes"] == 2 and processor.stats["erased"] == 1
    # a reading's entry moved onto alerts.commands does not authenticate: an unreadable dead letter
    out = processor.commands([(b"k", sealed(ring, "pt-b02", reading("pt-b02", 70, T0)))])
    assert [processor.stats["dlq:bad_envelope"], len(out.dead)] == [1, 1] and b'"pt-b02"' not in out.dead[0][1]


def test_minute_aggregates_are_sealed_per_patient_and_an_erased_patients_dropped(processor: BatchProcessor) -> None:
    from alerts.influx import minute_docs

    ring = processor.keys
    assert isinstance(ring, KeyRing)
    docs = [{"patient_id": p, "signal": "heart_rate", "minute_ms": T0, "mean": 70.0, "min": 70.0, "max": 70.0,
             "sum": 70.0, "count": 1} for p in ("pt-a01", "pt-b02", "pt-a01")]
    value = processor.pack_minutes(docs)
    assert is_sealed(value) and b'"pt-a01"' not in value and len(open_sealed(value, "vitals.1m", ring.cipher_of)) == 2
    opened = [d["patient_id"] for v in processor.open_minutes([value]) for d in minute_docs(v)]
    assert opened == ["pt-a01", "pt-a01", "pt-b02"]
    clear = b'{"schema_version":2,"minutes":[{"patient_id":"pc","minute_ms":0}]}'  # written before sealing
    assert processor.open_minutes([clear]) == [clear]
    ring.apply(ring.cipher_for("pt-a01")[0], None)  # pa erased: what was sealed cannot be opened, nor written again
    assert [d["patient_id"] for v in processor.open_minutes([value]) for d in minute_docs(v)] == ["pt-b02"]
    assert processor.stats["erased"] == 1
    fresh = processor.pack_minutes(docs)
    assert [ring.owner(o.key_id) for o in open_sealed(fresh, "vitals.1m", ring.cipher_of)] == ["pt-b02"]
    assert processor.stats["erased"] == 3


def test_a_batch_of_minutes_for_patients_without_a_key_creates_their_keys_in_one_write(
        processor: BatchProcessor, monkeypatch: pytest.MonkeyPatch) -> None:
    from alerts.influx import minute_docs
    from tests.test_datakeys import _keys_writing_to
    from wearwatch.datakeys import DataKeys

    written: list[list[tuple[bytes, bytes | None]]] = []
    keys = _keys_writing_to(written, monkeypatch, recreate_erased=False)
    assert isinstance(keys, DataKeys)
    processor.keys = keys
    pids = [f"pt-{i:03d}" for i in range(40)]  # readings written before sealing: nobody has a key yet
    docs = [{"patient_id": p, "signal": "heart_rate", "minute_ms": T0, "mean": 70.0, "min": 70.0, "max": 70.0,
             "sum": 70.0, "count": 1} for p in pids + pids[:5]]
    value = processor.pack_minutes(docs)
    assert [len(w) for w in written] == [40]  # one acknowledged write for the batch's 40 keys, not 40 writes
    assert keys.created == 40 and len(open_sealed(value, "vitals.1m", keys.cipher_of)) == 40
    assert sorted(d["patient_id"] for v in processor.open_minutes([value]) for d in minute_docs(v)) == sorted(
        pids + pids[:5])
    processor.pack_minutes(docs)
    assert len(written) == 1 and processor.stats["erased"] == 0


def test_the_gateway_seals_a_dead_letter_under_every_patient_it_names() -> None:
    from ingest.contract import payload_dead_letter
    from wearwatch.datakeys import open_layers

    ring = ring_with("pt-a01", "pt-b02")
    both = payload_dead_letter("bad_value", "d", orjson.dumps([{"patient_id": "pt-a01"}, {"patient_id": "pt-b02"}]),
                               "wearwatch/v1/vitals/acme/d1", T0).to_json()
    key, value = Gateway._sealed_dead_letter(ring, b"wearwatch/v1/vitals/acme/d1", both)
    assert key == b"wearwatch/v1/vitals/acme/d1" and is_sealed(value) and b'"pt-a01"' not in value
    assert open_layers(value, "vitals.dlq", ring.cipher_of) == both
    ring.apply(ring.cipher_for("pt-b02")[0], None)  # either patient erased: the letter is unreadable
    assert open_layers(value, "vitals.dlq", ring.cipher_of) is None
    # a refused nurse command: the patient is in the topic, which the record key no longer carries
    ack_topic = "wearwatch/v1/acks/3B/pt-a01"
    cmd = payload_dead_letter("command_bad_payload", "d", b"{", ack_topic, T0).to_json()
    key, value = Gateway._sealed_dead_letter(ring, ack_topic.encode(), cmd)
    assert key == b"wearwatch/v1/acks/3B" and is_sealed(value) and b"acks/3B/pt-a01" not in value
    # a payload that names nobody cannot be attributed: it stays as it was
    garbage = payload_dead_letter("bad_json", "d", b"\xffnot json", "wearwatch/v1/vitals/acme/d1", T0).to_json()
    assert Gateway._sealed_dead_letter(ring, b"wearwatch/v1/vitals/acme/d1", garbage) == (
        b"wearwatch/v1/vitals/acme/d1", garbage)


def _sealing_gateway(writes: list[list[tuple[bytes, bytes | None]]], monkeypatch: pytest.MonkeyPatch) -> tuple[
        Gateway, list[tuple[str, bytes, bytes, int | None, object]]]:
    """A gateway sealing under its own :class:`DataKeys`, whose writes to ``datakeys`` are collected (one list
    per write, as if following), and the records it sends."""
    from tests.test_datakeys import _keys_writing_to
    from tests.test_gateway_groups import _gateway
    from wearwatch.datakeys import DataKeys

    gw, producer, _ = _gateway()
    keys = _keys_writing_to(writes, monkeypatch)
    assert isinstance(keys, DataKeys)
    keys.on_created = gw.datakeys.on_created  # the gateway's metric
    gw.datakeys = keys
    gw._sealing = keys
    return gw, producer.sent  # type: ignore[return-value]


def test_the_gateway_creates_a_key_only_for_a_patient_without_one_from_enrolment_and_counts_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from wearwatch.datakeys import DataKeyRecord

    writes: list[list[tuple[bytes, bytes | None]]] = []
    gw, sent = _sealing_gateway(writes, monkeypatch)
    keys = gw.datakeys
    enrolled, _ = new_data_key("pt-new", keys.ring.kek, now_ms=1)  # written by `wearwatch patients enrol`
    keys.ring.apply(bytes.fromhex(enrolled.key_id), enrolled.model_dump_json().encode())

    def created() -> float | None:
        return gw.telemetry.registry.get_sample_value("wearwatch_gateway_datakeys_created_total")

    now = int(time.time() * 1000)
    for mid, pid in enumerate(["pt-new", "pt-old", "pt-new", "pt-old"], start=1):
        gw.handle(vitals_topic("acme", f"d-{pid}"), orjson.dumps(
            {"patient_id": pid, "signal": "heart_rate", "value": 70, "unit": "bpm", "ts": now - 1000 * mid}),
            mid=mid, qos=1)
        if mid == 1:
            assert writes == [] and created() == 0  # the enrolled patient's key was there
    # the patient enrolled without a key got one from the gateway, once
    assert [DataKeyRecord.model_validate_json(v or b"").patient_id for w in writes for _, v in w] == ["pt-old"]
    assert created() == 1 and keys.created == 1
    assert gw._grouper is not None
    for grp in gw._grouper.due(time.monotonic() + 1):
        gw._send_group(grp)
    seen = sorted(keys.ring.owner(o.key_id) or "" for _, _, value, _, _ in sent
                  for o in open_sealed(value, "vitals.raw", keys.cipher_of) for _ in decode_record(o.plaintext or b""))
    assert seen == ["pt-new", "pt-new", "pt-old", "pt-old"]
    assert keys.ring.current("pt-new") is not None and keys.ring.current("pt-new")[0] == bytes.fromhex(enrolled.key_id)


def test_a_message_or_request_naming_several_patients_without_a_key_creates_their_keys_in_one_write(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from wearwatch.datakeys import DataKeyRecord

    writes: list[list[tuple[bytes, bytes | None]]] = []
    gw, sent = _sealing_gateway(writes, monkeypatch)
    keys = gw.datakeys
    enrolled, _ = new_data_key("pt-in", keys.ring.kek, now_ms=1)
    keys.ring.apply(bytes.fromhex(enrolled.key_id), enrolled.model_dump_json().encode())
    now = int(time.time() * 1000)
    hub = ["pt-in", "pt-h1", "pt-h2", "pt-h1", "pt-h3"]  # a hub's message: several patients, one enrolled
    gw.handle(vitals_topic("acme", "hub"), orjson.dumps(
        [{"patient_id": p, "signal": "heart_rate", "value": 70, "unit": "bpm", "ts": now - 1000 * i}
         for i, p in enumerate(hub)]), mid=1, qos=1)
    # one acknowledged write for the three keys (one each: three waits for Kafka on the MQTT thread)
    assert [[DataKeyRecord.model_validate_json(v or b"").patient_id for _, v in w] for w in writes] == [
        ["pt-h1", "pt-h2", "pt-h3"]]
    # an HTTP request (a FHIR bundle) for two more patients without a key and one with: one more write
    vitals = gw.settings.topic_vitals
    records = [(vitals, p.encode(), reading(p, 70 + i, T0 + i)) for i, p in enumerate(["pt-r1", "pt-in", "pt-r2"])]
    out = gw._http_records(records)
    assert [[DataKeyRecord.model_validate_json(v or b"").patient_id for _, v in w] for w in writes[1:]] == [
        ["pt-r1", "pt-r2"]]
    assert keys.created == 5
    assert sorted(keys.ring.owner(o.key_id) or "" for t, _, value, _ in out
                  for o in open_sealed(value, "vitals.raw", keys.cipher_of)) == ["pt-in", "pt-r1", "pt-r2"]
    assert gw._grouper is not None
    for grp in gw._grouper.due(time.monotonic() + 1):
        gw._send_group(grp)
    assert sorted(keys.ring.owner(o.key_id) or "" for _, _, value, _, _ in sent
                  for o in open_sealed(value, "vitals.raw", keys.cipher_of)
                  for _ in decode_record(o.plaintext or b"")) == sorted(hub)
