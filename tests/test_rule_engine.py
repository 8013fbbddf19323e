"""The rule engine, one behaviour per test: on a small table of its own and on the real detectors."""

from __future__ import annotations

import pickle
from collections.abc import Sequence

from alerts.lifecycle import AlertBook
from detectors import DetectorConfig, Finding, PatientMonitor, Priority
from detectors.episodes import Sustained
from detectors.rules import Case, Explain, Measure, Rule, RuleSet, Supersede

MIN = 60_000
T0 = 1_767_571_200_000

#: x: a value; known: whether it is measured now; prev_ms: time of the previous reading
TABLE = RuleSet("test", (Measure("x", "mg/dL", "a value"), Measure("known", "", "x is measured"),
                         Measure("prev_ms", "ms", "previous reading")), (
    Rule(kind="x_low", signal="glucose", priority=Priority.MEDIUM,
         raised=((Priority.HIGH, "x < glucose_urgent_low_mgdl"),), requires="known", opens_on_late=True,
         opens_when="x < glucose_low_mgdl", sustain="glucose_low_sustain_s", tolerate_s=360.0,
         clears_when="x >= glucose_low_clear_mgdl", clear_for="glucose_clear_s", track_peak="x",
         message="low {x:.0f} for {sustained_min:.0f} min, peak {peak:.0f}{late_note}",
         explain=Explain(value="x", threshold="glucose_low_mgdl", window_s="glucose_low_sustain_s"),
         clear_message="low resolved at {x:.0f} after {clearing_min:.0f} min",
         clear_explain=Explain(value="x", threshold="glucose_low_clear_mgdl")),
    Rule(kind="x_flat", signal="glucose", priority=Priority.LOW, clear_priority=Priority.LOW,
         opens_when="x == 100.0", sustain=600.0, counts_from="prev_ms", clears_when="x != 100.0", clear_for=0.0,
         message="flat since {sustained_min:.0f} min", explain=Explain(), clear_message="moving",
         clear_explain=Explain()),
    Rule(kind="x_cases", signal="glucose", priority=Priority.LOW, opens_when="", sustain=0.0,
         watch_while="x > 200.0",
         cases=(Case("very high", "x > 300.0", "x > 200.0", 60.0, "very high {x:.0f}", Explain(value="x")),
                Case("high", None, "x > 200.0", 300.0, "high {x:.0f}", Explain(value="x"))),
         clears_when="x < 180.0", clear_for=0.0, message="", explain=Explain(),
         clear_message="not high", clear_explain=Explain(),
         supersede=Supersede("high", "x > 300.0", 120.0, "superseded at {x:.0f}", Explain(value="x"),
                             "worse: {x:.0f}", Explain(value="x"))),
))
LOW, FLAT, CASES = 0, 1, 2


class Harness:
    """The engine with its episodes, as a detector drives it (readings in order, ms timestamps)."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self.episodes = [Sustained() for _ in TABLE.rules]
        self.prev = -1

    def feed(self, t: int, x: float | None, late: bool = False) -> list[Finding]:
        out: list[Finding] = []
        m = (float("nan") if x is None else x, x is not None, self.prev)
        rules = TABLE.compiled(self.config)
        if late:
            rules.open_late(t, m, self.episodes, out)
        else:
            rules.step(t, m, self.episodes, out)
            self.prev = t
        return out


def run(h: Harness, series: Sequence[tuple[int, float | None]]) -> list[tuple[int, str, bool, str]]:
    """(minute, kind, cleared, priority) of every finding of readings at (minute, value)."""
    out = []
    for minute, x in series:
        for f in h.feed(T0 + minute * MIN, x):
            out.append((minute, f.kind, f.cleared, f.priority.value))
    return out


def test_opens_after_the_sustain_time_not_before() -> None:
    h = Harness()
    assert run(h, [(0, 65.0), (5, 64.0), (10, 62.0), (14, 60.0)]) == []
    fs = h.feed(T0 + 15 * MIN, 61.0)
    assert [(f.kind, f.cleared, f.onset_ms, f.priority) for f in fs] == [("x_low", False, T0, Priority.MEDIUM)]
    assert fs[0].message == "low 61 for 15 min, peak 65" and fs[0].window_s == 900.0 and fs[0].value == 61.0


def test_a_lapse_within_the_tolerance_keeps_the_count_a_longer_one_restarts_it() -> None:
    assert run(Harness(), [(0, 65.0), (5, 72.0), (10, 66.0), (15, 65.0)]) == [
        (15, "x_low", False, "medium")]  # 5 min above 70 < 6 min tolerated
    assert run(Harness(), [(0, 65.0), (5, 72.0), (11, 72.0), (12, 66.0), (15, 65.0), (27, 64.0)]) == [
        (27, "x_low", False, "medium")]  # 6 min above: the count restarts at minute 12


def test_clears_with_hysteresis_only_after_the_clear_condition_held() -> None:
    h = Harness()
    run(h, [(0, 65.0), (15, 65.0)])
    # 75 is above the open threshold (70) but below the clear one (80): still open
    assert run(h, [(20, 75.0), (40, 78.0)]) == []
    # 80 and above for 10 min clears; a relapse in between restarts the clear count
    assert run(h, [(45, 85.0), (50, 79.0), (52, 82.0), (61, 85.0)]) == []
    fs = h.feed(T0 + 62 * MIN, 90.0)
    assert [(f.kind, f.cleared, f.onset_ms) for f in fs] == [("x_low", True, T0)]
    assert fs[0].message == "low resolved at 90 after 10 min" and fs[0].threshold == 80.0


def test_priority_tier_at_onset_is_kept_when_clearing() -> None:
    h = Harness()
    assert run(h, [(0, 60.0), (15, 50.0)]) == [(15, "x_low", False, "high")]  # below 55 at onset
    assert run(h, [(20, 90.0), (30, 90.0)]) == [(30, "x_low", True, "high")]
    # the same table with the tier's threshold lowered for one patient: medium
    h = Harness(DetectorConfig().with_overrides({"glucose_urgent_low_mgdl": 45}))
    assert run(h, [(0, 60.0), (15, 50.0)]) == [(15, "x_low", False, "medium")]


def test_level_1_then_level_2_hypoglycaemia_escalates_to_a_high_alert() -> None:
    # glucose below 70 for 15 min: level 1 (MEDIUM); then below 55: level 2 (HIGH) while level 1 is open
    m = PatientMonitor()
    book = AlertBook("p-1")
    found: list[Finding] = []
    events = []
    for i, g in enumerate([90, 68, 67, 66, 65, 64, 62, 58, 54, 50, 52, 60, 70, 82, 85, 90, 92, 95, 96, 98]):
        for f in m.update("glucose", T0 + i * 5 * MIN, float(g)):
            found.append(f)
            events += book.on_finding(f)
    opened = [(f.kind, f.priority.value, (f.ts_ms - T0) // MIN) for f in found if not f.cleared]
    assert ("glucose_low", "medium", 20) in opened
    assert ("glucose_urgent_low", "high", 40) in opened
    low = next(f for f in found if f.kind == "glucose_low")
    urgent = next(f for f in found if f.kind == "glucose_urgent_low")
    assert low.ts_ms < urgent.ts_ms and urgent.onset_ms == T0 + 40 * MIN
    onsets = [(e.kind, e.priority, e.cause) for e in events if e.cause == "onset"]
    assert ("glucose_low", "medium", "onset") in onsets and ("glucose_urgent_low", "high", "onset") in onsets


def test_supersede_replaces_a_milder_episode_once() -> None:
    h = Harness()
    # 250 for 5 min opens on the "high" case; above 300 for 2 min replaces it with a new episode
    got = run(h, [(0, 250.0), (5, 250.0), (6, 310.0), (7, 320.0), (8, 330.0), (9, 340.0), (12, 340.0)])
    assert [(k, c) for _m, k, c, _p in got] == [("x_cases", False), ("x_cases", True), ("x_cases", False)]
    new = h.episodes[CASES]
    assert new.onset_ms == T0 + 6 * MIN and not new.armed  # the new episode starts when 300 was first exceeded
    # opened on the "very high" case directly: nothing to supersede
    h = Harness()
    assert [(k, c) for _m, k, c, _p in run(h, [(0, 310.0), (1, 320.0), (3, 330.0), (9, 330.0)])] == [
        ("x_cases", False)]
    assert not h.episodes[CASES].armed


def test_missing_data_neither_opens_nor_clears() -> None:
    h = Harness()
    run(h, [(0, 65.0), (15, 65.0)])
    assert h.episodes[LOW].onset_ms == T0
    # the value is not measured (e.g. no trend yet): the rule is not stepped, the episode stays as it is
    assert run(h, [(m, None) for m in range(20, 60, 5)]) == []
    assert h.episodes[LOW].onset_ms == T0 and h.episodes[LOW].clear_since == -1
    # a pending count is not advanced by missing values either
    h = Harness()
    assert run(h, [(0, 65.0), (5, None), (10, None), (14, 65.0)]) == []
    assert run(h, [(15, 65.0)]) == [(15, "x_low", False, "medium")]


def test_a_gap_restarts_a_pending_count_in_the_detectors() -> None:
    # glucose below 70 with a 20-minute gap (> glucose_max_gap_s): the 15 minutes restart after it
    m = PatientMonitor()
    found = [f for t, g in [(0, 65.0), (5, 64.0), (10, 63.0), (30, 64.0), (35, 63.0), (40, 62.0), (45, 62.0)]
             for f in m.update("glucose", T0 + t * MIN, g)]
    assert [((f.ts_ms - T0) // MIN, f.onset_ms) for f in found if f.kind == "glucose_low"] == [(45, T0 + 30 * MIN)]


def test_a_late_reading_opens_a_late_rule_unless_an_episode_cleared_after_it() -> None:
    h = Harness()
    run(h, [(0, 90.0), (10, 90.0)])
    fs = h.feed(T0 + 5 * MIN, 60.0, late=True)  # a low from before the newest reading, after a re-sync
    assert [(f.kind, f.onset_ms, f.message) for f in fs] == [
        ("x_low", T0 + 5 * MIN, "low 60 for 0 min, peak 0 (late reading after re-sync)")]
    assert h.feed(T0 + 6 * MIN, 60.0, late=True) == []  # already open
    run(h, [(20, 90.0), (30, 95.0)])  # clears at minute 30
    assert not h.episodes[LOW].active
    assert h.feed(T0 + 25 * MIN, 60.0, late=True) == []  # older than the clear: not re-opened
    assert h.feed(T0 + 31 * MIN, 90.0, late=True) == []  # not low
    assert [f.kind for f in h.feed(T0 + 31 * MIN, 60.0, late=True)] == ["x_low"]


def test_counts_from_a_measure_and_clears_at_once() -> None:
    h = Harness()
    # 100 from minute 1: the count starts at the reading before (minute 0), so it opens at minute 10, not 11
    got = run(h, [(0, 90.0), (1, 100.0), (2, 100.0), (9, 100.0), (10, 100.0), (11, 100.0), (12, 101.0)])
    assert [(mi, k, c) for mi, k, c, _p in got if k == "x_flat"] == [(10, "x_flat", False), (12, "x_flat", True)]
    assert h.episodes[FLAT].last_onset_ms == T0


def test_episodes_pickle_with_what_the_engine_remembers() -> None:
    h = Harness()
    run(h, [(0, 60.0), (15, 50.0), (16, 40.0)])  # open, HIGH at onset, peak 60
    back = pickle.loads(pickle.dumps(h))
    assert back.episodes[LOW].level is Priority.HIGH and back.episodes[LOW].peak == 60.0
    series = [(20, 85.0), (31, 90.0)]
    assert run(back, series) == run(h, series) == [(31, "x_low", True, "high")]
    assert pickle.loads(pickle.dumps(Sustained())).dump_state() == (-1, -1, -1, -1, -1)


def test_a_new_onset_within_the_hold_off_reopens_the_same_alert() -> None:
    # the engine opens a new episode (new onset); the alert lifecycle's hold-off (15 min) turns it into
    # the same alert re-opened, and after the hold-off into a new alert
    m = PatientMonitor()
    book = AlertBook("p-2")
    events = []
    series = {0: 100, 5: 50, 10: 70, 15: 70, 20: 70, 25: 50, 30: 70, 35: 70, 40: 70, 45: 70, 80: 50}
    for minute in range(0, 85, 5):
        g = series.get(minute, 100 if minute > 45 else 70)
        for f in m.update("glucose", T0 + minute * MIN, float(g)):
            if f.kind == "glucose_urgent_low":
                events += [(minute, e.cause, e.alert_id) for e in book.on_finding(f)]
    causes = [(minute, cause) for minute, cause, _id in events]
    assert causes == [(5, "onset"), (20, "cleared"), (25, "reopened"), (40, "cleared"), (80, "onset")]
    ids = [alert_id for _m, _c, alert_id in events]
    assert ids[0] == ids[1] == ids[2] == ids[3] != ids[4]
