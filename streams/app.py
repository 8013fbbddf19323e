"""The Faust application: topics, the patient-state table, agents and timers.

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
import contextlib
import logging
import os
import tempfile
import time
from typing import Any, cast

import faust

from alerts.enrollment import Enrollment, load_enrollment
from alerts.influx import InfluxSink, pipeline_line
from alerts.lifecycle import AlertBook
from alerts.models import AlertEvent
from alerts.mqtt import MqttAlertPublisher, state_payload
from alerts.webhook import make_webhook_sink
from detectors import PatientMonitor
from streams.credentials import faust_credentials
from streams.enrollment import EnrollmentSync
from streams.fhir_views import register_fhir_views
from streams.monitor import RESTART_EXIT_CODE, GcPolicy, QuietMonitor, StageTimes, recovery_stalled_for
from streams.offsets import GapGuard, PartitionReader, Record
from streams.offsets import install as install_safe_offsets_consumer
from streams.processing import MINUTES_PER_RECORD, BatchProcessor, Outputs, minutes_record
from streams.producers import DirectProducer
from streams.state import PatientState
from wearwatch.config import Settings
from wearwatch.errors import DeliveryError, StackUnavailable
from wearwatch.retention import compacted_config, topic_configs
from wearwatch.transport import aiokafka_client_config

__all__ = ["Pipeline", "create_app", "faust_app"]

log = logging.getLogger(__name__)


#: The most points the minutes sink sends InfluxDB in one write.
INFLUX_LINES_PER_WRITE = 5000


def _wall_ms() -> int:
    return int(time.time() * 1000)


def faust_app(settings: Settings) -> faust.App:
    """The worker's Faust app, without agents or topics: its settings, its consumer (safe offsets,
    prompt fetches: :mod:`streams.offsets`) and its quiet monitor. The worker's :class:`Pipeline`
    builds on it, and so does ``bench/faust_floor.py``, which measures what this app alone costs.
    """
    s = settings
    # Faust creates it (not its parents) even for memory tables; by default it was "<app id>-data"
    # in the working directory, i.e. one more folder there per test or demo run
    datadir = s.worker_data_dir or os.path.join(tempfile.gettempdir(), "wearwatch-faust", f"{s.app_id}-data")
    os.makedirs(datadir, exist_ok=True)
    app = faust.App(
        s.app_id,
        broker=s.kafka_url,
        broker_credentials=faust_credentials(s),
        store="memory://",
        datadir=datadir,
        autodiscover=False,
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        table_standby_replicas=0,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=2.0,
        broker_commit_interval=s.worker_commit_interval_s,
        # commits only from the timer: Faust's default also commits from its fetch loop every
        # 10,000 acknowledgements, and that loop then waits for write_states and the flush
        # (no record reaches any agent meanwhile)
        broker_commit_every=2**31,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
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
        self.minutes = raw_topic(s.topic_minutes)
        # each patient's open alerts (key = patient id), compacted: what the console service reads
        self.alert_state = app.topic(s.topic_alert_state, partitions=s.partitions, compacting=True, key_type=bytes,
                                     value_type=bytes, key_serializer="raw", value_serializer="raw",
                                     config=topic_configs(s)[s.topic_alert_state])  # wearwatch/retention.py
        self._state_synced = set()
        # use_partitioner: the changelog partition is the producer's partition of the
        # key, i.e. the same partition vitals.raw uses for that patient (same murmur2
        # partitioner, same key bytes), so the table stays co-partitioned with its source
        # even though state is written once per batch and from timers.
        self.table = app.Table(
            "patient-state", default=None, partitions=s.partitions,
            key_type=bytes, value_type=bytes, use_partitioner=True,
            extra_topic_configs=compacted_config(s),  # tombstones compacted in time (wearwatch/retention.py)
        )
        # Table writes are collected here (instead of Faust's per-message producer buffer,
        # which the conductor drains one record per loop turn and stalls the stream on
        # when it holds >100) and produced by write_states; see _send_changelog.
        self._changelog: list[tuple[bytes, bytes]] = []
        self.states_out = DirectProducer(s, "states", linger_ms=5)
        # minute aggregates and dead letters: bulk, so not through Faust's per-message send (streams.producers)
        self.records_out = DirectProducer(s, "records")
        self._guard: GapGuard | None = None
        self._guards: list[GapGuard] = []
        self.table.on_key_set = self._on_state_set  # type: ignore[method-assign]
        self.processor = BatchProcessor(self._new_state, self._load, _wall_ms, idle_close_ms=int(s.idle_close_s * 1000))
        self.sink = InfluxSink(s)
        self.webhook = make_webhook_sink(s.webhook_url, secret=s.webhook_secret)
        self._mqtt: MqttAlertPublisher | None = None
        self._mqtt_retry_at = 0.0
        self.started = time.monotonic()
        self._wire()
        # the live enrolment: wards, overrides and discharges from the enrollment topic (streams/enrollment.py)
        self.enrollment_sync = EnrollmentSync(self)

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
        pending: list[Any] = [await self.alerts.send(key=k, value=v, force=True) for k, v in out.alerts]
        if out.events:
            # a None value is a tombstone (aiokafka sends it as such)
            states = cast(list[tuple[bytes, bytes]], self.alert_states(out.events))
            pending += await self.records_out.send(self.settings.topic_alert_state, states)
        pending += await self.records_out.send_packed(self.settings.topic_minutes, out.minutes, minutes_record,
                                                      MINUTES_PER_RECORD)
        if out.dead:
            pending += await self.records_out.send(self.settings.topic_dlq, out.dead)
        if pending:
            await asyncio.gather(*pending)
        if out.events:
            self.deliver(out.events)

    #: patients whose alerts.state record this worker has (re)written since it got their partition
    _state_synced: set[str]
    #: at most this many patients' records are re-written per tick (see _sync_alert_states)
    STATE_SYNC_PER_TICK = 2000

    async def _sync_alert_states(self, keys: list[str], events: list[AlertEvent]) -> None:
        """Once per patient after the worker got its partition, write its open alerts to ``alerts.state``
        even without a new event (a few thousand per tick), so the console's view heals from anything
        written before (an older version of the worker, a lost record) within seconds of a start or a
        fail-over. Patients with nothing open are skipped (no record: nothing to show)."""
        synced = self._state_synced
        synced.update(ev.patient_id for ev in events)  # emit just wrote theirs
        todo = [k for k in keys if k not in synced][:self.STATE_SYNC_PER_TICK]
        if not todo:
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
        synced.update(todo)

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
        so each acknowledged reading has its state in the changelog.
        """
        stages = self.stages
        t0 = time.perf_counter()
        written = 0
        revocations = self.revocations
        for round_ in range(self.STATE_ROUNDS):
            async with self.state_lock:
                if self.revocations != revocations:
                    # a rebalance between two chunks dropped the cached states (and the list of
                    # changed ones) before all were written: the offsets acknowledged so far must
                    # not be committed; the readings are processed again after the rebalance
                    log.info("rebalance during the state write: this commit is skipped")
                    return False
                t1 = time.perf_counter()
                blobs: dict[str, bytes] = {}
                while True:  # chunks until the time slice is used up (or nothing is left)
                    last = len(self.processor.dirty) <= self.STATE_CHUNK or round_ == self.STATE_ROUNDS - 1
                    blobs.update(self.processor.take_dirty(None if last else self.STATE_CHUNK))
                    if last or time.perf_counter() - t1 >= self.STATE_SLICE_S:
                        break
                for pid, blob in blobs.items():
                    self.table[pid.encode()] = blob
                records, self._changelog = self._changelog, []
                if last:
                    await self._send_changelog(records)
                written += len(blobs)
                stages.add("state_chunk", (time.perf_counter() - t1) * 1000)
            if last:
                break
            t2 = time.perf_counter()
            await self._send_changelog(records)
            stages.add("state_send", (time.perf_counter() - t2) * 1000)
            # a free lock is taken without suspending: without this the whole write would
            # still run as one step, with the event loop blocked
            await asyncio.sleep(0)
        stages.add("state_write", (time.perf_counter() - t0) * 1000)
        stages.count("states_written", written)
        return True

    #: states are pickled this many at a time under the state lock (see write_states) ...
    STATE_CHUNK = 16
    #: ... until this much time has passed; then batches get the lock and the event loop runs. Faust
    #: moves a record from the fetch to the agent over several loop turns, so every long hold of
    #: the loop delays readings several times over (chunks of 256 states, ~50 ms each under load,
    #: gave a worker p99 of 530 ms at 2,000 readings/s; 5 ms slices: see bench/README.md)
    STATE_SLICE_S = 0.005
    #: after this many chunks the rest is written in one (a commit always ends)
    STATE_ROUNDS = 4096

    def _on_state_set(self, key: bytes, value: bytes) -> None:
        self._changelog.append((key, value))

    async def _send_changelog(self, records: list[tuple[bytes, bytes]]) -> None:
        """Hand table writes to the state producer; the next commit waits for them.

        Same records as ``Table.on_key_set`` would buffer (key-hashed partition, raw
        bytes), given to a producer of their own (:class:`streams.producers.DirectProducer`):
        through Faust's producer they delayed the alerts, and its per-record send path
        cost ~200 µs a record. Faust's sent-callback only records persisted offsets,
        which the memory store does not keep (it recovers from the changelog's start).
        """
        if not records:
            return
        consumer: Any = self.app.consumer
        topic = self.table.changelog_topic.get_topic_name()
        consumer.pending_writes.extend(await self.states_out.send(topic, records))

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
            t0 = time.perf_counter()
            try:
                await loop.run_in_executor(None, self.sink.write, lines, precision)
                self.stages.add(f"influx_{what}", (time.perf_counter() - t0) * 1000)
                self.processor.stats[f"influx_{what}"] += len(lines)
                return
            except DeliveryError as exc:
                self.processor.stats["influx_retries"] += 1
                log.warning("%s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def consumer_lag(self) -> int:
        """Records of this worker's ``vitals.raw`` partitions not yet read (highwater − read offset)."""
        consumer = self.app.consumer
        lag = 0
        try:
            for tp in consumer.assignment():
                if tp.topic != self.settings.topic_vitals:
                    continue
                read = consumer._read_offset.get(tp)  # type: ignore[attr-defined]  # no public accessor
                high = consumer.highwater(tp)
                if high is not None:
                    lag += max(0, high - (read + 1 if read is not None else 0))
        except (AttributeError, KeyError, RuntimeError):
            return -1
        return lag

    def _new_guard(self, *topics: str) -> GapGuard:
        """A GapGuard for an agent's topics (created when the agent runs: the consumer exists then)."""
        guard = GapGuard(self.app.consumer, topics, PartitionReader(aiokafka_client_config(self.settings)))
        self._guards.append(guard)
        return guard

    @staticmethod
    async def _admit(guard: GapGuard, events: Any) -> list[Record]:
        """``guard.admit``; when records Faust skipped cannot be read, the worker exits for its
        supervisor to restart it: processing the partition's later records first would let the
        patient states take the skipped ones for replays. Nothing is lost: offsets stay uncommitted."""
        try:
            return await guard.admit(events)
        except StackUnavailable as exc:
            log.error("%s; exiting with code %d so the supervisor restarts this worker", exc, RESTART_EXIT_CODE)
            logging.shutdown()
            os._exit(RESTART_EXIT_CODE)

    def _gap_guard(self) -> GapGuard:
        if self._guard is None:
            s = self.settings
            consumer: Any = self.app.consumer
            consumer.before_commit = self.write_states  # see write_states
            consumer.stage_times = self.stages
            self._guard = self._new_guard(s.topic_vitals, s.topic_commands)
        return self._guard

    # ------------------------------------------------------------------ agents
    def _wire(self) -> None:
        app, s, proc = self.app, self.settings, self.processor
        # The agent and the timer both change patient states. Each holds this lock from
        # processing until Kafka has its alerts; write_states (before every commit) takes it
        # too, so a stored state never holds effects whose alerts are not yet durable.
        self.state_lock = asyncio.Lock()
        #: longest time per stage since the last metrics report (see StageTimes)
        self.stages = StageTimes()
        #: False from a revocation until the table is recovered (see tick and on_rebalance_complete)
        self.serving = False
        #: revocations so far (see write_states)
        self.revocations = 0

        @app.agent(self.inputs, name="detect")
        async def detect(stream: Any) -> None:
            guard = self._gap_guard()
            stages = self.stages
            async for events in stream.take_events(s.worker_batch_size, within=s.worker_batch_window_s):
                t0 = time.perf_counter()
                # how long the oldest record of the batch has been in Kafka when the agent gets it
                stages.add("batch_age", _age_ms(events))
                async with self.state_lock:
                    t1 = time.perf_counter()
                    records = await self._admit(guard, events)  # with any records Faust skipped, read directly
                    readings = [r for r in records if r.topic != s.topic_commands]
                    # positions: a record a patient's state already holds is a replay (streams.state)
                    out = proc.process([(r.key or b"", r.value) for r in readings],
                                       [(r.partition, r.offset) for r in readings])
                    if len(readings) < len(records):
                        out.extend(proc.commands((r.key or b"", r.value) for r in records
                                                 if r.topic == s.topic_commands))
                    t2 = time.perf_counter()
                    await self.emit(out)
                    guard.done()
                t3 = time.perf_counter()
                stages.add("batch_lock_wait", (t1 - t0) * 1000)
                stages.add("batch_process", (t2 - t1) * 1000)
                stages.add("batch_emit", (t3 - t2) * 1000)

        @app.agent(self.minutes, name="sink-minutes")
        async def sink_minutes(stream: Any) -> None:
            guard = self._new_guard(s.topic_minutes)
            # a record holds up to MINUTES_PER_RECORD points; InfluxDB takes them in writes of a few thousand
            async for events in stream.take_events(100, within=1.0):
                values = [r.value for r in await self._admit(guard, events)]
                lines = self.sink.lines_for_minutes(values)
                for i in range(0, len(lines), INFLUX_LINES_PER_WRITE):
                    await self.write_with_retry(lines[i:i + INFLUX_LINES_PER_WRITE], "minutes")
                guard.done()

        @app.agent(self.alerts, name="sink-alerts")
        async def sink_alerts(stream: Any) -> None:
            guard = self._new_guard(s.topic_alerts)
            # alerts are few (tens per second at most): a short window puts them on Grafana boards
            # sooner (0.5 s gave a median of ~1 s from the reading to the point) at a few writes/s
            async for events in stream.take_events(500, within=0.1):
                self.stages.add("sink_alerts_age", _age_ms(events))
                values = [r.value for r in await self._admit(guard, events)]
                await self.write_with_retry(self.sink.lines_for_alerts(values), "alerts", "us")
                guard.done()

        @app.task
        async def watch_loop() -> None:
            self.stages.watch_gc()
            await self.stages.watch_loop()

        gc_policy = GcPolicy(s.worker_gc_full_interval_s)

        @app.timer(interval=1.0)
        async def freeze_survivors() -> None:
            t0 = time.perf_counter()
            gc_policy.freeze()
            self.stages.add("gc_freeze", (time.perf_counter() - t0) * 1000)

        @app.timer(interval=5.0)
        async def watch_recovery() -> None:
            stalled = recovery_stalled_for(getattr(app.tables, "recovery", None), time.monotonic())
            if stalled >= s.worker_recovery_stall_s:
                log.error("table recovery has read no changelog record for %.0f s (a known Faust hang); "
                          "exiting with code %d so the supervisor restarts this worker (offsets are uncommitted: "
                          "nothing is lost)", stalled, RESTART_EXIT_CODE)
                logging.shutdown()
                os._exit(RESTART_EXIT_CODE)

        @app.timer(interval=s.tick_interval_s)
        async def tick() -> None:
            if not self.serving:
                # mid-rebalance the table may be half recovered: a state loaded now would be
                # older than the committed offsets, and the agent would carry on from it
                return
            t0 = time.perf_counter()
            keys = list(dict.fromkeys([k.decode() for k in list(self.table.keys())] + list(proc.cache)))
            async with self.state_lock:
                t1 = time.perf_counter()
                out = proc.tick(keys)
                t2 = time.perf_counter()
                await self.emit(out)
                await self._sync_alert_states(keys, out.events)
            self.stages.add("tick_keys", (t1 - t0) * 1000)
            self.stages.add("tick_process", (t2 - t1) * 1000)
            self.stages.add("tick_emit", (time.perf_counter() - t2) * 1000)

        @app.timer(interval=s.metrics_interval_s)
        async def report() -> None:
            st = proc.stats
            fields: dict[str, float | int] = {
                "readings": st["readings"],
                "duplicates": st["duplicates"],
                "replayed": st["replayed"],
                "too_late": st["too_late"],
                "late_for_aggregate": st["late_for_aggregate"],
                "skipped_offsets": sum(g.stats["skipped_offsets"] for g in self._guards),
                # commits of a partition held back at an unprocessed record (see streams.offsets)
                "commits_held": getattr(app.consumer, "held_commits", 0),
                "dead_letters": sum(v for k, v in st.items() if k.startswith("dlq:")),
                "alerts_open": st["alert:open"],
                "alerts_resolved": st["alert:resolved"],
                "active_patients": len(proc.cache),
                "uptime_s": time.monotonic() - self.started,
                "lag": self.consumer_lag(),
                **proc.take_latencies(),
                **self.stages.take(),
            }
            log.info("worker stats %s", fields)
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, self.sink.write, [pipeline_line(s.app_id, _wall_ms(), fields)]
                )
            except DeliveryError as exc:  # metrics are best effort; data points are not
                log.warning("pipeline metrics not written: %s", exc)

        async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
            self.serving = False
            self.revocations += 1  # a state write in progress must not let its commit through
            proc.forget()
            self._state_synced.clear()  # re-written for the partitions this worker gets next

        async def on_rebalance_complete(sender: Any, *args: Any, **kwargs: Any) -> None:
            # sent once the table's changelogs are recovered, before the streams resume:
            # drop anything loaded while recovery was still filling the table
            proc.forget()
            for guard in self._guards:
                guard.reset()
            self.serving = True

        async def on_assigned(sender: Any, assigned: Any = (), **kwargs: Any) -> None:
            log.info("worker assigned %d partitions", len(assigned))
            try:  # compacted: must exist before its first record (else the broker makes it with defaults)
                await self.alert_state.maybe_declare()
            except Exception as exc:  # the console service creates it as well
                log.warning("could not declare %s: %s", self.settings.topic_alert_state, type(exc).__name__)
            self._gap_guard()  # hooks write_states into the consumer's commits

        async def on_shutdown(sender: Any, *args: Any, **kwargs: Any) -> None:
            await self.states_out.stop()
            await self.records_out.stop()
            for guard in self._guards:  # their side-channel consumers, if a skip ever needed one
                close = getattr(guard.fetch, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        await close()

        app.on_before_shutdown.connect(on_shutdown)  # type: ignore[arg-type]
        app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
        app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
        app.on_rebalance_complete.connect(on_rebalance_complete)  # type: ignore[arg-type]

        self.agents = (detect, sink_minutes, sink_alerts)
        register_fhir_views(self)  # GET /fhir/DetectedIssue


def _age_ms(events: Any) -> float:
    """How long the oldest record of a batch of Faust events has been in Kafka (ms)."""
    return (time.time() - min(ev.message.timestamp for ev in events)) * 1000


def create_app(settings: Settings) -> faust.App:
    """The Faust app for ``settings`` (the worker's entry point)."""
    return Pipeline(settings).app
