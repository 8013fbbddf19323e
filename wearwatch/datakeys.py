"""Per-patient data keys and the sealed envelope: erasure that reaches the logs kept by retention.

The transit logs (``vitals.raw``, ``vitals.dlq``, ``alerts.commands``, ``vitals.1m``) cannot be compacted: they
are kept for days and read in order. So what they hold of a patient is encrypted (AES-256-GCM) under a data key
of that patient, and erasing the patient destroys the key: the records stay until retention removes them, but
nobody can read them any more ("crypto-shredding").

**The key store** is the compacted one-partition topic ``datakeys`` (:func:`ensure_datakeys_topic`). Its records
are keyed by a random 16-byte *key id*; the value (:class:`DataKeyRecord`) names the patient and holds the
256-bit data key, wrapped (AES-GCM) under the key-encryption secret ``WEARWATCH_DATA_KEY_SECRET`` when that is
set. A patient's key is created when they are enrolled (:func:`ensure_data_keys`, ``wearwatch patients enrol`` and
``import``), so a gateway finds it in its follower and never waits for one on its MQTT thread; failing that (a patient
enrolled before keys were made at enrolment, a dead letter naming a patient never enrolled), on first need (the first
reading of a patient at the gateway, a nurse command at the console, anything the worker writes for a patient that
has none). Either way it is written before anything sealed under it.
Two processes may create a key for the same patient at the same moment: both keys stay valid (a record per key
id) and every process seals with the patient's *oldest* key, so they agree again within the follower's fetch
wait. :func:`erase_data_keys` (``wearwatch patients erase``) writes a tombstone for every key id of the patient:
every process following the topic (:class:`DataKeys`) forgets the key at once, and compaction removes the key
records within ``WEARWATCH_ERASURE_COMPACTION_HOURS``.

**The sealed envelope** (:func:`seal`, :func:`open_sealed`): a record value ``b"WWS" + version (1)`` followed by
one or more entries ``key id (16) | nonce (12) | length (4, big-endian) | ciphertext``; each entry is one
patient's plaintext (a reading, a batch of readings, a dead letter, a command, minute aggregates). The
authenticated data binds an entry to its purpose (the topic it is meant for) and its key id. A clear-text record
starts with ``{`` (JSON), so readers accept both forms while records written before encryption age out.
Nothing in a sealed record names the patient: the Kafka record key is the first entry's key id, and the record
is still produced to the partition the patient's id hashes to.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import struct
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wearwatch.compacted import CompactedFollower
from wearwatch.config import Settings
from wearwatch.errors import StackUnavailable

__all__ = [
    "KEY_ID_BYTES",
    "SEALED_PREFIX",
    "DataKeyRecord",
    "DataKeys",
    "EnvelopeError",
    "KeyRing",
    "KeySource",
    "Opened",
    "ensure_data_keys",
    "ensure_datakeys_topic",
    "erase_data_keys",
    "is_sealed",
    "new_data_key",
    "open_entries",
    "open_layers",
    "open_sealed",
    "read_data_keys",
    "seal",
    "sealed_record",
]

log = logging.getLogger(__name__)

#: the first bytes of a sealed record value: magic and envelope version (a clear-text record starts with ``{``)
SEALED_PREFIX = b"WWS\x01"
KEY_ID_BYTES = 16
NONCE_BYTES = 12
_ENTRY_HEAD = struct.Struct(">16s12sI")
_KEY_BYTES = 32
#: the purposes an entry can be sealed for (its authenticated data: an entry cannot be moved to another topic)
Purpose = Literal["vitals.raw", "vitals.dlq", "alerts.commands", "vitals.1m"]


class EnvelopeError(ValueError):
    """A sealed record that is malformed or was altered (authentication failed)."""


def is_sealed(value: bytes | None) -> bool:
    """Whether a record value is a sealed envelope (else clear text, or a tombstone).

    >>> is_sealed(b"WWS\\x01..."), is_sealed(b'{"schema_version":1}'), is_sealed(None)
    (True, False, False)
    """
    return value is not None and value[:4] == SEALED_PREFIX


def _aad(purpose: str, key_id: bytes) -> bytes:
    return purpose.encode() + b"|" + key_id


def seal(cipher: AESGCM, key_id: bytes, plaintext: bytes, purpose: Purpose) -> bytes:
    """One entry: ``plaintext`` encrypted under the data key ``cipher`` (of ``key_id``) for ``purpose``."""
    nonce = os.urandom(NONCE_BYTES)
    ct = cipher.encrypt(nonce, plaintext, _aad(purpose, key_id))
    return _ENTRY_HEAD.pack(key_id, nonce, len(ct)) + ct


def sealed_record(entries: Iterable[bytes]) -> bytes:
    """A record value holding ``entries`` (from :func:`seal`)."""
    return SEALED_PREFIX + b"".join(entries)


def entries_of(value: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(key id, nonce, ciphertext) of each entry of a sealed record; :class:`EnvelopeError` if malformed."""
    if not is_sealed(value):
        raise EnvelopeError("not a sealed record")
    out: list[tuple[bytes, bytes, bytes]] = []
    pos, end, head = len(SEALED_PREFIX), len(value), _ENTRY_HEAD.size
    while pos < end:
        if end - pos < head:
            raise EnvelopeError("truncated entry header")
        key_id, nonce, n = _ENTRY_HEAD.unpack_from(value, pos)
        pos += head
        if n > end - pos:
            raise EnvelopeError("truncated ciphertext")
        out.append((key_id, nonce, value[pos:pos + n]))
        pos += n
    if not out:
        raise EnvelopeError("no entry")
    return out


@dataclass(frozen=True, slots=True)
class Opened:
    """One entry of a sealed record, opened: its plaintext, or None when its key is gone (erased)."""

    key_id: bytes
    plaintext: bytes | None


def open_sealed(value: bytes, purpose: Purpose, cipher_of: Callable[[bytes], AESGCM | None]) -> list[Opened]:
    """Decrypt every entry of a sealed record; an entry whose key ``cipher_of`` does not know comes back with
    ``plaintext`` None. :class:`EnvelopeError` if the record is malformed or an entry fails authentication."""
    return [Opened(key_id, plaintext) for key_id, plaintext in open_entries(value, purpose, cipher_of)]


def open_entries(value: bytes, purpose: Purpose,
                 cipher_of: Callable[[bytes], AESGCM | None]) -> list[tuple[bytes, bytes | None]]:
    """:func:`open_sealed` as (key id, plaintext or None) pairs, in one pass (the worker's hot path)."""
    if value[:4] != SEALED_PREFIX:
        raise EnvelopeError("not a sealed record")
    out: list[tuple[bytes, bytes | None]] = []
    aad = purpose.encode() + b"|"
    unpack, head = _ENTRY_HEAD.unpack_from, _ENTRY_HEAD.size
    pos, end = len(SEALED_PREFIX), len(value)
    while pos < end:
        if end - pos < head:
            raise EnvelopeError("truncated entry header")
        key_id, nonce, n = unpack(value, pos)
        pos += head
        if n > end - pos:
            raise EnvelopeError("truncated ciphertext")
        cipher = cipher_of(key_id)
        if cipher is None:
            out.append((key_id, None))
        else:
            try:
                out.append((key_id, cipher.decrypt(nonce, value[pos:pos + n], aad + key_id)))
            except InvalidTag as exc:
                raise EnvelopeError(f"an entry failed authentication (key {key_id.hex()[:8]}…, {purpose})") from exc
        pos += n
    if not out:
        raise EnvelopeError("no entry")
    return out


def open_layers(value: bytes, purpose: Purpose, cipher_of: Callable[[bytes], AESGCM | None]) -> bytes | None:
    """The plaintext of a one-entry record sealed in one or more layers (a dead letter naming several patients is
    sealed under each one's key in turn); None if a layer's key is gone. A clear-text value comes back as it is.

    >>> ring = KeyRing(None)
    >>> for pid in ("p-1", "p-2"):
    ...     rec, _ = new_data_key(pid, None)
    ...     ring.apply(bytes.fromhex(rec.key_id), rec.model_dump_json().encode())
    >>> value = b"letter"
    >>> for pid in ("p-1", "p-2"):
    ...     value = sealed_record([seal(ring.cipher_for(pid)[1], ring.cipher_for(pid)[0], value, "vitals.dlq")])
    >>> open_layers(value, "vitals.dlq", ring.cipher_of)
    b'letter'
    >>> ring.apply(ring.cipher_for("p-1")[0], None)  # either patient erased: unreadable
    >>> open_layers(value, "vitals.dlq", ring.cipher_of) is None
    True
    """
    while is_sealed(value):
        entries = open_sealed(value, purpose, cipher_of)
        if len(entries) != 1:
            raise EnvelopeError(f"expected one entry, found {len(entries)}")
        plaintext = entries[0].plaintext
        if plaintext is None:
            return None
        value = plaintext
    return value


# -- the key records -----------------------------------------------------------------------
class DataKeyRecord(BaseModel):
    """A record of ``datakeys`` (key = the key id's bytes): one data key of one patient."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    key_id: str = Field(description="hex of the 16-byte key id (the record's key)")
    patient_id: str
    #: ``w1:`` + base64(nonce + AES-GCM of the data key under the key-encryption secret), or
    #: ``raw:`` + base64(data key) when no secret is configured
    key: str
    created_ms: int


def kek_of(secret: str | None) -> AESGCM | None:
    """The key-encryption cipher of ``WEARWATCH_DATA_KEY_SECRET`` (AES-256 under the SHA-256 of the secret, a
    random string of at least 32 characters), None if unset."""
    if not secret:
        return None
    return AESGCM(hashlib.sha256(secret.encode()).digest())


def new_data_key(patient_id: str, kek: AESGCM | None, now_ms: int | None = None) -> tuple[DataKeyRecord, bytes]:
    """A fresh random key id and 256-bit data key for ``patient_id``: (its record, the key)."""
    key_id, key = os.urandom(KEY_ID_BYTES), AESGCM.generate_key(bit_length=256)
    if kek is None:
        stored = "raw:" + base64.b64encode(key).decode()
    else:
        nonce = os.urandom(NONCE_BYTES)
        stored = "w1:" + base64.b64encode(nonce + kek.encrypt(nonce, key, b"datakey|" + key_id)).decode()
    created = int(time.time() * 1000) if now_ms is None else now_ms
    return DataKeyRecord(key_id=key_id.hex(), patient_id=patient_id, key=stored, created_ms=created), key


def unwrap(record: DataKeyRecord, kek: AESGCM | None) -> bytes:
    """The data key of a record; ValueError if it cannot be had (wrapped and no or another secret)."""
    kind, _, b64 = record.key.partition(":")
    blob = base64.b64decode(b64, validate=True)
    if kind == "raw":
        key = blob
    elif kind == "w1":
        if kek is None:
            raise ValueError("a wrapped data key and no WEARWATCH_DATA_KEY_SECRET")
        try:
            key = kek.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], b"datakey|" + bytes.fromhex(record.key_id))
        except InvalidTag as exc:
            raise ValueError("a data key wrapped under another WEARWATCH_DATA_KEY_SECRET") from exc
    else:
        raise ValueError(f"unknown data key form {kind!r}")
    if len(key) != 32:
        raise ValueError("a data key is 32 bytes")
    return key


class KeyRing:
    """The data keys a process knows, from the ``datakeys`` records it was handed (:meth:`apply`). Thread-safe.

    >>> ring = KeyRing(kek=None)
    >>> rec, _ = new_data_key("p-1", None, now_ms=1)
    >>> ring.apply(bytes.fromhex(rec.key_id), rec.model_dump_json().encode())
    >>> kid, cipher = ring.current("p-1")
    >>> entry = seal(cipher, kid, b"hello", "vitals.raw")
    >>> record = sealed_record([entry])
    >>> [o.plaintext for o in open_sealed(record, "vitals.raw", ring.cipher)]
    [b'hello']
    >>> ring.apply(kid, None)  # the patient's key is erased
    >>> ring.current("p-1") is None, [o.plaintext for o in open_sealed(record, "vitals.raw", ring.cipher)]
    (True, [None])

    Every process holds one key per patient (a service at 100,000 patients: 100,000 keys), so a key is a slot:
    its 32 bytes in one shared slab, its creation time in an array, its id and patient in two lists, and two dict
    entries pointing at the slot (key id -> slot, patient -> slot of their current key). A raw key is kept, not a
    cipher: a cipher object holds ~2.4 KB (its expanded key schedule) while making one costs ~1 µs per sealed entry.
    A forgotten key's bytes are overwritten with zeros and its slot is reused.
    """

    def __init__(self, kek: AESGCM | None) -> None:
        self.kek = kek
        self._lock = threading.Lock()
        #: key id -> its slot
        self._slot: dict[bytes, int] = {}
        #: patient -> the slot of their oldest key (the one their data is sealed with)
        self._current: dict[str, int] = {}
        #: patient -> the slots of all their keys, only for patients with more than one (rare: two processes
        #: created a key for them at the same moment)
        self._several: dict[str, list[int]] = {}
        # per slot: the key's bytes (at 32 * slot), when it was created, its id and its patient (None: a free slot)
        self._slab = bytearray()
        self._created = array("q")
        self._kid: list[bytes | None] = []
        self._pid: list[str | None] = []
        self._free: list[int] = []
        #: key ids seen tombstoned since this process started
        self.erased: set[bytes] = set()
        #: patients whose last key was seen tombstoned since this process started (and who have none since)
        self.erased_patients: set[str] = set()

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Take one ``datakeys`` record (None: a tombstone); ValueError for one it cannot read."""
        if key is None or len(key) != KEY_ID_BYTES:
            raise ValueError("a datakeys record is keyed by a 16-byte key id")
        if value is None:
            self.forget(key)
            return
        try:
            rec = DataKeyRecord.model_validate_json(value)
        except ValidationError as exc:
            raise ValueError(f"not a data key record ({exc.error_count()} error(s))") from None
        if rec.key_id != key.hex():
            raise ValueError("its key is not its key id")
        self.add(key, rec.patient_id, unwrap(rec, self.kek), rec.created_ms)

    def add(self, key_id: bytes, patient_id: str, key: bytes, created_ms: int) -> None:
        if len(key) != _KEY_BYTES:
            raise ValueError("a data key is 32 bytes")
        patient_id = sys.intern(patient_id)  # one string per patient, shared with what else the process holds of them
        key_id = bytes(key_id)
        with self._lock:
            self.erased.discard(key_id)
            self.erased_patients.discard(patient_id)
            slot = self._slot.get(key_id)
            if slot is not None and self._pid[slot] != patient_id:
                self._remove(key_id)  # the same key id under another patient: the record replaces the key
                slot = None
            if slot is None:
                slot = self._new_slot()
                self._kid[slot] = key_id
                self._pid[slot] = patient_id
            self._slab[slot * _KEY_BYTES:(slot + 1) * _KEY_BYTES] = key
            self._created[slot] = created_ms
            self._slot[key_id] = slot
            cur = self._current.get(patient_id)
            if cur is None:
                self._current[patient_id] = slot
            elif cur != slot:
                several = self._several.get(patient_id)
                if several is None:
                    several = self._several[patient_id] = [cur]
                if slot not in several:
                    several.append(slot)
                self._current[patient_id] = self._oldest(several)
            else:
                several = self._several.get(patient_id)
                if several is not None:
                    self._current[patient_id] = self._oldest(several)

    def _new_slot(self) -> int:
        if self._free:
            return self._free.pop()
        slot = len(self._kid)
        self._slab += bytes(_KEY_BYTES)
        self._created.append(0)
        self._kid.append(None)
        self._pid.append(None)
        return slot

    def _oldest(self, slots: list[int]) -> int:
        """The slot of the oldest key of ``slots`` (ties: the smaller key id)."""
        return min(slots, key=lambda s: (self._created[s], self._kid[s]))

    def forget(self, key_id: bytes) -> None:
        with self._lock:
            self.erased.add(key_id)
            pid = self._remove(key_id)
            if pid is not None and pid not in self._current:
                self.erased_patients.add(pid)

    def _remove(self, key_id: bytes) -> str | None:
        """Drop a key (under the lock): its slot is wiped and freed; the patient it belonged to, None if unknown."""
        slot = self._slot.pop(key_id, None)
        if slot is None:
            return None
        pid = self._pid[slot]
        assert pid is not None
        self._slab[slot * _KEY_BYTES:(slot + 1) * _KEY_BYTES] = bytes(_KEY_BYTES)  # the key material, gone
        self._created[slot] = 0
        self._kid[slot] = self._pid[slot] = None
        self._free.append(slot)
        several = self._several.get(pid)
        if several is None:
            if self._current.get(pid) == slot:
                del self._current[pid]
            return pid
        several.remove(slot)
        self._current[pid] = self._oldest(several)
        if len(several) == 1:
            del self._several[pid]
        return pid

    def _read(self, key_id: bytes) -> bytearray | None:
        """A copy of a key id's key, None if unknown or erased (without the lock: the hot path)."""
        slot = self._slot.get(key_id)
        if slot is None:
            return None
        start = slot * _KEY_BYTES
        key = self._slab[start:start + _KEY_BYTES]  # a copy
        # the slot may have been freed (and taken by another key) meanwhile: the key is only its if it still is
        return key if self._slot.get(key_id) == slot else None

    def key(self, key_id: bytes) -> bytes | None:
        """The data key of a key id, None if unknown or erased."""
        key = self._read(key_id)
        return None if key is None else bytes(key)

    def cipher(self, key_id: bytes) -> AESGCM | None:
        """The cipher of a key id, None if unknown or erased (without the lock: the hot path)."""
        key = self._read(key_id)
        return None if key is None else AESGCM(key)

    def has_key(self, patient_id: str) -> bool:
        """Whether the patient has a current key (without making its cipher, as :meth:`current` does)."""
        return patient_id in self._current

    def current(self, patient_id: str) -> tuple[bytes, AESGCM] | None:
        """(key id, cipher) a patient's data is sealed with now, None if the patient has no key."""
        with self._lock:
            slot = self._current.get(patient_id)
            if slot is None:
                return None
            kid = self._kid[slot]
            assert kid is not None
            return kid, AESGCM(self._slab[slot * _KEY_BYTES:(slot + 1) * _KEY_BYTES])

    def owner(self, key_id: bytes) -> str | None:
        """The patient a key id belongs to (None: unknown or erased)."""
        with self._lock:
            slot = self._slot.get(key_id)
            return None if slot is None else self._pid[slot]

    def __len__(self) -> int:
        return len(self._slot)

    cipher_of = cipher

    def cipher_for(self, patient_id: str) -> tuple[bytes, AESGCM]:
        """(key id, cipher) of the patient's current key; a ring alone creates none: KeyError if there is none."""
        cur = self.current(patient_id)
        if cur is None:
            raise KeyError("the patient has no data key")
        return cur

    def ensure_keys(self, patient_ids: Iterable[str]) -> int:
        """A ring alone creates no key (see :meth:`DataKeys.ensure_keys`): 0."""
        return 0


class KeySource(Protocol):
    """What sealing and opening need: :class:`DataKeys` in a service, a bare :class:`KeyRing` in tests."""

    def cipher_for(self, patient_id: str) -> tuple[bytes, AESGCM]: ...

    def cipher_of(self, key_id: bytes) -> AESGCM | None: ...

    def ensure_keys(self, patient_ids: Iterable[str]) -> int: ...


# -- the topic -----------------------------------------------------------------------------
def ensure_datakeys_topic(settings: Settings) -> None:
    """Create the compacted one-partition ``datakeys`` topic (:mod:`wearwatch.retention`) if it does not exist."""
    from wearwatch.transport import ensure_topics

    ensure_topics(settings, [settings.topic_datakeys], partitions=1)


#: how long a reader waits for the key store to catch up when it meets a key id it does not know
SYNC_TIMEOUT_S = 10.0


class DataKeys:
    """A process's view of ``datakeys``: follows the topic into a :class:`KeyRing` and creates keys on need.

    :meth:`cipher_for` gives the key to seal a patient's data with, creating (and writing, acknowledged)
    the patient's first key if there is none. :meth:`opener` gives the cipher of a key id met in a sealed
    record; an id it does not know may be a key written moments ago, so it first waits once for the
    follower to read up to the topic's current end (:meth:`CompactedFollower.sync`); still unknown, the key
    is gone (the patient was erased) and the entry cannot be read.
    """

    def __init__(self, settings: Settings, name: str = "datakeys-follower", recreate_erased: bool = True) -> None:
        self.settings = settings
        #: False: :meth:`cipher_for` refuses (KeyError) a patient whose keys it saw erased, instead of creating
        #: a new key (the worker: what it still writes of an erased patient must not outlive the erasure)
        self.recreate_erased = recreate_erased
        self.ring = KeyRing(kek_of(settings.data_key_secret))
        self._cipher = self.ring.cipher  # reads without the lock
        if self.ring.kek is None:
            log.warning("WEARWATCH_DATA_KEY_SECRET is not set: new data keys are stored unwrapped in %s",
                        settings.topic_datakeys)
        self.follower = CompactedFollower(settings, settings.topic_datakeys, self.ring.apply, name=name,
                                          describe=lambda: f"{len(self.ring)} data key(s)",
                                          ensure=lambda: ensure_datakeys_topic(settings), poll_ms=200,
                                          fetch_wait_ms=100)
        self._producer: Any = None
        self._create_lock = threading.Lock()
        self._synced_for: set[bytes] = set()  # unknown key ids already waited for (erased ones, mostly)
        #: keys this process created (patients it met without one)
        self.created = 0
        #: called after each key this process created (a service's metric)
        self.on_created: Callable[[], None] | None = None

    def start(self) -> None:
        self.follower.start()

    def stop(self) -> None:
        self.follower.stop()
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None

    def ready(self) -> tuple[bool, str]:
        return self.follower.ready()

    def wait_ready(self, timeout_s: float) -> bool:
        return self.follower.wait_ready(timeout_s)

    def cipher_for(self, patient_id: str) -> tuple[bytes, AESGCM]:
        """(key id, cipher) to seal the patient's data with; creates the patient's key if they have none."""
        cur = self.ring.current(patient_id)
        if cur is None:
            self.ensure_keys([patient_id])
            cur = self.ring.current(patient_id)
            if cur is None:  # erased, and this process re-creates no erased patient's key
                raise KeyError("the patient's data keys were erased")
        return cur

    def ensure_keys(self, patient_ids: Iterable[str]) -> int:
        """Create a key for each of ``patient_ids`` that has none (for an erased patient only with
        :attr:`recreate_erased`), all in one acknowledged write; returns how many. :meth:`cipher_for` creates
        a patient's first key through it.

        A caller about to seal for many patients at once (a worker's batch of minute aggregates) calls this
        first: creating keys one :meth:`cipher_for` at a time waits for Kafka once per patient (~1 ms each here,
        ~7 ms when a write waited for the producer's linger), which for a batch reaching thousands of patients
        without a key held the worker for seconds."""
        ring = self.ring
        missing = [pid for pid in dict.fromkeys(patient_ids) if not ring.has_key(pid)]
        if not missing:
            return 0
        if self.follower._thread.ident is None:  # never started: it would create keys the topic may already hold
            raise StackUnavailable(f"{self.settings.topic_datakeys} is not being followed: start() first")
        with self._create_lock:
            erased = () if self.recreate_erased else ring.erased_patients
            made = []
            for pid in missing:
                if not ring.has_key(pid) and pid not in erased:
                    rec, key = new_data_key(pid, ring.kek)
                    made.append((pid, bytes.fromhex(rec.key_id), key, rec))
            if not made:
                return 0
            self._publish([(key_id, rec.model_dump_json().encode()) for _, key_id, _, rec in made])
            for pid, key_id, key, rec in made:
                ring.add(key_id, pid, key, rec.created_ms)
            self.created += len(made)
            if self.on_created is not None:
                for _ in made:
                    self.on_created()
        return len(made)

    def cipher_of(self, key_id: bytes) -> AESGCM | None:
        """The cipher of a key id met in a sealed record (see the class docs); None: the key is gone."""
        cipher = self._cipher(key_id)
        if cipher is not None:
            return cipher
        if key_id in self.ring.erased or key_id in self._synced_for:
            return None
        if self.follower._thread.ident is None:  # never started: nothing to wait for
            raise StackUnavailable(f"{self.settings.topic_datakeys} is not being followed: start() first")
        if not self.follower.sync(SYNC_TIMEOUT_S):
            raise StackUnavailable(f"could not read {self.settings.topic_datakeys} up to its end")
        if len(self._synced_for) > 100_000:
            self._synced_for.clear()
        self._synced_for.add(key_id)
        return self.ring.cipher(key_id)

    def _publish(self, records: list[tuple[bytes, bytes | None]], timeout_s: float = 30.0) -> None:
        from wearwatch.transport import kafka_producer

        if self._producer is None:
            self._producer = kafka_producer(self.settings, client_id="wearwatch-datakeys")
        _send_keys(self._producer, self.settings, records, timeout_s, "the data key")


def _send_keys(producer: Any, settings: Settings, records: list[tuple[bytes, bytes | None]], timeout_s: float,
               what: str) -> None:
    """Write ``datakeys`` records (key id, record or None for a tombstone) and wait until Kafka took every one."""
    try:
        # partition 0, always: followers read that one (an auto-created topic may have more)
        futures = [producer.send(settings.topic_datakeys, key=k, value=v, partition=0) for k, v in records]
        producer.flush(timeout=timeout_s)  # at once: a caller waits for them (not the producer's linger first)
        for fut in futures:
            fut.get(timeout=timeout_s)
    except Exception as exc:  # KafkaError, KafkaTimeoutError
        raise StackUnavailable(f"Kafka did not take {what}: {type(exc).__name__}") from exc


def read_data_keys(settings: Settings, timeout_s: float = 30.0) -> dict[bytes, DataKeyRecord]:
    """Every live ``datakeys`` record (key id -> record), read to the topic's current end (tools)."""
    from wearwatch.transport import read_to_end

    out: dict[bytes, DataKeyRecord] = {}
    for rec in read_to_end(settings, settings.topic_datakeys, 0, client_id="wearwatch-datakeys", timeout_s=timeout_s):
        if rec.key is None:
            continue
        if rec.value is None:
            out.pop(rec.key, None)
            continue
        try:
            out[rec.key] = DataKeyRecord.model_validate_json(rec.value)
        except ValidationError:
            log.warning("skipped a malformed record in %s (offset %d)", rec.topic, rec.offset)
    return out


def ensure_data_keys(settings: Settings, patient_ids: Iterable[str], timeout_s: float = 30.0) -> int:
    """Create a data key for each of ``patient_ids`` that has none in ``datakeys`` yet (written, acknowledged);
    returns how many. Called at enrolment, so that the services find a patient's key in their followers before
    the patient's first reading (a key created meanwhile elsewhere is harmless: every process seals with the
    patient's oldest key)."""
    from wearwatch.transport import kafka_producer

    wanted = list(dict.fromkeys(patient_ids))
    if not wanted:
        return 0
    ensure_datakeys_topic(settings)
    have = {rec.patient_id for rec in read_data_keys(settings, timeout_s).values()}
    kek = kek_of(settings.data_key_secret)
    if kek is None:
        log.warning("WEARWATCH_DATA_KEY_SECRET is not set: new data keys are stored unwrapped in %s",
                    settings.topic_datakeys)
    records: list[tuple[bytes, bytes | None]] = []
    for pid in wanted:
        if pid not in have:
            rec, _ = new_data_key(pid, kek)
            records.append((bytes.fromhex(rec.key_id), rec.model_dump_json().encode()))
    if not records:
        return 0
    producer = kafka_producer(settings, client_id="wearwatch-enrollment")
    try:
        _send_keys(producer, settings, records, timeout_s, "the data keys")
    finally:
        producer.close(timeout=10)
    log.info("enrolment: %d data key(s) created", len(records))
    return len(records)


def erase_data_keys(settings: Settings, patient_id: str, timeout_s: float = 60.0) -> int:
    """Tombstone every data key of ``patient_id``; returns how many. Every follower forgets them at once, and
    whatever was sealed under them in the transit logs can no longer be read."""
    from wearwatch.transport import kafka_producer

    ensure_datakeys_topic(settings)
    ids = [kid for kid, rec in read_data_keys(settings, timeout_s).items() if rec.patient_id == patient_id]
    if not ids:
        return 0
    producer = kafka_producer(settings, client_id="wearwatch-erasure")
    try:
        _send_keys(producer, settings, [(kid, None) for kid in ids], timeout_s, "the data key tombstones")
    finally:
        producer.close(timeout=10)
    log.info("erasure: %d data key(s) destroyed", len(ids))
    return len(ids)
