"""The console behind a trusted proxy (SSO header, forwarded address and scheme) and login throttling,
on the real Kafka (accounts, audit). Only the console runs: no worker is needed for sessions."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest

from tests.integration.conftest import consume_all, free_port
from tests.integration.test_console_service import PASSWORDS, users_cli, wait_ready
from wearwatch.config import Settings

pytestmark = pytest.mark.stack


def call(base: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
         ) -> tuple[int, Any, Any]:
    h = dict(headers or {})
    data = None
    if body is not None:
        data = orjson.dumps(body)
        h["Content-Type"] = "application/json"
    req = urllib.request.Request(base + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw, hdrs = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read(), e.headers
    return status, (orjson.loads(raw) if raw else None), hdrs


def cookie_of(hdrs: Any) -> tuple[str, str]:
    c = next(c for c in hdrs.get_all("Set-Cookie") if c.startswith("ww_session="))
    return c.split(";")[0].split("=", 1)[1], c


def test_sso_header_from_a_trusted_proxy_and_throttling(settings: Settings, spawn: Any, run_id: str) -> None:
    s = settings.model_copy(update={"console_secret": f"secret-{run_id}-" + "y" * 32, "console_port": free_port(),
                                    "console_trusted_proxies": "127.0.0.1/32", "console_sso_header": "X-Remote-User",
                                    "console_login_max_failures": 3})
    users_cli(s, "add", "kim", "--role", "charge_nurse", "--ward", "3B", "--ward", "ICU", "--password-stdin",
              password=PASSWORDS["kim"])
    console = spawn("console", s, "console")
    base = f"http://127.0.0.1:{s.console_port}"
    wait_ready(base, console)

    # the proxy names the user: a session without a password, marked Secure when the proxy says https
    proxy = {"X-Remote-User": "kim", "X-Forwarded-For": "10.1.2.3, 127.0.0.1", "X-Forwarded-Proto": "https"}
    status, body, hdrs = call(base, "POST", "/api/login", {}, proxy)
    assert status == 200 and body["user"]["username"] == "kim" and body["user"]["wards"] == ["3B", "ICU"]
    token, raw_cookie = cookie_of(hdrs)
    assert "HttpOnly" in raw_cookie and "SameSite=Strict" in raw_cookie and "Secure" in raw_cookie
    # a reloaded page behind the proxy gets a session from GET /api/me alone
    status, me, hdrs = call(base, "GET", "/api/me", None, proxy)
    assert status == 200 and me["username"] == "kim" and me["role"] == "charge_nurse"
    # the session is the proxy user's: another user's header with kim's cookie is refused
    status, _, _ = call(base, "GET", "/api/alerts", None, {**proxy, "X-Remote-User": "bo",
                                                          "Cookie": f"ww_session={token}"})
    assert status == 401
    # an unknown user named by the proxy has no account
    status, err, _ = call(base, "POST", "/api/login", {}, {**proxy, "X-Remote-User": "bo"})
    assert (status, err["error"]) == (401, "bad_credentials")

    # throttling: 3 failures for kim, then 429 with Retry-After even for the right password
    for _ in range(3):
        assert call(base, "POST", "/api/login", {"username": "kim", "password": "wrong-password-0000"})[0] == 401
    status, err, hdrs = call(base, "POST", "/api/login", {"username": "kim", "password": PASSWORDS["kim"]})
    assert (status, err["error"]) == (429, "throttled") and 25 <= int(hdrs["Retry-After"]) <= 30

    # a second console replica, started now, knows the failures (they are on the audit topic)
    s2 = s.model_copy(update={"console_port": free_port(), "console_trusted_proxies": "10.0.0.0/8"})
    console2 = spawn("console", s2, "console")
    base2 = f"http://127.0.0.1:{s2.console_port}"
    wait_ready(base2, console2)
    status, _, hdrs = call(base2, "POST", "/api/login", {"username": "kim", "password": PASSWORDS["kim"]})
    assert status == 429 and int(hdrs["Retry-After"]) > 0
    # ... and accepts the session made by the first (same secret: signed tokens, no shared memory)
    status, me, _ = call(base2, "GET", "/api/me", None, {"Cookie": f"ww_session={token}"})
    assert status == 200 and me["username"] == "kim"
    # for it 127.0.0.1 is no trusted proxy: the header is ignored, the forwarded address too
    status, _, _ = call(base2, "GET", "/api/me", None, proxy)
    assert status == 401
    status, err, _ = call(base2, "POST", "/api/login", {}, proxy)
    assert (status, err["error"]) == (400, "invalid_field")

    records = [orjson.loads(r.value) for r in consume_all(s, s.topic_audit, idle_s=1.0)]
    trail = [(r["actor"], r["action"], r.get("address"), r["detail"].get("via")) for r in records]
    assert trail == [
        ("cli:test", "user_add", None, None),
        ("kim", "login", "10.1.2.3", "sso"),
        ("kim", "login", "10.1.2.3", "sso"),  # the reload through GET /api/me
        ("bo", "login_failed", "10.1.2.3", "sso"),
        ("kim", "login_failed", "127.0.0.1", None),
        ("kim", "login_failed", "127.0.0.1", None),
        ("kim", "login_failed", "127.0.0.1", None),
    ]
