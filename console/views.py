"""What the console shows, as pure functions: alert rows, their order, ward scopes, series and history.

Open alerts arrive as the dicts of the ``alerts.state`` records (``AlertEvent.model_dump()``);
:func:`alert_row` turns one into the API's row in the reader's glucose units.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from alerts.lifecycle import DEFAULT_POLICY, LifecyclePolicy
from console.units import convert_explanation, convert_series_point, glucose_text, signal_unit
from wearwatch.contract.ids import is_alert_id, is_patient_id
from wearwatch.contract.priority import PRIORITIES, priority_rank
from wearwatch.influxdb import flux_string

__all__ = [
    "MARKER_CAUSES",
    "SERIES_FIELDS",
    "SIGNALS",
    "Scope",
    "alarm_counts",
    "alert_row",
    "flux_series_query",
    "history_markers",
    "in_scope",
    "needs_action",
    "series_from_records",
    "snooze_max_minutes",
    "sort_key",
    "sorted_rows",
    "valid_alert_id",
    "valid_patient_id",
]

SERIES_FIELDS: tuple[str, ...] = ("mean", "min", "max")
SIGNALS: tuple[str, ...] = ("heart_rate", "glucose", "steps")
#: history events that change what an alert is (markers on the patient's chart); reminders, snoozes
#: and notes do not
MARKER_CAUSES = frozenset({"onset", "reopened", "new_episode", "priority_up", "priority_down", "acknowledged",
                           "cleared"})
#: a set of wards, or None for every ward
Scope = frozenset[str] | None



def valid_patient_id(pid: str) -> bool:
    """True for 1-64 characters of ``[A-Za-z0-9_.:-]``.

    >>> valid_patient_id("p-0042"), valid_patient_id("p/1")
    (True, False)
    """
    return is_patient_id(pid)


def valid_alert_id(aid: str) -> bool:
    """True for ``al-`` and 20 hex digits.

    >>> valid_alert_id("al-7c35ac37f0732fad6862"), valid_alert_id("al-x")
    (True, False)
    """
    return is_alert_id(aid)


def in_scope(scope: Scope, ward: str | None) -> bool:
    """True if a reader with ``scope`` may see a patient of ``ward``.

    >>> in_scope(frozenset({"3B"}), "3B"), in_scope(frozenset({"3B"}), "ICU"), in_scope(None, "ICU")
    (True, False, True)
    """
    return scope is None or (ward or "unassigned") in scope


def snooze_max_minutes(kind: str, priority: str, policy: LifecyclePolicy = DEFAULT_POLICY) -> int:
    """The longest snooze the lifecycle allows for an alert (kinds that can be high: the high cap).

    >>> snooze_max_minutes("glucose_urgent_low", "high"), snooze_max_minutes("glucose_high", "medium")
    (5, 480)
    """
    high = kind in policy.high_kinds or priority == "high"
    return (policy.snooze_cap_high_ms if high else policy.snooze_max_ms) // 60_000


def needs_action(ev: Mapping[str, Any], now_ms: int) -> bool:
    """True for an alert that still needs someone: open or updated (not acknowledged) and not snoozed now.

    >>> needs_action({"state": "open", "snoozed_until_ms": None}, 10), needs_action({"state": "acknowledged"}, 10)
    (True, False)
    >>> needs_action({"state": "updated", "snoozed_until_ms": 11}, 10)
    False
    """
    until = ev.get("snoozed_until_ms")
    return ev.get("state") in ("open", "updated") and not (isinstance(until, int) and until > now_ms)


def alarm_counts(alerts: Iterable[Mapping[str, Any]], now_ms: int) -> dict[str, int]:
    """How many of ``alerts`` need someone (:func:`needs_action`), by priority: the locked screen's ward-level
    alarm state. Counts only: nothing of a patient goes into it.

    >>> c = alarm_counts([{"state": "open", "priority": "high"}, {"state": "acknowledged", "priority": "high"},
    ...                   {"state": "updated", "priority": "low"}], 0)
    >>> [(p, c[p]) for p in PRIORITIES]
    [('high', 1), ('medium', 0), ('low', 1)]
    """
    counts: dict[str, int] = dict.fromkeys(PRIORITIES, 0)
    for ev in alerts:
        prio = ev.get("priority")
        if prio in counts and needs_action(ev, now_ms):
            counts[str(prio)] += 1
    return counts


def alert_row(ev: Mapping[str, Any], units: str) -> dict[str, Any]:
    """One open alert (an ``alerts.state`` alert dict) as the API shows it, glucose in ``units``."""
    signal, kind = str(ev["signal"]), str(ev["kind"])
    message = str(ev.get("message") or "")
    return {
        "alert_id": ev["alert_id"],
        "patient_id": ev["patient_id"],
        "ward": ev.get("ward") or "unassigned",
        "kind": kind,
        "signal": signal,
        "priority": ev["priority"],
        "audience": ev["audience"],
        "route": ev.get("audience_route") or ev["audience"],
        "escalated": bool(ev.get("escalated")),
        "state": ev["state"],
        "cause": ev.get("cause"),
        "revision": ev.get("revision", 0),
        "message": glucose_text(message, units) if signal == "glucose" else message,
        "explanation": convert_explanation(signal, kind, dict(ev.get("explanation") or {}), units),
        "unit": signal_unit(signal, units),
        "onset_ms": ev["onset_ms"],
        "ts_ms": ev["ts_ms"],
        "updated_ms": ev.get("emitted_ms", ev["ts_ms"]),
        "acked_by": ev.get("acked_by"),
        "acked_ms": ev.get("acked_ms"),
        "snoozed_until_ms": ev.get("snoozed_until_ms"),
        "snoozed_by": ev.get("snoozed_by"),
        "snooze_max_minutes": snooze_max_minutes(kind, str(ev["priority"])),
        "notes": [{"by": n["by"], "ts_ms": n["ts_ms"], "text": n["text"]} for n in ev.get("notes") or ()],
    }


def sort_key(row: Mapping[str, Any]) -> tuple[int, int, int, str]:
    """Most urgent first: priority, then not yet acknowledged, then oldest onset (longest waiting).

    >>> rows = [{"priority": "low", "state": "open", "onset_ms": 1, "alert_id": "a"},
    ...         {"priority": "high", "state": "acknowledged", "onset_ms": 1, "alert_id": "b"},
    ...         {"priority": "high", "state": "open", "onset_ms": 5, "alert_id": "c"},
    ...         {"priority": "high", "state": "updated", "onset_ms": 3, "alert_id": "d"}]
    >>> [r["alert_id"] for r in sorted(rows, key=sort_key)]
    ['d', 'c', 'b', 'a']
    """
    return (
        priority_rank(str(row["priority"])),
        1 if row["state"] == "acknowledged" else 0,
        int(row["onset_ms"]),
        str(row["alert_id"]),
    )


def sorted_rows(alerts: Iterable[Mapping[str, Any]], units: str) -> list[dict[str, Any]]:
    """API rows for ``alerts`` in :func:`sort_key` order."""
    return sorted((alert_row(a, units) for a in alerts), key=sort_key)


def flux_series_query(bucket: str, patient_tag: str, window_s: int = 24 * 3600) -> str:
    """The Flux query for one patient's ``vitals_1m`` points (mean, min, max) of the last ``window_s``.

    >>> flux_series_query("wearwatch", "abc", 60)[:60]
    'from(bucket: "wearwatch") |> range(start: -60s) |> filter(fn'
    """
    fields = " or ".join(f"r._field == {flux_string(f)}" for f in SERIES_FIELDS)
    return (
        f"from(bucket: {flux_string(bucket)}) |> range(start: -{int(window_s)}s)"
        f' |> filter(fn: (r) => r._measurement == "vitals_1m" and r.patient == {flux_string(patient_tag)}'
        f" and ({fields}))"
    )


def series_from_records(records: Iterable[tuple[str, str, int, float]], units: str) -> dict[str, list[dict[str, Any]]]:
    """``(signal, field, time_ms, value)`` tuples → ``{signal: [{"t_ms", "mean", "min", "max"}, ...]}``,
    oldest first, every signal present, glucose in ``units``; a field missing at a minute is None.

    >>> s = series_from_records([("glucose", "mean", 120000, 90.08), ("glucose", "min", 120000, 90.08),
    ...                          ("glucose", "mean", 60000, 108.1)], "mmol/L")
    >>> s["glucose"]
    [{'t_ms': 60000, 'mean': 6.0, 'min': None, 'max': None}, {'t_ms': 120000, 'mean': 5.0, 'min': 5.0, 'max': None}]
    >>> s["heart_rate"]
    []
    """
    by_signal: dict[str, dict[int, dict[str, Any]]] = {s: {} for s in SIGNALS}
    for signal, fld, t_ms, value in records:
        if fld not in SERIES_FIELDS:
            continue
        point = by_signal.setdefault(signal, {}).setdefault(
            int(t_ms), {"t_ms": int(t_ms), **dict.fromkeys(SERIES_FIELDS)})
        point[fld] = float(value)
    return {signal: [convert_series_point(signal, p, units) for _, p in sorted(points.items())]
            for signal, points in by_signal.items()}


def history_markers(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Chart markers (oldest first) for the events that changed an alert (:data:`MARKER_CAUSES`).

    >>> history_markers([{"ts_ms": 2, "kind": "k", "priority": "high", "state": "acknowledged",
    ...                   "cause": "acknowledged"},
    ...                  {"ts_ms": 1, "kind": "k", "priority": "high", "state": "open", "cause": "renotify"}])
    [{'t_ms': 2, 'kind': 'k', 'priority': 'high', 'state': 'acknowledged'}]
    """
    out = [{"t_ms": e["ts_ms"], "kind": e["kind"], "priority": e["priority"], "state": e["state"]}
           for e in events if e.get("cause") is None or e.get("cause") in MARKER_CAUSES]
    return sorted(out, key=lambda m: m["t_ms"])
