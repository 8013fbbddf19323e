"""The console's event stream keep-alive and the patient-view audit, without Kafka.

The keep-alive is a named SSE event (the page cannot see comments): a stream with nothing to say still sends one
every ``KEEPALIVE_S``, so the page can tell a stalled stream from a quiet one. A patient view is audited when the
nurse opens the patient, not on each refresh of the open detail (``?refresh=1``), and a refresh alone never
escapes the audit.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

import console.server
from console.models import AuditRecord
from console.server import COOKIE, Auth, ConsoleServer
from console.state import ConsoleView
from tests.test_console_views import view  # noqa: F401 (fixture)
from wearwatch.config import load_settings


def server_for(view_: ConsoleView) -> tuple[ConsoleServer, list[AuditRecord]]:
    settings = load_settings(console_secret="s" * 40, influx_token="u:p", pseudonym_key="k" * 16)
    server = ConsoleServer(settings)
    server.view = server.follower.view = view_
    audited: list[AuditRecord] = []

    async def send(records: list[tuple[str, bytes, bytes | None]], timeout_s: float = 10.0) -> None:
        audited.extend(AuditRecord.model_validate_json(v) for t, _k, v in records
                       if t == settings.topic_audit and v is not None)

    server.publisher.send = send  # type: ignore[method-assign]
    return server, audited


def test_a_quiet_stream_sends_named_keepalive_events(
        view: ConsoleView, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(console.server, "KEEPALIVE_S", 0.3)
    server, _ = server_for(view)

    async def main() -> list[tuple[str, Any, float]]:
        server.follower.ready.set()
        client = TestClient(TestServer(server.app(kafka=False)))
        await client.start_server()
        try:
            token, _ = server.codec.issue("kim", time.time_ns() // 1_000_000)
            resp = await client.get("/api/events", cookies={COOKIE: token})
            assert resp.status == 200
            events: list[tuple[str, Any, float]] = []
            lines: list[str] = []
            event = ""
            t0 = time.monotonic()
            while len(events) < 4:
                line = (await asyncio.wait_for(resp.content.readline(), 5)).decode().rstrip("\n")
                lines.append(line)
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    events.append((event, orjson.loads(line[6:]), time.monotonic() - t0))
            resp.close()
            assert not [ln for ln in lines if ln.startswith(":")]  # no comments: the page could not see them
            return events
        finally:
            await client.close()

    events = asyncio.run(main())
    assert [e for e, _d, _t in events] == ["snapshot", "keepalive", "keepalive", "keepalive"]
    for _e, data, _t in events[1:]:
        assert set(data) == {"server_ms"} and isinstance(data["server_ms"], int)
    gaps = [b[2] - a[2] for a, b in itertools.pairwise(events[1:])]
    assert all(0.2 < g < 1.0 for g in gaps), gaps


def test_patient_view_audited_on_open_not_on_refresh(view: ConsoleView) -> None:  # noqa: F811
    server, audited = server_for(view)
    now = time.time_ns() // 1_000_000
    _, kim_1 = server.codec.issue("kim", now)
    _, kim_2 = server.codec.issue("kim", now)
    account = view.accounts["kim"]

    async def look(session: Any, pid: str, refresh: bool) -> None:
        req = make_mocked_request("GET", f"/api/patients/{pid}" + ("?refresh=1" if refresh else ""))
        await server._audit_view(req, Auth(session, account), pid)

    async def main() -> None:
        await look(kim_1, "p-a1", refresh=False)  # opened: audited
        await look(kim_1, "p-a1", refresh=True)  # the open detail refreshed: not again
        await look(kim_1, "p-a1", refresh=True)
        await look(kim_1, "p-a2", refresh=True)  # a "refresh" of a patient this session never opened: audited
        await look(kim_1, "p-a2", refresh=True)
        await look(kim_2, "p-a1", refresh=True)  # another session (another screen): its own record
        await look(kim_1, "p-a1", refresh=False)  # opened again: audited again

    asyncio.run(main())
    assert [(r.action, r.actor, r.patient_id) for r in audited] == [
        ("patient_view", "kim", "p-a1"), ("patient_view", "kim", "p-a2"), ("patient_view", "kim", "p-a1"),
        ("patient_view", "kim", "p-a1")]
