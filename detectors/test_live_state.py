"""The compact live form of the detectors' state behaves and stores exactly as the plain one did."""

from __future__ import annotations

import pickle
import sys

from detectors import ActivityTracker, DeviceQuality, GlucoseDetector, HeartRateDetector
from detectors.episodes import IDLE

_MIN = 60_000


def test_activity_minutes_beyond_four_bytes_widen_the_ring() -> None:
    # epoch minutes fit 4 bytes until the year 6053; a minute beyond (or far before 1970) must still work
    near, far = ActivityTracker(), ActivityTracker()
    for m in range(20):
        near.update(29_000_000 * _MIN + m * _MIN, 0.0)
    assert near._ring is not None and near._ring.typecode == "i"
    assert sys.getsizeof(near._ring) == sys.getsizeof(near._ring[:])  # one array, no spare room
    big = 2**33
    for m in range(20):
        far.update((big + m) * _MIN, float(m))
    assert far._ring is not None and far._ring.typecode == "d"
    n = int(far.config.rest_window_s // 60) + 1  # the minutes summed, the current one (no data) included
    assert not far.at_rest((big + 20) * _MIN) and far.steps_in_window((big + 20) * _MIN) == sum(range(21 - n, 20))
    assert far.dump_state() == ([big + 16 + k if k < 4 else big + k for k in range(16)],
                                [float(16 + k if k < 4 else k) for k in range(16)])
    back = pickle.loads(pickle.dumps(far))
    assert back.dump_state() == far.dump_state() and back._ring is not None and back._ring.typecode == "d"
    assert all(type(m) is int for m in far.dump_state()[0])
    near_back = pickle.loads(pickle.dumps(near))
    assert near_back._ring is not None and near_back._ring.typecode == "i"
    assert pickle.dumps(near_back.dump_state()) == pickle.dumps(near.dump_state())


def _feed_hr(hr: HeartRateDetector, seconds: range, gap_at: int = -1) -> list[tuple[str, bool, int]]:
    a = ActivityTracker()
    out = []
    for s in seconds:
        if s == gap_at:
            continue
        t = s * 1000 + (30 * 60_000 if gap_at >= 0 and s > gap_at else 0)
        if s % 60 == 0:
            a.update(t, 0.0)
        bpm = 62.0 + (s // 5) % 7 + (70.0 if 20 * 60 <= s < 40 * 60 else 0.0)
        out += [(f.kind, f.cleared, f.ts_ms) for f in hr.update(t, bpm, a)]
    return out


def test_heart_rate_windows_keep_their_exact_size() -> None:
    hr = HeartRateDetector()
    _feed_hr(hr, range(0, 40 * 60, 5))
    assert len(hr._samples) == 20 and hr._ring is None  # the ring is the samples' tail
    assert hr._median is not None and len(hr._median) == hr.config.hr_median_window
    sizes = [sys.getsizeof(x) for x in (hr._samples, hr._median)]
    assert sizes == [sys.getsizeof(x[:]) for x in (hr._samples, hr._median)]  # no spare room


def test_heart_rate_ring_as_the_samples_tail_is_the_ring_of_its_own() -> None:
    # the abrupt-change ring is kept as the bradycardia samples' tail; a state whose ring is its own (a
    # shorter bradycardia window, or a stored ring that is not that tail) goes on the same
    seconds = range(0, 90 * 60, 5)
    tail, own = HeartRateDetector(), HeartRateDetector()
    _feed_hr(tail, range(0, 10 * 60, 5))
    _feed_hr(own, range(0, 10 * 60, 5))
    own._ring = own._samples[-13:]  # as if stored so
    rest = range(10 * 60, 90 * 60, 5)
    out_tail, out_own = _feed_hr(tail, rest, gap_at=60 * 60), _feed_hr(own, rest, gap_at=60 * 60)
    assert out_tail == out_own and any(k == "hr_abrupt_change" for k, _c, _t in out_tail)
    assert tail.dump_state() == own.dump_state() and tail._ring is None and own._ring is not None
    back = HeartRateDetector.__new__(HeartRateDetector)
    back.load_state(tail.config, pickle.loads(pickle.dumps(own.dump_state())))
    assert back._ring is None  # a stored ring that is the tail is kept as the tail
    short = tail.config.with_overrides({"hr_low_robust_window_s": 240.0})  # 8 samples: shorter than the ring
    a, b = HeartRateDetector(short), HeartRateDetector(short)
    _feed_hr(a, range(0, 10 * 60, 5))
    assert a._ring is not None and len(a._ring) == 13 and len(a._samples) == 8
    b.load_state(short, (*pickle.loads(pickle.dumps(a.dump_state())),))
    assert _feed_hr(a, seconds[120:]) == _feed_hr(b, seconds[120:])


def test_device_quality_counts_implausible_values_per_signal() -> None:
    q = DeviceQuality()
    assert q.implausible_count == [0, 0, 0] and q.dump_state()[:2] == (None, [])
    q.check(1, 0, 5.0)
    q.check(0, 1_000, 300.0)
    q.check(1, 2_000, 700.0)
    assert q.implausible_count == [1, 2, 0]
    back = pickle.loads(pickle.dumps(q))
    assert pickle.dumps(back.dump_state()) == pickle.dumps(q.dump_state()) and back.implausible_count == [1, 2, 0]
    fresh = DeviceQuality()
    fresh.check(0, 0, 70.0)
    assert fresh._bad_ts is DeviceQuality()._bad_ts  # the shared no-implausible times until a first one


def test_device_signals_without_episodes_share_one_idle_list_never_written() -> None:
    from detectors.quality import _IDLE3

    q = DeviceQuality()
    for k in range(200):  # heart rate only, a stuck value for a while, then silence
        q.check(0, k * 5_000, 70.0 if 40 <= k < 60 else 60.0 + k % 5)
    q.tick(200 * 5_000 + 3_600_000)
    assert q._eps[1] is _IDLE3 and q._eps[2] is _IDLE3  # glucose and steps: never sent
    assert q._eps[0] is not _IDLE3 and q.stale[0].onset_ms >= 0 and q.flat[0].last_onset_ms < 0
    q.check(1, 10_000_000, 700.0)  # a glucose glitch: the implausible count starts, still no episode
    q.check(1, 10_005_000, 700.0)
    q.check(1, 10_010_000, 700.0)
    q.check(1, 10_015_000, 700.0)  # the fourth within 30 min: reported, glucose gets its own list
    assert q._eps[1] is not _IDLE3 and q.implausible[1].onset_ms >= 0 and q._eps[2] is _IDLE3
    assert _IDLE3 == [IDLE, IDLE, IDLE] and all(e is IDLE for e in _IDLE3)
    back = pickle.loads(pickle.dumps(q))
    assert back._eps[2] is _IDLE3 and pickle.dumps(back.dump_state()) == pickle.dumps(q.dump_state())


def test_glucose_detectors_without_episodes_share_one_idle_list_never_written() -> None:
    from detectors.glucose import _ALL_IDLE

    g, low = GlucoseDetector(), GlucoseDetector()
    for k in range(24):
        g.update(k * 300_000, 120.0 + k % 3)
        low.update(k * 300_000, 120.0 - 4.0 * k)  # falls to 28 mg/dL: urgent low
    low.update(10 * 300_000, 40.0)  # a late reading too
    assert g.episodes is _ALL_IDLE and low.episodes is not _ALL_IDLE
    assert any(ep.onset_ms >= 0 for ep in low.episodes)
    assert all(ep is IDLE for ep in _ALL_IDLE) and len(_ALL_IDLE) == len(low.episodes)
    for part in (g, low):
        back = pickle.loads(pickle.dumps(part))
        assert pickle.dumps(back.dump_state()) == pickle.dumps(part.dump_state())
        assert (back.episodes is _ALL_IDLE) == (part is g)


def test_activity_counts_are_whole_integers_until_one_is_not() -> None:
    whole, odd = ActivityTracker(), ActivityTracker()
    for m in range(16):
        whole.update(m * _MIN, float(m % 4 * 10))
        odd.update(m * _MIN, float(m % 4 * 10))
    assert whole._ring is not None and whole._ring.typecode == "i"
    assert whole.dump_state()[1] == [float(m % 4 * 10) for m in range(16)]
    assert all(type(x) is float for x in whole.dump_state()[1])
    for k, x in enumerate((2.5, -0.0)):  # a fractional count, a negative zero: kept exactly, as doubles
        t = ActivityTracker()
        t.update(0, 1.0)
        t.update(_MIN, x)
        assert t._ring is not None and t._ring.typecode == "d", k
        assert pickle.dumps(t.dump_state()[1][1]) == pickle.dumps(x), k
    odd.update(16 * _MIN, 0.5)
    assert odd._ring is not None and odd._ring.typecode == "d"
    assert odd.steps_in_window(16 * _MIN) == whole.steps_in_window(16 * _MIN) - 0.0 + 0.5
    for t in (whole, odd):
        back = pickle.loads(pickle.dumps(t))
        assert back._ring is not None and t._ring is not None and back._ring.typecode == t._ring.typecode
        assert pickle.dumps(back.dump_state()) == pickle.dumps(t.dump_state())


def test_glucose_window_keeps_its_exact_size() -> None:
    g = GlucoseDetector()
    for k in range(30):  # 2.5 hours: the 25-minute window fills, then drops a reading for each it takes
        g.update(k * 300_000, 120.0 + k % 4)
        w = g._window
        assert w is not None and len(w) == 2 * min(k + 1, 6) and sys.getsizeof(w) == sys.getsizeof(w[:])
        assert w[0::2].tolist() == [float(j * 300_000) for j in range(max(k - 5, 0), k + 1)]
        assert g.last_ts == k * 300_000 and type(g.last_ts) is int
    back = pickle.loads(pickle.dumps(g))
    assert pickle.dumps(back.dump_state()) == pickle.dumps(g.dump_state())
    times, values = g.dump_state()[:2]
    assert times == [j * 300_000 for j in range(24, 30)] and all(type(t) is int for t in times)
    assert values == [120.0 + j % 4 for j in range(24, 30)]
    assert GlucoseDetector().dump_state()[:2] == (None, [])


def test_heart_rate_detectors_without_episodes_share_one_idle_list_never_written() -> None:
    from detectors.episodes import IDLE_FIELDS, EpisodeStarts, idle_fields, own_episode
    from detectors.heart_rate import _ALL_IDLE

    calm, fast = HeartRateDetector(), HeartRateDetector()
    plain = HeartRateDetector()
    plain.episodes = [IDLE] * len(_ALL_IDLE)  # the detector's own list from the start: how it was before
    a = ActivityTracker()
    outs: list[list[tuple[str, bool, int]]] = [[], [], []]
    for s in range(0, 40 * 60, 5):
        t = s * 1000
        if s % 60 == 0:
            a.update(t, 0.0)
        outs[0] += [(f.kind, f.cleared, f.ts_ms) for f in calm.update(t, 64.0 + s % 3, a)]
        bpm = 140.0 if 10 * 60 <= s < 30 * 60 else 70.0  # twenty minutes of tachycardia at rest
        outs[1] += [(f.kind, f.cleared, f.ts_ms) for f in fast.update(t, bpm, a)]
        outs[2] += [(f.kind, f.cleared, f.ts_ms) for f in plain.update(t, bpm, a)]
    assert outs[0] == [] and calm.episodes is _ALL_IDLE
    assert [k for k, c, _t in outs[1] if not c].count("tachycardia_at_rest") == 1 and outs[1] == outs[2]
    assert fast.episodes is not _ALL_IDLE and pickle.dumps(fast.dump_state()) == pickle.dumps(plain.dump_state())
    assert all(ep is IDLE for ep in _ALL_IDLE) and idle_fields() == IDLE_FIELDS
    try:
        own_episode(_ALL_IDLE, 0)
    except EpisodeStarts:
        pass
    else:
        raise AssertionError("an episode was made in the shared idle list")
    assert all(ep is IDLE for ep in _ALL_IDLE)
    for part in (calm, fast):
        back = pickle.loads(pickle.dumps(part))
        assert pickle.dumps(back.dump_state()) == pickle.dumps(part.dump_state())
        assert (back.episodes is _ALL_IDLE) == (part is calm)
