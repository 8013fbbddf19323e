"""The worker's per-batch work, free of Faust so it can be tested and profiled alone.

:class:`BatchProcessor` takes raw ``vitals.raw`` records (key, value bytes),
runs them through each patient's state and detectors, and returns what the
Faust agent must emit: alert events, 1-minute aggregates and dead letters. It
keeps the patients' states and marks the changed ones dirty; the worker writes
those to its table before each offset commit (:meth:`BatchProcessor.take_dirty`).
The agent in :mod:`streams.app` only moves bytes between Kafka and this class.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from alerts.models import AlertEvent
from ingest.contract import DeadLetter, Reading, decode_record, payload_text
from streams.state import LATENESS_S, MinuteAggregate, PatientState
from streams.state_codec import STATE_VERSION, decode_state, encode_state
from wearwatch.contract.commands import Ack, InvalidCommand, Note, parse_command_record
from wearwatch.contract.enrollment import NOT_ENROLLED
from wearwatch.errors import InvalidReading

__all__ = ["MINUTES_PER_RECORD", "BatchProcessor", "Outputs", "Position", "minute_doc", "minutes_record"]

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
        state_version: int = STATE_VERSION,
        write_readings: int = 0,
        write_max_ms: int = 120_000,
        write_eager: int = 0,
        write_quiet_ms: int = 2_000,
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
        #: patients whose state holds readings not yet written: patient -> [vitals.raw partition, offset of
        #: the first record folded in since the state was last written, readings since, wall ms then]
        self.unwritten: dict[str, list[int]] = {}
        #: dirty patients whose change is not only readings (a nurse command, a tick, an enrolment): written
        #: at the next commit (their input's offsets are committed with it)
        self.urgent: set[str] = set()
        #: dirty patients the current commit's state write leaves for a later one (:meth:`plan_writes`)
        self.waiting: set[str] = set()
        #: between :meth:`plan_writes` and :meth:`commit_limits`: patients changed by readings wait too
        self._pacing = False
        self.last_received: dict[str, int] = {}
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

    def forget(self) -> None:
        """Drop cached states (after a rebalance the table is the truth again)."""
        self.cache.clear()
        self.dirty.clear()
        self.unwritten.clear()
        self.urgent.clear()
        self.waiting.clear()
        self._pacing = False
        self.last_received.clear()

    def mark_changed(self, patient_id: str) -> None:
        """The patient's state changed other than by readings (command, tick, enrolment): it is written at
        the next commit, whatever the write pacing."""
        self.dirty.add(patient_id)
        self.urgent.add(patient_id)

    def discard(self, patient_id: str) -> None:
        """Forget that the patient's state changed (it was erased: nothing of it is to be written)."""
        self.dirty.discard(patient_id)
        self.urgent.discard(patient_id)
        self.waiting.discard(patient_id)
        self.unwritten.pop(patient_id, None)

    def state_for(self, patient_id: str) -> PatientState:
        """The patient's state to change: cached from now on (see :meth:`view` for reading only)."""
        st = self.cache.get(patient_id)
        if st is None:
            st = self.cache[patient_id] = self.view(patient_id)
        return st

    def view(self, patient_id: str) -> PatientState:
        """A patient's current state for reading only (console, FHIR views): never cached.

        Read-only callers may run while a rebalance is recovering the table; caching what
        they load there would let the agent continue from a half-recovered state.
        """
        st = self.cache.get(patient_id)
        if st is not None:
            return st
        blob = self.load_state(patient_id)
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
            # a record holds one reading or a batch of them (ingest.contract.ReadingBatch)
            for r, raw in decode_record(value):
                if isinstance(r, InvalidReading):
                    self._dead(out, r.reason, r.detail, raw, now)
                else:
                    self._reading(r, raw, out, now, touched, pos, folded)
            if folded:
                # after the record's last reading: another reading of it is not a replay of the first
                # (inlined PatientState.fold_position: this runs for every record)
                assert pos is not None
                cache, (partition, offset) = self.cache, pos
                for pid in folded:
                    held = cache[pid].positions
                    if offset > held.get(partition, -1):
                        held[partition] = offset
                changed |= folded
                folded = set()
        changed |= touched
        return out

    def _reading(self, r: Reading, raw: bytes, out: Outputs, now: int, touched: set[str],
                 pos: Position | None = None, folded: set[str] | None = None) -> None:
        """One valid reading (``raw``: its record when it came alone, else empty; for a dead letter)
        from the record at ``pos``; ``folded`` collects the patients the record is folded into."""
        pid = r.patient_id
        admits = self.admits
        if admits is not None and not admits(pid):
            self._dead(out, NOT_ENROLLED, "the patient is not enrolled (discharged, or never enrolled)",
                       raw or r.to_json(), now)
            return
        st = self.state_for(pid)
        if pos is not None and folded is not None:
            if pos[1] <= st.positions.get(pos[0], -1):  # PatientState.replayed, inlined: once per reading
                self.stats["replayed"] += 1
                return
            folded.add(pid)
            if pid not in self.unwritten:  # the first record the stored state does not hold
                self.unwritten[pid] = [pos[0], pos[1], 0, now]
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
        held = self.unwritten.get(pid)
        if held is not None:
            held[2] += 1
        self.last_received[pid] = now
        if not st.aggregate(r.signal, r.ts_ms, r.value):
            self.stats["late_for_aggregate"] += 1
        for finding in st.monitor.update(r.signal, r.ts_ms, r.value):
            self._events(out, st.book.on_finding(finding), now)
        for agg in st.close_minutes():
            out.minutes.append((pid.encode(), minute_doc(pid, agg)))

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
        """
        self.dirty |= self.waiting
        self.waiting = set()
        now = self.now_ms()
        if not self.write_readings or len(self.dirty) <= self.write_eager:
            return 0
        unwritten, urgent = self.unwritten, self.urgent
        waiting = set()
        if now - self.last_batch_ms < self.write_quiet_ms:
            need, oldest = self.write_readings, now - self.write_max_ms
            for pid in self.dirty:
                held = unwritten.get(pid)
                if held is not None and held[2] < need and held[3] > oldest and pid not in urgent:
                    waiting.add(pid)
        due = len(self.dirty) - len(waiting)
        if due > self.WRITE_MOST:
            # a bounded write per commit: tens of thousands of states at once (all patients' first readings
            # waited WEARWATCH_WORKER_STATE_WRITE_MAX_S, or the input ended) held the worker for seconds, past
            # its Kafka session (seen at 100,000 patients); the rest waits for the next commits
            for pid in self.dirty:
                if due <= self.WRITE_MOST:
                    break
                if pid not in waiting and pid in unwritten and pid not in urgent:
                    waiting.add(pid)
                    due -= 1
        if not waiting:
            return 0
        self.dirty -= waiting
        self.waiting = waiting
        self._pacing = True
        return len(waiting)

    #: the most states changed by readings only that one commit writes (with pacing)
    WRITE_MOST = 16_384

    def commit_limits(self) -> dict[int, int]:
        """After a commit's state write: per ``vitals.raw`` partition, the offset of the first record
        some unwritten state lacks (the commit must not pass it); the states set aside by
        :meth:`plan_writes` are dirty again for the next commit."""
        self.dirty |= self.waiting
        self.waiting = set()
        self._pacing = False
        limits: dict[int, int] = {}
        for partition, offset, _n, _ms in self.unwritten.values():
            if offset < limits.get(partition, offset + 1):
                limits[partition] = offset
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
        unwritten = self.unwritten
        for pid in dirty:
            unwritten.pop(pid, None)
        cache = self.cache
        version = self.state_version
        return {pid: encode_state(cache[pid], version) for pid in dirty if pid in cache}

    def take_latencies(self) -> dict[str, float]:
        """p50/p95/max of gateway → worker latency (ms) since the last call; empty when idle."""
        lat, self.latencies = sorted(self.latencies), []
        if not lat:
            return {}
        return {"latency_p50_ms": float(lat[len(lat) // 2]), "latency_p95_ms": float(lat[int(len(lat) * 0.95)]),
                "latency_max_ms": float(lat[-1])}

    def tick(self, patient_ids: Iterable[str]) -> Outputs:
        """Time-driven work for the given patients: stale-device checks, idle minute closing.

        The detectors get *stream-equivalent* time (the patient's newest reading
        plus the wall time since it was received) so an accelerated simulation or
        a device with a skewed clock is judged by how long it has really been silent.
        """
        out = Outputs()
        now = self.now_ms()
        for pid in patient_ids:
            st = self.state_for(pid)
            received = self.last_received.setdefault(pid, now)
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
        return out

    def commands(self, records: Iterable[Record]) -> Outputs:
        """Apply nurse commands (acknowledgements, snoozes, notes) from ``alerts.commands``."""
        out = Outputs()
        now = self.now_ms()
        for _key, value in records:
            try:
                cmd = parse_command_record(value)
            except InvalidCommand as exc:
                self._dead(out, exc.reason, exc.detail, value, now)
                continue
            st = self.state_for(cmd.patient_id)
            stream_now = st.newest_ms + (now - self.last_received.get(cmd.patient_id, now))
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
            self.mark_changed(cmd.patient_id)
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
