"""The worker's timers and background tasks, on the Faust app.

=======================  ===============================  =============================================
name                     when                             what
=======================  ===============================  =============================================
``start_producers``      once, after the first recovery   connects the direct producers (``/readyz``)
``watch_loop``           always                           records event-loop lag and GC pauses
``freeze_survivors``     every second                     :class:`streams.monitor.GcPolicy`
``watch_recovery``       every 5 s                        exits for a restart when table recovery hangs
``tick``                 ``WEARWATCH_TICK_INTERVAL_S``    stale devices, reminders, idle minutes (patients due)
``report``               ``WEARWATCH_METRICS_INTERVAL_S`` worker stats to the log and InfluxDB
=======================  ===============================  =============================================
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING

from alerts.influx import pipeline_line
from streams.monitor import RESTART_EXIT_CODE, GcPolicy, recovery_stalled_for
from wearwatch.errors import DeliveryError, StackUnavailable

if TYPE_CHECKING:
    from streams.app import Pipeline

__all__ = ["register_timers"]

log = logging.getLogger(__name__)

#: the tick checks this many patients at a time under the state lock ...
TICK_CHUNK = 32
#: ... until this much time has passed; then batches of readings get the lock (see tick)
TICK_SLICE_S = 0.005


def register_timers(pipeline: Pipeline) -> None:
    """Add the timers and tasks to the pipeline's app (call once, when building it)."""
    p, app, s, proc = pipeline, pipeline.app, pipeline.settings, pipeline.processor

    @app.task
    async def start_producers() -> None:
        # started before the first batch needs them, so /readyz can say the worker can deliver
        for producer in (p.states_out, p.records_out):
            delay = 0.5
            while not producer.started:
                try:
                    await producer.start()
                except StackUnavailable as exc:
                    log.warning("%s; retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)

    @app.task
    async def watch_loop() -> None:
        p.stages.watch_gc()
        await p.stages.watch_loop()

    gc_policy = GcPolicy(s.worker_gc_full_interval_s)

    @app.timer(interval=1.0)
    async def freeze_survivors() -> None:
        with p.stages.timed("gc_freeze"):
            gc_policy.freeze()

    @app.timer(interval=5.0)
    async def watch_recovery() -> None:
        stalled = recovery_stalled_for(getattr(app.tables, "recovery", None), time.monotonic())
        if stalled >= s.worker_recovery_stall_s:
            log.error("table recovery has read no changelog record for %.0f s (a known Faust hang); "
                      "exiting with code %d so the supervisor restarts this worker (offsets are uncommitted: "
                      "nothing is lost)", stalled, RESTART_EXIT_CODE)
            logging.shutdown()
            os._exit(RESTART_EXIT_CODE)

    @app.timer(interval=max(1.0, s.worker_stall_reread_s / 4))
    async def reread_stalled() -> None:
        # records Faust dropped with nothing after them in their partition (see streams.offsets.GapGuard)
        if not p.serving:
            return
        revocations = p.revocations
        for name, reread in list(p.rereads.items()):
            try:
                n = await reread.run(lambda: p.serving and p.revocations == revocations)
            except Exception as exc:  # the broker unreachable: asked again at the next round
                log.warning("could not look for stalled partitions of %s: %r", name, exc)
                continue
            if n:
                log.warning("%s: %d records of stalled partitions read directly", name, n)

    @app.timer(interval=s.tick_interval_s)
    async def tick() -> None:
        if not p.serving:
            # mid-rebalance the table may be half recovered: a state loaded now would be
            # older than the committed offsets, and the agent would carry on from it
            return
        revocations = p.revocations
        with p.stages.laps("tick") as lap:
            full = proc.full_round
            if full:
                # after a start or a fail-over: every patient whose state this worker holds, each then
                # scheduled for its next due time
                keys = proc.begin_round(dict.fromkeys([k.decode() for k in list(p.table.keys())] + proc.held()))
            else:
                keys = proc.begin_round()  # only the patients with something due (see BatchProcessor.begin_round)
            lap("tick_keys")
            # in slices under the state lock, batches of readings between them: the first tick after a
            # start or a fail-over loads every patient's state (100,000 patients: seconds), and holding
            # the lock and the event loop that long held the first alerts back and missed heartbeats
            events = []
            i = 0
            while i < len(keys):
                async with p.state_lock:
                    if not p.serving or p.revocations != revocations:
                        return  # a rebalance: the next tick starts over
                    slice_ends = time.perf_counter() + TICK_SLICE_S
                    while i < len(keys) and time.perf_counter() < slice_ends:
                        chunk = keys[i:i + TICK_CHUNK]
                        if not full:  # erased between two slices: not to be loaded again
                            chunk = [k for k in chunk if proc.holds(k)]
                        out = proc.tick(chunk)
                        i += TICK_CHUNK
                        await p.emit(out)
                        events += out.events
                await asyncio.sleep(0)
            lap("tick_process")
            async with p.state_lock:
                if p.serving and p.revocations == revocations:
                    await p.sync_alert_states(keys if full else [], events)
            lap("tick_emit")

    @app.timer(interval=s.metrics_interval_s)
    async def report() -> None:
        st = proc.stats
        fields: dict[str, float | int] = {
            "readings": st["readings"],
            "duplicates": st["duplicates"],
            "replayed": st["replayed"],
            "erased": st["erased"],  # sealed entries whose data key is gone (the patient was erased): dropped
            "too_late": st["too_late"],
            "late_for_aggregate": st["late_for_aggregate"],
            "skipped_offsets": sum(g.stats["skipped_offsets"] for g in p.guards),
            # partitions whose last records never reached their agent, read directly (streams.offsets.GapGuard)
            "stalled_rereads": sum(g.stats["stalled"] for g in p.guards),
            # commits of a partition held back at an unprocessed record (see streams.offsets)
            "commits_held": getattr(app.consumer, "held_commits", 0),
            # write pacing (see streams.processing.BatchProcessor.plan_writes): commits of a partition kept at
            # the first record an unwritten state lacks, and the patients whose states hold unwritten readings
            "commits_limited": getattr(app.consumer, "limited_commits", 0),
            "states_unwritten": proc.states_unwritten,
            "dead_letters": sum(v for k, v in st.items() if k.startswith("dlq:")),
            "alerts_open": st["alert:open"],
            "alerts_resolved": st["alert:resolved"],
            "active_patients": len(proc.cache) + len(proc.packed),
            # past WEARWATCH_WORKER_LIVE_STATES: states packed in memory, and decoded again since
            "states_packed": st["states_packed"],
            "states_unpacked": st["states_unpacked"],
            "uptime_s": time.monotonic() - p.started,
            "lag": p.consumer_lag(),
            # changelog records applied by table recoveries and standby reads since the start
            "changelog_read": p.changelog_recovered,
            **proc.take_latencies(),
            **p.stages.take(),
        }
        log.info("worker stats %s", fields)
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, p.sink.write, [pipeline_line(s.app_id, int(time.time() * 1000), fields)]
            )
        except DeliveryError as exc:  # metrics are best effort; data points are not
            log.warning("pipeline metrics not written: %s", exc)
