"""The alert console's helpers without a browser or a stack: validation, rows, sorting, series, acknowledge."""

from __future__ import annotations

import asyncio
import pickle
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from alerts.lifecycle import AlertBook
from alerts.models import AlertEvent
from detectors.base import Audience, Finding, Priority
from streams.console import (
    ApiError,
    Console,
    alert_row,
    flux_series_query,
    parse_ack_body,
    series_from_records,
    sort_key,
    sorted_rows,
    validate_alert_id,
    validate_patient_id,
)
from wearwatch.contract.commands import Ack, parse_command_record

T0 = 1_800_000_000_000
MIN = 60_000


def finding(kind: str, priority: Priority, onset: int, signal: str = "glucose",
            audience: Audience = Audience.CLINICAL) -> Finding:
    return Finding(kind=kind, signal=signal, priority=priority, audience=audience, ts_ms=onset, onset_ms=onset,
                   source="rule", message=f"{kind} message", value=52.0, threshold=55.0)


def event(pid: str, kind: str, priority: Priority, onset: int, ward: str | None = "3B") -> AlertEvent:
    book = AlertBook(pid, ward=ward)
    (ev,) = book.on_finding(finding(kind, priority, onset), onset)
    return ev


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize("pid", ["p-0042", "A.b_c:d-1", "x" * 64])
def test_valid_patient_ids(pid: str) -> None:
    assert validate_patient_id(pid) == pid


@pytest.mark.parametrize("pid", ["", "p/1", "p 1", "x" * 65, "p%2F1", "<script>"])
def test_invalid_patient_ids_are_400(pid: str) -> None:
    with pytest.raises(ApiError) as e:
        validate_patient_id(pid)
    assert (e.value.status, e.value.code) == (400, "invalid_patient_id")


@pytest.mark.parametrize("aid", ["al-xyz", "al-" + "0" * 19, "AL-" + "0" * 20, "al-" + "0" * 21, ""])
def test_invalid_alert_ids_are_400(aid: str) -> None:
    with pytest.raises(ApiError) as e:
        validate_alert_id(aid)
    assert (e.value.status, e.value.code) == (400, "invalid_alert_id")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "invalid_json"),
        (b"not json", 400, "invalid_json"),
        (b'["nurse"]', 400, "invalid_json"),
        (b"{}", 400, "invalid_field"),
        (b'{"by": null}', 400, "invalid_field"),
        (b'{"by": 7}', 400, "invalid_field"),
        (b'{"by": "two words"}', 400, "invalid_field"),
        (b'{"by": "kim", "alert_id": "al-x"}', 400, "invalid_field"),
        (orjson.dumps({"by": "k" * 5000}), 413, "too_large"),
    ],
)
def test_bad_ack_bodies(body: bytes, status: int, code: str) -> None:
    with pytest.raises(ApiError) as e:
        parse_ack_body(body)
    assert (e.value.status, e.value.code) == (status, code)
    assert e.value.body() == {"error": code, "detail": e.value.detail}


def test_ack_body() -> None:
    assert parse_ack_body(b'{"by": "nurse.kim@3B"}') == "nurse.kim@3B"


# ---------------------------------------------------------------------- rows and order
def test_alert_row_fields_and_age() -> None:
    ev = event("p-1", "glucose_urgent_low", Priority.HIGH, T0)
    row = alert_row(ev, T0 + 5 * MIN + 999)
    assert row["age_s"] == 300
    assert {k: row[k] for k in ("ward", "patient_id", "kind", "priority", "state", "unit", "message")} == {
        "ward": "3B", "patient_id": "p-1", "kind": "glucose_urgent_low", "priority": "high", "state": "open",
        "unit": "mg/dL", "message": "glucose_urgent_low message",
    }
    assert row["explanation"]["threshold"] == 55.0
    orjson.dumps(row)  # JSON-ready
    assert alert_row(event("p-2", "x", Priority.LOW, T0, ward=None), T0 - 1)["ward"] == "unassigned"
    assert alert_row(ev, T0 - 10_000)["age_s"] == 0  # clock skew never gives a negative age


def test_sorted_by_priority_then_unacknowledged_then_oldest() -> None:
    low_old = event("p-1", "steps_low", Priority.LOW, T0)
    med_new = event("p-2", "glucose_low", Priority.MEDIUM, T0 + 10 * MIN)
    med_old = event("p-3", "glucose_low", Priority.MEDIUM, T0 + 1 * MIN)
    high_new = event("p-4", "glucose_urgent_low", Priority.HIGH, T0 + 20 * MIN)
    high_old_acked = event("p-5", "glucose_urgent_low", Priority.HIGH, T0).model_copy(
        update={"state": "acknowledged", "acked_by": "kim"})
    rows = sorted_rows([low_old, med_new, high_old_acked, med_old, high_new], T0 + 30 * MIN)
    assert [r["patient_id"] for r in rows] == ["p-4", "p-5", "p-3", "p-2", "p-1"]
    assert sort_key(rows[0]) < sort_key(rows[1])


# ---------------------------------------------------------------------- series
def test_flux_query_quotes_its_strings() -> None:
    q = flux_series_query('buck"et', "0123abcd0123abcd", 7200)
    assert 'from(bucket: "buck\\"et") |> range(start: -7200s)' in q
    assert 'r.patient == "0123abcd0123abcd"' in q
    assert 'r._field == "mean" or r._field == "min" or r._field == "max"' in q


def test_series_grouped_by_signal_and_sorted() -> None:
    out = series_from_records([
        ("heart_rate", "mean", 2 * MIN, 70), ("glucose", "max", MIN, 130.0), ("glucose", "mean", MIN, 120.0),
        ("glucose", "min", MIN, 110.0), ("glucose", "mean", 0, 125.0), ("glucose", "count", 0, 5.0),
    ])
    assert list(out) == ["glucose", "heart_rate"]
    assert out["glucose"] == {"unit": "mg/dL", "fields": ["t_ms", "mean", "min", "max"],
                              "points": [[0, 125.0, None, None], [MIN, 120.0, 110.0, 130.0]]}
    assert out["heart_rate"]["points"] == [[2 * MIN, 70.0, None, None]]
    assert series_from_records([]) == {}


# ---------------------------------------------------------------------- console over a fake pipeline
class FakeTopic:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []

    async def send(self, *, key: bytes, value: bytes, force: bool = False) -> asyncio.Future[Any]:
        self.sent.append((key, value))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def fake_pipeline(states: dict[str, Any], table: dict[bytes, bytes]) -> tuple[Any, FakeTopic]:
    topic = FakeTopic()

    def view(pid: str) -> Any:
        if pid not in states:
            states[pid] = pickle.loads(table[pid.encode()])
        return states[pid]

    proc = SimpleNamespace(cache=states, view=view)
    app = SimpleNamespace(topic=lambda *a, **kw: topic)
    settings = SimpleNamespace(topic_commands="alerts.commands", partitions=4, app_id="w1", pseudonym_key=None)
    return SimpleNamespace(processor=proc, table=table, app=app, settings=settings), topic


def test_console_lists_cached_and_stored_patients_and_acks_through_kafka() -> None:
    cached = AlertBook("p-cached", ward="3B")
    cached.on_finding(finding("glucose_low", Priority.MEDIUM, T0), T0)
    stored = AlertBook("p-stored", ward=None)
    stored.on_finding(finding("glucose_urgent_low", Priority.HIGH, T0 + MIN), T0 + MIN)
    states: dict[str, Any] = {"p-cached": SimpleNamespace(book=cached)}
    table = {b"p-stored": pickle.dumps(SimpleNamespace(book=stored))}
    pipeline, topic = fake_pipeline(states, table)
    console = Console(pipeline)

    body = console.alerts(T0 + 10 * MIN)
    assert [(r["patient_id"], r["priority"], r["ward"]) for r in body["alerts"]] == [
        ("p-stored", "high", "unassigned"), ("p-cached", "medium", "3B")]
    assert body["scope"]["worker"] == "w1"

    alert_id = body["alerts"][0]["alert_id"]
    status, resp = asyncio.run(console.acknowledge(alert_id, "nurse.kim"))
    assert (status, resp["status"], resp["patient_id"]) == (202, "sent", "p-stored")
    ((key, value),) = topic.sent
    assert key == b"p-stored"
    cmd = parse_command_record(value)
    assert isinstance(cmd, Ack)
    assert (cmd.alert_id, cmd.by, cmd.ward, cmd.patient_id) == (alert_id, "nurse.kim", "unassigned", "p-stored")

    with pytest.raises(ApiError) as e:
        asyncio.run(console.acknowledge("al-" + "0" * 20, "kim"))
    assert (e.value.status, e.value.code) == (404, "alert_not_found")

    # once the worker applied it (to the state it now holds in its cache), a second acknowledgement sends nothing
    states["p-stored"].book.ack(alert_id, "nurse.kim", T0 + 2 * MIN)
    status, resp = asyncio.run(console.acknowledge(alert_id, "nurse.bo"))
    assert (status, resp["status"], resp["acked_by"]) == (200, "already_acknowledged", "nurse.kim")
    assert len(topic.sent) == 1


def test_series_without_pseudonym_key_is_503() -> None:
    pipeline, _ = fake_pipeline({}, {})
    with pytest.raises(ApiError) as e:
        Console(pipeline).series("p-1")
    assert e.value.status == 503
