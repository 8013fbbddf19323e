"""The console's view and HTTP layer without Kafka: ward filtering, sorting, CSRF, sessions, 404s.

The view is filled with real ``alerts.state`` and ``console.users`` records (made by the worker's and
the CLI's own code) through :meth:`ConsoleView.apply`, exactly as the follower feeds it; the HTTP
tests run the real aiohttp application in-process, stopping before anything would be sent to Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from alerts.lifecycle import AlertBook
from alerts.models import AlertEvent
from alerts.mqtt import state_payload
from console.auth import LoginThrottle, hash_password
from console.models import Account, Preferences, Revocation
from console.server import COOKIE, ConsoleServer
from console.state import ConsoleView
from console.views import sort_key
from detectors.base import Audience, Finding, Priority
from wearwatch.config import load_settings

T0 = 1_800_000_000_000
MIN = 60_000
PW_HASH = hash_password("correct horse battery")


def finding(kind: str, priority: Priority, onset: int, signal: str = "glucose") -> Finding:
    return Finding(kind=kind, signal=signal, priority=priority, audience=Audience.CLINICAL, ts_ms=onset,
                   onset_ms=onset, source="rule", message=f"{kind}: 52 mg/dL, below 55", value=52.0, threshold=55.0)


def book_with(pid: str, ward: str, *specs: tuple[str, Priority, int]) -> AlertBook:
    book = AlertBook(pid, ward=ward)
    for kind, prio, onset in specs:
        book.on_finding(finding(kind, prio, onset), onset)
    return book


def state_record(book: AlertBook) -> tuple[bytes, bytes | None]:
    """What the worker writes to alerts.state for this book (streams.app.Pipeline.alert_states)."""
    open_ = book.open_alerts()
    return book.patient_id.encode(), (state_payload(book.patient_id, book.ward or "unassigned", open_, T0)
                                      if open_ else None)


def account(name: str, role: str, *wards: str, **kw: Any) -> Account:
    return Account(username=name, role=role, wards=wards, password_hash=PW_HASH,  # type: ignore[arg-type]
                   created_ms=T0, updated_ms=T0, **kw)


@pytest.fixture
def view() -> ConsoleView:
    v = ConsoleView(LoginThrottle(5, 900_000))
    books = [
        book_with("p-a1", "3B", ("glucose_high", Priority.MEDIUM, T0), ("glucose_urgent_low", Priority.HIGH, T0 + MIN)),
        book_with("p-a2", "3B", ("glucose_low", Priority.MEDIUM, T0 - 5 * MIN)),
        book_with("p-b1", "ICU", ("bradycardia", Priority.HIGH, T0 - 9 * MIN)),
    ]
    for b in books:
        v.apply("state", *state_record(b), T0)
    for a in (account("kim", "nurse", "3B"), account("ana", "nurse", "ICU"),
              account("cho", "charge_nurse", "3B", "ICU"), account("root", "admin", "IT")):
        v.apply("users", a.username.encode(), a.to_json(), T0)
    return v


# ---------------------------------------------------------------------- view
def test_ward_filtering_and_order(view: ConsoleView) -> None:
    kim = view.rows(frozenset({"3B"}), "mg/dL")
    assert [(r["patient_id"], r["kind"]) for r in kim] == [
        ("p-a1", "glucose_urgent_low"), ("p-a2", "glucose_low"), ("p-a1", "glucose_high")]
    assert {r["ward"] for r in kim} == {"3B"}
    assert [r["patient_id"] for r in view.rows(frozenset({"ICU"}), "mg/dL")] == ["p-b1"]
    everything = view.rows(None, "mg/dL")
    assert [(r["patient_id"], r["priority"]) for r in everything] == [
        ("p-b1", "high"), ("p-a1", "high"), ("p-a2", "medium"), ("p-a1", "medium")]
    assert everything == sorted(everything, key=sort_key)
    assert view.rows(frozenset({"5C"}), "mg/dL") == []


def test_acknowledged_sorts_after_unacknowledged_of_the_same_priority(view: ConsoleView) -> None:
    book = book_with("p-a3", "3B", ("tachycardia_at_rest", Priority.HIGH, T0 - 60 * MIN))
    book.ack(book.open_alerts()[0].alert_id, "kim", T0)
    view.apply("state", *state_record(book), T0)
    kinds = [(r["patient_id"], r["state"]) for r in view.rows(frozenset({"3B"}), "mg/dL")]
    # the older high alert is acknowledged: it comes after the newer unacknowledged high one
    assert kinds[:2] == [("p-a1", "open"), ("p-a3", "acknowledged")]


def test_tombstone_and_resolution_close_alerts_and_notify(view: ConsoleView) -> None:
    changes: list[tuple[Any, ...]] = []
    view.listeners.add(changes.append)
    aid = view.rows(frozenset({"ICU"}), "mg/dL")[0]["alert_id"]
    assert view.find_alert(aid) is not None
    view.apply("state", b"p-b1", None, T0)
    assert view.find_alert(aid) is None and view.closed[aid] == ("p-b1", "ICU")
    assert view.rows(frozenset({"ICU"}), "mg/dL") == []
    assert changes == [("patient", "p-b1", "ICU")]


def test_patient_moving_ward_is_reported_with_the_old_ward(view: ConsoleView) -> None:
    changes: list[tuple[Any, ...]] = []
    view.listeners.add(changes.append)
    book = book_with("p-a2", "ICU", ("glucose_low", Priority.MEDIUM, T0 - 5 * MIN))
    view.apply("state", *state_record(book), T0)
    assert changes == [("patient", "p-a2", "3B")] and view.ward_of("p-a2") == "ICU"
    assert "p-a2" not in {r["patient_id"] for r in view.rows(frozenset({"3B"}), "mg/dL")}


def test_malformed_records_are_counted_and_skipped(view: ConsoleView) -> None:
    before = view.rows(None, "mg/dL")
    view.apply("state", b"p-x", b"not json", T0)
    view.apply("state", b"p-x", orjson.dumps({"schema_version": 1, "patient_id": "p-other", "ward": "3B",
                                              "updated_ms": 1, "alerts": []}), T0)
    view.apply("users", b"x", b'{"username": "x"}', T0)
    view.apply("sessions", b"s", b"[]", T0)
    assert view.bad_records == 4 and view.rows(None, "mg/dL") == before


# ---------------------------------------------------------------------- HTTP, in-process
Call = Callable[..., Awaitable[tuple[int, Any]]]


def run_http(view_fixture: ConsoleView, scenario: Callable[[ConsoleServer, Call], Awaitable[None]],
             ready: bool = True) -> None:
    settings = load_settings(console_secret="s" * 40, influx_token="u:p", pseudonym_key="k" * 16)
    server = ConsoleServer(settings)
    server.view = view_fixture
    server.follower.view = view_fixture

    async def main() -> None:
        if ready:
            server.follower.ready.set()
        client = TestClient(TestServer(server.app(kafka=False)))
        await client.start_server()
        try:
            async def call(method: str, path: str, *, user: str | None = None, csrf: bool | str = True,
                           body: Any = None) -> tuple[int, Any]:
                headers: dict[str, str] = {}
                cookies: dict[str, str] = {}
                if user is not None:
                    token, session = server.codec.issue(user, __import__("time").time_ns() // 1_000_000)
                    cookies[COOKIE] = token
                    if csrf is True:
                        headers["X-CSRF-Token"] = server.codec.csrf_token(session)
                    elif isinstance(csrf, str):
                        headers["X-CSRF-Token"] = csrf
                data = None
                if body is not None:
                    data = orjson.dumps(body)
                    headers["Content-Type"] = "application/json"
                client.session.cookie_jar.clear()
                client.session.cookie_jar.update_cookies(cookies)
                resp = await client.request(method, path, headers=headers, data=data)
                raw = await resp.read()
                return resp.status, (orjson.loads(raw) if raw and resp.content_type == "application/json" else raw)

            await scenario(server, call)
        finally:
            await client.close()

    asyncio.run(main())


def test_http_ward_filtering_and_404s(view: ConsoleView) -> None:
    b1 = view.rows(frozenset({"ICU"}), "mg/dL")[0]["alert_id"]

    async def scenario(server: ConsoleServer, call: Call) -> None:
        status, body = await call("GET", "/api/alerts", user="kim")
        assert status == 200 and {r["patient_id"] for r in body["alerts"]} == {"p-a1", "p-a2"}
        status, body = await call("GET", "/api/alerts", user="cho")
        assert status == 200 and {r["patient_id"] for r in body["alerts"]} == {"p-a1", "p-a2", "p-b1"}
        status, body = await call("GET", "/api/alerts", user="root")
        assert status == 200 and len(body["alerts"]) == 4
        # another ward's patient and alert: 404, whatever the action (checked before anything is sent)
        assert (await call("GET", "/api/patients/p-b1", user="kim"))[0] == 404
        assert (await call("GET", "/api/patients/p-unknown", user="kim"))[0] == 404  # ward unassigned
        assert (await call("GET", "/api/patients/bad%20id", user="kim"))[0] == 404
        for action, body_ in (("ack", None), ("snooze", {"minutes": 5}), ("notes", {"text": "hello"})):
            status, err = await call("POST", f"/api/alerts/{b1}/{action}", user="kim", body=body_)
            assert (status, err["error"]) == (404, "not_found"), action
        assert (await call("POST", "/api/alerts/al-xyz/ack", user="kim"))[0] == 404

    run_http(view, scenario)


def test_http_sessions_and_csrf(view: ConsoleView) -> None:
    a1 = view.rows(frozenset({"3B"}), "mg/dL")[0]

    async def scenario(server: ConsoleServer, call: Call) -> None:
        assert (await call("GET", "/api/alerts"))[0] == 401
        assert (await call("GET", "/api/me"))[0] == 401
        assert (await call("POST", f"/api/alerts/{a1['alert_id']}/ack"))[0] == 401
        status, err = await call("POST", f"/api/alerts/{a1['alert_id']}/ack", user="kim", csrf=False)
        assert (status, err["error"]) == (403, "csrf")
        status, err = await call("POST", f"/api/alerts/{a1['alert_id']}/ack", user="kim", csrf="forged")
        assert (status, err["error"]) == (403, "csrf")
        assert (await call("POST", "/api/logout", user="kim", csrf=False))[0] == 403
        assert (await call("PUT", "/api/me/preferences", user="kim", csrf=False, body={"units": "mmol/L"}))[0] == 403
        # admins read everything but do not act on alerts; nurses cannot read the audit trail
        status, err = await call("POST", f"/api/alerts/{a1['alert_id']}/ack", user="root")
        assert (status, err["error"]) == (403, "forbidden")
        assert (await call("GET", "/api/audit", user="kim"))[0] == 403
        # the me body, with the CSRF token a reloaded page needs
        status, me = await call("GET", "/api/me", user="kim")
        assert status == 200 and (me["username"], me["role"], me["wards"], me["units"]) == ("kim", "nurse", ["3B"],
                                                                                            "mg/dL")
        assert me["csrf_token"] and me["silence_minutes"] == 2
        # snooze beyond the lifecycle's cap for a high-capable kind: 400 before anything is sent
        status, err = await call("POST", f"/api/alerts/{a1['alert_id']}/snooze", user="kim", body={"minutes": 6})
        assert (status, err["error"]) == (400, "invalid_field") and "1 to 5" in err["detail"]
        for bad in ({"minutes": 0}, {"minutes": "5"}, {"minutes": True}, {"minutes": 2, "by": "x"}, {}):
            assert (await call("POST", f"/api/alerts/{a1['alert_id']}/snooze", user="kim", body=bad))[0] == 400
        for bad in ({"text": ""}, {"text": "  "}, {"text": "x" * 1001}, {"text": 5}, {"text": "a", "by": "bo"}):
            assert (await call("POST", f"/api/alerts/{a1['alert_id']}/notes", user="kim", body=bad))[0] == 400
        # disabled accounts, revoked sessions and old sessions are dead at once
        view.apply("users", b"kim", account("kim", "nurse", "3B", disabled=True).to_json(), T0)
        assert (await call("GET", "/api/alerts", user="kim"))[0] == 401
        now = __import__("time").time_ns() // 1_000_000
        view.apply("users", b"kim", account("kim", "nurse", "3B", sessions_valid_after_ms=now + 60_000).to_json(), T0)
        assert (await call("GET", "/api/alerts", user="kim"))[0] == 401
        view.apply("users", b"kim", account("kim", "nurse", "3B").to_json(), T0)
        assert (await call("GET", "/api/alerts", user="kim"))[0] == 200

    run_http(view, scenario)


def test_http_revoked_session_and_preferences_units(view: ConsoleView) -> None:
    async def scenario(server: ConsoleServer, call: Call) -> None:
        now = __import__("time").time_ns() // 1_000_000
        _token, session = server.codec.issue("kim", now)
        rev = Revocation(sid=session.sid, username="kim", revoked_ms=now, expires_ms=now + 3_600_000)
        view.apply("sessions", session.sid.encode(), rev.to_json(), now)
        assert server.session_end_reason(session, now) == "logout"
        prefs = Preferences(username="kim", units="mmol/L", updated_ms=now)
        view.apply("preferences", b"kim", prefs.to_json(), now)
        status, body = await call("GET", "/api/alerts", user="kim")
        assert status == 200
        glucose_rows = [r for r in body["alerts"] if r["signal"] == "glucose"]
        assert glucose_rows and all(r["unit"] == "mmol/L" and "mg/dL" not in r["message"] for r in glucose_rows)

    run_http(view, scenario)


def test_http_not_ready_probe_and_pages(view: ConsoleView) -> None:
    async def scenario(server: ConsoleServer, call: Call) -> None:
        status, body = await call("GET", "/readyz")
        assert status == 503 and body["status"] == "starting" and "alerts.state" in body["waiting_for"]
        assert (await call("GET", "/healthz"))[0] == 200
        status, err = await call("GET", "/api/alerts", user="kim")
        assert (status, err["error"]) == (503, "not_ready")
        status, page = await call("GET", "/")
        assert status == 200 and b"<html" in page.lower()
        assert (await call("GET", "/assets/..%2Fserver.py"))[0] == 404
        assert (await call("GET", "/assets/server.py"))[0] == 404

    run_http(view, scenario, ready=False)


def test_state_records_carry_the_open_alerts_of_the_book() -> None:
    book = book_with("p-z", "3B", ("glucose_low", Priority.MEDIUM, T0))
    key, value = state_record(book)
    assert value is not None
    doc = orjson.loads(value)
    assert (key, doc["patient_id"], doc["ward"]) == (b"p-z", "p-z", "3B")
    assert [AlertEvent.model_validate(a) for a in doc["alerts"]] == book.open_alerts()


def test_http_event_stream_scope_changes_and_idle_end(view: ConsoleView) -> None:
    from console.auth import SessionCodec

    async def scenario(server: ConsoleServer, call: Call) -> None:
        server.codec = SessionCodec("s" * 40, idle_ms=1500, max_ms=3_600_000)
        now = __import__("time").time_ns() // 1_000_000
        token, _ = server.codec.issue("kim", now)
        client = TestClient(TestServer(server.app(kafka=False)))
        await client.start_server()
        try:
            resp = await client.get("/api/events", cookies={COOKIE: token})
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            events: list[tuple[str, Any]] = []

            async def read() -> None:
                event = ""
                async for raw in resp.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        events.append((event, orjson.loads(line[6:])))

            reader = asyncio.create_task(read())
            while not events:
                await asyncio.sleep(0.01)
            assert events[0][0] == "snapshot" and {r["patient_id"] for r in events[0][1]["alerts"]} == {"p-a1", "p-a2"}
            # an ICU change is not sent to a 3B nurse; a 3B change is, with the patient's full list
            view.apply("state", *state_record(book_with("p-b1", "ICU", ("bradycardia", Priority.HIGH, T0))), T0)
            view.apply("state", *state_record(book_with("p-a2", "3B", ("glucose_low", Priority.MEDIUM, T0),
                                                        ("glucose_high", Priority.MEDIUM, T0 + MIN))), T0)
            # p-a1 moves to ICU: kim gets an empty list for it
            view.apply("state", *state_record(book_with("p-a1", "ICU", ("glucose_high", Priority.MEDIUM, T0))), T0)
            await asyncio.wait_for(reader, 5)  # the stream ends on its own: idle after 1.5 s
            kinds = [(e, d.get("patient_id"), len(d.get("alerts", []))) for e, d in events[1:]]
            assert kinds == [("patient", "p-a2", 2), ("patient", "p-a1", 0), ("session_end", None, 0)]
            assert events[-1][1] == {"reason": "idle"}
        finally:
            await client.close()

    run_http(view, scenario)
