"""The worker's runtime helpers: stage timings and the garbage-collection policy."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest

from streams.monitor import GcPolicy, QuietMonitor
from streams.stage_timing import StageTimes


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> Node:
    """One of two nodes that refer to each other: once the caller lets go of it, garbage only a collection frees."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a


def test_the_quiet_monitor_keeps_when_each_partition_last_took_a_record() -> None:
    # Faust's consumer tells a stream that stopped (or never started) from this mark; without it every partition
    # with records not fetched yet is reported at ERROR as a stream that has not started processing
    from faust.types import TP

    m = QuietMonitor()
    tp = TP("vitals.raw", 3)
    before = time.monotonic()
    assert m.on_stream_event_in(tp, 41, None, None) is None
    assert before <= m.stream_inbound_time[tp] <= time.monotonic()
    assert set(m.stream_inbound_time) == {tp}
    assert m.on_message_in(tp, 41, None) is None and m.on_stream_event_out(tp, 41, None, None) is None


def test_stage_times_keep_the_longest_per_stage_and_reset_on_take() -> None:
    st = StageTimes()
    st.add("batch", 3.0)
    st.add("batch", 12.5)
    st.add("batch", 7.0)
    st.add("commit", 1.0)
    st.count("states_written", 300)
    st.count("states_written", 40)
    assert st.take() == {"batch_max_ms": 12.5, "commit_max_ms": 1.0, "states_written_max": 300.0}
    assert st.take() == {}


def test_loop_lag_sees_a_blocked_event_loop() -> None:
    st = StageTimes()

    async def scenario() -> None:
        watcher = asyncio.ensure_future(st.watch_loop(0.01))
        await asyncio.sleep(0.03)
        __import__("time").sleep(0.2)  # a step that blocks the loop for 200 ms
        await asyncio.sleep(0.03)
        watcher.cancel()

    asyncio.run(scenario())
    assert 150 <= st.take()["loop_lag_max_ms"] < 1000


def test_frozen_cyclic_garbage_waits_for_the_full_collection() -> None:
    policy = GcPolicy(full_interval_s=3600)
    gc.collect()
    try:
        a = _cycle()
        ref = weakref.ref(a)
        policy.freeze()  # the pair survived: frozen
        assert gc.get_freeze_count() > 0
        del a
        gc.collect()
        assert ref() is not None  # the collector skips frozen objects
        policy.full_collect()
        assert ref() is None
        assert gc.get_freeze_count() > 0  # survivors are frozen again
    finally:
        gc.unfreeze()


def test_freeze_frees_young_cyclic_garbage_instead_of_freezing_it() -> None:
    policy = GcPolicy(full_interval_s=3600)
    gc.collect()
    try:
        ref = weakref.ref(_cycle())  # garbage in a cycle, made since the last freeze
        policy.freeze()
        assert ref() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_freeze_runs_the_full_collection_when_it_is_due() -> None:
    policy = GcPolicy(full_interval_s=0.0)
    try:
        ref = weakref.ref(_cycle())
        policy.freeze()  # due at once: unfreeze + collect
        assert ref() is None
    finally:
        gc.unfreeze()


def test_recovery_stall_is_time_since_the_last_changelog_record() -> None:
    from types import SimpleNamespace

    from streams.monitor import recovery_stalled_for

    assert recovery_stalled_for(None, 100.0) == 0.0
    idle = SimpleNamespace(in_recovery=False, _recovery_started_at=10.0, _active_events_received_at={})
    assert recovery_stalled_for(idle, 100.0) == 0.0
    nothing_yet = SimpleNamespace(in_recovery=True, _recovery_started_at=10.0, _active_events_received_at={})
    assert recovery_stalled_for(nothing_yet, 100.0) == 90.0
    reading = SimpleNamespace(in_recovery=True, _recovery_started_at=10.0,
                              _active_events_received_at={"tp0": 95.0, "tp1": 40.0})
    assert recovery_stalled_for(reading, 100.0) == 5.0


def test_laps_time_each_step_and_the_whole_and_feed_an_observer() -> None:
    st = StageTimes()
    seen: list[float] = []
    st.observe("batch", seen.append)
    with st.laps("batch") as lap:
        time.sleep(0.01)
        lap("batch_process")
        time.sleep(0.02)
        lap("batch_emit")
    out = st.take()
    assert set(out) == {"batch_max_ms", "batch_process_max_ms", "batch_emit_max_ms"}
    assert out["batch_process_max_ms"] >= 10 and out["batch_emit_max_ms"] >= 20
    assert out["batch_max_ms"] >= out["batch_process_max_ms"] + out["batch_emit_max_ms"] - 0.2
    assert len(seen) == 1 and round(seen[0] * 1000, 1) == out["batch_max_ms"]  # seconds, once per batch


def test_a_timed_block_that_raises_is_not_recorded() -> None:
    st = StageTimes()
    with st.timed("influx_alerts"):
        pass
    with pytest.raises(ValueError), st.timed("influx_minutes"):
        raise ValueError("InfluxDB refused the write")
    assert set(st.take()) == {"influx_alerts_max_ms"}


_MAPPED_AFTER_A_BIG_FREE = r"""
import ctypes, ctypes.util, sys
from streams.monitor import fix_malloc_thresholds

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    assert fix_malloc_thresholds(128 * 1024)
libc.free(libc.malloc(8 << 20))  # a freed 8-MB block: glibc's own threshold rises to 8 MB
before = libc.mallinfo2().hblks
block = libc.malloc(512 * 1024)
print(libc.mallinfo2().hblks - before)  # 1: a mapping of its own; 0: from the heap
libc.free(block)
"""


def test_fixed_malloc_thresholds_keep_big_blocks_out_of_the_heap() -> None:
    """After a big block is freed glibc serves the next 512-KB ones from its heap (where what they leave free
    stays resident); with the thresholds fixed they get mappings of their own, returned when freed."""
    import subprocess
    import sys
    from pathlib import Path

    from streams.monitor import fix_malloc_thresholds

    root = str(Path(__file__).resolve().parents[1])

    def mapped(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _MAPPED_AFTER_A_BIG_FREE, mode], capture_output=True, text=True,
                             check=True, env={"PYTHONPATH": root, "PATH": ""})
        return int(out.stdout)

    assert (mapped("default"), mapped("fixed")) == (0, 1)
    assert fix_malloc_thresholds(0) is False  # 0: glibc's default kept
