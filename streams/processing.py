"""The worker's per-batch work, free of Faust so it can be tested and profiled alone.

:class:`BatchProcessor` takes raw ``vitals.raw`` records (key, value bytes),
runs them through each patient's state and detectors, and returns what the
Faust agent must emit: alert events, 1-minute aggregates and dead letters. It
keeps the patients' states and marks the changed ones dirty; the worker writes
those to its table before each offset commit (:meth:`BatchProcessor.take_dirty`).
The agent in :mod:`streams.app` only moves bytes between Kafka and this class.

Records come sealed under per-patient data keys (:mod:`wearwatch.datakeys`; :attr:`BatchProcessor.keys`) or,
written before sealing, in clear text: the first bytes tell them apart. What the worker writes of a patient
(dead letters, minute aggregates) it seals the same way; what was sealed under an erased key is dropped.
"""

from __future__ import annotations

import heapq
import itertools
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from alerts.lifecycle import DUE_NOW
from alerts.models import AlertEvent
from ingest.contract import BATCH_PREFIX, DeadLetter, Reading, ReadingBatch, decode_record, payload_text
from streams.state import LATENESS_S, MinuteAggregate, PatientState
from streams.state_codec import STATE_VERSION, WRITTEN_BY_DEFAULT, decode_state, encode_state
from wearwatch.contract.commands import Ack, InvalidCommand, Note, parse_command_record
from wearwatch.contract.enrollment import NOT_ENROLLED
from wearwatch.datakeys import (
    SEALED_PREFIX,
    EnvelopeError,
    KeySource,
    open_entries,
    open_sealed,
    seal,
    sealed_record,
)
from wearwatch.errors import InvalidReading

__all__ = [
    "MINUTES_PER_RECORD", "PACKED_VERSION", "BatchProcessor", "Outputs", "Position", "minute_doc", "minutes_record",
]

Record = tuple[bytes, bytes]
#: where a ``vitals.raw`` record was read: (partition, offset)
Position = tuple[int, int]


@dataclass
class Outputs:
    """What one batch (or one tick) produced, ready to send (patient states are written separately:
    :meth:`BatchProcessor.take_dirty`)."""

    events: list[AlertEvent] = field(default_factory=list)
    #: (patient key, :func:`minute_doc`): packed per partition when sent (:func:`minutes_record`)
    minutes: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    dead: list[Record] = field(default_factory=list)

    @property
    def alerts(self) -> list[Record]:
        """The alert events as ``alerts`` topic records (key = the event's :attr:`AlertEvent.record_key`), in the
        order of :attr:`events`; each goes to the partition of its patient (:meth:`streams.app.Pipeline.emit`)."""
        return [(ev.record_key, ev.to_json()) for ev in self.events]

    def extend(self, other: Outputs) -> None:
        self.events += other.events
        self.minutes += other.minutes
        self.dead += other.dead


#: The most minute aggregates one ``vitals.1m`` record holds (~130 bytes each as JSON).
MINUTES_PER_RECORD = 500


def minute_doc(patient_id: str, agg: MinuteAggregate) -> dict[str, Any]:
    """One minute aggregate as an item of a ``vitals.1m`` record (:func:`minutes_record`)."""
    return {
        "patient_id": patient_id,
        "signal": agg.signal,
        "minute_ms": agg.minute_ms,
        "mean": agg.mean,
        "min": agg.min,
        "max": agg.max,
        "sum": agg.sum,
        "count": agg.count,
    }


def minutes_record(docs: list[dict[str, Any]]) -> bytes:
    """The JSON value of one ``vitals.1m`` record: minute aggregates of the patients of one partition.

    Schema 2 packs them (one record per partition and batch): the sink paid Faust's per-record
    cost, ~80 µs, for each aggregate of schema 1 (one per record, still read by the sink).

    >>> minutes_record([{"patient_id": "p1", "minute_ms": 0}])
    b'{"schema_version":2,"minutes":[{"patient_id":"p1","minute_ms":0}]}'
    """
    return orjson.dumps({"schema_version": 2, "minutes": docs})


#: the stored form of a packed state (:meth:`BatchProcessor.pack`): the newest, the smallest and the quickest to
#: make and open (kept in memory only, never read by another release)
PACKED_VERSION = STATE_VERSION


def _no_key(key_id: bytes) -> None:
    return None


class _Patient:
    """The worker's bookkeeping of one cached patient, beside its live state: one slotted object instead of an
    entry in each of five dicts keyed by patient (~0.5 KB a patient at 100,000 patients; see
    :class:`BatchProcessor` for what each field means)."""

    __slots__ = ("bound", "clock", "count", "due", "offset", "partition", "received", "since", "synced")

    def __init__(self, clock: int | None) -> None:
        #: wall ms of the patient's last reading (or of its first tick), None before either
        self.received: int | None = None
        #: the round of the tick its alert book's clock has seen (None: none)
        self.clock = clock
        #: wall ms its time-driven work is due (its live entry on the tick's heap), None: not scheduled
        self.due: int | None = None
        #: a bound of its detectors' and book's due times (stream ms) that readings alone keep, None: none
        self.bound: int | None = None
        #: its state holds readings not written yet since wall ms ``since`` (None: nothing unwritten), the
        #: first of them from the record at ``offset`` of ``partition``, ``count`` of them
        self.since: int | None = None
        self.partition = 0
        self.offset = 0
        self.count = 0
        #: its ``alerts.state`` record was (re)written since this worker got its partition
        #: (:meth:`streams.app.Pipeline.sync_alert_states`)
        self.synced = False


class _Queue:
    """A heap of (key, patient) entries, grouped: the patients pushed with a key already on the heap join its
    (key, [patients]) entry, 8 bytes a patient instead of a 64-byte tuple (the readings of a batch share its wall
    time, the patients of a record its offset, the patients a batch reached their idle time). Entries are lazy: the
    reader skips the patients that no longer match."""

    __slots__ = ("groups", "heap")

    def __init__(self) -> None:
        self.heap: list[tuple[int, list[str]]] = []
        #: key -> its entry's patients, for the keys on the heap
        self.groups: dict[int, list[str]] = {}

    def push(self, key: int, pid: str) -> None:
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = [pid]
            heapq.heappush(self.heap, (key, group))
        else:
            group.append(pid)

    def pop(self) -> tuple[int, list[str]]:
        """The entry of the smallest key, off the heap."""
        entry = heapq.heappop(self.heap)
        del self.groups[entry[0]]
        return entry

    def drop_stale(self, live: Callable[[int, str], bool]) -> int | None:
        """Drop the front entries' patients for whom ``live(key, patient)`` is False, up to the first live one,
        and return its key (None: nothing live is left). Each stale patient is looked at once."""
        heap = self.heap
        while heap:
            key, group = heap[0]
            i = 0
            for pid in group:
                if live(key, pid):
                    break
                i += 1
            if i < len(group):
                del group[:i]  # those gone stale: not looked at again
                return key
            self.pop()
        return None

    def take(self, n: int, live: Callable[[int, str], bool], skip: set[str]) -> list[str]:
        """Up to ``n`` patients for whom ``live(key, patient)`` holds and who are not in ``skip``, smallest keys
        first, in the order they were pushed; their entries, and the stale or skipped ones passed on the way,
        are taken off."""
        out: list[str] = []
        heap = self.heap
        while heap and len(out) < n:
            key, group = heap[0]
            i = 0
            for pid in group:
                i += 1
                if pid not in skip and live(key, pid):
                    out.append(pid)
                    if len(out) >= n:
                        break
            if i < len(group):
                del group[:i]
            else:
                self.pop()
        return out

    def pop_through(self, limit: int) -> Iterator[tuple[int, str]]:
        """(key, patient) of every entry whose key is at most ``limit``, smallest key first, each entry taken off
        the heap before its patients are given (so they may be pushed again, at a key above ``limit``)."""
        heap = self.heap
        while heap and heap[0][0] <= limit:
            key, group = self.pop()
            for pid in group:
                yield key, pid


class BatchProcessor:
    """Per-patient detection over batches of raw records.

    Parameters
    ----------
    new_state
        Builds the state (detector monitor, alert book) of a patient seen for the first time.
    load_state
        Returns the stored :class:`PatientState` of a patient (:mod:`streams.state_codec`), or None.
    """

    def __init__(
        self,
        new_state: Callable[[str], PatientState],
        load_state: Callable[[str], bytes | None],
        wall_clock_ms: Callable[[], int],
        idle_close_ms: int = 120_000,
        state_version: int = WRITTEN_BY_DEFAULT,
        write_readings: int = 0,
        write_max_ms: int = 120_000,
        write_eager: int = 0,
        write_quiet_ms: int = 2_000,
        live_states: int = 0,
    ) -> None:
        self.new_state = new_state
        self.load_state = load_state
        self.now_ms = wall_clock_ms
        #: a patient silent (wall time) this long gets its open minutes written out
        self.idle_close_ms = idle_close_ms
        #: the stored-state format :meth:`take_dirty` writes (:func:`~streams.state_codec.encode_state`)
        self.state_version = state_version
        self.cache: dict[str, PatientState] = {}
        #: patients whose cached state changed since it was last written (see :meth:`take_dirty`)
        self.dirty: set[str] = set()
        #: write pacing (see :meth:`plan_writes`): a state changed by readings only waits for this many
        #: readings (0: no pacing) ...
        self.write_readings = write_readings
        #: ... or this long (wall ms) ...
        self.write_max_ms = write_max_ms
        #: ... when more than this many states are dirty at a commit and readings came within this long
        #: (wall ms; the worker passes its commit interval): once the input is drained all are written
        self.write_eager = write_eager
        self.write_quiet_ms = write_quiet_ms
        #: wall ms of the last batch of readings
        self.last_batch_ms = 0
        #: wall ms of the last :meth:`plan_writes` (the steady share of the next one is the time since)
        self._planned_ms = 0
        #: the most states kept decoded in :attr:`cache` from one commit to the next (0: no bound); the others are
        #: kept packed in :attr:`packed` (see :meth:`pack`)
        self.live_states = live_states
        #: past :attr:`live_states`: patient -> its state in stored form (:data:`PACKED_VERSION`), decoded again
        #: when a reading, a command or the tick needs it; what it holds is written at its commit like any state
        self.packed: dict[str, bytes] = {}
        #: the most states changed by readings only that one commit writes (:meth:`fit_writes`)
        self.write_most = self.WRITE_MOST
        #: the bookkeeping of each cached patient (:class:`_Patient`): when its last reading came, the round of
        #: the tick its book has seen, its due time and bound, and whether its state holds readings not yet
        #: written (the ``vitals.raw`` partition and offset of the first record folded in since the state was
        #: last written, readings since, wall ms then: :attr:`unwritten`). Patient ids are interned, so every
        #: structure here shares one string object per patient
        self._patients: dict[str, _Patient] = {}
        #: how many patients' states hold readings not yet written
        self.states_unwritten = 0
        #: dirty patients whose change is not only readings (a nurse command, a tick, an enrolment): written
        #: at the next commit (their input's offsets are committed with it)
        self.urgent: set[str] = set()
        #: dirty patients the current commit's state write leaves for a later one (:meth:`plan_writes`)
        self.waiting: set[str] = set()
        #: between :meth:`plan_writes` and :meth:`commit_limits`: patients changed by readings wait too
        self._pacing = False
        #: patients with unwritten readings that no longer wait (enough readings, waited long enough, or
        #: changed without a position): with :attr:`urgent`, what :meth:`plan_writes` writes, found without
        #: walking every changed state
        self._ready: set[str] = set()
        #: (wall ms, patient) and per partition (offset, patient) of every unwritten state as it became one
        #: (entries of states written since are dropped when they reach the front)
        self._by_age = _Queue()
        self._by_offset: dict[int, _Queue] = {}
        #: the tick (:meth:`begin_round`): (wall ms the patient's time-driven work is due, patient), a heap
        #: whose entries are live while they match the patient's :attr:`_Patient.due`
        self._heap = _Queue()
        #: patients whose due time may have moved since it was computed (commands, loads, findings, new signals) ...
        self._moved: set[str] = set()
        #: ... and patients changed by other readings only, whose due time moves as their stream time does:
        #: per patient a bound of its detectors' and book's due times (stream ms) that such readings keep
        self._read: set[str] = set()
        #: rounds of the tick so far and the wall ms of the last one (a round that skipped a patient moves its
        #: book's clock when it is next used: :attr:`_Patient.clock`)
        self.rounds = 0
        self._round_ms = 0
        #: the next round ticks every patient (after a start or a rebalance: every loaded state is scheduled)
        self.full_round = True
        self.stats: Counter[str] = Counter()
        #: valid readings taken, per signal (the worker's ``wearwatch_readings_total{signal}``)
        self.signals: Counter[str] = Counter()
        #: alert events emitted, per (kind, priority, state) (``wearwatch_alert_events_total``)
        self.alert_events: Counter[tuple[str, str, str]] = Counter()
        #: gateway-receipt → worker latencies (ms) since the last :meth:`take_latencies`, capped
        self.latencies: list[int] = []
        #: whether a patient's readings are processed (the live enrolment, :mod:`streams.enrollment`);
        #: readings of a patient it refuses are dead-lettered as ``not_enrolled``. None: every patient
        self.admits: Callable[[str], bool] | None = None
        #: the per-patient data keys (:class:`wearwatch.datakeys.DataKeys`) that open sealed records and seal
        #: what is written of a patient; None: sealed records cannot be read (counted ``erased``)
        self.keys: KeySource | None = None

    def forget(self) -> None:
        """Drop cached states (after a rebalance the table is the truth again)."""
        self.cache.clear()
        self.dirty.clear()
        self._patients.clear()
        self.states_unwritten = 0
        self.urgent.clear()
        self.waiting.clear()
        self._pacing = False
        self._ready.clear()
        self._by_age = _Queue()
        self._by_offset.clear()
        self._heap = _Queue()
        self._moved.clear()
        self._read.clear()
        self.packed.clear()
        self.full_round = True

    @property
    def unwritten(self) -> dict[str, tuple[int, int, int, int]]:
        """The patients whose state holds readings not yet written: patient -> (vitals.raw partition, offset of
        the first record folded in since the state was last written, readings since, wall ms then); a copy."""
        return {pid: (b.partition, b.offset, b.count, b.since) for pid, b in self._patients.items()
                if b.since is not None}

    @property
    def last_received(self) -> dict[str, int]:
        """Patient -> wall ms of its last reading (or of its first tick, if it had none); a copy."""
        return {pid: b.received for pid, b in self._patients.items() if b.received is not None}

    def round_seen(self, patient_id: str) -> int | None:
        """The round of the tick the patient's alert book's clock has seen (None: none)."""
        b = self._patients.get(patient_id)
        return None if b is None else b.clock

    def _book(self, patient_id: str) -> _Patient:
        """The patient's bookkeeping, made if it has none (a state put in :attr:`cache` from outside)."""
        b = self._patients.get(patient_id)
        if b is None:
            b = self._patients[patient_id] = _Patient(None)
        return b

    def synced(self, patient_id: str) -> bool:
        """Whether the patient's ``alerts.state`` record was (re)written since this worker got their partition
        (:meth:`streams.app.Pipeline.sync_alert_states`); False for a patient not cached."""
        b = self._patients.get(patient_id)
        return b is not None and b.synced

    def set_synced(self, patient_ids: Iterable[str], synced: bool = True) -> None:
        """Mark the cached ones of ``patient_ids`` as (not) synced (see :meth:`synced`)."""
        patients = self._patients
        for pid in patient_ids:
            b = patients.get(pid)
            if b is not None:
                b.synced = synced

    def forget_synced(self) -> None:
        """No cached patient is synced any more (see :meth:`synced`)."""
        for b in self._patients.values():
            b.synced = False

    def holds(self, patient_id: str) -> bool:
        """Whether the worker holds the patient in memory: their state decoded (:attr:`cache`) or packed
        (:attr:`packed`); False once erased (:meth:`discard`)."""
        return patient_id in self._patients or patient_id in self.cache

    def held(self) -> list[str]:
        """The patients whose states the worker holds in memory, decoded or packed (a copy)."""
        return [*self.cache, *self.packed]

    def mark_changed(self, patient_id: str) -> None:
        """The patient's state changed other than by readings (command, tick, enrolment): it is written at
        the next commit, whatever the write pacing."""
        self.dirty.add(patient_id)
        self.urgent.add(patient_id)
        self._moved.add(patient_id)

    def discard(self, patient_id: str) -> None:
        """Forget the patient: their state (decoded or packed), their bookkeeping, and that their state changed
        (they were erased: nothing of them is to be written)."""
        self.cache.pop(patient_id, None)
        self.packed.pop(patient_id, None)
        self.dirty.discard(patient_id)
        self.urgent.discard(patient_id)
        self.waiting.discard(patient_id)
        b = self._patients.pop(patient_id, None)
        if b is not None and b.since is not None:
            self.states_unwritten -= 1
        self._ready.discard(patient_id)
        self._moved.discard(patient_id)
        self._read.discard(patient_id)

    def state_for(self, patient_id: str) -> PatientState:
        """The patient's state to change: cached from now on (see :meth:`view` for reading only)."""
        st = self.cache.get(patient_id)
        if st is None:
            patient_id = sys.intern(patient_id)  # one string object for the patient in every structure
            blob = self.packed.pop(patient_id, None) if self.packed else None
            if blob is not None:  # packed at a commit (live_states): its bookkeeping stayed
                st = self.cache[patient_id] = decode_state(blob)
                self.stats["states_unpacked"] += 1
            else:
                st = self.cache[patient_id] = self.view(patient_id)
            self._moved.add(patient_id)  # scheduled at the next round of the tick
            if patient_id not in self._patients:
                self._patients[patient_id] = _Patient(self.rounds)  # the rounds so far did not tick it
        return st

    def stream_now(self, patient_id: str, now: int) -> int:
        """The patient's stream-equivalent time at wall time ``now`` (the newest reading plus the wall time
        since it was received), for a change to its detectors or alert book: the tick's rounds that
        skipped the patient are applied to its book's clock first."""
        st = self.state_for(patient_id)
        b = self._book(patient_id)
        if b.clock != self.rounds:
            self._catch_up(b, st)
        received = b.received
        return st.newest_ms + (now - (now if received is None else received))

    def view(self, patient_id: str) -> PatientState:
        """A patient's current state for reading only (console, FHIR views): never cached.

        Read-only callers may run while a rebalance is recovering the table; caching what
        they load there would let the agent continue from a half-recovered state.
        """
        st = self.cache.get(patient_id)
        if st is not None:
            return st
        blob = self.packed.get(patient_id) or self.load_state(patient_id)
        return decode_state(blob) if blob else self.new_state(patient_id)

    def process(self, records: Iterable[Record], positions: Iterable[Position] | None = None) -> Outputs:
        """Run ``records`` (key, value) through their patients' states.

        ``positions`` (the worker passes them) are the records' (partition, offset) in ``vitals.raw``:
        a record a patient's state already holds (read again after a crash or a rebalance) is a
        replay, its readings are counted as ``replayed`` and change nothing (see
        :meth:`PatientState.replayed`). Without them every record is new input.
        """
        out = Outputs()
        now = self.now_ms()
        self.last_batch_ms = now
        touched: set[str] = set()
        folded: set[str] = set()
        where = iter(positions) if positions is not None else None
        # while a paced state write runs (its slices let batches in), patients changed by readings wait for
        # the next commit, as those it set aside do (their unwritten records hold the commit back)
        changed = self.waiting if self._pacing and where is not None else self.dirty
        for _key, value in records:
            pos = next(where) if where is not None else None
            if value[:4] == SEALED_PREFIX:  # per-patient entries sealed under their data keys (wearwatch.datakeys)
                self._sealed(value, out, now, touched, pos, folded)
            else:  # clear text (written before sealing): one reading or a batch (ingest.contract.ReadingBatch)
                for r, raw in decode_record(value):
                    if isinstance(r, InvalidReading):
                        self._dead(out, r.reason, r.detail, raw, now)
                    else:
                        self._reading(r, raw, out, now, touched, pos, folded)
            if folded:
                # after the record's last reading: another reading of it is not a replay of the first
                assert pos is not None
                cache, (partition, offset) = self.cache, pos
                for pid in folded:
                    cache[pid].fold_position(partition, offset)
                changed |= folded
                folded = set()
        changed |= touched
        if where is None:
            self._ready |= touched  # no position to hold the commit back at: written at the next commit
        self._read |= touched
        return out

    def _sealed(self, value: bytes, out: Outputs, now: int, touched: set[str], pos: Position | None,
                folded: set[str]) -> None:
        """The entries of a sealed record: each is opened under its patient's data key and decoded; an entry
        whose key is gone (the patient was erased) is counted as ``erased`` and dropped. What is dead-lettered
        of an entry is sealed again under the same key, so ``vitals.dlq`` never holds it readable."""
        keys = self.keys
        try:
            opened = open_entries(value, "vitals.raw", keys.cipher_of if keys is not None else _no_key)
        except EnvelopeError as exc:  # altered or truncated: unreadable, so nothing of a patient in the letter
            self._dead(out, "bad_envelope", str(exc), value, now)
            return
        plains = [plain for _, plain in opened if plain is not None]
        if len(plains) < len(opened):
            self.stats["erased"] += len(opened) - len(plains)
        # the entries' readings as one batch, validated in one go (one reading per entry is the common case, and
        # pydantic-core takes a batch at ~1.5 µs a reading instead of ~2.6 alone: ingest.contract.decode_record)
        n = len(BATCH_PREFIX)
        try:
            readings = ReadingBatch.model_validate_json(
                BATCH_PREFIX + b",".join(p[n:-2] if p[:n] == BATCH_PREFIX else p for p in plains) + b"]}").readings
        except ValueError:  # some reading is bad: entry by entry (its dead letter sealed under the entry's key)
            for key_id, plain in opened:
                if plain is not None:
                    mark = len(out.dead)
                    for r, raw in decode_record(plain):
                        if isinstance(r, InvalidReading):
                            self._dead(out, r.reason, r.detail, raw, now)
                        else:
                            self._reading(r, raw, out, now, touched, pos, folded)
                    for i in reversed(range(mark, len(out.dead))):  # backwards: an erased key's letter is deleted
                        self._seal_dead(out, i, key_id)
            return
        for r in readings:
            mark = len(out.dead)
            self._reading(r, b"", out, now, touched, pos, folded)
            if len(out.dead) > mark:  # too late, or not enrolled: sealed under the patient's key
                key_id = self._key_of(r.patient_id, opened)
                for i in reversed(range(mark, len(out.dead))):
                    self._seal_dead(out, i, key_id)

    def _key_of(self, patient_id: str, opened: list[tuple[bytes, bytes | None]]) -> bytes:
        """The key id of ``patient_id``'s entry among ``opened`` (for a dead letter of one of its readings)."""
        needle = b'"patient_id":' + orjson.dumps(patient_id)
        for key_id, plain in opened:
            if plain is not None and needle in plain:
                return key_id
        return b""  # cannot happen: the reading came from one of them (no key: the letter is dropped)

    def _seal_dead(self, out: Outputs, i: int, key_id: bytes) -> None:
        """Seal dead letter ``i`` of ``out`` under the data key ``key_id`` its content came sealed with."""
        cipher = self.keys.cipher_of(key_id) if self.keys is not None else None
        if cipher is None:  # erased in the meantime: nothing of the patient may be written readable
            del out.dead[i]
            return
        out.dead[i] = (key_id, sealed_record([seal(cipher, key_id, out.dead[i][1], "vitals.dlq")]))

    def _reading(self, r: Reading, raw: bytes, out: Outputs, now: int, touched: set[str],
                 pos: Position | None = None, folded: set[str] | None = None) -> None:
        """One valid reading (``raw``: its record when it came alone, else empty; for a dead letter)
        from the record at ``pos``; ``folded`` collects the patients the record is folded into."""
        pid = sys.intern(r.patient_id)  # the string the patient's structures hold (not one per reading)
        admits = self.admits
        if admits is not None and not admits(pid):
            self._dead(out, NOT_ENROLLED, "the patient is not enrolled (discharged, or never enrolled)",
                       raw or r.to_json(), now)
            return
        st = self.state_for(pid)
        b = self._patients.get(pid)
        if b is None:
            b = self._book(pid)
        if pos is not None and folded is not None:
            if st.replayed(pos[0], pos[1]):
                self.stats["replayed"] += 1
                return
            folded.add(pid)
            if b.since is None:  # the first record the stored state does not hold
                b.partition, b.offset, b.count, b.since = pos[0], pos[1], 0, now
                self.states_unwritten += 1
                self._by_age.push(now, pid)
                by_offset = self._by_offset.get(pos[0])
                if by_offset is None:
                    by_offset = self._by_offset[pos[0]] = _Queue()
                by_offset.push(pos[1], pid)
        if not st.knows(r.signal):
            self._moved.add(pid)  # a signal's first reading: its device checks start (a due time the bound lacks)
        verdict = st.admit(r.signal, r.ts_ms)
        if verdict == "duplicate":
            self.stats["duplicates"] += 1
            return
        if verdict == "late":
            self.stats["too_late"] += 1
            self._dead(out, "too_late", f"more than {LATENESS_S} s behind the newest {r.signal} reading",
                       raw or r.to_json(), now)
            return
        self.stats["readings"] += 1
        self.signals[r.signal] += 1
        if len(self.latencies) < 20_000:
            self.latencies.append(now - r.received_ms)
        touched.add(pid)
        if b.since is not None:
            b.count += 1
            if b.count == self.write_readings:
                self._ready.add(pid)
        if b.clock != self.rounds:
            self._catch_up(b, st)
        b.received = now
        if not st.aggregate(r.signal, r.ts_ms, r.value):
            self.stats["late_for_aggregate"] += 1
        findings = st.monitor.update(r.signal, r.ts_ms, r.value)
        if findings:
            self._moved.add(pid)
            for finding in findings:
                self._events(out, st.book.on_finding(finding), now)
        for agg in st.close_minutes():
            out.minutes.append((pid.encode(), minute_doc(pid, agg)))

    def pack_minutes(self, docs: list[dict[str, Any]]) -> bytes:
        """One ``vitals.1m`` record of minute aggregates (:func:`minutes_record`): with data keys, each patient's
        aggregates sealed under their key, one entry per patient (nothing in the record names them); the
        aggregates of a patient whose keys were erased are dropped (counted ``erased``)."""
        keys = self.keys
        if keys is None:
            return minutes_record(docs)
        per_patient: dict[str, list[dict[str, Any]]] = {}
        for doc in docs:
            per_patient.setdefault(doc["patient_id"], []).append(doc)
        keys.ensure_keys(per_patient)  # the keys of patients without one, in one write (not one per patient)
        entries = []
        for pid, mine in per_patient.items():
            try:
                key_id, cipher = keys.cipher_for(pid)
            except KeyError:
                self.stats["erased"] += len(mine)
                continue
            entries.append(seal(cipher, key_id, minutes_record(mine), "vitals.1m"))
        return sealed_record(entries) if entries else minutes_record([])

    def open_minutes(self, values: Iterable[bytes]) -> list[bytes]:
        """``vitals.1m`` record values as clear minute records (:func:`minutes_record`; older clear ones as they
        are): a sealed record's entries opened, those whose key is gone dropped (counted ``erased``)."""
        out: list[bytes] = []
        keys = self.keys
        for value in values:
            if value[:4] != SEALED_PREFIX:
                out.append(value)
                continue
            try:
                opened = open_sealed(value, "vitals.1m", keys.cipher_of if keys is not None else _no_key)
            except EnvelopeError:
                self.stats["minutes_bad_envelope"] += 1
                continue
            for entry in opened:
                if entry.plaintext is None:
                    self.stats["erased"] += 1
                else:
                    out.append(entry.plaintext)
        return out

    def plan_writes(self) -> int:
        """Before a commit's state write: set aside the changed states that can wait (returns how many).

        Every changed state is written when at most :attr:`write_eager` are dirty (a small fleet:
        each write covers many readings of its patient), and when no readings came for
        :attr:`write_quiet_ms` (the input is drained: the offsets catch up with its end). Beyond
        that a state written once per commit interval would cover a reading or two of its patient
        (100,000 patients at 20,000 readings/s: 0.4 per patient and commit), and the state writes,
        ~1-3 KB and ~30-60 µs each,
        would be the worker's main cost. So a state changed by readings only waits until it holds
        :attr:`write_readings` unwritten readings or has waited :attr:`write_max_ms`; the
        :meth:`commit_limits` keep the committed offsets at or below the first record each waiting
        state lacks, so after a crash those records are read again (the stored state tells the ones
        it holds by their position) and give the same alerts as the first time. Anything else
        (commands, ticks, enrolment changes: :attr:`urgent`) is written at the next commit.

        **Steady writes.** The states of a fleet that sends every few seconds get their first unwritten
        reading within seconds of each other after a start or a fail-over, so by age alone they all fall due
        together every :attr:`write_max_ms` (100,000 states at once, every 2 minutes), and a worker's cost and
        its committed offsets swing with that. So each commit writes at least its steady share of the unwritten
        states, ``states_unwritten × (time since the last commit) / write_max_ms``, counting the states due
        anyway, topped up with the oldest unwritten ones (:meth:`_steady`): every state is then written about
        once per :attr:`write_max_ms` at an even rate, and a burst spreads out within one round of ages.

        The bookkeeping follows the changes, so a commit costs in proportion to the states it writes and
        the ones that became due, not to every changed state: a state becomes ready when its readings
        reach the count (counted as they come) or its first unwritten one reaches the age (the unwritten
        states kept in order of that reading, :attr:`_by_age`).
        """
        self._merge_waiting()
        now = self.now_ms()
        since, self._planned_ms = self._planned_ms, now
        dirty = self.dirty
        if not self.write_readings or len(dirty) <= self.write_eager:
            return 0
        patients, urgent = self._patients, self.urgent
        if now - self.last_batch_ms < self.write_quiet_ms:
            self._age(now - self.write_max_ms)
            due = (self._ready | urgent) & dirty
            if since and now > since:
                self._steady(self.states_unwritten * (now - since) // self.write_max_ms - len(due), due)
            waiting = dirty
            waiting -= due  # costs the states due, not the ones waiting
        else:
            due, waiting = dirty, set()
        if len(due) > self.write_most:
            # a bounded write per commit: tens of thousands of states at once (all patients' first readings
            # waited WEARWATCH_WORKER_STATE_WRITE_MAX_S, or the input ended) held the worker for seconds, past
            # its Kafka session (seen at 100,000 patients); the rest waits for the next commits
            later = list(itertools.islice((pid for pid in due if pid not in urgent and (b := patients.get(pid))
                                           is not None and b.since is not None),
                                          len(due) - self.write_most))
            due.difference_update(later)
            waiting.update(later)
        self.dirty = due
        if not waiting:
            return 0
        self.waiting = waiting
        self._pacing = True
        return len(waiting)

    def _merge_waiting(self) -> None:
        """The states set aside are changed states again (the larger set is kept: costs the smaller)."""
        waiting = self.waiting
        if not waiting:
            return
        if len(waiting) > len(self.dirty):
            waiting |= self.dirty
            self.dirty = waiting
        else:
            self.dirty |= waiting
        self.waiting = set()

    def _steady(self, n: int, due: set[str]) -> None:
        """Make the ``n`` oldest unwritten states not in ``due`` ready (and due): the steady share of a commit
        (:meth:`plan_writes`)."""
        if n <= 0:
            return
        # a state in ``due`` is in _ready or urgent until it is written: its entry is not needed any more
        oldest = self._by_age.take(n, self._unwritten_since, due)
        self._ready.update(oldest)
        due.update(oldest)

    def _age(self, oldest: int) -> None:
        """Unwritten states whose first unwritten reading came at or before wall ms ``oldest`` are ready."""
        patients, ready = self._patients, self._ready
        for ms, pid in self._by_age.pop_through(oldest):
            b = patients.get(pid)
            if b is not None and b.since == ms:
                ready.add(pid)

    def _prune_by_age(self) -> None:
        """Drop the front entries of :attr:`_by_age` whose states were written since they were pushed.

        :meth:`_age` takes entries off only when pacing holds states back; a commit that writes every
        changed state (a ward below :attr:`write_eager`, drained input, pacing off) leaves them stale, and
        without this they piled up for as long as the worker ran: one entry per patient and commit, with a
        list per batch. Each stale patient is looked at once, so this costs what was pushed."""
        self._by_age.drop_stale(self._unwritten_since)

    def _unwritten_since(self, ms: int, pid: str) -> bool:
        """Whether the patient's entry of :attr:`_by_age` pushed at wall ms ``ms`` is live: its state still holds
        the unwritten readings that began then."""
        b = self._patients.get(pid)
        return b is not None and b.since == ms

    #: the most states changed by readings only that one commit writes (with pacing) ...
    WRITE_MOST = 16_384
    #: ... and the least :meth:`fit_writes` lowers it to: 2,048 states a second at a 2-s commit interval, the
    #: writes of 245,000 patients' states every 120 s, so the states waiting always drain
    WRITE_LEAST = 4_096
    #: a write of fewer states than this says little about the cost of one (a commit's fixed costs dominate)
    WRITE_MEASURED = 1_024

    def fit_writes(self, written: int, seconds: float, budget_s: float) -> int:
        """After a commit's state write of ``written`` states that took ``seconds`` (wall time, the batches
        between its slices included): the most states the next commits write (:attr:`write_most`, returned),
        so that a commit's write takes about ``budget_s``.

        Readings reach the states of a fleet that sends every few seconds at nearly the same time after a start
        or a fail-over, so their write pacing's ages run out together and stay together: at 100,000 patients
        sending 22,000 readings/s every state became due within a few seconds every ~2 minutes, and the
        commits that wrote them took 2.2-3.6 s each, past the 2-s commit interval (Faust then warns that its
        commit timer overlaps). Capped by time, such a burst is spread over more commits (the states left
        over wait, their records uncommitted) and no commit outlasts its interval. Moves halfway to the new
        figure each time, between :attr:`WRITE_LEAST` and :attr:`WRITE_MOST`; small writes leave it as it is.

        >>> proc = BatchProcessor(new_state=print, load_state=lambda pid: None, wall_clock_ms=lambda: 0)
        >>> proc.fit_writes(written=16_384, seconds=3.2, budget_s=1.0)  # 5,120 would fit: halfway there
        10752
        >>> proc.fit_writes(written=200, seconds=1.0, budget_s=1.0)  # too few to tell
        10752
        >>> proc.fit_writes(written=2_000, seconds=0.1, budget_s=1.0)  # 20,000 would fit: at most 16,384
        13568
        """
        if written >= self.WRITE_MEASURED and seconds > 0:
            fits = int(budget_s * written / seconds)
            target = min(self.WRITE_MOST, max(self.WRITE_LEAST, fits))
            self.write_most = (self.write_most + target + 1) // 2
        return self.write_most

    def commit_limits(self) -> dict[int, int]:
        """After a commit's state write: per ``vitals.raw`` partition, the offset of the first record
        some unwritten state lacks (the commit must not pass it); the states set aside by
        :meth:`plan_writes` are dirty again for the next commit.

        Each partition's unwritten states are kept in order of their first record (:attr:`_by_offset`):
        the front entries of states written since are dropped, so this costs what was written."""
        self._merge_waiting()
        self._pacing = False
        limits: dict[int, int] = {}
        patients = self._patients
        self._prune_by_age()
        for partition, by_offset in self._by_offset.items():

            def lacks(offset: int, pid: str, partition: int = partition) -> bool:
                b = patients.get(pid)
                return b is not None and b.since is not None and b.offset == offset and b.partition == partition

            first = by_offset.drop_stale(lacks)
            if first is not None:
                limits[partition] = first
        return limits

    def take_dirty(self, limit: int | None = None) -> dict[str, bytes]:
        """The stored forms (:func:`~streams.state_codec.encode_state`) of the states of patients
        changed since they were last taken: all of them, or at most ``limit`` (the rest stay dirty;
        those :meth:`plan_writes` set aside are not taken).

        The worker writes them to its table just before it commits offsets, so each
        patient's state is encoded once per commit, not once per batch.
        """
        if limit is None or limit >= len(self.dirty):
            dirty, self.dirty = self.dirty, set()
        else:
            dirty = set(itertools.islice(self.dirty, limit))
            self.dirty -= dirty
        self.urgent -= dirty
        if self.waiting:
            self.waiting -= dirty
        if self._ready:
            self._ready -= dirty
        cache, patients, rounds, packed = self.cache, self._patients, self.rounds, self.packed
        version = self.state_version
        out: dict[str, bytes] = {}
        for pid in dirty:
            b = patients.get(pid)
            if b is not None and b.since is not None:
                b.since = None  # written: it holds no unwritten reading
                self.states_unwritten -= 1
            st = cache.get(pid)
            copy = st is None  # packed: written from a decoded copy
            if st is None:
                blob = packed.get(pid) if packed else None
                if blob is None:
                    continue
                if b is not None and b.clock == rounds and version == PACKED_VERSION:
                    out[pid] = blob  # packed as it is to be written
                    continue
                st = decode_state(blob)
            if b is None:
                b = self._book(pid)
            if b.clock != rounds:  # stored as ticking every patient would have left it
                if copy:
                    # only the written copy: the packed one keeps its clock and is caught up when it is next
                    # decoded (b.clock stays behind), which gives the same book, so it is not packed again
                    self._advance_clock(b, st)
                else:
                    self._catch_up(b, st)
            out[pid] = encode_state(st, version)
        return out

    def pack(self, limit: int) -> int:
        """Past :attr:`live_states` decoded states: pack up to ``limit`` of them (the rest of the excess waits for
        the next call); returns how many are still over the bound.

        A packed state is its stored form (:data:`PACKED_VERSION`, ~0.5 KB against ~4 KB decoded), kept in
        :attr:`packed` with the patient's bookkeeping; a reading, a command or the tick decodes it again
        (:meth:`state_for`). Its changes since it was last written are written at their commit like any state's
        (:meth:`take_dirty`) and hold the commits back the same way, so what is written and committed, and every
        event and minute, are those of keeping every state decoded (``tests/test_live_states.py``): packing
        costs CPU (an encode now, a decode at the next use), not what the worker does. Patients neither heard
        from nor changed since the last round of the tick go first, in the order they were decoded; what the
        next round would work out for the others from their decoded state (their due time) is worked out now.
        """
        over = len(self.cache) - self.live_states
        if not self.live_states or over <= 0 or limit <= 0:
            return max(0, over) if self.live_states else 0
        cache, read, moved, patients, packed = self.cache, self._read, self._moved, self._patients, self.packed
        n = min(over, limit)
        chosen = list(itertools.islice((pid for pid in cache if pid not in read and pid not in moved), n))
        if len(chosen) < n:
            quiet = set(chosen)
            chosen += itertools.islice((pid for pid in cache if pid not in quiet), n - len(chosen))
        now = self.now_ms()
        for pid in chosen:
            st = cache.pop(pid)
            b = patients.get(pid)
            if b is None:
                b = self._book(pid)
            if pid in moved:
                moved.discard(pid)
                read.discard(pid)
                self._schedule_moved(pid, b, st, now)
            elif pid in read:
                read.discard(pid)
                self._schedule_read(pid, b, st)
            packed[pid] = encode_state(st, PACKED_VERSION)
        self.stats["states_packed"] += len(chosen)
        return over - len(chosen)

    def take_latencies(self) -> dict[str, float]:
        """p50/p95/max of gateway → worker latency (ms) since the last call; empty when idle."""
        lat, self.latencies = sorted(self.latencies), []
        if not lat:
            return {}
        return {"latency_p50_ms": float(lat[len(lat) // 2]), "latency_p95_ms": float(lat[int(len(lat) * 0.95)]),
                "latency_max_ms": float(lat[-1])}

    def begin_round(self, patient_ids: Iterable[str] | None = None) -> list[str]:
        """Start a round of the tick (every ``WEARWATCH_TICK_INTERVAL_S``): the patients to pass to :meth:`tick`.

        ``patient_ids`` are every patient whose state the worker holds (the table's and the cached ones):
        a full round, which the first round after :meth:`forget` (a start, a rebalance) must be
        (:attr:`full_round`); it schedules every one. Otherwise the patients whose time-driven work is
        due: each patient's next due time comes from its detectors (:meth:`PatientMonitor.next_due_ms`),
        its alert book (:meth:`AlertBook.next_due_ms`) and its open minutes, computed after each tick of
        it and, for the patients readings or commands changed since the last round, at the start of a
        round. A due time earlier than necessary only costs a tick that changes nothing; the patients
        left out are those a tick would not have changed (their alert book's clock excepted, moved when
        the book is next used: :meth:`stream_now`). So a round costs in proportion to the patients due
        and those changed, not to all patients, and gives the events, minutes and states of ticking
        every patient (the order of the patients within a round aside).
        """
        now = self.now_ms()
        self.rounds += 1
        self._round_ms = now
        if patient_ids is not None:
            self.full_round = False
            self._heap, self._moved = _Queue(), set()  # each is scheduled again as it is ticked
            for book in self._patients.values():
                book.due = None
            return [sys.intern(pid) for pid in patient_ids]
        cache, patients = self.cache, self._patients
        moved = self._moved
        for pid in moved:
            st = cache.get(pid)
            if st is not None:
                self._schedule_moved(pid, self._book(pid), st, now)
        # changed by readings only: the bound at their new stream time, and their open minutes (cheap: neither
        # detectors nor book are looked at; an early entry is looked at in full when it comes)
        for pid in self._read:
            if pid in moved:
                continue
            st = cache.get(pid)
            b = patients.get(pid)
            if st is not None and b is not None:
                self._schedule_read(pid, b, st)
        self._moved, self._read = set(), set()
        due: list[str] = []
        heap = self._heap
        for at, pid in heap.pop_through(now):
            b = patients.get(pid)
            if b is None or b.due != at:
                continue
            b.due = None
            st = cache.get(pid)
            if st is None:  # packed since this was computed (live_states): ticked, which decodes it
                due.append(pid)
                continue
            later = self._due_at(b, st, now)
            if later is not None and later > now:  # readings since moved it on: not due yet
                b.due = later
                heap.push(later, pid)
            elif later is not None:
                due.append(pid)
        return due

    def _schedule_moved(self, pid: str, b: _Patient, st: PatientState, now: int) -> None:
        """Schedule a patient changed other than by readings (a command, a load, a finding, a new signal), unless
        its entry is due already (the round looks at it in full when it pops)."""
        if b.due is not None and b.due <= now:
            return
        self._schedule(pid, b, st, now)

    def _schedule_read(self, pid: str, b: _Patient, st: PatientState) -> None:
        """Put a patient changed by readings only on the tick's heap: the bound of its due times at its new stream
        time, and its open minutes' idle time (cheap: neither detectors nor book are looked at; an early entry is
        looked at in full when it comes)."""
        received = b.received
        if received is None:
            return
        at = received + self.idle_close_ms
        bound = b.bound
        if bound is not None and bound + received - st.newest_ms < at:
            at = bound + received - st.newest_ms
        current = b.due
        if current is None or at < current:
            b.due = at
            self._heap.push(at, pid)

    def _schedule(self, pid: str, b: _Patient, st: PatientState, now: int) -> None:
        """Put the patient on the tick's heap at the wall time its next time-driven work is due (kept if an
        earlier entry exists: that one is ticked, or scheduled again if readings moved it on, when it comes)."""
        at = self._due_at(b, st, now)
        if at is None:
            return  # nothing until a reading or a command
        current = b.due
        if current is None or at < current:
            b.due = at
            self._heap.push(at, pid)

    def _due_at(self, b: _Patient, st: PatientState, now: int) -> int | None:
        """The wall time the patient's next time-driven work is due, or None (nothing until it changes)."""
        received = b.received
        if received is None:
            return now  # the next round gives it its receipt time, as ticking everyone does
        skew = received - st.newest_ms  # wall ms = stream ms + skew, until its next reading
        try:
            at = st.monitor.next_due_ms()
            due = st.book.next_due_ms()
            bound = st.monitor.next_due_ms(True)
        except AttributeError:  # a part that cannot tell: every round
            b.bound = DUE_NOW
            return now
        if due is not None and (at is None or due < at):
            at = due
        if due is not None and (bound is None or due < bound):
            bound = due
        b.bound = bound
        if at is not None:
            at += skew
        idle = received + self.idle_close_ms
        if (at is None or idle < at) and st.has_unwritten():
            at = idle
        return at

    def _catch_up(self, b: _Patient, st: PatientState) -> None:
        """Apply to the patient's alert book the clock of the last round of the tick, which skipped it (a
        tick that changes nothing else still moves the book's clock: :meth:`AlertBook.tick`)."""
        b.clock = self.rounds
        self._advance_clock(b, st)

    def _advance_clock(self, b: _Patient, st: PatientState) -> None:
        """The clock of the last round of the tick applied to ``st``'s alert book (only the clock: nothing was
        due). Applying it again, or a later round's, is what applying only the last one does."""
        received = b.received
        if received is None or st.book is None:
            return
        st.book.advance_clock(st.newest_ms + (self._round_ms - received))

    def tick(self, patient_ids: Iterable[str]) -> Outputs:
        """Time-driven work for the given patients: stale-device checks, alert reminders, idle minute closing.

        The detectors get *stream-equivalent* time (the patient's newest reading
        plus the wall time since it was received) so an accelerated simulation or
        a device with a skewed clock is judged by how long it has really been silent.
        Each patient is scheduled for its next due time (see :meth:`begin_round`).
        """
        out = Outputs()
        now = self.now_ms()
        rounds, patients = self.rounds, self._patients
        for pid in patient_ids:
            st = self.state_for(pid)
            b = patients.get(pid)
            if b is None:
                b = self._book(pid)
            received = b.received
            if received is None:
                received = b.received = now
            silent_ms = now - received
            changed = False
            stream_now = st.newest_ms + silent_ms
            for finding in st.monitor.tick(stream_now):
                self._events(out, st.book.on_finding(finding, stream_now), now)
                changed = True
            events = st.book.tick(stream_now)
            if events:
                self._events(out, events, now)
                changed = True
            if silent_ms >= self.idle_close_ms and st.has_unwritten():
                for agg in st.close_minutes(force=True):
                    out.minutes.append((pid.encode(), minute_doc(pid, agg)))
                changed = True
            if changed:
                self.mark_changed(pid)
            b.clock = rounds
            self._schedule(pid, b, st, now)
        return out

    def commands(self, records: Iterable[Record]) -> Outputs:
        """Apply nurse commands (acknowledgements, snoozes, notes) from ``alerts.commands``."""
        out = Outputs()
        now = self.now_ms()
        for _key, sealed_or_clear in records:
            value, key_id = sealed_or_clear, None
            if sealed_or_clear[:4] == SEALED_PREFIX:  # sealed under the patient's data key (the console, gateway)
                keys = self.keys
                try:
                    [entry] = open_sealed(sealed_or_clear, "alerts.commands",
                                          keys.cipher_of if keys is not None else _no_key)
                except (EnvelopeError, ValueError) as exc:  # altered, or not one entry: unreadable
                    self._dead(out, "bad_envelope", str(exc), sealed_or_clear, now)
                    continue
                if entry.plaintext is None:  # the patient was erased
                    self.stats["erased"] += 1
                    continue
                value, key_id = entry.plaintext, entry.key_id
            try:
                cmd = parse_command_record(value)
            except InvalidCommand as exc:
                self._dead(out, exc.reason, exc.detail, value, now)
                if key_id is not None:
                    self._seal_dead(out, len(out.dead) - 1, key_id)
                continue
            pid = sys.intern(cmd.patient_id)
            st = self.state_for(pid)
            stream_now = self.stream_now(pid, now)
            if isinstance(cmd, Ack):
                events = st.book.ack(cmd.alert_id, cmd.by, stream_now)
                self.stats["acks"] += 1
            elif isinstance(cmd, Note):
                events = st.book.note(cmd.alert_id, cmd.by, cmd.text, stream_now)
                self.stats["notes"] += 1
            else:
                events = st.book.snooze(cmd.kind, cmd.until_ms, cmd.by, stream_now)
                self.stats["snoozes"] += 1
            self._events(out, events, now)
            self.mark_changed(pid)
        return out

    def _events(self, out: Outputs, events: list[AlertEvent], now: int) -> None:
        for ev in events:
            # the book stamps stream time; on the wire emitted_ms is the worker's wall clock
            # (end-to-end latency = emitted_ms - the reading's received_ms)
            out.events.append(ev.model_copy(update={"emitted_ms": now}))
            self.stats[f"alert:{ev.state}"] += 1
            self.alert_events[ev.kind, ev.priority, ev.state] += 1

    def _dead(self, out: Outputs, reason: str, detail: str, value: bytes, now: int) -> None:
        text, encoding = payload_text(value)
        dl = DeadLetter(reason=reason, detail=detail, source="worker", payload=text,
                        payload_encoding=encoding, received_ms=now)
        out.dead.append((b"worker", dl.to_json()))
        self.stats[f"dlq:{reason}"] += 1
