"""Contract tests every detector class must pass.

* pickle round-trip mid-stream gives the same outputs afterwards as never pickling;
* seeded inputs give identical outputs (determinism);
* missing data, duplicates, late and out-of-order readings are handled;
* the state stays small.
"""

from __future__ import annotations

import dataclasses
import pickle
import pickletools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from river import stats

from detectors import (
    ActivityTracker,
    Audience,
    DetectorConfig,
    DeviceQuality,
    Finding,
    GlucoseDetector,
    GlucoseVariabilityModel,
    HeartRateDetector,
    PatientMonitor,
    Priority,
    RestingHeartRateModel,
    quantile,
)
from detectors.episodes import IDLE, IDLE_FIELDS, Sustained, idle_fields
from detectors.models import _quantile_from, _quantile_state
from detectors.rule_table import GLUCOSE_RULES, HEART_RATE_RULES
from ingest.scenarios import Event, simulate_patient
from wearwatch.contract.units import MMOL_TO_MGDL

T0 = 1_767_571_200_000
DAY = 86_400_000
SIGNALS = ("heart_rate", "glucose", "steps")


def _stream(seed: int, days: float = 1.0) -> list[tuple[str, int, float]]:
    evs = [
        Event("hypoglycemia", T0 + 3 * 3_600_000, 100 * 60_000, 45.0),
        Event("tachycardia_at_rest", T0 + 9 * 3_600_000, 20 * 60_000, 145.0),
        Event("bradycardia", T0 + 14 * 3_600_000, 6 * 60_000, 34.0),
    ]
    d = simulate_patient("p", T0, T0 + int(days * DAY), seed=seed, events=evs)
    out = []
    for r in d:
        v = r.value * MMOL_TO_MGDL if r.unit == "mmol/L" else r.value
        out.append((r.signal, r.ts_ms, v))
    return out


# (factory, feed) for every detector class: feed(detector, signal, ts, value) -> findings
def _feed_monitor(m: Any, s: str, t: int, v: float) -> list[Finding]:
    return list(m.update(s, t, v))


def _feed_glucose(m: Any, s: str, t: int, v: float) -> list[Finding]:
    return list(m.update(t, v)) if s == "glucose" else []


def _feed_quality(m: Any, s: str, t: int, v: float) -> list[Finding]:
    return m.check(SIGNALS.index(s), t, v)[1] + m.tick(t)


def _feed_activity(m: Any, s: str, t: int, v: float) -> list[tuple[bool, float]]:
    if s == "steps":
        m.update(t, v)
    return [(m.at_rest(t), m.steps_in_window(t))] if s == "heart_rate" and t % 60_000 == 0 else []


class _HrPair:
    """HeartRateDetector needs an ActivityTracker beside it."""

    def __init__(self) -> None:
        self.hr = HeartRateDetector()
        self.act = ActivityTracker()


def _feed_hr(m: Any, s: str, t: int, v: float) -> list[Finding]:
    if s == "steps":
        m.act.update(t, v)
        return []
    return m.hr.update(t, v, m.act) if s == "heart_rate" else []


class _RuleEngine:
    """The rule engine on its own: the glucose table over raw readings (no trend), late ones through
    ``open_late``. Like a detector: the constructor stores the config, the episodes come with data."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self.episodes: list[Sustained] | None = None
        self.last = -1

    def feed(self, t: int, v: float) -> list[Finding]:
        if self.episodes is None:
            self.episodes = [Sustained() for _ in GLUCOSE_RULES.rules]
        rules = GLUCOSE_RULES.compiled(self.config)
        nan = float("nan")
        out: list[Finding] = []
        if t <= self.last:
            rules.open_late(t, (v, None, False, nan, nan, nan, False, 0.0), self.episodes, out)
        else:
            rules.step(t, (v, 0.0, False, 0.0, 0.0, nan, False, 0.0), self.episodes, out)
            self.last = t
        return out


def _feed_engine(m: Any, s: str, t: int, v: float) -> list[Finding]:
    return m.feed(t, v) if s == "glucose" else []


def _feed_hr_model(m: Any, s: str, t: int, v: float) -> list[Finding]:
    return m.observe(t, v) if s == "heart_rate" and 40 < v < 90 else []


def _feed_g_model(m: Any, s: str, t: int, v: float) -> list[Finding]:
    return m.observe(t, v) if s == "glucose" else []


CASES: list[tuple[str, Callable[[], Any], Callable[..., list[Any]]]] = [
    ("PatientMonitor", PatientMonitor, _feed_monitor),
    ("GlucoseDetector", GlucoseDetector, _feed_glucose),
    ("HeartRateDetector", _HrPair, _feed_hr),
    ("ActivityTracker", ActivityTracker, _feed_activity),
    ("DeviceQuality", DeviceQuality, _feed_quality),
    ("RestingHeartRateModel", RestingHeartRateModel, _feed_hr_model),
    ("GlucoseVariabilityModel", GlucoseVariabilityModel, _feed_g_model),
    ("RuleEngine", _RuleEngine, _feed_engine),
]


@pytest.fixture(scope="module")
def stream() -> list[tuple[str, int, float]]:
    return _stream(seed=11)


@pytest.mark.parametrize(("name", "factory", "feed"), CASES, ids=[c[0] for c in CASES])
def test_pickle_round_trip_same_outputs(
    name: str, factory: Callable[[], Any], feed: Callable[..., list[Any]],
    stream: list[tuple[str, int, float]],
) -> None:
    a = factory()
    cut = len(stream) // 2
    for s, t, v in stream[:cut]:
        feed(a, s, t, v)
    b = pickle.loads(pickle.dumps(a))
    c = pickle.loads(pickle.dumps(b))  # twice: restoring must be stable
    out_a, out_c = [], []
    for s, t, v in stream[cut:]:
        out_a += feed(a, s, t, v)
        out_c += feed(c, s, t, v)
    assert out_a == out_c
    assert pickle.dumps(a) == pickle.dumps(c)


@pytest.mark.parametrize(("name", "factory", "feed"), CASES, ids=[c[0] for c in CASES])
def test_deterministic(
    name: str, factory: Callable[[], Any], feed: Callable[..., list[Any]],
) -> None:
    s1, s2 = _stream(seed=5, days=0.5), _stream(seed=5, days=0.5)
    assert s1 == s2
    a, b = factory(), factory()
    assert [f for x in s1 for f in feed(a, *x)] == [f for x in s2 for f in feed(b, *x)]


@pytest.mark.parametrize(("name", "factory", "feed"), CASES, ids=[c[0] for c in CASES])
def test_constructor_only_stores_settings(
    name: str, factory: Callable[[], Any], feed: Callable[..., list[Any]],
) -> None:
    # a fresh detector pickles small and has no learned state yet
    assert len(pickle.dumps(factory())) < 1500


def test_monitor_pickles_as_one_object_of_builtins(stream: list[tuple[str, int, float]]) -> None:
    # the worker pickles every changed state on every commit; each object pickle saves (parts,
    # episode machines, filters, river quantiles) costs ~1 µs, so all of them go in as builtins
    m = PatientMonitor(DetectorConfig().with_overrides({"glucose_low_mgdl": 75}))
    for s, t, v in stream[: len(stream) // 2]:
        m.update(s, t, v)
    blob = pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL)
    ops = [op.name for op, _arg, _pos in pickletools.genops(blob)]
    assert ops.count("STACK_GLOBAL") == 1 and b"_restore_monitor" in blob
    back = pickle.loads(blob)
    parts = (back._quality, back._hr, back._glucose, back._activity, back._hr_model, back._g_model)
    assert all(p is not None and p.config is back.config for p in parts)  # one shared config again
    assert back.config.glucose_low_mgdl == 75.0


def test_river_quantile_state_round_trip() -> None:
    # the models keep river's Quantile as an array (detectors.quantile) and store it as river's object's
    # private parts (river is pinned): what river's object holds, and both go on alike after a round trip
    def river_state(q: stats.Quantile) -> tuple[float, bool, bytes]:
        return (q.q, q._is_updated, q._quantile.__getstate__())

    assert _quantile_state(None) is None and _quantile_from(None) is None
    q = stats.Quantile(0.9)
    fresh = _quantile_from(river_state(q))
    assert fresh is not None and quantile.value(fresh) is None and _quantile_state(fresh) == river_state(q)
    rng = np.random.default_rng(4)
    for x in rng.normal(size=40):
        q.update(float(x))
    back = _quantile_from(river_state(q))
    assert back is not None and _quantile_state(back) == river_state(q)
    for x in rng.normal(size=40):
        q.update(float(x))
        quantile.update(back, float(x))
        assert quantile.value(back) == q.get()
    assert _quantile_state(back) == river_state(q)


def test_finding_state_keeps_every_field() -> None:
    f = Finding("value_implausible", "glucose", Priority.HIGH, Audience.DEVICE, 5, 1, "model", "why",
                value=1.0, threshold=2.0, window_s=3.0, baseline=4.0, trend_per_min=5.0,
                contributing=("glucose", "steps"), cleared=True)
    s = f.dump_state()
    assert len(s) == len(dataclasses.fields(Finding))
    back = Finding.from_state(s)
    assert back == f and back.priority is Priority.HIGH and back.audience is Audience.DEVICE


def test_monitor_finds_the_injected_events(stream: list[tuple[str, int, float]]) -> None:
    m = PatientMonitor()
    fs = [f for s, t, v in stream for f in m.update(s, t, v)]
    opened = {f.kind for f in fs if not f.cleared}
    assert {"glucose_urgent_low", "glucose_low", "tachycardia_at_rest", "bradycardia"} <= opened
    # every episode that opened and closed did so with the same onset
    seen: dict[tuple[str, int], list[bool]] = {}
    for f in fs:
        seen.setdefault((f.kind, f.onset_ms), []).append(f.cleared)
    for flags in seen.values():
        assert flags in ([False], [False, True])


def test_update_batch_equals_update(stream: list[tuple[str, int, float]]) -> None:
    a, b = PatientMonitor(), PatientMonitor()
    sig, ts, vals = zip(*stream, strict=True)
    out_a = a.update_batch(sig, ts, vals)
    out_b = [f for s, t, v in stream for f in b.update(s, t, v)]
    assert out_a == out_b
    assert pickle.dumps(a) == pickle.dumps(b)


def test_duplicates_change_nothing(stream: list[tuple[str, int, float]]) -> None:
    dup: list[tuple[str, int, float]] = []
    for i, x in enumerate(stream):
        dup.append(x)
        if i % 7 == 0:
            dup.append(x)  # re-sent reading
    a, b = PatientMonitor(), PatientMonitor()
    assert [f for x in stream for f in a.update(*x)] == [f for x in dup for f in b.update(*x)]


def test_missing_data_and_gaps() -> None:
    rng = np.random.default_rng(3)
    m = PatientMonitor()
    out: list[Finding] = []
    t = T0
    for _ in range(2000):
        t += int(rng.choice([5_000, 5_000, 5_000, 600_000]))  # occasional 10-min gaps
        out += m.update("heart_rate", t, float(rng.normal(70, 3)))
    assert [f for f in out if f.audience.value == "clinical"] == []
    # a long silence is a device finding, reported once, cleared after 15 min of data again
    fs = m.tick(t + 3_600_000) + m.tick(t + 3_700_000)
    assert [(f.kind, f.cleared) for f in fs] == [("sensor_stale", False)]
    assert m.update("heart_rate", t + 3_800_000, 70.0) == []
    fs = [f for k in range(1, 200) for f in m.update("heart_rate", t + 3_800_000 + k * 5_000, 70.0 + k % 3)]
    assert [(f.kind, f.cleared) for f in fs] == [("sensor_stale", True)]
    assert fs[0].ts_ms == t + 3_800_000 + 900_000


def test_watch_off_and_on_overnight_is_one_stale_finding() -> None:
    m = PatientMonitor()
    out: list[Finding] = []
    # evening data, then a night with the watch mostly off: brief on-wrist spells between
    # long silences, then a normal morning
    spells = [(0, 60), (120, 125), (230, 232), (400, 410), (480, 600)]
    for minute in range(600):
        if any(a <= minute < b for a, b in spells):
            for k in range(12):
                ts = T0 + minute * 60_000 + k * 5_000
                if k == 0:
                    out += m.update("steps", ts, 0.0)
                out += m.update("heart_rate", ts, 60.0 + k % 4)
        out += m.tick(T0 + (minute + 1) * 60_000)
    stale = [(f.kind, f.signal, f.cleared) for f in out if f.audience.value == "device"]
    assert stale == [("sensor_stale", "heart_rate", False), ("sensor_stale", "heart_rate", True)]
    assert next(f for f in out if f.kind == "sensor_stale").contributing == ("heart_rate", "steps")


def test_late_urgent_low_is_not_lost() -> None:
    m = PatientMonitor()
    for i in range(6):
        m.update("glucose", T0 + i * 300_000, 100.0)
    # a reading from before the newest one arrives after a re-sync, and it is urgent
    fs = m.update("glucose", T0 + 4 * 300_000 + 60_000, 50.0)
    assert [(f.kind, f.cleared) for f in fs] == [("glucose_urgent_low", False)]
    assert "late" in fs[0].message
    # the same late reading again is not a new episode
    assert m.update("glucose", T0 + 4 * 300_000 + 60_000, 50.0) == []


def test_out_of_order_heart_rate_is_skipped_not_fatal() -> None:
    m = PatientMonitor()
    for i in range(100):
        m.update("heart_rate", T0 + i * 5_000, 70.0 + (i % 3))
    assert m.update("heart_rate", T0 + 10 * 5_000 + 1, 200.0) == []
    assert m.stats()["late"] == 1


def test_readings_too_late_are_dropped() -> None:
    m = PatientMonitor()
    m.update("glucose", T0 + 3_600_000, 100.0)
    assert m.update("glucose", T0, 40.0) == []  # 60 min late > lateness_s
    assert m.stats()["dropped"] == 1


def test_implausible_values_are_device_findings_when_repeated() -> None:
    m = PatientMonitor()
    # isolated glitches are rejected and counted, not reported
    fs = m.update("heart_rate", T0, 0.0) + m.update("glucose", T0, float("nan"))
    assert fs == [] and m.stats()["implausible"] == 2
    for i in range(1, 200):
        assert m.update("heart_rate", T0 + i * 5_000, 255.0 if i % 100 == 0 else 70.0 + i % 3) == []
    # a device that keeps sending them is a technician's problem
    fs = m.update("glucose", T0 + 300_000, 700.0) + m.update("glucose", T0 + 600_000, float("nan"))
    assert [(f.kind, f.audience.value, f.signal) for f in fs] == [("value_implausible", "device", "glucose")]
    assert m.stats()["implausible"] == 5


def test_flatline() -> None:
    m = PatientMonitor()
    fs = [f for i in range(400) for f in m.update("heart_rate", T0 + i * 5_000, 72.0)]
    assert [(f.kind, f.cleared) for f in fs] == [("sensor_flatline", False)]
    fs = m.update("heart_rate", T0 + 400 * 5_000, 73.0)
    assert [(f.kind, f.cleared) for f in fs] == [("sensor_flatline", True)]


def test_state_size_after_days() -> None:
    m = PatientMonitor(DetectorConfig().with_overrides({"glucose_low_mgdl": 75}))
    for s, t, v in _stream(seed=2, days=3.0):
        m.update(s, t, v)
    size = len(pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL))
    assert size <= 16_000
    restored = pickle.loads(pickle.dumps(m))
    assert restored.config.glucose_low_mgdl == 75.0


def test_unknown_override_rejected() -> None:
    with pytest.raises(ValueError, match="unknown detector setting"):
        DetectorConfig().with_overrides({"glucose_lo": 60})


def test_rule_engine_with_late_and_missing_readings(stream: list[tuple[str, int, float]]) -> None:
    # glucose re-sent out of order and with gaps: deterministic, and late readings open only the
    # rules that open on late readings (urgent low), with their own time as onset
    rng = np.random.default_rng(7)
    glucose = [(s, t, v) for s, t, v in stream if s == "glucose"]
    keep = [x for x in glucose if rng.random() > 0.2]  # a fifth missing
    order = sorted(range(len(keep)), key=lambda i: keep[i][1] + int(rng.integers(0, 3)) * 300_000)
    shuffled = [keep[i] for i in order]
    # and one low reading re-sent late, long after the injected hypoglycaemia cleared
    p = next(i for i, (_s, t, _v) in enumerate(shuffled) if t > T0 + 8 * 3_600_000)
    shuffled.insert(p + 1, ("glucose", shuffled[p][1] - 60_000, 50.0))
    runs = []
    for _ in range(2):
        eng = _RuleEngine()
        runs.append([f for s, t, v in shuffled for f in eng.feed(t, v)])
    assert runs[0] == runs[1] and runs[0]
    newest = -1
    late_kinds = set()
    eng = _RuleEngine()
    for _s, t, v in shuffled:
        fs = eng.feed(t, v)
        if t <= newest:
            late_kinds |= {(f.kind, f.onset_ms == t, "late" in f.message) for f in fs}
        newest = max(newest, t)
    assert late_kinds == {("glucose_urgent_low", True, True)}


def test_episodes_not_started_are_the_shared_idle_one_and_stay_untouched(
        stream: list[tuple[str, int, float]]) -> None:
    m = PatientMonitor()
    fs = [f for s, t, v in stream for f in m.update(s, t, v)]
    fs += m.tick(stream[-1][1] + DAY)  # every sensor silent for a day: stale
    # a late urgent low (opened by the late path), implausible values and a flatline
    t = stream[-1][1] + DAY
    fs += m.update("glucose", t, 100.0) + m.update("glucose", t - 60_000, 45.0)
    fs += [f for i in range(3) for f in m.update("heart_rate", t + i * 5_000, 300.0)]
    fs += [f for i in range(400) for f in m.update("heart_rate", t + (i + 3) * 5_000, 72.0)]
    kinds = {f.kind for f in fs if not f.cleared}
    assert {"glucose_urgent_low", "bradycardia", "tachycardia_at_rest", "sensor_stale", "value_implausible",
            "sensor_flatline"} <= kinds
    assert idle_fields() == IDLE_FIELDS
    assert m._hr is not None and m._glucose is not None
    for table, part_episodes in ((HEART_RATE_RULES, m._hr.episodes), (GLUCOSE_RULES, m._glucose.episodes)):
        for rule, ep in zip(table.rules, part_episodes, strict=True):
            assert rule.kind not in kinds or ep is not IDLE, rule.kind  # an episode that opened is its own
    # a restored monitor shares IDLE for the episodes with nothing started (never, or a count that lapsed),
    # and goes on the same
    back = pickle.loads(pickle.dumps(m))
    assert back._hr is not None and m._hr is not None
    assert [ep is IDLE for ep in back._hr.episodes] == [
        ep.dump_state() == (-1, -1, -1, -1, -1) and not ep.armed for ep in m._hr.episodes]
    more = [("heart_rate", t + 500 * 5_000 + i * 5_000, 40.0 + i % 7) for i in range(200)]
    assert [f for x in more for f in back.update(*x)] == [f for x in more for f in m.update(*x)]
    assert idle_fields() == IDLE_FIELDS
