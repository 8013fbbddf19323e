"""A Faust monitor without per-record bookkeeping.

Faust's default :class:`faust.sensors.Monitor` times every record in and out of
every stream and every send (weak-key dictionaries, deques): about 5 µs per
record here, for statistics wearwatch does not use (the worker reports its own
metrics: :mod:`streams.stage_timing`, :mod:`streams.telemetry`). Rebalance, commit and assignment
statistics are kept, and the time each partition's stream last took a record, which Faust's
consumer uses to tell a stalled stream.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from time import monotonic
from typing import Any

from faust.sensors import Monitor

__all__ = ["RESTART_EXIT_CODE", "GcPolicy", "QuietMonitor", "fix_malloc_thresholds", "recovery_stalled_for"]


class QuietMonitor(Monitor):
    """:class:`faust.sensors.Monitor` minus the per-record and per-send hooks."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> Any:
        # the one per-record mark kept: when the partition's stream last took a record. Faust's consumer
        # checks it every few seconds (verify_event_path); without it, every partition that had records
        # not yet fetched at a check was logged at ERROR as a stream that "has not started processing"
        # — dozens to thousands of lines a run, burying a real stall
        self.stream_inbound_time[tp] = monotonic()
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_table_get(self, table: Any, key: Any) -> None:
        return None

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        return None

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> Any:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        return None


#: the worker's exit code for "restart me" (EX_TEMPFAIL): a supervisor (compose's restart policy,
#: systemd, Kubernetes) starts it again, and it recovers its tables from the changelog
RESTART_EXIT_CODE = 75


def recovery_stalled_for(recovery: Any, now: float) -> float:
    """Seconds Faust's table recovery has gone without a changelog record (0 when not recovering).

    faust-streaming 0.15 can stop fetching while it recovers a table after a fail-over
    rebalance (seen here in about 1 of 6 fail-over runs: "No event received for active
    tp ... since recovery start", forever; cf. faust-streaming/faust#74). Nothing is lost
    — offsets stay uncommitted — but nothing is processed either, so the worker uses
    this to give up and be restarted instead of holding its patients' alerts back.
    """
    if not getattr(recovery, "in_recovery", False):
        return 0.0
    started = getattr(recovery, "_recovery_started_at", None)
    if started is None:
        return 0.0
    received = getattr(recovery, "_active_events_received_at", {}) or {}
    last = max([started, *received.values()])
    return max(0.0, now - last)


class GcPolicy:
    """Keeps Python's full garbage collections off the worker's latency path.

    The worker holds tens of thousands of patient states (~66 tracked objects each:
    650,000 objects at 10,000 patients), and every full (generation 2) collection walks
    all of them: 300-570 ms with the event loop blocked, measured at 2,000 readings/s,
    a few times a minute — most of the alerts' p99 latency. :meth:`freeze` (called
    every second) moves the objects that survived so far into the permanent
    generation, which the collector skips; young objects are still collected as usual.
    Objects that die by reference count are freed as always. Before it freezes, it collects
    what is not frozen yet (the last second's survivors: ~1.3 ms a second at 1,000 patients),
    so reference cycles that die young are freed instead of frozen: the Kafka clients make
    one per poll, and frozen they held ~35 MB per worker until the first full collection.
    Only cyclic garbage among objects that outlived a freeze waits for :meth:`full_collect`,
    every ``full_interval_s``, which unfreezes and collects everything once.
    """

    def __init__(self, full_interval_s: float) -> None:
        self.full_interval_s = full_interval_s
        self._last_full = time.monotonic()

    def freeze(self) -> None:
        """Collect and then freeze the survivors, or run the periodic full collection when it is due."""
        if time.monotonic() - self._last_full >= self.full_interval_s:
            self.full_collect()
        else:
            gc.collect()  # walks only what is not frozen yet: the last second's survivors
            gc.freeze()

    def full_collect(self) -> int:
        """Unfreeze and collect everything (the periodic full collection); objects freed."""
        gc.unfreeze()
        freed = gc.collect()
        self._last_full = time.monotonic()
        gc.freeze()
        return freed


#: glibc's mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def fix_malloc_thresholds(threshold_bytes: int) -> bool:
    """Have glibc's allocator serve every block of at least ``threshold_bytes`` from its own mapping and give
    free memory at the top of its heaps back above that much; whether it was set (False: not glibc, or 0).

    By default glibc raises its mapping threshold each time such a block is freed (up to 32 MB): the Kafka
    clients' fetched batches, the encoded state writes and the decoded readings of a batch then come from
    the heaps, and what they leave free between the patient states stays resident. Fixed thresholds keep
    those buffers out of the heaps, at the cost of a mapping per buffer: at 100,000 patients 0.74 KB less
    RSS per patient for 13 % fewer readings per second in one pair of runs (bench/README.md), so it is an
    option (``WEARWATCH_WORKER_MALLOC_THRESHOLD_KB``), off by default. Equivalent to ``MALLOC_MMAP_THRESHOLD_``
    and ``MALLOC_TRIM_THRESHOLD_`` in the environment.
    """
    if threshold_bytes <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl has no mallopt to speak of)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold_bytes))
