"""How long each step of the worker takes: one helper for every timing the worker reports.

:class:`StageTimes` keeps the longest time of each named stage since the last report (the
InfluxDB ``pipeline`` measurement's ``<stage>_max_ms`` fields, :mod:`streams.timers`) and hands
the times of chosen stages on to other sinks as well (:meth:`StageTimes.observe`: the whole
batch also feeds the Prometheus histogram ``wearwatch_processing_seconds``). Steps are timed
with :meth:`StageTimes.timed` (one step) or :meth:`StageTimes.laps` (consecutive steps of one
piece of work, each from the end of the previous one).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Laps", "StageTimes"]


class Laps:
    """Consecutive steps of one piece of work: each :meth:`__call__` records the time since the previous one."""

    __slots__ = ("_last", "_times")

    def __init__(self, times: StageTimes) -> None:
        self._times = times
        self._last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self._times.add(stage, (now - self._last) * 1000)
        self._last = now


class StageTimes:
    """Longest time (ms) each named worker stage took since the last :meth:`take`.

    Stages are the steps that hold the event loop or the state lock (a batch,
    the state write before a commit, the tick) plus ``loop_lag``: how late a
    50 ms sleep wakes up, i.e. how long the event loop was blocked. Reported
    with the worker's pipeline metrics so a latency spike can be pinned on a step.
    """

    def __init__(self) -> None:
        self.max_ms: dict[str, float] = {}
        self.max_n: dict[str, int] = {}
        self._gc_t0 = 0.0
        self._sinks: dict[str, Callable[[float], None]] = {}

    def observe(self, stage: str, sink: Callable[[float], None]) -> None:
        """Also give every time of ``stage`` to ``sink``, in seconds (e.g. a Prometheus histogram's ``observe``)."""
        self._sinks[stage] = sink

    def watch_gc(self) -> None:
        """Also record the garbage collector's pauses, as ``gc_gen0/1/2``."""
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        else:
            self.add(f"gc_gen{info['generation']}", (time.perf_counter() - self._gc_t0) * 1000)

    def add(self, stage: str, ms: float) -> None:
        if ms > self.max_ms.get(stage, 0.0):
            self.max_ms[stage] = ms
        sink = self._sinks.get(stage)
        if sink is not None:
            sink(ms / 1000)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Record how long the ``with`` block takes as ``stage`` (a block that raises is not recorded:
        a failed InfluxDB write, say, is not a write time)."""
        t0 = time.perf_counter()
        yield
        self.add(stage, (time.perf_counter() - t0) * 1000)

    @contextmanager
    def laps(self, whole: str) -> Iterator[Laps]:
        """Time consecutive steps (call the :class:`Laps` with each step's name at its end), and the whole
        ``with`` block as ``whole``."""
        laps = Laps(self)
        with self.timed(whole):
            yield laps

    def count(self, what: str, n: int) -> None:
        """Record a size (e.g. states written by one commit); reported as ``{what}_max``."""
        if n > self.max_n.get(what, 0):
            self.max_n[what] = n

    def take(self) -> dict[str, float]:
        out: dict[str, float] = {f"{k}_max_ms": round(v, 1) for k, v in self.max_ms.items()}
        out.update({f"{k}_max": float(v) for k, v in self.max_n.items()})
        self.max_ms, self.max_n = {}, {}
        return out

    async def watch_loop(self, interval_s: float = 0.05) -> None:
        """Run forever, recording how late each ``interval_s`` sleep wakes up as ``loop_lag``."""
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(interval_s)
            self.add("loop_lag", (loop.time() - t0 - interval_s) * 1000)
