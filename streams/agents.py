"""The worker's Faust agents: ``detect`` (readings and nurse commands), and the two InfluxDB sinks.

The agents stay thin — take a batch, let the :class:`streams.offsets.GapGuard` add any
records Faust skipped, hand the records to :class:`streams.processing.BatchProcessor`,
emit through the :class:`streams.app.Pipeline` — and time their steps with the
pipeline's :class:`streams.stage_timing.StageTimes`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streams.monitor import RESTART_EXIT_CODE
from streams.offsets import GapGuard, Record
from wearwatch.errors import StackUnavailable

if TYPE_CHECKING:
    from streams.app import Pipeline

__all__ = ["INFLUX_LINES_PER_WRITE", "Reread", "admit_or_restart", "batch_age_ms", "register_agents"]

log = logging.getLogger(__name__)

#: The most points the minutes sink sends InfluxDB in one write.
INFLUX_LINES_PER_WRITE = 5000


def batch_age_ms(events: Any) -> float:
    """How long the oldest record of a batch of Faust events has been in Kafka (ms)."""
    return (time.time() - min(ev.message.timestamp for ev in events)) * 1000


async def admit_or_restart(guard: GapGuard, events: Any) -> list[Record]:
    """``guard.admit``; when records Faust skipped cannot be read, the worker exits for its
    supervisor to restart it: processing the partition's later records first would let the
    patient states take the skipped ones for replays. Nothing is lost: offsets stay uncommitted."""
    try:
        return await guard.admit(events)
    except StackUnavailable as exc:
        log.error("%s; exiting with code %d so the supervisor restarts this worker", exc, RESTART_EXIT_CODE)
        logging.shutdown()
        os._exit(RESTART_EXIT_CODE)


#: what an agent does with a batch of records (under the agent's lock; the caller then calls ``guard.done()``)
Handler = Callable[[list[Record]], Awaitable[None]]


@dataclass(frozen=True)
class Reread:
    """How an agent processes records: its guard, the lock its batches are processed under, and what it does
    with a batch; for the batches Faust hands it (:meth:`take`) and those :meth:`GapGuard.reread` reads
    (:meth:`run`)."""

    guard: GapGuard
    lock: asyncio.Lock
    handle: Handler

    async def take(self, events: Any) -> None:
        """One batch Faust handed the agent: admitted by the guard (with any records it skipped), handled,
        and let commit, under the lock."""
        async with self.lock:
            await self.handle(await admit_or_restart(self.guard, events))
            self.guard.done()

    async def run(self, still_serving: Callable[[], bool]) -> int:
        """Read and process the records of the agent's stalled partitions (:meth:`GapGuard.stalled`); the
        records processed. The broker's end offsets are asked for outside the lock."""
        stalled = await self.guard.stalled()
        if not stalled:
            return 0
        async with self.lock:
            if not still_serving():
                return 0  # a rebalance since: the partitions resume at their committed offsets
            records = await self.guard.reread(stalled)
            if records:
                await self.handle(records)
            self.guard.done()
        return len(records)


def register_agents(pipeline: Pipeline) -> tuple[Any, Any, Any]:
    """Add the agents to the pipeline's app; returns ``(detect, sink_minutes, sink_alerts)``."""
    p, app, s = pipeline, pipeline.app, pipeline.settings

    async def detect_records(records: list[Record], lap: Callable[[str], None] | None = None) -> None:
        proc = p.processor
        readings = [r for r in records if r.topic != s.topic_commands]
        # positions: a record a patient's state already holds is a replay (streams.state)
        out = proc.process([(r.key or b"", r.value) for r in readings], [(r.partition, r.offset) for r in readings])
        if len(readings) < len(records):
            out.extend(proc.commands((r.key or b"", r.value) for r in records if r.topic == s.topic_commands))
        if lap is not None:
            lap("batch_process")
        await p.emit(out)

    @app.agent(p.inputs, name="detect")
    async def detect(stream: Any) -> None:
        guard = p.gap_guard()
        p.rereads["detect"] = Reread(guard, p.state_lock, detect_records)
        stages = p.stages
        async for events in stream.take_events(s.worker_batch_size, within=s.worker_batch_window_s):
            # how long the oldest record of the batch has been in Kafka when the agent gets it
            stages.add("batch_age", batch_age_ms(events))
            # "batch" (also the Prometheus histogram): from taking the batch to Kafka having its alerts
            with stages.laps("batch") as lap:
                async with p.state_lock:  # held until Kafka has the alerts (see Pipeline.state_lock)
                    lap("batch_lock_wait")
                    records = await admit_or_restart(guard, events)  # with any records Faust skipped
                    await detect_records(records, lap)
                    guard.done()
                lap("batch_emit")

    async def write_minutes(records: list[Record]) -> None:
        # sealed per patient (wearwatch/datakeys.py): opened here, an erased patient's dropped
        lines = p.sink.lines_for_minutes(p.processor.open_minutes([r.value for r in records]))
        for i in range(0, len(lines), INFLUX_LINES_PER_WRITE):
            await p.write_with_retry(lines[i:i + INFLUX_LINES_PER_WRITE], "minutes")

    @app.agent(p.minutes, name="sink-minutes")
    async def sink_minutes(stream: Any) -> None:
        batches = p.rereads["sink-minutes"] = Reread(p.new_guard(s.topic_minutes), asyncio.Lock(), write_minutes)
        # a record holds up to MINUTES_PER_RECORD points; InfluxDB takes them in writes of a few thousand
        async for events in stream.take_events(100, within=1.0):
            await batches.take(events)

    async def write_alerts(records: list[Record]) -> None:
        await p.write_with_retry(p.sink.lines_for_alerts([r.value for r in records]), "alerts", "us")

    @app.agent(p.alerts, name="sink-alerts")
    async def sink_alerts(stream: Any) -> None:
        batches = p.rereads["sink-alerts"] = Reread(p.new_guard(s.topic_alerts), asyncio.Lock(), write_alerts)
        # alerts are few (tens per second at most): a short window puts them on Grafana boards
        # sooner (0.5 s gave a median of ~1 s from the reading to the point) at a few writes/s
        async for events in stream.take_events(500, within=0.1):
            p.stages.add("sink_alerts_age", batch_age_ms(events))
            await batches.take(events)

    return detect, sink_minutes, sink_alerts
