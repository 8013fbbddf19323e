"""The per-patient data keys and the sealed envelope (wearwatch/datakeys.py), without Kafka."""

from __future__ import annotations

import base64
import os
import sys

import pytest

from wearwatch.config import load_settings
from wearwatch.datakeys import (
    KEY_ID_BYTES,
    SEALED_PREFIX,
    EnvelopeError,
    KeyRing,
    entries_of,
    is_sealed,
    kek_of,
    new_data_key,
    open_sealed,
    seal,
    sealed_record,
    unwrap,
)
from wearwatch.errors import ConfigError

SECRET = base64.b64encode(b"k" * 32).decode()  # any random string of 32 characters or more


def ring_with(*patients: str, secret: str | None = SECRET) -> KeyRing:
    ring = KeyRing(kek_of(secret))
    for i, pid in enumerate(patients):
        rec, _ = new_data_key(pid, ring.kek, now_ms=1000 + i)
        ring.apply(bytes.fromhex(rec.key_id), rec.model_dump_json().encode())
    return ring


def sealed_for(ring: KeyRing, pid: str, text: bytes, purpose: str = "vitals.raw") -> bytes:
    cur = ring.current(pid)
    assert cur is not None
    return seal(cur[1], cur[0], text, purpose)  # type: ignore[arg-type]


def test_round_trip_of_several_patients_in_one_record() -> None:
    ring = ring_with("p-1", "p-2")
    value = sealed_record([sealed_for(ring, "p-1", b'{"a":1}'), sealed_for(ring, "p-2", b'{"b":2}')])
    assert is_sealed(value) and value.startswith(SEALED_PREFIX)
    opened = open_sealed(value, "vitals.raw", ring.cipher)
    assert [o.plaintext for o in opened] == [b'{"a":1}', b'{"b":2}']
    assert [ring.owner(o.key_id) for o in opened] == ["p-1", "p-2"]
    # nothing of the patient in clear: not the id, not the plaintext
    assert b"p-1" not in value and b'"a"' not in value


def test_every_seal_has_a_fresh_nonce() -> None:
    ring = ring_with("p-1")
    a, b = sealed_for(ring, "p-1", b"same"), sealed_for(ring, "p-1", b"same")
    assert a != b
    assert entries_of(sealed_record([a]))[0][1] != entries_of(sealed_record([b]))[0][1]


def test_a_changed_byte_fails_authentication() -> None:
    ring = ring_with("p-1")
    value = bytearray(sealed_record([sealed_for(ring, "p-1", b'{"value": 72}')]))
    value[-1] ^= 0x01
    with pytest.raises(EnvelopeError, match="authentication"):
        open_sealed(bytes(value), "vitals.raw", ring.cipher)


def test_an_entry_cannot_be_moved_to_another_topic() -> None:
    ring = ring_with("p-1")
    value = sealed_record([sealed_for(ring, "p-1", b"ack", "alerts.commands")])
    with pytest.raises(EnvelopeError, match="authentication"):
        open_sealed(value, "vitals.raw", ring.cipher)
    assert open_sealed(value, "alerts.commands", ring.cipher)[0].plaintext == b"ack"


@pytest.mark.parametrize("value", [b"{}", SEALED_PREFIX, SEALED_PREFIX + b"\x00" * 10,
                                   SEALED_PREFIX + os.urandom(KEY_ID_BYTES + 12) + b"\x00\x00\x01\x00" + b"x"])
def test_malformed_envelopes_are_refused(value: bytes) -> None:
    with pytest.raises(EnvelopeError):
        open_sealed(value, "vitals.raw", ring_with().cipher)


def test_an_erased_key_leaves_the_entry_unreadable_and_others_readable() -> None:
    ring = ring_with("p-1", "p-2")
    value = sealed_record([sealed_for(ring, "p-1", b"one"), sealed_for(ring, "p-2", b"two")])
    kid = ring.current("p-1")
    assert kid is not None
    ring.apply(kid[0], None)  # the tombstone of p-1's key
    opened = open_sealed(value, "vitals.raw", ring.cipher)
    assert [o.plaintext for o in opened] == [None, b"two"]
    assert ring.current("p-1") is None and kid[0] in ring.erased and len(ring) == 1
    # an unknown key id reads the same as an erased one
    assert open_sealed(value, "vitals.raw", KeyRing(None).cipher)[1].plaintext is None


def test_a_patient_with_two_keys_seals_with_the_oldest_and_opens_both() -> None:
    ring = KeyRing(None)
    newer, _ = new_data_key("p-1", None, now_ms=2000)
    older, _ = new_data_key("p-1", None, now_ms=1000)
    ring.apply(bytes.fromhex(newer.key_id), newer.model_dump_json().encode())
    a = sealed_for(ring, "p-1", b"a")  # sealed before the older key was seen
    ring.apply(bytes.fromhex(older.key_id), older.model_dump_json().encode())
    cur = ring.current("p-1")
    assert cur is not None and cur[0].hex() == older.key_id
    b = sealed_for(ring, "p-1", b"b")
    assert [o.plaintext for o in open_sealed(sealed_record([a, b]), "vitals.raw", ring.cipher)] == [b"a", b"b"]
    ring.apply(bytes.fromhex(older.key_id), None)
    cur = ring.current("p-1")
    assert cur is not None and cur[0].hex() == newer.key_id


def test_data_keys_are_wrapped_under_the_secret() -> None:
    kek = kek_of(SECRET)
    rec, key = new_data_key("p-1", kek)
    assert rec.key.startswith("w1:") and base64.b64encode(key).decode() not in rec.key
    assert unwrap(rec, kek) == key
    with pytest.raises(ValueError, match="no WEARWATCH_DATA_KEY_SECRET"):
        unwrap(rec, None)
    with pytest.raises(ValueError, match="another"):
        unwrap(rec, kek_of("x" * 32))
    raw, key2 = new_data_key("p-2", None)
    assert raw.key.startswith("raw:") and unwrap(raw, kek) == key2


def test_a_key_record_under_another_id_is_refused() -> None:
    rec, _ = new_data_key("p-1", None)
    with pytest.raises(ValueError, match="key id"):
        KeyRing(None).apply(os.urandom(KEY_ID_BYTES), rec.model_dump_json().encode())
    with pytest.raises(ValueError):
        KeyRing(None).apply(bytes.fromhex(rec.key_id), b"not json")


def test_the_secret_setting_is_checked() -> None:
    assert load_settings({"WEARWATCH_DATA_KEY_SECRET": SECRET}).data_key_secret == SECRET
    with pytest.raises(ConfigError, match="WEARWATCH_DATA_KEY_SECRET"):
        load_settings({"WEARWATCH_DATA_KEY_SECRET": "too short"})


class _Sent:
    def get(self, timeout: float) -> None:
        pass


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, int | None]] = []
        self.closed = False
        self.flushed = -1  # how many records were sent when the producer was last flushed

    def send(self, topic: str, key: bytes, value: bytes | None, partition: int | None = None) -> _Sent:
        self.sent.append((topic, key, value, partition))
        return _Sent()

    def flush(self, timeout: float | None = None) -> None:
        self.flushed = len(self.sent)

    def close(self, timeout: float) -> None:
        self.closed = True


def test_enrolment_creates_a_key_for_each_patient_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import wearwatch.datakeys as datakeys
    import wearwatch.transport as transport
    from wearwatch.datakeys import DataKeyRecord, ensure_data_keys

    s = load_settings({}, topic_prefix="t.", data_key_secret=SECRET)
    have, _ = new_data_key("p-1", kek_of(SECRET), now_ms=1)
    producers: list[_Producer] = []
    monkeypatch.setattr(datakeys, "ensure_datakeys_topic", lambda settings: None)
    monkeypatch.setattr(datakeys, "read_data_keys", lambda settings, timeout_s: {bytes.fromhex(have.key_id): have})

    def producer_of(settings: object, **kw: object) -> _Producer:
        producers.append(_Producer())
        return producers[-1]

    monkeypatch.setattr(transport, "kafka_producer", producer_of)

    assert ensure_data_keys(s, ["p-1", "p-2", "p-3", "p-2"]) == 2
    [producer] = producers
    assert producer.closed and producer.flushed == 2  # sent at once, not after the producer's linger
    assert [(t, p) for t, _, _, p in producer.sent] == [("t.datakeys", 0), ("t.datakeys", 0)]
    records = [DataKeyRecord.model_validate_json(v or b"") for _, _, v, _ in producer.sent]
    assert [r.patient_id for r in records] == ["p-2", "p-3"]
    assert [k for _, k, _, _ in producer.sent] == [bytes.fromhex(r.key_id) for r in records]
    ring = KeyRing(kek_of(SECRET))  # wrapped under the secret, readable by every service that holds it
    for _, k, v, _ in producer.sent:
        ring.apply(k, v)
    assert ring.current("p-2") is not None and ring.current("p-3") is not None and ring.current("p-1") is None

    assert ensure_data_keys(s, ["p-1"]) == 0 and ensure_data_keys(s, []) == 0  # nothing to create: no producer
    assert len(producers) == 1


def test_a_record_read_again_changes_nothing() -> None:
    ring = ring_with("p-1", "p-2")
    rec, key = new_data_key("p-3", None, now_ms=5)
    kid = bytes.fromhex(rec.key_id)
    ring.add(kid, "p-3", key, 5)  # created here ...
    ring.apply(kid, rec.model_dump_json().encode())  # ... and read back by the follower
    assert len(ring) == 3 and ring.owner(kid) == "p-3" and ring.key(kid) == key
    cur = ring.current("p-3")
    assert cur is not None and cur[0] == kid


def test_a_patient_with_three_keys_keeps_the_oldest_left_as_each_is_erased() -> None:
    ring = KeyRing(None)
    made = {t: new_data_key("p-1", None, now_ms=t)[0] for t in (3000, 1000, 2000)}
    for rec in made.values():
        ring.apply(bytes.fromhex(rec.key_id), rec.model_dump_json().encode())
    ring.apply(*_record(new_data_key("p-2", None, now_ms=500)[0]))

    def current() -> str | None:
        cur = ring.current("p-1")
        assert ring.has_key("p-1") is (cur is not None)  # the same answer without making a cipher
        return None if cur is None else cur[0].hex()

    assert current() == made[1000].key_id and len(ring) == 4
    ring.apply(bytes.fromhex(made[2000].key_id), None)  # not the current one: the current one stays
    assert current() == made[1000].key_id
    ring.apply(bytes.fromhex(made[1000].key_id), None)
    assert current() == made[3000].key_id and "p-1" not in ring.erased_patients
    ring.apply(bytes.fromhex(made[3000].key_id), None)
    assert current() is None and ring.erased_patients == {"p-1"} and len(ring) == 1
    assert ring.current("p-2") is not None and ring.has_key("p-2") and not ring.has_key("p-3")


def _record(rec: object) -> tuple[bytes, bytes]:
    from wearwatch.datakeys import DataKeyRecord

    assert isinstance(rec, DataKeyRecord)
    return bytes.fromhex(rec.key_id), rec.model_dump_json().encode()


def test_an_erased_keys_bytes_are_wiped_and_its_place_taken_by_the_next_key() -> None:
    ring = ring_with("p-1", "p-2", secret=None)
    cur = ring.current("p-1")
    assert cur is not None
    old = ring.key(cur[0])
    assert old is not None and old in ring._slab
    ring.apply(cur[0], None)
    assert ring.key(cur[0]) is None and ring.cipher(cur[0]) is None and old not in ring._slab
    rec, key = new_data_key("p-3", None, now_ms=9)
    ring.apply(*_record(rec))
    assert len(ring._slab) == 2 * 32  # the freed place, reused
    assert ring.key(bytes.fromhex(rec.key_id)) == key and ring.owner(cur[0]) is None
    assert ring.owner(bytes.fromhex(rec.key_id)) == "p-3" and "p-1" in ring.erased_patients
    ring.apply(*_record(new_data_key("p-1", None, now_ms=10)[0]))  # enrolled again: a new key
    assert "p-1" not in ring.erased_patients and ring.current("p-1") is not None


def test_a_key_id_recorded_again_under_another_patient_moves_to_them() -> None:
    ring = KeyRing(None)
    rec, _ = new_data_key("p-1", None, now_ms=1)
    ring.apply(*_record(rec))
    moved = rec.model_copy(update={"patient_id": "p-2"})
    ring.apply(*_record(moved))
    assert ring.current("p-1") is None and ring.owner(bytes.fromhex(rec.key_id)) == "p-2" and len(ring) == 1


def test_lookups_while_keys_come_and_go_never_give_another_keys_bytes() -> None:
    import threading

    ring = KeyRing(None)
    stable = [new_data_key(f"s-{i}", None, now_ms=i) for i in range(50)]
    for rec, _ in stable:
        ring.apply(*_record(rec))
    churn = [new_data_key(f"c-{i}", None, now_ms=i) for i in range(200)]
    wrong: list[bytes] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for rec, key in churn + stable:
                got = ring.key(bytes.fromhex(rec.key_id))
                if got is not None and got != key:
                    wrong.append(got)

    reader = threading.Thread(target=read)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: a lookup meets a slot being freed and taken again
    reader.start()
    try:
        for _ in range(20):
            for rec, _key in churn:
                ring.apply(*_record(rec))
            for rec, _key in churn:
                ring.apply(bytes.fromhex(rec.key_id), None)
    finally:
        stop.set()
        reader.join()
        sys.setswitchinterval(switch)
    assert wrong == [] and len(ring) == len(stable)
    assert all(ring.key(bytes.fromhex(rec.key_id)) == key for rec, key in stable)


def _keys_writing_to(written: list[list[tuple[bytes, bytes | None]]], monkeypatch: pytest.MonkeyPatch,
                     recreate_erased: bool = True) -> object:
    """A :class:`DataKeys` whose writes to ``datakeys`` are collected (one list per write), as if following."""
    import threading

    from wearwatch.datakeys import DataKeys

    keys = DataKeys(load_settings({}, topic_prefix="t.", data_key_secret=SECRET), recreate_erased=recreate_erased)
    monkeypatch.setattr(keys, "_publish", lambda records, timeout_s=30.0: written.append(list(records)))
    following = threading.Thread(target=lambda: None)
    following.start()
    following.join()
    monkeypatch.setattr(keys.follower, "_thread", following)
    return keys


def test_keys_for_many_patients_are_created_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    from wearwatch.datakeys import DataKeyRecord, DataKeys

    written: list[list[tuple[bytes, bytes | None]]] = []
    keys = _keys_writing_to(written, monkeypatch)
    assert isinstance(keys, DataKeys)
    have, _ = new_data_key("p-1", keys.ring.kek, now_ms=1)
    keys.ring.apply(bytes.fromhex(have.key_id), have.model_dump_json().encode())
    made: list[int] = []
    keys.on_created = lambda: made.append(1)

    assert keys.ensure_keys(["p-1", "p-2", "p-3", "p-2", "p-4"]) == 3
    [write] = written  # one acknowledged write for the three, not one each
    records = [DataKeyRecord.model_validate_json(v or b"") for _, v in write]
    assert [r.patient_id for r in records] == ["p-2", "p-3", "p-4"]
    assert [k for k, _ in write] == [bytes.fromhex(r.key_id) for r in records]
    assert keys.created == 3 and len(made) == 3
    for rec in records:  # the ring seals with them at once, and a follower reading the write agrees
        cur = keys.ring.current(rec.patient_id)
        assert cur is not None and cur[0] == bytes.fromhex(rec.key_id)
    assert keys.cipher_for("p-3")[0] == bytes.fromhex(records[1].key_id)

    assert keys.ensure_keys(["p-1", "p-4"]) == 0 and keys.ensure_keys([]) == 0
    assert len(written) == 1  # nothing to create: no write


def test_a_worker_creates_no_key_again_for_an_erased_patient(monkeypatch: pytest.MonkeyPatch) -> None:
    from wearwatch.datakeys import DataKeyRecord, DataKeys

    written: list[list[tuple[bytes, bytes | None]]] = []
    keys = _keys_writing_to(written, monkeypatch, recreate_erased=False)
    assert isinstance(keys, DataKeys)
    gone, _ = new_data_key("p-gone", keys.ring.kek, now_ms=1)
    keys.ring.apply(bytes.fromhex(gone.key_id), gone.model_dump_json().encode())
    keys.ring.apply(bytes.fromhex(gone.key_id), None)  # erased

    assert keys.ensure_keys(["p-gone", "p-new"]) == 1
    assert [DataKeyRecord.model_validate_json(v or b"").patient_id for _, v in written[0]] == ["p-new"]
    assert keys.ring.current("p-gone") is None
    assert keys.ensure_keys(["p-gone"]) == 0 and len(written) == 1
