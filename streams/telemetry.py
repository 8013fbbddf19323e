"""The worker's Prometheus metrics and readiness checks (served by :mod:`streams.web`).

One :class:`WorkerTelemetry` per worker: a :class:`wearwatch.metrics.Telemetry` registry
with the :class:`wearwatch.metrics.WorkerMetrics` families and three readiness checks:

``partitions``
    the consumer group gave this worker at least one partition of ``vitals.raw``
    (a worker beyond the number of partitions stays unready: it has nothing to do);
``tables``
    the patient-state table is recovered from its changelog and the agents process
    again (false from a revocation until the rebalance is complete);
``producers``
    the Kafka producers that carry alerts, states and records are started.

The counters are kept by :class:`streams.processing.BatchProcessor` as plain counts (no
lock, no Prometheus call per reading) and copied into the Prometheus counters when
``/metrics`` is scraped (:meth:`WorkerTelemetry.refresh`); the consumer lag is read then
too. The batch histogram is fed by the pipeline's stage timing (:mod:`streams.stage_timing`, stage
``batch``). Only bounded labels: signal, dead-letter reason, alert kind/priority/state, partition.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from wearwatch.metrics import Telemetry, WorkerMetrics

if TYPE_CHECKING:
    from streams.app import Pipeline

__all__ = ["WorkerTelemetry"]


#: the processor's counts behind ``wearwatch_worker_state_cache_total{event="packed"|"unpacked"}``
_CACHE_EVENTS = ("states_packed", "states_unpacked")


class _CounterSync:
    """Copies growing counts (``{label values: count}``) into a labelled Prometheus counter."""

    def __init__(self, counter: Counter, labels: Callable[[Any], dict[str, str]]) -> None:
        self.counter = counter
        self.labels = labels
        self.seen: dict[Hashable, int] = {}

    def update(self, counts: dict[Any, int]) -> None:
        for key, n in list(counts.items()):
            delta = n - self.seen.get(key, 0)
            if delta > 0:
                self.counter.labels(**self.labels(key)).inc(delta)
                self.seen[key] = n


class WorkerTelemetry:
    """The worker's registry, metric families and readiness, reading a :class:`Pipeline`."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.telemetry = Telemetry("worker")
        self.registry = self.telemetry.registry
        self.readiness = self.telemetry.readiness
        self.metrics = m = WorkerMetrics(self.registry)
        self._readings = _CounterSync(m.readings, lambda signal: {"signal": signal})
        self._dead = _CounterSync(m.dead_letters, lambda reason: {"reason": reason})
        self._alerts = _CounterSync(
            m.alert_events, lambda k: {"kind": k[0], "priority": k[1], "state": k[2]})
        self._state_cache = _CounterSync(m.state_cache, lambda event: {"event": event})
        self.readiness.register("partitions", self._partitions_ready)
        self.readiness.register("tables", self._tables_ready)
        self.readiness.register("producers", self._producers_ready)

    def refresh(self) -> None:
        """Bring the counters and the gauges up to date (before each scrape)."""
        proc = self.pipeline.processor
        self._readings.update(proc.signals)
        self._dead.update({k[4:]: n for k, n in proc.stats.items() if k.startswith("dlq:")})
        self._alerts.update(proc.alert_events)
        self._state_cache.update({k[7:]: n for k, n in proc.stats.items() if k in _CACHE_EVENTS})
        self.metrics.patients.set(len(proc.cache) + len(proc.packed))
        self.metrics.store_memory.set(self.pipeline.store_memory_bytes())
        lag = self.metrics.consumer_lag
        lags = self.pipeline.partition_lags()
        lag.clear()  # partitions this worker gave up disappear
        for partition, n in sorted((lags or {}).items()):
            lag.labels(partition=str(partition)).set(n)

    # ------------------------------------------------------------------ readiness checks
    def _partitions_ready(self) -> tuple[bool, str]:
        held = self.pipeline.assigned_partitions
        if not held:
            return False, "no partition of the readings topic assigned"
        return True, f"{len(held)} partitions of the readings topic assigned"

    def _tables_ready(self) -> tuple[bool, str]:
        p = self.pipeline
        recovery = getattr(p.app.tables, "recovery", None)
        if getattr(recovery, "in_recovery", False):
            return False, "patient-state table recovering from its changelog"
        if not p.serving:
            return False, "waiting for the rebalance to complete"
        return True, "patient-state table recovered"

    def _producers_ready(self) -> tuple[bool, str]:
        p = self.pipeline
        waiting = [name for name, ok in (("alerts", bool(p.app.producer.started)),
                                         ("states", p.states_out.started),
                                         ("records", p.records_out.started)) if not ok]
        if waiting:
            return False, f"producers not started: {', '.join(waiting)}"
        return True, "producers started"
