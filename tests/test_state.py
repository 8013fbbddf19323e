"""Unit tests of the worker's per-patient state: dedupe, lateness, 1-minute aggregates."""

from __future__ import annotations

import pickle
import pickletools
import random

from alerts.lifecycle import AlertBook
from detectors import PatientMonitor
from streams.state import LATENESS_S, MINUTE_GRACE_MS, PatientState

T0 = 1_780_000_020_000  # 20 s into a minute


def test_admit_new_duplicate_late() -> None:
    st = PatientState(monitor=None)
    assert st.admit("heart_rate", T0) == "new"
    assert st.admit("heart_rate", T0) == "duplicate"
    assert st.admit("heart_rate", T0 + 400) == "duplicate"  # same second
    assert st.admit("heart_rate", T0 + 5000) == "new"
    assert st.admit("heart_rate", T0 - 30_000) == "new"  # out of order, within tolerance
    assert st.admit("heart_rate", T0 - 30_000) == "duplicate"
    assert st.admit("heart_rate", T0 + 5000 - LATENESS_S * 1000) == "late"
    assert st.admit("glucose", T0) == "new"  # signals are independent
    # a jump forward larger than the window forgets the old seconds cleanly
    assert st.admit("heart_rate", T0 + 10 * LATENESS_S * 1000) == "new"
    assert st.admit("heart_rate", T0 + 5000) == "late"


def test_admit_matches_the_per_signal_bitmaps_of_the_stored_form() -> None:
    """The live flat list classifies exactly as the per-signal bitmap objects earlier states pickled
    (``_SeenSeconds``), signals keep the order they were first seen in, and a state rebuilt from either form
    classifies the same from there on."""
    from streams.state import _SeenSeconds

    rng = random.Random(11)
    st = PatientState(monitor=None)
    ref: dict[str, _SeenSeconds] = {}
    signals = ["glucose", "heart_rate", "steps"]
    newest = {s: T0 for s in signals}
    verdicts = {"new": 0, "duplicate": 0, "late": 0}
    for i in range(20_000):
        sig = signals[rng.randrange(3)]
        if rng.random() < 0.7:
            newest[sig] += rng.randrange(0, 8000)
            ts = newest[sig]
        else:
            ts = newest[sig] - rng.randrange(0, (LATENESS_S + 60) * 1000)
        if i == 10_000:  # through the stored form, with bitmap objects as earlier states held them
            st2 = PatientState(monitor=None)
            st2.seen = {s: _SeenSeconds.from_state(pair) for s, pair in st.seen.items()}
            st = st2
        expected = ref.setdefault(sig, _SeenSeconds()).classify(ts // 1000)
        assert st.admit(sig, ts) == expected
        verdicts[expected] += 1
        assert st.knows(sig)
    assert list(st.seen) == list(ref)  # the order first seen, which the stored form keeps
    assert st.seen == {s: b.dump_state() for s, b in ref.items()}
    assert min(verdicts.values()) > 500  # every verdict was exercised
    assert not PatientState(monitor=None).knows("heart_rate")


def test_aggregates_close_after_grace_and_exact_values() -> None:
    st = PatientState(monitor=None)
    minute = T0 - T0 % 60_000
    for i, v in enumerate([60.0, 70.0, 80.0]):
        assert st.aggregate("heart_rate", T0 + i * 5000, v)
    assert st.close_minutes() == []
    # stream time moves past minute end + grace
    st.aggregate("heart_rate", minute + 60_000 + MINUTE_GRACE_MS, 90.0)
    (agg,) = st.close_minutes()
    assert (agg.signal, agg.minute_ms, agg.mean, agg.min, agg.max, agg.sum, agg.count) == (
        "heart_rate", minute, 70.0, 60.0, 80.0, 210.0, 3,
    )
    # a reading for the closed minute does not reopen (and so never overwrite) it
    assert not st.aggregate("heart_rate", T0, 100.0)
    assert [a.count for a in st.close_minutes(force=True)] == [1]


def test_state_pickles_compactly() -> None:
    st = PatientState(monitor=None)
    for i in range(2000):
        st.admit("heart_rate", T0 + i * 5000)
        st.aggregate("heart_rate", T0 + i * 5000, 70.0)
        st.close_minutes()
    blob = pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL)
    back = pickle.loads(blob)
    assert back.newest_ms == st.newest_ms and back.buckets == st.buckets
    assert back.admit("heart_rate", T0 + 1999 * 5000) == "duplicate"
    assert len(blob) < 1024


def test_state_with_monitor_and_book_round_trip_behaves_the_same() -> None:
    def feed(st: PatientState, readings: list[tuple[str, int, float]]) -> list[object]:
        out: list[object] = []
        for signal, ts, v in readings:
            if st.admit(signal, ts) == "new":
                st.aggregate(signal, ts, v)
                for f in st.monitor.update(signal, ts, v):
                    out += st.book.on_finding(f)
                out += st.close_minutes()
        return out + st.book.tick(st.newest_ms)

    glucose = [110, 100, 90, 80, 70, 60, 50, 48, 50, 60, 70, 80, 90, 100, 110, 110, 110, 110]
    readings = sorted([("glucose", T0 + i * 300_000, float(v)) for i, v in enumerate(glucose)]
                      + [("heart_rate", T0 + i * 5_000, 70.0 + i % 4) for i in range(18 * 60)]
                      + [("steps", T0 + i * 60_000, 0.0) for i in range(90)], key=lambda r: r[1])
    cut = len(readings) // 3  # two alerts open (urgent low soon, falling fast); the urgent low comes later
    st = PatientState(PatientMonitor(), AlertBook("p-1", ward="3B"))
    assert feed(st, readings[:cut])
    blob = pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL)
    # three objects (state, monitor, book), everything in them builtins: each object costs ~1 µs per commit
    assert [op.name for op, _arg, _pos in pickletools.genops(blob)].count("STACK_GLOBAL") == 3
    back = pickle.loads(blob)
    assert (back.seen.keys(), back.buckets, back.newest_ms) == (st.seen.keys(), st.buckets, st.newest_ms)
    later = readings[cut:]
    assert feed(back, later) == feed(st, later) != []
    assert pickle.loads(pickle.dumps(back)).book.open_alerts() == st.book.open_alerts()


def test_idle_close_then_more_readings_rewrites_the_whole_minute() -> None:
    st = PatientState(monitor=None)
    minute = T0 - T0 % 60_000
    st.aggregate("heart_rate", T0, 60.0)
    st.aggregate("heart_rate", T0 + 5000, 70.0)
    (partial,) = st.close_minutes(force=True)  # the patient went silent: write what we have
    assert (partial.count, partial.sum) == (2, 130.0)
    assert st.close_minutes(force=True) == []  # unchanged: nothing to rewrite
    st.aggregate("heart_rate", T0 + 10_000, 80.0)  # more readings of the same minute arrive
    st.aggregate("heart_rate", minute + 60_000 + MINUTE_GRACE_MS, 90.0)
    full = [a for a in st.close_minutes() if a.minute_ms == minute]
    assert [(a.count, a.sum, a.min, a.max) for a in full] == [(3, 210.0, 60.0, 80.0)]


def _reference_close(buckets: dict[tuple[str, int], list[float]], newest_ms: int, force: bool) -> list[tuple]:
    """close_minutes without its cached due time: every bucket, in order, every call."""
    out = []
    for key in sorted(buckets):
        b = buckets[key]
        closed = key[1] + 60_000 + MINUTE_GRACE_MS <= newest_ms
        if closed:
            del buckets[key]
        if (closed or force) and b[4]:
            b[4] = 0.0
            out.append((key[0], key[1], b[0] / b[3], b[1], b[2], b[0], int(b[3])))
    return out


def test_close_minutes_fast_path_matches_a_full_scan_under_disorder_forces_and_pickling() -> None:
    rng = random.Random(7)
    st = PatientState(monitor=None)
    ref: dict[tuple[str, int], list[float]] = {}
    ts, closed = T0, 0
    for i in range(20_000):
        ts += rng.choice((0, 1000, 5000, 5000, 30_000, 200_000))
        signal = rng.choice(("heart_rate", "steps", "glucose"))
        at = ts - rng.choice((0, 0, 0, 4000, 70_000, 170_000))  # in order, slightly late, a minute or more late
        value = float(rng.randint(40, 200))
        newest_before = st.newest_ms
        accepted = st.aggregate(signal, at, value)
        minute = at - at % 60_000
        assert accepted == (minute + 60_000 + MINUTE_GRACE_MS > newest_before)
        if accepted:
            b = ref.get((signal, minute))
            if b is None:
                ref[(signal, minute)] = [value, value, value, 1.0, 1.0]
            else:
                b[0] += value
                b[1], b[2], b[3], b[4] = min(b[1], value), max(b[2], value), b[3] + 1.0, 1.0
        force = rng.random() < 0.02
        got = [(a.signal, a.minute_ms, a.mean, a.min, a.max, a.sum, a.count) for a in st.close_minutes(force)]
        assert got == _reference_close(ref, st.newest_ms, force)
        closed += len(got)
        if i % 997 == 0:
            st = pickle.loads(pickle.dumps(st))  # the cache is not state: a restored state recomputes it
        assert st.buckets == ref
    assert closed > 1000


def test_positions_tell_replays_and_survive_pickling() -> None:
    st = PatientState(monitor=None)
    assert not st.replayed(2, 0)
    st.fold_position(2, 41)
    assert st.replayed(2, 41) and st.replayed(2, 7) and not st.replayed(2, 42)
    assert not st.replayed(5, 3)  # offsets are per partition
    st.fold_position(2, 30)  # never moves back
    assert st.positions == {2: 41}
    st.fold_position(5, 3)  # another partition (the topic was repartitioned): kept apart
    assert st.positions == {2: 41, 5: 3} and st.replayed(5, 3) and not st.replayed(5, 4) and st.replayed(2, 41)
    st.fold_position(5, 9)
    st.fold_position(2, 50)
    assert st.positions == {2: 50, 5: 9}
    st.positions = {2: 41}
    back = pickle.loads(pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL))
    assert back.positions == {2: 41} and back.replayed(2, 41) and not back.replayed(2, 42)


def test_a_state_stored_before_positions_existed_still_loads() -> None:
    from streams.state import _restore_state

    # what __reduce__ gave before: five arguments, no positions; every record is new input to it
    old = _restore_state(None, None, {"heart_rate": (1_780_000_020, 1)}, {}, T0)
    assert old.positions == {} and not old.replayed(0, 0)
    assert old.admit("heart_rate", T0) == "duplicate"


def test_positions_cost_a_few_bytes_per_state() -> None:
    st = PatientState(monitor=None)
    for i in range(200):
        st.admit("heart_rate", T0 + i * 5000)
        st.aggregate("heart_rate", T0 + i * 5000, 70.0)
        st.close_minutes()
    without = len(pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL))
    st.fold_position(3, 123_456_789)
    assert len(pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL)) - without <= 12
