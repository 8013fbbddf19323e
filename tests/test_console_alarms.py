"""The locked screen's per-ward alarm index (:mod:`console.alarms`) answers exactly what a walk of every patient with
open alerts answers (:func:`console.views.alarm_counts`), after any sequence of ``alerts.state`` records: alerts
opened, updated, acknowledged, snoozed and resolved, patients moved between wards, patients erased (tombstones)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from console.auth import LoginThrottle
from console.state import ConsoleView
from console.views import Scope, alarm_counts, in_scope

T0 = 1_800_000_000_000
MIN = 60_000
PATIENTS = [f"p-{i}" for i in range(5)]
WARDS = ["3B", "ICU", "5A", None, ""]  # None and "": the patient's ward is "unassigned"
SCOPES: list[Scope] = [None, frozenset(), frozenset({"3B"}), frozenset({"ICU", "unassigned"}),
                       frozenset({"nowhere"}), frozenset({"3B", "ICU", "5A", "unassigned"})]
TIMES = [T0 - 1, T0, T0 + 1, T0 + MIN]
#: a key left out of the alert when drawn
ABSENT = object()

alert = st.fixed_dictionaries({
    "state": st.sampled_from(["open", "updated", "acknowledged", "resolved"]),
    "priority": st.sampled_from(["high", "medium", "low", "urgent", None]),
    "snoozed_until_ms": st.sampled_from([ABSENT, None, T0 - MIN, T0, T0 + 1, T0 + MIN]),
})
patient = st.sampled_from(PATIENTS)
ward = st.sampled_from(WARDS)
op = st.one_of(
    st.tuples(st.just("set"), patient, ward, st.lists(alert, max_size=4)),  # opened / updated / resolved alerts
    st.tuples(st.just("move"), patient, ward),  # the same alerts in another ward
    st.tuples(st.just("ack"), patient, st.integers(0, 3)),  # one alert acknowledged
    st.tuples(st.just("erase"), patient),  # the patient's tombstone
)


def record(pid: str, ward_name: str | None, alerts: list[dict[str, Any]]) -> bytes:
    docs = [{"alert_id": f"al-{pid}-{i}", **{k: v for k, v in a.items() if v is not ABSENT}}
            for i, a in enumerate(alerts)]
    return orjson.dumps({"schema_version": 1, "patient_id": pid, "ward": ward_name, "updated_ms": T0,
                         "alerts": docs})


def walked(view: ConsoleView, scope: Scope, now_ms: int) -> dict[str, int]:
    """The answer of a walk of every patient with open alerts (what the index replaces)."""
    return alarm_counts((a for p in view.patients.values() if in_scope(scope, p.ward) for a in p.alerts), now_ms)


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=30))
def test_the_index_answers_what_the_full_walk_answers(ops: list[tuple[Any, ...]]) -> None:
    view = ConsoleView(LoginThrottle(5, 900_000))
    last: dict[str, tuple[str | None, list[dict[str, Any]]]] = {}  # what each patient's last record held
    for o in ops:
        pid = o[1]
        if o[0] == "set":
            last[pid] = (o[2], list(o[3]))
        elif o[0] == "move":
            last[pid] = (o[2], last.get(pid, (None, []))[1])
        elif o[0] == "ack":
            w, alerts = last.get(pid, (None, []))
            if o[2] < len(alerts):
                alerts = [dict(a, state="acknowledged") if i == o[2] else a for i, a in enumerate(alerts)]
            last[pid] = (w, alerts)
        else:
            last.pop(pid, None)
        w, alerts = last.get(pid, (None, []))
        view.apply("state", pid.encode(), record(pid, w, alerts) if pid in last else None, T0)
        assert view.bad_records == 0
        for scope in SCOPES:
            for now in TIMES:
                assert view.alarm_counts(scope, now) == walked(view, scope, now), (scope, now)
    for pid in PATIENTS:  # every patient erased: nothing is left in the index
        view.apply("state", pid.encode(), None, T0)
    assert view.alarms.wards() == []
    assert view.alarm_counts(None, T0) == {"high": 0, "medium": 0, "low": 0}


def test_a_ward_move_takes_the_counts_along_and_a_snooze_counts_again_when_it_ends() -> None:
    view = ConsoleView(LoginThrottle(5, 900_000))
    view.apply("state", b"p-1", record("p-1", "3B", [{"state": "open", "priority": "high"},
                                                       {"state": "open", "priority": "low", "snoozed_until_ms": T0}]),
               T0)
    view.apply("state", b"p-2", record("p-2", "3B", [{"state": "updated", "priority": "medium"}]), T0)
    assert view.alarm_counts(frozenset({"3B"}), T0 - 1) == {"high": 1, "medium": 1, "low": 0}
    assert view.alarm_counts(frozenset({"3B"}), T0) == {"high": 1, "medium": 1, "low": 1}
    view.apply("state", b"p-1", record("p-1", "ICU", [{"state": "open", "priority": "high"}]), T0)
    assert view.alarm_counts(frozenset({"3B"}), T0) == {"high": 0, "medium": 1, "low": 0}
    assert view.alarm_counts(frozenset({"ICU"}), T0) == {"high": 1, "medium": 0, "low": 0}
    view.apply("state", b"p-2", None, T0)  # erased
    assert view.alarms.wards() == ["ICU"]
