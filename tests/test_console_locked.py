"""The locked screen's server side without Kafka: ``GET /api/alarm-status`` gives ward-level counts only, to a
session that is live or ended by its idle timeout, and to no other; it never counts as activity.

The view is filled with real ``alerts.state`` and ``console.users`` records (see ``tests/test_console_views.py``);
the real aiohttp application runs in-process. The audit records it would send to Kafka are kept in a list
instead (the stack test ``tests/integration/test_console_service.py`` reads the real ones).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer

from console.auth import SessionCodec
from console.models import AuditRecord, Revocation
from console.server import COOKIE, ConsoleServer
from console.state import ConsoleView
from console.views import alarm_counts, needs_action
from detectors.base import Priority
from tests.test_console_views import MIN, T0, account, book_with, state_record, view  # noqa: F401 (fixture)
from wearwatch.config import load_settings

IDLE_MS, MAX_MS = 60_000, 3_600_000
STATUS_KEYS = {"session", "role", "wards", "counts", "highest", "until_ms", "server_ms"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


Get = Callable[..., Awaitable[tuple[int, Any, Any]]]


Scenario = Callable[[ConsoleServer, Get, list[AuditRecord]], Awaitable[None]]


def run_locked(view_: ConsoleView, scenario: Scenario) -> None:
    """Run ``scenario(server, get, audited)``: ``get(path, token)`` answers (status, JSON body, Set-Cookie)."""
    settings = load_settings(console_secret="s" * 40, influx_token="u:p", pseudonym_key="k" * 16)
    server = ConsoleServer(settings)
    server.view = server.follower.view = view_
    server.codec = SessionCodec("s" * 40, idle_ms=IDLE_MS, max_ms=MAX_MS)
    audited: list[AuditRecord] = []

    async def send(records: list[tuple[str, bytes, bytes | None]], timeout_s: float = 10.0) -> None:
        audited.extend(AuditRecord.model_validate_json(v) for t, _k, v in records
                       if t == settings.topic_audit and v is not None)

    server.publisher.send = send  # type: ignore[method-assign]

    async def main() -> None:
        server.follower.ready.set()
        client = TestClient(TestServer(server.app(kafka=False)))
        await client.start_server()
        try:
            async def get(path: str, token: str | None) -> tuple[int, Any, Any]:
                client.session.cookie_jar.clear()
                resp = await client.get(path, cookies={COOKIE: token} if token else None)
                raw = await resp.read()
                body = orjson.loads(raw) if raw and resp.content_type == "application/json" else raw
                return resp.status, body, resp.headers.get("Set-Cookie")

            await scenario(server, get, audited)
        finally:
            await client.close()

    asyncio.run(main())


def leaves(doc: Any, kind: type) -> set[Any]:
    """Every value of type ``kind`` in a JSON document, keys excluded."""
    if isinstance(doc, dict):
        return set().union(*(leaves(v, kind) for v in doc.values()))
    if isinstance(doc, list):
        return set().union(*(leaves(v, kind) for v in doc))
    return {doc} if isinstance(doc, kind) and not isinstance(doc, bool) else set()


# ---------------------------------------------------------------------- counting
def test_counts_only_alerts_that_need_someone() -> None:
    t = T0
    alerts = [
        {"state": "open", "priority": "high"},
        {"state": "updated", "priority": "high"},  # changed since its acknowledgement: needs one again
        {"state": "acknowledged", "priority": "high"},
        {"state": "open", "priority": "medium", "snoozed_until_ms": t + 1},  # snoozed: waits
        {"state": "open", "priority": "medium", "snoozed_until_ms": t},  # its snooze just ended
        {"state": "open", "priority": "low"},
        {"state": "resolved", "priority": "low"},
        {"state": "open", "priority": "urgent"},  # not a priority of the contract
    ]
    assert alarm_counts(alerts, t) == {"high": 2, "medium": 1, "low": 1}
    assert [needs_action(a, t) for a in alerts] == [True, True, False, False, True, True, False, True]
    assert alarm_counts([], t) == {"high": 0, "medium": 0, "low": 0}


def test_view_counts_follow_the_wards(view: ConsoleView) -> None:  # noqa: F811
    # 3B: p-a1 high + medium, p-a2 medium; ICU: p-b1 high
    assert view.alarm_counts(frozenset({"3B"}), T0) == {"high": 1, "medium": 2, "low": 0}
    assert view.alarm_counts(frozenset({"ICU"}), T0) == {"high": 1, "medium": 0, "low": 0}
    assert view.alarm_counts(frozenset({"3B", "ICU"}), T0) == {"high": 2, "medium": 2, "low": 0}
    assert view.alarm_counts(None, T0) == {"high": 2, "medium": 2, "low": 0}
    assert view.alarm_counts(frozenset({"4A"}), T0) == {"high": 0, "medium": 0, "low": 0}
    # a snoozed alert is not counted until its snooze ends; the patient's tombstone removes its alerts
    key, value = state_record(book_with("p-b1", "ICU", ("bradycardia", Priority.HIGH, T0)))
    assert value is not None
    doc = orjson.loads(value)
    doc["alerts"][0]["snoozed_until_ms"] = T0 + 5 * MIN
    view.apply("state", key, orjson.dumps(doc), T0)
    assert view.alarm_counts(frozenset({"ICU"}), T0)["high"] == 0
    assert view.alarm_counts(frozenset({"ICU"}), T0 + 5 * MIN)["high"] == 1
    view.apply("state", b"p-a1", None, T0)
    assert view.alarm_counts(frozenset({"3B"}), T0) == {"high": 0, "medium": 1, "low": 0}


# ---------------------------------------------------------------------- HTTP
def test_a_live_session_gets_counts_only_and_no_refresh(view: ConsoleView) -> None:  # noqa: F811
    async def scenario(server: ConsoleServer, get: Get, audited: list[AuditRecord]) -> None:
        t = now_ms()
        token, session = server.codec.issue("kim", t - 40_000)  # old enough that any other request re-issues it
        status, body, cookie = await get("/api/alarm-status", token)
        assert status == 200 and set(body) == STATUS_KEYS
        assert (body["session"], body["role"], body["wards"]) == ("live", "nurse", ["3B"])
        assert (body["counts"], body["highest"]) == ({"high": 1, "medium": 2, "low": 0}, "high")
        assert body["until_ms"] == session.issued_ms + MAX_MS
        # nothing of a patient: the only words are the session's state, role, wards and a priority; the only
        # numbers are counts and times (no patient id, alert id, kind, message or value anywhere)
        assert leaves(body, str) == {"live", "nurse", "3B", "high"}
        assert leaves(body, int) == {0, 1, 2, body["until_ms"], body["server_ms"]}
        raw = orjson.dumps(body).decode()
        for secret in ("p-a1", "p-a2", "p-b1", "glucose", *(r["alert_id"] for r in view.rows(None, "mg/dL"))):
            assert secret not in raw, secret
        # not activity: no re-issued cookie, and the replica's idle clock did not move
        assert cookie is None and session.sid not in server._seen
        assert audited == []  # a live session's status is not a locked screen
        assert (await get("/api/alerts", token))[2] is not None  # (a real request does refresh it)
        # the charge nurse's wards, and an admin's every ward
        cho, _ = server.codec.issue("cho", t)
        assert (await get("/api/alarm-status", cho))[1]["counts"] == {"high": 2, "medium": 2, "low": 0}
        root, _ = server.codec.issue("root", t)
        status, body, _ = await get("/api/alarm-status", root)
        assert (body["role"], body["wards"], body["counts"]["high"]) == ("admin", None, 2)
        ana, _ = server.codec.issue("ana", t)
        assert (await get("/api/alarm-status", ana))[1]["counts"] == {"high": 1, "medium": 0, "low": 0}

    run_locked(view, scenario)


def test_an_idle_session_gets_counts_only_audited_once(view: ConsoleView) -> None:  # noqa: F811
    async def scenario(server: ConsoleServer, get: Get, audited: list[AuditRecord]) -> None:
        t = now_ms()
        token, _ = server.codec.issue("kim", t - IDLE_MS - 5_000)
        # everything else refuses the idle session
        for path in ("/api/me", "/api/alerts", "/api/events", "/api/patients/p-a1"):
            status, body, _ = await get(path, token)
            assert (status, body["error"]) == (401, "unauthenticated"), path
        for _ in range(3):
            status, body, cookie = await get("/api/alarm-status", token)
            assert status == 200 and body["session"] == "idle" and cookie is None
            assert body["counts"] == {"high": 1, "medium": 2, "low": 0}
        assert (await get("/api/me", token))[0] == 401  # polling never revives it
        # one audit record for the locked screen, not one per poll
        assert [(r.actor, r.action, r.patient_id, r.alert_id, r.detail) for r in audited] == [
            ("kim", "screen_locked", None, None, {"reason": "idle"})]
        # counts follow the view: the high alert is acknowledged
        key, value = state_record(book_with("p-a1", "3B", ("glucose_high", Priority.MEDIUM, T0)))
        view.apply("state", key, value, T0)
        status, body, _ = await get("/api/alarm-status", token)
        assert (body["counts"], body["highest"]) == ({"high": 0, "medium": 2, "low": 0}, "medium")
        # the account's wards change: the locked screen follows them
        view.apply("users", b"kim", account("kim", "nurse", "ICU").to_json(), T0)
        status, body, _ = await get("/api/alarm-status", token)
        assert (body["wards"], body["counts"]) == (["ICU"], {"high": 1, "medium": 0, "low": 0})
        assert len(audited) == 1
        # another idle session of the same account is a locked screen of its own
        other, _ = server.codec.issue("kim", t - IDLE_MS - 1_000)
        assert (await get("/api/alarm-status", other))[0] == 200
        assert [r.action for r in audited] == ["screen_locked", "screen_locked"]

    run_locked(view, scenario)


def test_sessions_ended_otherwise_are_refused(view: ConsoleView) -> None:  # noqa: F811
    async def scenario(server: ConsoleServer, get: Get, audited: list[AuditRecord]) -> None:
        t = now_ms()

        async def refused(token: str | None) -> str:
            status, body, _ = await get("/api/alarm-status", token)
            assert status == 401 and set(body) == {"error", "detail"}, body
            return str(body["detail"])

        # past the absolute maximum: refused, idle or not
        expired, _ = server.codec.issue("kim", t - MAX_MS - 1)
        assert "expired" in await refused(expired)
        # logged out (a revocation every replica follows)
        out, s_out = server.codec.issue("kim", t - IDLE_MS - 1_000)
        view.apply("sessions", s_out.sid.encode(), Revocation(sid=s_out.sid, username="kim", revoked_ms=t,
                                                              expires_ms=t + MAX_MS).to_json(), t)
        assert "logout" in await refused(out)
        # disabled account; unknown account
        ana, _ = server.codec.issue("ana", t - IDLE_MS - 1_000)
        view.apply("users", b"ana", account("ana", "nurse", "ICU", disabled=True).to_json(), T0)
        assert "disabled" in await refused(ana)
        ghost, _ = server.codec.issue("nobody", t)
        assert "disabled" in await refused(ghost)
        # a password change (or re-enable) ends the sessions begun before it
        cho, _ = server.codec.issue("cho", t - IDLE_MS - 1_000)
        view.apply("users", b"cho", account("cho", "charge_nurse", "3B", sessions_valid_after_ms=t).to_json(), T0)
        assert "revoked" in await refused(cho)
        # no cookie, a forged one, one signed with another secret
        assert "invalid" in await refused(None)
        assert "invalid" in await refused("e30.AAAA")
        foreign, _ = SessionCodec("x" * 40, idle_ms=IDLE_MS, max_ms=MAX_MS).issue("kim", t)
        assert "invalid" in await refused(foreign)
        assert audited == []

    run_locked(view, scenario)
