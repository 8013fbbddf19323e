"""What the worker does on Faust's app signals: partitions revoked and assigned, rebalance complete, shutdown.

Around a rebalance the cached patient states are dropped twice — when partitions are revoked,
and when the table's changelogs are recovered (states loaded while recovery was still filling
the table would be older than the committed offsets) — and the tick is held off in between
(:attr:`streams.app.Pipeline.serving`, also the ``tables`` readiness check).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.app import Pipeline

__all__ = ["connect_signal_handlers"]

log = logging.getLogger(__name__)


def connect_signal_handlers(pipeline: Pipeline) -> None:
    """Connect the worker's handlers to the pipeline app's signals (call once, when building it)."""
    p, app, proc = pipeline, pipeline.app, pipeline.processor
    #: when the last assignment came, and the changelog records recovered until then
    recovery_from = [time.monotonic(), 0]

    async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        p.serving = False
        p.revocations += 1  # a state write in progress must not let its commit through
        proc.forget()
        p.forget_synced_alert_states()  # re-written for the partitions this worker gets next

    async def on_rebalance_complete(sender: Any, *args: Any, **kwargs: Any) -> None:
        # sent once the table's changelogs are recovered, before the streams resume:
        # drop anything loaded while recovery was still filling the table
        proc.forget()
        for guard in p.guards:
            guard.reset()
        p.serving = True
        log.info("patient-state table recovered: %d changelog records read in %.1f s (store: %s)",
                 p.changelog_recovered - recovery_from[1], time.monotonic() - recovery_from[0],
                 p.settings.worker_store)

    async def on_assigned(sender: Any, assigned: Any = (), **kwargs: Any) -> None:
        log.info("worker assigned %d partitions", len(assigned))
        recovery_from[:] = [time.monotonic(), p.changelog_recovered]
        p.assigned_partitions = sorted(tp.partition for tp in assigned if tp.topic == p.settings.topic_vitals)
        try:  # compacted: must exist before its first record (else the broker makes it with defaults)
            await p.alert_state.maybe_declare()
        except Exception as exc:  # the console service creates it as well
            log.warning("could not declare %s: %s", p.settings.topic_alert_state, type(exc).__name__)
        p.gap_guard()  # hooks write_states into the consumer's commits

    async def on_shutdown(sender: Any, *args: Any, **kwargs: Any) -> None:
        await p.states_out.stop()
        await p.records_out.stop()
        for guard in p.guards:  # their side-channel consumers, if a skip ever needed one
            close = getattr(guard.fetch, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    app.on_before_shutdown.connect(on_shutdown)  # type: ignore[arg-type]
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
    app.on_rebalance_complete.connect(on_rebalance_complete)  # type: ignore[arg-type]
