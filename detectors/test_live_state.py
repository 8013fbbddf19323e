"""The compact live form of the detectors' state behaves and stores exactly as the plain one did."""

from __future__ import annotations

import pickle
import sys

from detectors import ActivityTracker, DeviceQuality, HeartRateDetector

_MIN = 60_000


def test_activity_minutes_beyond_four_bytes_widen_the_ring() -> None:
    # epoch minutes fit 4 bytes until the year 6053; a minute beyond (or far before 1970) must still work
    near, far = ActivityTracker(), ActivityTracker()
    for m in range(20):
        near.update(29_000_000 * _MIN + m * _MIN, 0.0)
    assert near._minute is not None and near._minute.typecode == "i"
    big = 2**33
    for m in range(20):
        far.update((big + m) * _MIN, 0.0)
    assert far._minute is not None and far._minute.typecode == "q"
    assert far.at_rest((big + 20) * _MIN) and far.steps_in_window((big + 20) * _MIN) == 0.0
    back = pickle.loads(pickle.dumps(far))
    assert back.dump_state() == far.dump_state() and back._minute is not None and back._minute.typecode == "q"
    assert all(type(m) is int for m in far.dump_state()[0])
    near_back = pickle.loads(pickle.dumps(near))
    assert near_back._minute is not None and near_back._minute.typecode == "i"


def test_heart_rate_windows_keep_their_exact_size() -> None:
    hr, a = HeartRateDetector(), ActivityTracker()
    for s in range(0, 40 * 60, 5):
        if s % 60 == 0:
            a.update(s * 1000, 0.0)
        hr.update(s * 1000, 60.0 + (s // 5) % 7, a)
    full = (hr._samples, hr._ring)
    assert [len(x) for x in full] == [20, 13]
    assert hr._median is not None and len(hr._median) == hr.config.hr_median_window
    sizes = [sys.getsizeof(x) for x in (*full, hr._median)]
    assert sizes == [sys.getsizeof(x[:]) for x in (*full, hr._median)]  # no spare room


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
