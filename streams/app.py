"""The Faust application and the :class:`Pipeline`: topics, the patient-state table, state writes, emission.

The rest of the worker registers itself on the app from its own module:

=========================  ==============================================================================
module                     what it adds to the app
=========================  ==============================================================================
:mod:`streams.agents`      the agents: ``detect`` (readings and nurse commands), the two InfluxDB sinks
:mod:`streams.timers`      the timers and tasks: tick, metrics report, GC freezing, recovery watchdog
:mod:`streams.signals`     the handlers of partitions revoked/assigned, rebalance complete, shutdown
:mod:`streams.web`         ``/healthz``, ``/readyz``, ``/metrics`` (and no Faust views)
:mod:`streams.fhir_views`  ``/fhir/DetectedIssue``
=========================  ==============================================================================

The agents stay thin — decode, group by patient, call the detectors, emit — by
delegating the work to :class:`streams.processing.BatchProcessor`.

Topology (all keyed by patient_id)::

    vitals.raw ──detect──▶ alerts          (alert state changes, source of truth)
                 │     └─▶ vitals.1m       (closed 1-minute aggregates)
                 │     └─▶ vitals.dlq      (undecodable or too-late records)
                 │     └─▶ alerts.state    (compacted: each patient's open alerts, for the console)
                 └── table patient-state   (changelog-backed, survives restarts)
    vitals.1m ──sink_minutes──▶ InfluxDB vitals_1m
    alerts    ──sink_alerts───▶ InfluxDB alerts

Processing guarantee: at-least-once with idempotent effects (see README):
duplicates are dropped by ``PatientState.admit``, alert ids are deterministic,
and InfluxDB points overwrite themselves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from typing import Any, cast

import faust
from faust.exceptions import ConsumerNotStarted

from alerts.enrollment import Enrollment, load_enrollment
from alerts.influx import InfluxSink
from alerts.lifecycle import AlertBook
from alerts.models import AlertEvent
from alerts.mqtt import MqttAlertPublisher, state_payload
from alerts.webhook import make_webhook_sink
from detectors import PatientMonitor
from streams.agents import Reread, register_agents
from streams.credentials import faust_credentials
from streams.enrollment import EnrollmentSync
from streams.fhir_views import register_fhir_views
from streams.keys import follow_data_keys
from streams.monitor import QuietMonitor
from streams.offsets import GapGuard, PartitionReader
from streams.offsets import install as install_safe_offsets_consumer
from streams.processing import MINUTES_PER_RECORD, BatchProcessor, Outputs
from streams.producers import DirectProducer
from streams.signals import connect_signal_handlers
from streams.stage_timing import StageTimes
from streams.state import PatientState
from streams.store import ROCKSDB_OPTIONS, STORE_URLS, PatientStateStore, SharedMemoryOptions
from streams.telemetry import WorkerTelemetry
from streams.timers import register_timers
from streams.web import WEB_DRIVER_URL, ops_blueprint
from wearwatch.config import Settings
from wearwatch.errors import DeliveryError, StackUnavailable
from wearwatch.partitioning import patient_partition
from wearwatch.retention import compacted_config, topic_configs
from wearwatch.transport import aiokafka_client_config

__all__ = ["Pipeline", "create_app", "faust_app"]

log = logging.getLogger(__name__)


def _wall_ms() -> int:
    return int(time.time() * 1000)


def faust_app(settings: Settings) -> faust.App:
    """The worker's Faust app, without agents or topics: its settings, its consumer (safe offsets,
    prompt fetches: :mod:`streams.offsets`) and its quiet monitor. The worker's :class:`Pipeline`
    builds on it, and so does ``bench/faust_floor.py``, which measures what this app alone costs.
    """
    s = settings
    # Faust creates it (not its parents) even for memory tables; by default it was "<app id>-data"
    # in the working directory, i.e. one more folder there per test or demo run. The RocksDB store
    # keeps the table here, so workers on one host need one each: the default names the web port
    # (unique per host, and the same when a worker is started again)
    datadir = s.worker_data_dir or os.path.join(tempfile.gettempdir(), "wearwatch-faust",
                                                f"{s.app_id}-{s.web_port}-data")
    os.makedirs(datadir, exist_ok=True)
    app = faust.App(
        s.app_id,
        broker=s.kafka_url,
        broker_credentials=faust_credentials(s),
        store=STORE_URLS[s.worker_store],  # streams/store.py
        datadir=datadir,
        autodiscover=False,
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        table_standby_replicas=s.worker_standby_replicas,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=2.0,
        broker_commit_interval=s.worker_commit_interval_s,
        # commits only from the timer: Faust's default also commits from its fetch loop every
        # 10,000 acknowledgements, and that loop then waits for write_states and the flush
        # (no record reaches any agent meanwhile)
        broker_commit_every=2**31,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web=WEB_DRIVER_URL,  # Faust's web server without Faust's own views (streams.web)
        web_host=s.web_host,
        web_bind=s.web_host,
        web_port=s.web_port,
        stream_buffer_maxsize=4096,
        # state records (~3 KB per touched patient per batch) dominate what the worker
        # produces: 16 KB batches (the default) meant one produce request per few states
        producer_max_batch_size=1_048_576,
    )

    # never commit records that were dropped, not processed, around a rebalance (streams/offsets.py)
    install_safe_offsets_consumer(app)
    app.monitor = QuietMonitor()
    return app


class Pipeline:
    """The app and everything hanging off it, built from one :class:`Settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = s = settings
        self.enrollment = load_enrollment(s.enrollment_file) if s.enrollment_file else Enrollment()
        self.app = app = faust_app(s)

        def raw_topic(name: str) -> Any:
            return app.topic(name, partitions=s.partitions, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw")

        self.vitals = raw_topic(s.topic_vitals)
        # nurse commands share the agent (and so the partition and the patient state) with the readings
        self.inputs = app.topic(s.topic_vitals, s.topic_commands, partitions=s.partitions, key_type=bytes,
                                value_type=bytes, key_serializer="raw", value_serializer="raw")
        self.alerts = raw_topic(s.topic_alerts)
        #: the partition count of ``alerts`` (looked up on the first alert event)
        self._alert_partitions: int | None = None
        self.minutes = raw_topic(s.topic_minutes)
        # each patient's open alerts (key = patient id), compacted: what the console service reads
        self.alert_state = app.topic(s.topic_alert_state, partitions=s.partitions, compacting=True, key_type=bytes,
                                     value_type=bytes, key_serializer="raw", value_serializer="raw",
                                     config=topic_configs(s)[s.topic_alert_state])  # wearwatch/retention.py
        # whether a patient's alerts.state record was (re)written since this worker got their partition: a flag
        # in the processor's bookkeeping of the patient (BatchProcessor.synced)
        #: patients whose alerts.state record is still to be re-written, in order (sync_alert_states)
        self._state_unsynced: dict[str, None] = {}
        # use_partitioner: the changelog partition is the producer's partition of the
        # key, i.e. the same partition vitals.raw uses for that patient (same murmur2
        # partitioner, same key bytes), so the table stays co-partitioned with its source
        # even though state is written once per batch and from timers.
        self.table = app.Table(
            "patient-state", default=None, partitions=s.partitions,
            key_type=bytes, value_type=bytes, use_partitioner=True,
            extra_topic_configs=compacted_config(s),  # tombstones compacted in time (wearwatch/retention.py)
            # a local copy older than half the tombstones' lifetime may miss an erasure (streams/store.py)
            options={**ROCKSDB_OPTIONS, "memory_mb": s.worker_store_memory_mb,
                     "max_age_s": s.erasure_compaction_hours * 3600 / 2}
            if s.worker_store == "rocksdb" else None,
        )
        #: changelog records applied to the table by recoveries (and standby reads) since the start
        self.changelog_recovered = 0
        self._count_recovered_records()
        # Table writes are collected here (instead of Faust's per-message producer buffer,
        # which the conductor drains one record per loop turn and stalls the stream on
        # when it holds >100) and produced by write_states; see _send_changelog.
        self._changelog: list[tuple[bytes, bytes]] = []
        #: tasks storing the changelog offsets of written states with them (RocksDB store only)
        self._persisting: set[asyncio.Future[None]] = set()
        self.states_out = DirectProducer(s, "states", linger_ms=5)
        # minute aggregates and dead letters: bulk, so not through Faust's per-message send (streams.producers)
        self.records_out = DirectProducer(s, "records")
        self._guard: GapGuard | None = None
        #: every agent's GapGuard (see new_guard)
        self.guards: list[GapGuard] = []
        #: per agent, how the records of its stalled partitions are read and processed (streams.agents)
        self.rereads: dict[str, Reread] = {}
        self.table.on_key_set = self._on_state_set  # type: ignore[method-assign]
        self.processor = BatchProcessor(self._new_state, self._load, _wall_ms, idle_close_ms=int(s.idle_close_s * 1000),
                                        state_version=s.worker_state_version,
                                        write_readings=s.worker_state_write_readings,
                                        write_max_ms=int(s.worker_state_write_max_s * 1000),
                                        write_eager=s.worker_state_write_eager,
                                        write_quiet_ms=int(s.worker_commit_interval_s * 1000),
                                        live_states=s.worker_live_states)
        self.sink = InfluxSink(s)
        self.webhook = make_webhook_sink(s.webhook_url, secret=s.webhook_secret)
        self._mqtt: MqttAlertPublisher | None = None
        self._mqtt_retry_at = 0.0
        self.started = time.monotonic()
        #: partitions of ``vitals.raw`` this worker holds (streams.signals)
        self.assigned_partitions: list[int] = []
        # The detect agent and the tick both change patient states. Each holds this lock from
        # processing until Kafka has its alerts; write_states (before every commit) takes it
        # too, so a stored state never holds effects whose alerts are not yet durable.
        self.state_lock = asyncio.Lock()
        #: longest time per stage since the last metrics report; the whole batch also feeds /metrics
        self.stages = StageTimes()
        #: False from a revocation until the table is recovered (see streams.signals, the tick)
        self.serving = False
        #: revocations so far (see write_states)
        self.revocations = 0
        self.telemetry = WorkerTelemetry(self)
        self.stages.observe("batch", self.telemetry.metrics.processing_seconds.observe)
        self.stages.observe("state_write", self.telemetry.metrics.state_write_seconds.observe)

        self.agents = register_agents(self)
        register_timers(self)
        connect_signal_handlers(self)
        register_fhir_views(self)  # GET /fhir/DetectedIssue
        ops_blueprint(self.telemetry).register(app)  # GET /healthz, /readyz, /metrics
        # the live enrolment: wards, overrides and discharges from the enrollment topic (streams/enrollment.py)
        self.enrollment_sync = EnrollmentSync(self)
        # the per-patient data keys that open sealed readings (the decode step) and seal what is written of a patient
        self.datakeys = follow_data_keys(self)

    # ------------------------------------------------------------------ state
    def _new_state(self, patient_id: str) -> PatientState:
        cfg = self.enrollment.detector_config_for(patient_id)
        return PatientState(PatientMonitor(cfg), AlertBook(patient_id, ward=self.enrollment.ward_for(patient_id)))

    def _load(self, patient_id: str) -> bytes | None:
        blob: bytes | None = self.table.get(patient_id.encode())
        return blob

    async def emit(self, out: Outputs) -> None:
        """Send a batch's records and wait until Kafka has them.

        Called under ``state_lock``, so :meth:`write_states` (before every offset
        commit) never stores a state whose alerts are not yet durable: if the worker
        dies before a state is written, its readings are processed again from the
        last committed offset against the older state, and the alerts come out again
        (same ids) instead of never. Nurse-facing delivery (MQTT, webhook) follows;
        Kafka ``alerts`` stays the source of truth.

        With the alert events go the changed patients' open alerts to the compacted
        ``alerts.state`` (:meth:`alert_states`), so that topic is durable before the
        patient's state is, and a replay after a crash writes the same records again.
        """
        pending: list[Any] = []
        if out.events:
            # one key per event (compacted for erasure), in the partition of the patient's key: one patient's
            # events stay in order and on the partition of their readings (wearwatch/partitioning.py)
            if self._alert_partitions is None:
                self._alert_partitions = await self.records_out.partition_count(self.settings.topic_alerts)
            n = self._alert_partitions
            pending += [await self.alerts.send(key=k, value=v, partition=patient_partition(ev.patient_id, n),
                                               force=True) for ev, (k, v) in zip(out.events, out.alerts, strict=True)]
        if out.events:
            # a None value is a tombstone (aiokafka sends it as such)
            states = cast(list[tuple[bytes, bytes]], self.alert_states(out.events))
            pending += await self.records_out.send(self.settings.topic_alert_state, states)
        pending += await self.records_out.send_packed(self.settings.topic_minutes, out.minutes,
                                                      self.processor.pack_minutes, MINUTES_PER_RECORD)
        if out.dead:
            pending += await self.records_out.send(self.settings.topic_dlq, out.dead)
        if pending:
            await asyncio.gather(*pending)
        if out.events:
            self.deliver(out.events)

    #: at most this many patients' records are re-written per tick (see sync_alert_states)
    STATE_SYNC_PER_TICK = 2000

    def forget_synced_alert_states(self) -> None:
        """After a revocation: every patient's alerts.state record is re-written once more (sync_alert_states)."""
        self.processor.forget_synced()
        self._state_unsynced = {}

    def resync_alert_state(self, patient_id: str) -> None:
        """The patient's alerts.state record is to be written again (a new ward) at the next tick."""
        self.processor.set_synced((patient_id,), False)
        self._state_unsynced[patient_id] = None

    async def sync_alert_states(self, keys: list[str], events: list[AlertEvent]) -> None:
        """Once per patient after the worker got its partition, write its open alerts to ``alerts.state``
        even without a new event (a few thousand per tick), so the console's view heals from anything
        written before (an older version of the worker, a lost record) within seconds of a start or a
        fail-over. Patients with nothing open are skipped (no record: nothing to show).

        ``keys``: every patient whose state the worker holds (the tick's first round after a start or a
        fail-over) or none; those not written yet wait for the next ticks, with the ones
        :meth:`resync_alert_state` names."""
        proc, unsynced = self.processor, self._state_unsynced
        synced = proc.synced
        proc.set_synced(ev.patient_id for ev in events)  # emit just wrote theirs
        for k in keys:
            if not synced(k):
                unsynced[k] = None
        todo: list[str] = []
        done: list[str] = []
        for k in unsynced:
            if synced(k):
                done.append(k)
            else:
                todo.append(k)
                if len(todo) >= self.STATE_SYNC_PER_TICK:
                    break
        for k in done:
            del unsynced[k]
        if not todo:
            self._release_unsynced()
            return
        lag = self.consumer_lag()
        if lag < 0 or lag > self.settings.worker_batch_size:
            # still replaying after a start or fail-over: a patient's state may be older than its last
            # alerts.state record until its readings are processed again; re-write once caught up
            return
        now = _wall_ms()
        records: list[tuple[bytes, bytes]] = []
        for pid in todo:
            book = self.processor.state_for(pid).book
            open_ = book.open_alerts()
            if open_:
                records.append((pid.encode(), state_payload(pid, book.ward or "unassigned", open_, now)))
        if records:
            await asyncio.gather(*await self.records_out.send(self.settings.topic_alert_state, records))
        proc.set_synced(todo)
        for k in todo:
            unsynced.pop(k, None)
        self._release_unsynced()

    def _release_unsynced(self) -> None:
        """Once every patient is written: a fresh dict (a drained one keeps its table, ~45 B per patient it held)."""
        if not self._state_unsynced:
            self._state_unsynced = {}

    def alert_states(self, events: list[AlertEvent]) -> list[tuple[bytes, bytes | None]]:
        """``alerts.state`` records of the patients of ``events``: the retained MQTT state's payload
        (:func:`alerts.mqtt.state_payload`: their open alerts), or a tombstone when none is open
        (compaction then forgets the patient)."""
        out: list[tuple[bytes, bytes | None]] = []
        now = _wall_ms()
        for pid in dict.fromkeys(ev.patient_id for ev in events):
            book = self.processor.state_for(pid).book
            open_ = book.open_alerts()
            out.append((pid.encode(), state_payload(pid, book.ward or "unassigned", open_, now) if open_ else None))
        return out

    async def write_states(self) -> bool:
        """Store every changed patient state in the table (changelog); the consumer calls
        this before it computes the offsets to commit, and waits for these records before
        it commits them (:attr:`SafeOffsetsConsumer.pending_writes`).

        So a committed reading always has its state durable, and a patient's state is
        written once per commit (every ``broker_commit_interval``) instead of once per
        batch that touched it: pickling states and producing them was most of the
        worker's time (bench/README.md).

        The states are written in slices of :attr:`STATE_SLICE_S`, each pickled under the
        state lock, and batches of readings get the lock between slices: holding it for the
        whole write (thousands of states at 2,000 readings/s) held alerts back for up to
        1.4 s. A slice is handed to the producer after the lock is released (sending may
        wait for room in a partition's batch), except the last: it takes every state still
        dirty, including those of batches that ran between slices, and is sent before the
        lock is released, and the offsets are computed right after it without yielding,
        so each acknowledged reading has its state in the changelog. How long the write took
        sets how many due states the next commits take (:meth:`BatchProcessor.fit_writes`).
        """
        stages = self.stages
        written = 0
        revocations = self.revocations
        began = time.perf_counter()
        with stages.timed("state_write"):
            async with self.state_lock:
                if self.revocations != revocations:
                    return False
                stages.count("states_waiting", self.processor.plan_writes())
            for round_ in range(self.STATE_ROUNDS):
                async with self.state_lock:
                    if self.revocations != revocations:
                        # a rebalance between two chunks dropped the cached states (and the list of
                        # changed ones) before all were written: the offsets acknowledged so far must
                        # not be committed; the readings are processed again after the rebalance
                        log.info("rebalance during the state write: this commit is skipped")
                        return False
                    with stages.timed("state_chunk"):
                        slice_ends = time.perf_counter() + self.STATE_SLICE_S
                        blobs: dict[str, bytes] = {}
                        while True:  # chunks until the time slice is used up (or nothing is left)
                            last = len(self.processor.dirty) <= self.STATE_CHUNK or round_ == self.STATE_ROUNDS - 1
                            blobs.update(self.processor.take_dirty(None if last else self.STATE_CHUNK))
                            if last or time.perf_counter() >= slice_ends:
                                break
                        for pid, blob in blobs.items():
                            self.table[pid.encode()] = blob
                        records, self._changelog = self._changelog, []
                        if last:
                            await self._send_changelog(records)
                            # no yield from here to the offsets: they stay behind the states set aside
                            self._set_commit_limits(self.processor.commit_limits())
                        written += len(blobs)
                if last:
                    break
                with stages.timed("state_send"):
                    await self._send_changelog(records)
                # a free lock is taken without suspending: without this the whole write would
                # still run as one step, with the event loop blocked
                await asyncio.sleep(0)
        stages.count("states_written", written)
        # the next commits' share of a burst of due states: a commit's write within half the interval
        self.processor.fit_writes(written, time.perf_counter() - began, self.settings.worker_commit_interval_s / 2)
        if self.processor.live_states:
            await self._pack_states(revocations)
        return True

    async def _pack_states(self, revocations: int) -> None:
        """Past ``WEARWATCH_WORKER_LIVE_STATES`` decoded states: pack the excess (:meth:`BatchProcessor.pack`),
        in chunks of :attr:`STATE_CHUNK` under the state lock for :attr:`STATE_SLICE_S` at a time, with batches
        of readings between the slices: after a start or a fail-over the first round of the tick decodes every
        patient's state, and packing 75,000 of them (~30 µs each) at once would hold the event loop for
        seconds."""
        processor = self.processor
        with self.stages.timed("state_pack"):
            while True:
                async with self.state_lock:
                    if self.revocations != revocations:
                        return  # the rebalance dropped every state: nothing left to pack
                    slice_ends = time.perf_counter() + self.STATE_SLICE_S
                    while (left := processor.pack(self.STATE_CHUNK)) and time.perf_counter() < slice_ends:
                        pass
                if not left:
                    return
                await asyncio.sleep(0)

    #: states are pickled this many at a time under the state lock (see write_states) ...
    STATE_CHUNK = 16
    #: ... until this much time has passed; then batches get the lock and the event loop runs. Faust
    #: moves a record from the fetch to the agent over several loop turns, so every long hold of
    #: the loop delays readings several times over (chunks of 256 states, ~50 ms each under load,
    #: gave a worker p99 of 530 ms at 2,000 readings/s; 5 ms slices: see bench/README.md)
    STATE_SLICE_S = 0.005
    #: after this many chunks the rest is written in one (a commit always ends)
    STATE_ROUNDS = 4096

    def _count_recovered_records(self) -> None:
        """Count the changelog records Faust's recovery applies to the table (logged when it ends)."""
        apply = self.table.apply_changelog_batch

        def counted(batch: Any) -> None:
            batch = list(batch)
            self.changelog_recovered += len(batch)
            apply(batch)

        self.table.apply_changelog_batch = counted  # type: ignore[method-assign]

    def _set_commit_limits(self, limits: dict[int, int]) -> None:
        consumer: Any = self.app.consumer
        topic = self.settings.topic_vitals
        consumer.commit_limits = {(topic, partition): offset for partition, offset in limits.items()}

    def _on_state_set(self, key: bytes, value: bytes) -> None:
        self._changelog.append((key, value))

    async def _send_changelog(self, records: list[tuple[bytes, bytes]]) -> None:
        """Hand table writes to the state producer; the next commit waits for them.

        Same records as ``Table.on_key_set`` would buffer (key-hashed partition, raw
        bytes), given to a producer of their own (:class:`streams.producers.DirectProducer`):
        through Faust's producer they delayed the alerts, and its per-record send path
        cost ~200 µs a record. Faust's sent-callback only records persisted offsets,
        which the memory store does not keep (it recovers from the changelog's start); for the
        RocksDB store :meth:`_persist_offsets` does that.
        """
        if not records:
            return
        consumer: Any = self.app.consumer
        topic = self.table.changelog_topic.get_topic_name()
        futures = await self.states_out.send(topic, records)
        store = self.table.data
        if isinstance(store, PatientStateStore):  # a restart reads the changelog from after these records
            task = asyncio.ensure_future(self._persist_offsets(store, topic, futures))
            self._persisting.add(task)
            task.add_done_callback(self._persisting.discard)
        consumer.pending_writes.extend(futures)

    @staticmethod
    async def _persist_offsets(store: PatientStateStore, topic: str, futures: list[asyncio.Future[Any]]) -> None:
        """Once Kafka has the changelog records, store their offsets with the states (streams/store.py)."""
        for md in await asyncio.gather(*futures, return_exceptions=True):
            if not isinstance(md, BaseException):
                store.note_written(md.partition, md.offset)
        store.persist_offsets(topic)

    def deliver(self, events: list[AlertEvent]) -> None:
        """Retained per-patient state and notifications to nurse apps; webhook. Never blocks long."""
        if self.webhook is not None:
            for ev in events:
                self.webhook.submit(ev)
        publisher = self._publisher()
        if publisher is None:
            return
        for ev in events:
            publisher.publish_event(ev)
        for pid in dict.fromkeys(ev.patient_id for ev in events):
            book = self.processor.state_for(pid).book
            publisher.publish_state(book.ward or "unassigned", pid, book.open_alerts(), _wall_ms())

    def _publisher(self) -> MqttAlertPublisher | None:
        s = self.settings
        if not s.alerts_mqtt or (self._mqtt is None and time.monotonic() < self._mqtt_retry_at):
            return self._mqtt
        if self._mqtt is None:
            try:
                self._mqtt = MqttAlertPublisher.from_settings(
                    s, f"{s.app_id}-alerts-{os.getpid()}", timeout_s=3.0,
                    username=s.alerts_mqtt_username, password=s.alerts_mqtt_password)
            except StackUnavailable as exc:
                log.warning("alert MQTT delivery unavailable (%s); retrying in 30 s", exc)
                self._mqtt_retry_at = time.monotonic() + 30
        return self._mqtt

    async def write_with_retry(self, lines: list[str], what: str, precision: str = "ms") -> None:
        """Write to InfluxDB until it takes the batch; back off exponentially, max 30 s."""
        delay = 0.5
        loop = asyncio.get_running_loop()
        while True:
            try:
                with self.stages.timed(f"influx_{what}"):
                    dropped = await loop.run_in_executor(None, self.sink.write, lines, precision)
                self.processor.stats[f"influx_{what}"] += len(lines) - dropped
                if dropped:  # older than InfluxDB keeps: stored nowhere else, so counted, not retried
                    self.processor.stats["influx_beyond_retention"] += dropped
                return
            except DeliveryError as exc:
                self.processor.stats["influx_retries"] += 1
                log.warning("%s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def consumer_lag(self) -> int:
        """Records of this worker's ``vitals.raw`` partitions not yet read (highwater − read offset);
        -1 when the consumer cannot say (not started, mid-rebalance)."""
        lags = self.partition_lags()
        return -1 if lags is None else sum(lags.values())

    def store_memory_bytes(self) -> int:
        """Memory of the RocksDB store's shared cache (0 with the memory store)."""
        options = getattr(self.table.data, "rocksdb_options", None)
        return options.memory_bytes() if isinstance(options, SharedMemoryOptions) else 0

    def partition_lags(self) -> dict[int, int] | None:
        """Per partition of ``vitals.raw`` this worker holds, the records not yet read; None when the
        consumer cannot say. A partition whose highwater is not known yet is left out."""
        consumer = self.app.consumer
        lags: dict[int, int] = {}
        try:
            for tp in consumer.assignment():
                if tp.topic != self.settings.topic_vitals:
                    continue
                read = consumer._read_offset.get(tp)  # type: ignore[attr-defined]  # no public accessor
                high = consumer.highwater(tp)
                if high is not None:
                    lags[tp.partition] = max(0, high - (read + 1 if read is not None else 0))
        except (AttributeError, KeyError, RuntimeError, ConsumerNotStarted):  # e.g. scraped before it started
            return None
        return lags

    def new_guard(self, *topics: str) -> GapGuard:
        """A GapGuard for an agent's topics (created when the agent runs: the consumer exists then)."""
        reader = PartitionReader(aiokafka_client_config(self.settings))
        guard = GapGuard(self.app.consumer, topics, reader, ends=reader.end_offsets,
                         stall_s=self.settings.worker_stall_reread_s)
        self.guards.append(guard)
        return guard

    def gap_guard(self) -> GapGuard:
        """The detect agent's GapGuard; the first call also hooks :meth:`write_states` and the stage
        times into the consumer's commits and fetches."""
        if self._guard is None:
            s = self.settings
            consumer: Any = self.app.consumer
            consumer.before_commit = self.write_states  # see write_states
            consumer.stage_times = self.stages
            self._guard = self.new_guard(s.topic_vitals, s.topic_commands)
        return self._guard


def create_app(settings: Settings) -> faust.App:
    """The Faust app for ``settings`` (the worker's entry point)."""
    return Pipeline(settings).app
