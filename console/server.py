"""``wearwatch console``: the fleet alert console service (aiohttp). The API is in ``console/API.md``.

One process serves the page (``console/assets/``), the JSON API and the live event stream for
the open alerts of every patient, whichever worker holds them. It keeps no state of its own:
its view is rebuilt from Kafka (:mod:`console.follower`), sessions are signed tokens
(:mod:`console.auth`), logouts, accounts and preferences are on compacted topics, and the audit
trail and alert history are read from Kafka on demand (:mod:`console.history`). So any number
of replicas can run behind a load balancer without sticky sessions, and a restarted one answers
the same once ``/readyz`` says so.

Privacy: real patient identifiers are in the answers (nurse-facing), never in the logs at INFO;
aiohttp's access log (it would hold URLs with patient ids) is off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import re
import ssl
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from alerts.enrollment import Enrollment, load_enrollment
from console.auth import REFRESH_AFTER_MS, LoginThrottle, Session, SessionCodec, SessionInvalid, verify_password
from console.auth import hash_password as _hash_password
from console.auth import needs_rehash as _needs_rehash
from console.follower import Follower, Publisher
from console.history import audit_records, patient_events
from console.models import Account, AuditRecord, Preferences, Revocation, valid_username
from console.state import ConsoleView
from console.topics import ensure_console_topics, partition_count
from console.views import (
    Scope,
    alert_row,
    flux_series_query,
    history_markers,
    in_scope,
    series_from_records,
    snooze_max_minutes,
    valid_alert_id,
    valid_patient_id,
)
from wearwatch.config import Settings, load_settings
from wearwatch.contract.commands import Ack, Note, Snooze, command_record
from wearwatch.contract.enrollment import EnrollmentRecord
from wearwatch.contract.priority import PRIORITIES
from wearwatch.datakeys import DataKeys, seal, sealed_record
from wearwatch.enrollment_topic import EnrollmentFollower
from wearwatch.errors import ConfigError, StackUnavailable
from wearwatch.influxdb import influx_client
from wearwatch.partitioning import patient_partition
from wearwatch.privacy import pseudonym

__all__ = ["COOKIE", "ApiError", "ConsoleServer", "add_arguments", "run"]

log = logging.getLogger(__name__)

COOKIE = "ww_session"
MAX_BODY_BYTES = 16 * 1024
KEEPALIVE_S = 15.0
STREAM_QUEUE = 10_000
HISTORY_WINDOW_MS = 24 * 3600 * 1000
NOTE_MAX = 1000
_ASSET_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_ASSET_TYPES = {
    ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
    ".png": "image/png", ".wav": "audio/wav", ".mp3": "audio/mpeg", ".ico": "image/x-icon",
    ".json": "application/json",
}
CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self' data:; style-src 'self' 'unsafe-inline'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def _now_ms() -> int:
    return int(time.time() * 1000)


class ApiError(Exception):
    """Answered as ``{"error": code, "detail": ...}`` with an HTTP status (and optional headers)."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


#: what a handler leaves for the middleware to do to the answer's session cookie: set it (a new or refreshed
#: session's token) or clear it (a logout)
_SET_SESSION = web.RequestKey("set_session", str)
_CLEAR_SESSION = web.RequestKey("clear_session", bool)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store", **(headers or {})})


@dataclass(frozen=True, slots=True)
class Auth:
    session: Session
    account: Account


class ConsoleServer:
    """The console's handlers and its Kafka plumbing for one replica."""

    def __init__(self, settings: Settings, enrollment: Enrollment | None = None) -> None:
        settings.require("console_secret", "influx_token", "pseudonym_key")
        self.settings = s = settings
        self.codec = SessionCodec(s.console_secret or "", idle_ms=int(s.console_idle_timeout_s * 1000),
                                  max_ms=int(s.console_session_max_s * 1000))
        self.view = ConsoleView(LoginThrottle(s.console_login_max_failures, int(s.console_login_window_s * 1000)))
        self.follower = Follower(s, self.view)
        self.publisher = Publisher(s)
        if enrollment is None:
            enrollment = load_enrollment(s.enrollment_file) if s.enrollment_file else Enrollment()
        #: wards of patients without open alerts (for the patient view), followed live from the enrollment topic
        self.enrollment = enrollment
        self.enrollment_follower = EnrollmentFollower(s, self._on_enrollment)
        #: the per-patient data keys nurse commands are sealed under (wearwatch/datakeys.py)
        self.datakeys = DataKeys(s)
        self.trusted = self._networks(s.console_trusted_proxies)
        self.sso_header = s.console_sso_header.strip()
        #: argon2 takes 64 MiB per check: at most two at a time
        self._hash_sem = asyncio.Semaphore(2)
        #: session id -> last time it was used on this replica (the event stream's idle deadline)
        self._seen: dict[str, int] = {}
        #: session id -> its absolute end, for the idle-ended sessions whose locked screen was audited here
        self._locked_audited: dict[str, int] = {}
        #: (session id, patient id) -> the session's absolute end, for the patient views audited here
        self._viewed: dict[tuple[str, str], int] = {}
        self._influx: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        #: partition counts of the topics the console reads (``alerts`` once it exists)
        self.partitions: dict[str, int] = {}
        self.streams = 0
        self.closing = False

    @staticmethod
    def _networks(spec: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        out = []
        for part in (p.strip() for p in spec.split(",")):
            if part:
                try:
                    out.append(ipaddress.ip_network(part, strict=False))
                except ValueError as exc:
                    raise ConfigError(f"WEARWATCH_CONSOLE_TRUSTED_PROXIES: {part!r} is not an address or CIDR") from exc
        return out

    # ------------------------------------------------------------------ app and lifecycle
    def app(self, *, kafka: bool = True) -> web.Application:
        """The aiohttp application; ``kafka=False`` leaves Kafka alone (the view is filled by the caller)."""
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY_BYTES)
        r = app.router
        r.add_get("/", self.page)
        r.add_get("/assets/{name}", self.asset)
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_post("/api/login", self.login)
        r.add_get("/api/me", self.me)
        r.add_post("/api/logout", self.logout)
        r.add_put("/api/me/preferences", self.preferences)
        r.add_get("/api/alerts", self.alerts)
        r.add_get("/api/events", self.events)
        r.add_get("/api/alarm-status", self.alarm_status)
        r.add_post("/api/alerts/{alert_id}/ack", self.ack)
        r.add_post("/api/alerts/{alert_id}/snooze", self.snooze)
        r.add_post("/api/alerts/{alert_id}/notes", self.note)
        r.add_get("/api/patients/{patient_id}", self.patient)
        r.add_get("/api/audit", self.audit_view)
        if kafka:
            app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def start_kafka(self) -> None:
        loop = asyncio.get_running_loop()
        self.partitions = await loop.run_in_executor(None, ensure_console_topics, self.settings)
        await self.publisher.start()
        try:
            await self.follower.start(self.partitions)
        except BaseException:
            await self.publisher.stop()
            raise
        self._tasks.append(asyncio.create_task(self._follow()))
        self._tasks.append(asyncio.create_task(self._warm_rows()))
        self.enrollment_follower.start()
        self.datakeys.start()

    def _on_enrollment(self, patient_id: str, record: EnrollmentRecord | None) -> None:
        """The enrolment follower's thread: a patient's ward changed (or they were discharged or erased)."""
        try:
            self.enrollment.apply(patient_id, record)
        except ConfigError:
            log.warning("skipped an enrollment record with unknown detector settings")

    async def _warm_rows(self) -> None:
        """Once the view is ready, build every patient's rows in the site's units, a slice at a time, so
        the first full ``/api/alerts`` after a start does not pay for them (15,000 rows: ~1.7 s)."""
        await self.follower.ready.wait()
        units = self.settings.console_glucose_units
        for i, pid in enumerate(list(self.view.patients)):
            self.view.patient_rows(pid, units)
            if i % 200 == 199:
                await asyncio.sleep(0)

    async def _follow(self) -> None:
        try:
            await self.follower.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # the view would go stale: stop serving rather than show old alerts
            log.exception("console follower stopped; exiting")
            raise SystemExit(1) from None

    async def _on_startup(self, app: web.Application) -> None:
        await self.start_kafka()

    async def _on_shutdown(self, app: web.Application) -> None:
        self.closing = True
        self.view._notify(("shutdown",))

    async def _on_cleanup(self, app: web.Application) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.follower.stop()
        await self.publisher.stop()
        self.enrollment_follower.stop(timeout_s=2.0)
        self.datakeys.stop()
        if self._influx is not None:
            self._influx.close()

    # ------------------------------------------------------------------ middleware
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            if request.path.startswith("/api/") and not self.follower.ready.is_set():
                raise ApiError(503, "not_ready", "the console is still reading its Kafka topics")
            resp = await handler(request)
        except ApiError as exc:
            resp = _json(exc.status, {"error": exc.code, "detail": exc.detail}, exc.headers)
        except StackUnavailable as exc:
            log.warning("backing service unavailable: %s", exc)
            resp = _json(503, {"error": "kafka_unavailable", "detail": "the request was not carried out; try again"})
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
            resp = _json(exc.status, {"error": code, "detail": exc.reason})
        if not resp.prepared:
            resp.headers.setdefault("X-Content-Type-Options", "nosniff")
            resp.headers.setdefault("Referrer-Policy", "no-referrer")
            resp.headers.setdefault("X-Frame-Options", "DENY")
            token = request.get(_SET_SESSION)
            if token is not None:
                self._set_cookie(request, resp, token)
            elif request.get(_CLEAR_SESSION):
                resp.del_cookie(COOKIE, path="/")
        return resp

    # ------------------------------------------------------------------ request helpers
    def _trusted(self, addr: str | None) -> bool:
        if not addr or not self.trusted:
            return False
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def client_address(self, request: web.Request) -> str:
        """The client's address: the peer, or behind a trusted proxy the last untrusted X-Forwarded-For hop."""
        peer = request.remote or ""
        if self._trusted(peer):
            hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
            for hop in reversed(hops):
                if not self._trusted(hop):
                    return hop[:64]
        return peer

    def is_tls(self, request: web.Request) -> bool:
        if request.transport is not None and request.transport.get_extra_info("sslcontext") is not None:
            return True
        return self._trusted(request.remote) and request.headers.get("X-Forwarded-Proto", "").lower() == "https"

    def sso_user(self, request: web.Request) -> str | None:
        """The user named by the SSO proxy's header (only from a trusted proxy, only when configured)."""
        if not self.sso_header or not self._trusted(request.remote):
            return None
        v = request.headers.get(self.sso_header, "").strip().lower()
        return v or None

    def _set_cookie(self, request: web.Request, resp: web.StreamResponse, token: str) -> None:
        resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=self.is_tls(request), path="/")

    async def json_body(self, request: web.Request, *, optional: bool = False) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            if optional:
                return {}
            raise ApiError(400, "invalid_json", "a JSON object body is required")
        if request.content_type != "application/json":
            raise ApiError(415, "unsupported_media_type", "send the body as application/json")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
        if not isinstance(doc, dict):
            raise ApiError(400, "invalid_json", "the body must be a JSON object")
        return doc

    def units(self, account: Account) -> str:
        p = self.view.preferences.get(account.username)
        return (p.units if p is not None and p.units else None) or self.settings.console_glucose_units

    def silence_minutes(self, account: Account) -> int:
        p = self.view.preferences.get(account.username)
        return p.silence_minutes if p is not None and p.silence_minutes else 2

    @staticmethod
    def scope(account: Account) -> Scope:
        return None if account.role == "admin" else frozenset(account.wards)

    def session_end_reason(self, session: Session, now_ms: int) -> str | None:
        """Why ``session`` ended (``logout``, ``disabled``, ``revoked``, ``idle``, ``expired``); None if it is live."""
        if session.sid in self.view.revoked:
            return "logout"
        account = self.view.accounts.get(session.username)
        if account is None or account.disabled:
            return "disabled"
        if session.issued_ms < account.sessions_valid_after_ms:
            return "revoked"
        seen = max(session.seen_ms, self._seen.get(session.sid, 0))
        if now_ms - session.issued_ms > self.codec.max_ms:
            return "expired"
        if now_ms - seen > self.codec.idle_ms:
            return "idle"
        return None

    def authenticate(self, request: web.Request, *, refresh: bool = True) -> Auth:
        """The caller's live session and account, or 401."""
        now = _now_ms()
        try:
            session = self.codec.decode(request.cookies.get(COOKIE), now)
        except SessionInvalid as exc:
            raise ApiError(401, "unauthenticated", f"no valid session ({exc.reason}); log in") from None
        reason = self.session_end_reason(session, now)
        if reason is not None:
            raise ApiError(401, "unauthenticated", f"the session ended ({reason}); log in")
        sso = self.sso_user(request)
        if sso is not None and sso != session.username:
            raise ApiError(401, "unauthenticated", "the session is another user's than the proxy's")
        account = self.view.accounts[session.username]
        if refresh:
            self._seen[session.sid] = now
            if now - session.seen_ms > REFRESH_AFTER_MS:
                request[_SET_SESSION], session = self.codec.refresh(session, now)
        if len(self._seen) > 100_000:
            cutoff = now - self.codec.idle_ms
            self._seen = {k: v for k, v in self._seen.items() if v >= cutoff}
        return Auth(session, account)

    def require_csrf(self, request: web.Request, auth: Auth) -> None:
        if not self.codec.check_csrf(auth.session, request.headers.get("X-CSRF-Token")):
            raise ApiError(403, "csrf", "missing or wrong X-CSRF-Token header (GET /api/me returns the token)")

    @staticmethod
    def require_clinical(auth: Auth) -> None:
        if auth.account.role not in ("nurse", "charge_nurse"):
            raise ApiError(403, "forbidden", "only nurse and charge nurse accounts act on alerts")

    async def audit(self, actor: str, action: str, request: web.Request | None, *, extra: list[Any] | None = None,
                    patient_id: str | None = None, alert_id: str | None = None, **detail: Any) -> None:
        """Append one audit record (with any ``extra`` records, e.g. the command it audits) and wait for Kafka."""
        rec = AuditRecord(ts_ms=_now_ms(), actor=actor[:80], action=action,  # type: ignore[arg-type]
                          address=self.client_address(request) if request is not None else None,
                          patient_id=patient_id, alert_id=alert_id, detail=detail)
        records = [*(extra or []), (self.settings.topic_audit, rec.record_key, rec.to_json())]
        await self.publisher.send(records)
        self.view.apply("audit", rec.record_key, rec.to_json(), _now_ms())  # throttle at once, deduplicated

    def me_body(self, auth: Auth) -> dict[str, Any]:
        a = auth.account
        return {"username": a.username, "role": a.role, "wards": list(a.wards), "units": self.units(a),
                "silence_minutes": self.silence_minutes(a), "csrf_token": self.codec.csrf_token(auth.session),
                "idle_timeout_s": self.settings.console_idle_timeout_s,
                "expires_ms": auth.session.issued_ms + self.codec.max_ms}

    # ------------------------------------------------------------------ pages and probes
    async def page(self, request: web.Request) -> web.StreamResponse:
        return self._asset("console.html")

    async def asset(self, request: web.Request) -> web.StreamResponse:
        return self._asset(request.match_info["name"])

    def _asset(self, name: str) -> web.Response:
        ext = name[name.rfind("."):] if "." in name else ""
        if not _ASSET_RE.match(name) or ext not in _ASSET_TYPES or name.startswith("."):
            raise ApiError(404, "not_found", "no such file")
        try:
            body = resources.files("console").joinpath("assets", name).read_bytes()
        except (FileNotFoundError, IsADirectoryError, OSError):
            raise ApiError(404, "not_found", "no such file") from None
        headers = {"Cache-Control": "no-cache"}
        if ext == ".html":
            headers["Content-Security-Policy"] = CSP
        return web.Response(body=body, content_type=_ASSET_TYPES[ext], headers=headers)

    async def healthz(self, request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.follower.ready.is_set():
            return _json(200, {"status": "ready", "patients": len(self.view.patients),
                               "ready_after_s": ((self.follower.ready_ms or 0) - self.follower.started_ms) / 1000})
        return _json(503, {"status": "starting", "waiting_for": sorted(self.follower.pending)})

    # ------------------------------------------------------------------ session endpoints
    async def login(self, request: web.Request) -> web.Response:
        body = await self.json_body(request, optional=True)
        addr = self.client_address(request)
        now = _now_ms()
        sso = self.sso_user(request)
        if sso is not None and "password" not in body:
            account = self.view.accounts.get(sso)
            if account is None or account.disabled:
                await self.audit(sso, "login_failed", request, via="sso")
                raise ApiError(401, "bad_credentials", "the proxy's user has no enabled console account")
            return await self._logged_in(request, account, via="sso")
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
            raise ApiError(400, "invalid_field", 'send {"username": "...", "password": "..."}')
        if len(username) > 64 or len(password) > 1024:
            raise ApiError(400, "invalid_field", "username or password too long")
        username = username.strip().lower()
        retry = self.view.throttle.retry_after_s(username, addr, now)
        if retry:
            raise ApiError(429, "throttled", f"too many failed logins; try again in {retry} s",
                           {"Retry-After": str(retry)})
        account = self.view.accounts.get(username)
        async with self._hash_sem:
            ok = await asyncio.get_running_loop().run_in_executor(
                None, verify_password, account.password_hash if account is not None else None, password)
        if not ok or account is None or account.disabled:
            actor = username if valid_username(username) else "(invalid username)"
            await self.audit(actor, "login_failed", request,
                             reason="disabled" if ok and account is not None else "bad_credentials")
            raise ApiError(401, "bad_credentials", "wrong username or password, or the account is disabled")
        if _needs_rehash(account.password_hash):
            await self._rehash(account, password)
        return await self._logged_in(request, account, via="password")

    async def _rehash(self, account: Account, password: str) -> None:
        loop = asyncio.get_running_loop()
        new_hash = await loop.run_in_executor(None, _hash_password, password)
        current = self.view.accounts.get(account.username)
        if current is not None and current.updated_ms == account.updated_ms:  # nobody changed it meanwhile
            updated = current.model_copy(update={"password_hash": new_hash, "updated_ms": _now_ms()})
            await self.publisher.send([(self.settings.topic_console_users, updated.username.encode(),
                                        updated.to_json())])
            self.view.apply("users", updated.username.encode(), updated.to_json(), _now_ms())

    async def _start_session(self, request: web.Request, account: Account, via: str) -> Auth:
        """A new session for ``account`` (audited); its cookie is set on the answer."""
        now = _now_ms()
        token, session = self.codec.issue(account.username, now)
        await self.audit(account.username, "login", request, role=account.role, via=via)
        request[_SET_SESSION] = token
        self._seen[session.sid] = now
        return Auth(session, account)

    async def _logged_in(self, request: web.Request, account: Account, via: str) -> web.Response:
        auth = await self._start_session(request, account, via)
        user = {k: v for k, v in self.me_body(auth).items() if k in ("username", "role", "wards", "units",
                                                                      "silence_minutes")}
        return _json(200, {"csrf_token": self.codec.csrf_token(auth.session), "user": user})

    async def me(self, request: web.Request) -> web.Response:
        try:
            auth = self.authenticate(request)
        except ApiError:
            sso = self.sso_user(request)
            account = self.view.accounts.get(sso) if sso is not None else None
            if account is None or account.disabled:
                raise
            auth = await self._start_session(request, account, via="sso")
        return _json(200, self.me_body(auth))

    async def logout(self, request: web.Request) -> web.Response:
        auth = self.authenticate(request, refresh=False)
        self.require_csrf(request, auth)
        s = auth.session
        rev = Revocation(sid=s.sid, username=s.username, revoked_ms=_now_ms(),
                         expires_ms=s.issued_ms + self.codec.max_ms)
        await self.audit(s.username, "logout", request,
                         extra=[(self.settings.topic_console_sessions, s.sid.encode(), rev.to_json())])
        self.view.apply("sessions", s.sid.encode(), rev.to_json(), _now_ms())
        request[_CLEAR_SESSION] = True
        return web.Response(status=204, headers={"Cache-Control": "no-store"})

    async def preferences(self, request: web.Request) -> web.Response:
        auth = self.authenticate(request)
        self.require_csrf(request, auth)
        body = await self.json_body(request)
        unknown = sorted(set(body) - {"units", "silence_minutes"})
        if unknown:
            raise ApiError(400, "invalid_field", f"unknown field(s): {', '.join(unknown)[:200]}")
        old = self.view.preferences.get(auth.account.username)
        changes: dict[str, Any] = {}
        if "units" in body:
            if body["units"] not in ("mg/dL", "mmol/L"):
                raise ApiError(400, "invalid_field", 'units must be "mg/dL" or "mmol/L"')
            changes["units"] = body["units"]
        if "silence_minutes" in body:
            v = body["silence_minutes"]
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10:
                raise ApiError(400, "invalid_field", "silence_minutes must be an integer from 1 to 10")
            changes["silence_minutes"] = v
        prefs = Preferences(username=auth.account.username,
                            units=changes.get("units", old.units if old else None),
                            silence_minutes=changes.get("silence_minutes", old.silence_minutes if old else None),
                            updated_ms=_now_ms())
        await self.audit(auth.account.username, "preferences", request,
                         extra=[(self.settings.topic_console_preferences, prefs.username.encode(), prefs.to_json())],
                         **changes)
        self.view.apply("preferences", prefs.username.encode(), prefs.to_json(), _now_ms())
        return _json(200, self.me_body(auth))

    # ------------------------------------------------------------------ alerts
    def alerts_body(self, scope: Scope, units: str) -> dict[str, Any]:
        return {"alerts": self.view.rows(scope, units), "server_ms": _now_ms()}

    async def alerts(self, request: web.Request) -> web.Response:
        auth = self.authenticate(request)
        return _json(200, self.alerts_body(self.scope(auth.account), self.units(auth.account)))

    def _target(self, request: web.Request, auth: Auth) -> tuple[str, str, dict[str, Any]]:
        """(patient id, ward, alert dict) of the URL's open alert in the caller's scope: 404 / 409 otherwise."""
        aid = request.match_info["alert_id"]
        scope = self.scope(auth.account)
        if valid_alert_id(aid):
            found = self.view.find_alert(aid)
            if found is not None and in_scope(scope, found[0].ward):
                return found[0].patient_id, found[0].ward, found[1]
            closed = self.view.closed.get(aid)
            if found is None and closed is not None and in_scope(scope, closed[1]):
                raise ApiError(409, "not_open", "the alert is no longer open (resolved)")
        raise ApiError(404, "not_found", "no open alert with this id in your wards")

    async def _command(self, request: web.Request, auth: Auth, action: str, cmd: Ack | Snooze | Note,
                       alert_id: str, **detail: Any) -> web.Response:
        """Send a nurse command to ``alerts.commands`` together with its audit record; 202 once Kafka has both.

        The command is sealed under the patient's data key (:mod:`wearwatch.datakeys`; their first key is
        created if they have none) and goes to the partition the patient's id hashes to (the worker owning
        the patient applies it), keyed by the key id: nothing in the record names the patient."""
        s = self.settings
        loop = asyncio.get_running_loop()
        # may write the patient's first key (a StackUnavailable is the middleware's 503)
        key_id, cipher = await loop.run_in_executor(None, self.datakeys.cipher_for, cmd.patient_id)
        sealed = sealed_record([seal(cipher, key_id, command_record(cmd), "alerts.commands")])
        partition = patient_partition(cmd.patient_id, self.partitions.get(s.topic_commands, s.partitions))
        await self.audit(auth.account.username, action, request, patient_id=cmd.patient_id, alert_id=alert_id,
                         extra=[(s.topic_commands, key_id, sealed, partition)], **detail)
        log.info("console %s sent", action)
        return _json(202, {"status": "accepted"})

    async def ack(self, request: web.Request) -> web.Response:
        auth = self.authenticate(request)
        self.require_csrf(request, auth)
        self.require_clinical(auth)
        await self.json_body(request, optional=True)
        pid, ward, alert = self._target(request, auth)
        if alert["state"] == "acknowledged":
            raise ApiError(409, "already_acknowledged", f"acknowledged by {alert.get('acked_by')}")
        cmd = Ack(ward=ward, patient_id=pid, alert_id=alert["alert_id"], by=auth.account.username, ts_ms=_now_ms())
        return await self._command(request, auth, "ack", cmd, alert["alert_id"])

    async def snooze(self, request: web.Request) -> web.Response:
        auth = self.authenticate(request)
        self.require_csrf(request, auth)
        self.require_clinical(auth)
        body = await self.json_body(request)
        pid, ward, alert = self._target(request, auth)
        minutes = body.get("minutes")
        cap = snooze_max_minutes(alert["kind"], alert["priority"])
        if set(body) - {"minutes"}:
            raise ApiError(400, "invalid_field", 'send {"minutes": N}')
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= cap:
            raise ApiError(400, "invalid_field", f"minutes must be an integer from 1 to {cap} for this alert")
        now = _now_ms()
        cmd = Snooze(ward=ward, patient_id=pid, kind=alert["kind"], until_ms=now + minutes * 60_000,
                     by=auth.account.username, ts_ms=now)
        return await self._command(request, auth, "snooze", cmd, alert["alert_id"], minutes=minutes,
                                   kind=alert["kind"])

    async def note(self, request: web.Request) -> web.Response:
        auth = self.authenticate(request)
        self.require_csrf(request, auth)
        self.require_clinical(auth)
        body = await self.json_body(request)
        pid, ward, alert = self._target(request, auth)
        text = body.get("text")
        if set(body) - {"text"} or not isinstance(text, str) or not 1 <= len(text.strip()) <= NOTE_MAX:
            raise ApiError(400, "invalid_field", f'send {{"text": "..."}} with 1 to {NOTE_MAX} characters')
        cmd = Note(ward=ward, patient_id=pid, alert_id=alert["alert_id"], text=text.strip(),
                   by=auth.account.username, ts_ms=_now_ms())
        # the note's text is on Kafka alerts (the alert's lifecycle); the audit says that one was written
        return await self._command(request, auth, "note", cmd, alert["alert_id"], chars=len(cmd.text))

    # ------------------------------------------------------------------ event stream
    async def events(self, request: web.Request) -> web.StreamResponse:
        auth = self.authenticate(request, refresh=False)
        session, account = auth.session, auth.account
        queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(maxsize=STREAM_QUEUE)
        overflow = asyncio.Event()

        def listener(change: tuple[Any, ...]) -> None:
            try:
                queue.put_nowait(change)
            except asyncio.QueueFull:
                overflow.set()

        resp = web.StreamResponse(status=200, headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no",
            "X-Content-Type-Options": "nosniff"})
        self.view.listeners.add(listener)  # before the snapshot: no change falls between
        self.streams += 1
        try:
            await resp.prepare(request)
            await resp.write(b"retry: 3000\n\n")
            scope, units = self.scope(account), self.units(account)
            await self._sse(resp, "snapshot", self.alerts_body(scope, units))
            while not self.closing:
                now = _now_ms()
                reason = self.session_end_reason(session, now)
                if reason is not None:
                    await self._sse(resp, "session_end", {"reason": reason})
                    break
                seen = max(session.seen_ms, self._seen.get(session.sid, 0))
                deadline = min(seen + self.codec.idle_ms, session.issued_ms + self.codec.max_ms)
                wait = max(0.05, min(KEEPALIVE_S, (deadline - now) / 1000 + 0.05))
                try:
                    change: tuple[Any, ...] | None = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    change = None
                if overflow.is_set():
                    log.info("event stream too slow; closed (the client reconnects with a fresh snapshot)")
                    break
                if change is None:
                    if _now_ms() >= now + wait * 1000 - 100 and self.session_end_reason(session, _now_ms()) is None:
                        # a named event, not a comment: the page can see it and tell a stalled stream
                        await self._sse(resp, "keepalive", {"server_ms": _now_ms()})
                    continue
                if change[0] == "accounts":
                    fresh = self.view.accounts.get(session.username)
                    if fresh is not None and (self.scope(fresh), self.units(fresh)) != (scope, units):
                        scope, units = self.scope(fresh), self.units(fresh)
                        await self._sse(resp, "snapshot", self.alerts_body(scope, units))
                elif change[0] == "patient":
                    pid, old_ward = change[1], change[2]
                    ward = self.view.ward_of(pid)
                    if ward is not None and in_scope(scope, ward):
                        await self._sse(resp, "patient", {"patient_id": pid, "ward": ward, "server_ms": _now_ms(),
                                                          "alerts": self.view.patient_rows(pid, units)})
                    elif old_ward is not None and in_scope(scope, old_ward):
                        await self._sse(resp, "patient", {"patient_id": pid, "ward": old_ward,
                                                          "server_ms": _now_ms(), "alerts": []})
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass
        finally:
            self.view.listeners.discard(listener)
            self.streams -= 1
        return resp

    @staticmethod
    async def _sse(resp: web.StreamResponse, event: str, data: Any) -> None:
        await resp.write(b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")

    # ------------------------------------------------------------------ locked screen
    async def alarm_status(self, request: web.Request) -> web.Response:
        """The ward-level alarm state of the caller's wards: counts of alerts that need someone, by priority.

        The one answer a session past its idle timeout still gets (until its absolute end; never after a
        logout, a disabled account or a password change), so a locked ward screen keeps sounding alarms
        without showing anything of a patient. It does not count as activity. The first answer to an
        idle-ended session is audited (``screen_locked``) once per session on this replica, not per poll."""
        now = _now_ms()
        try:
            session = self.codec.decode(request.cookies.get(COOKIE), now, allow_idle=True)
        except SessionInvalid as exc:
            raise ApiError(401, "unauthenticated", f"no valid session ({exc.reason}); log in") from None
        reason = self.session_end_reason(session, now)
        if reason not in (None, "idle"):
            raise ApiError(401, "unauthenticated", f"the session ended ({reason}); log in")
        sso = self.sso_user(request)
        if sso is not None and sso != session.username:
            raise ApiError(401, "unauthenticated", "the session is another user's than the proxy's")
        account = self.view.accounts[session.username]
        until = session.issued_ms + self.codec.max_ms
        # idle: past the timeout by this replica's clock or by the cookie's (which every other request checks)
        idle = reason == "idle" or now - session.seen_ms > self.codec.idle_ms
        if idle and session.sid not in self._locked_audited:
            for sid in [k for k, end in self._locked_audited.items() if end <= now]:
                del self._locked_audited[sid]
            self._locked_audited[session.sid] = until  # before the await: a concurrent poll does not audit too
            try:
                await self.audit(account.username, "screen_locked", request, reason="idle")
            except StackUnavailable as exc:  # the alarm state matters more: answer, audit at the next poll
                del self._locked_audited[session.sid]
                log.warning("locked-screen audit record not written yet: %s", exc)
        counts = self.view.alarm_counts(self.scope(account), now)
        highest = next((p for p in PRIORITIES if counts[p]), "none")
        return _json(200, {"session": "idle" if idle else "live", "role": account.role,
                           "wards": None if account.role == "admin" else list(account.wards),
                           "counts": counts, "highest": highest, "until_ms": until, "server_ms": now})

    # ------------------------------------------------------------------ patient detail
    def _series(self, patient_id: str, units: str) -> dict[str, list[dict[str, Any]]]:
        """The last 24 h of the patient's 1-minute series from InfluxDB (blocking: run in an executor)."""
        s = self.settings
        if self._influx is None:
            self._influx = influx_client(s, timeout_ms=15_000)
        query = flux_series_query(s.influx_bucket, pseudonym(s.pseudonym_key or "", patient_id))
        try:
            tables = self._influx.query_api().query(query, org=s.influx_org)
        except Exception as exc:  # urllib3 / ApiException: say so, never hang the page
            log.warning("InfluxDB series query failed: %s", type(exc).__name__)
            raise ApiError(503, "influx_unavailable", "the patient's series could not be read; try again") from None
        records = ((r.values.get("signal"), r.get_field(), int(r.get_time().timestamp() * 1000), r.get_value())
                   for t in tables for r in t.records)
        return series_from_records(((sg, f, t, v) for sg, f, t, v in records if sg and v is not None), units)

    async def patient(self, request: web.Request) -> web.Response:
        auth = self.authenticate(request)
        pid = request.match_info["patient_id"]
        if not valid_patient_id(pid):
            raise ApiError(404, "not_found", "no such patient in your wards")
        ward = self.view.ward_of(pid) or self.enrollment.ward_for(pid)
        if not in_scope(self.scope(auth.account), ward):
            raise ApiError(404, "not_found", "no such patient in your wards")
        units = self.units(auth.account)
        loop = asyncio.get_running_loop()
        alerts_topic = self.settings.topic_alerts
        if alerts_topic not in self.partitions:
            n = await loop.run_in_executor(None, partition_count, self.settings, alerts_topic)
            if n:
                self.partitions[alerts_topic] = n
        n = self.partitions.get(alerts_topic)
        history = patient_events(self.settings, n, pid, _now_ms() - HISTORY_WINDOW_MS) if n else _no_events()
        series, events = await asyncio.gather(loop.run_in_executor(None, self._series, pid, units), history)
        await self._audit_view(request, auth, pid)
        return _json(200, {"patient_id": pid, "ward": ward, "units": units, "series": series,
                           "alerts": [alert_row(e, units) for e in events], "markers": history_markers(events)})

    async def _audit_view(self, request: web.Request, auth: Auth, pid: str) -> None:
        """Audit a patient view when the nurse opens the patient; ``?refresh=1`` (the page fetching an open detail
        again) is audited only if this session's view of the patient was not yet audited on this replica, so
        a client cannot skip the record by always asking for a refresh."""
        key, now = (auth.session.sid, pid), _now_ms()
        if request.query.get("refresh") == "1" and key in self._viewed:
            return
        await self.audit(auth.account.username, "patient_view", request, patient_id=pid)
        if len(self._viewed) >= 100_000:  # ended sessions go; if that is not enough, audit again (the safe side)
            self._viewed = {k: end for k, end in self._viewed.items() if end > now}
            if len(self._viewed) >= 100_000:
                self._viewed.clear()
        self._viewed[key] = auth.session.issued_ms + self.codec.max_ms

    # ------------------------------------------------------------------ audit
    async def audit_view(self, request: web.Request) -> web.Response:
        auth = self.authenticate(request)
        if auth.account.role != "admin":
            raise ApiError(403, "forbidden", "the audit trail is for admin accounts")
        q = request.query
        now = _now_ms()

        def num(name: str, default: int, lo: int, hi: int) -> int:
            raw = q.get(name)
            if raw is None or raw == "":
                return default
            try:
                v = int(raw)
            except ValueError:
                raise ApiError(400, "invalid_field", f"{name} must be an integer") from None
            if not lo <= v <= hi:
                raise ApiError(400, "invalid_field", f"{name} must be from {lo} to {hi}")
            return v

        until = num("until_ms", now, 0, 2**53)
        since = num("since_ms", until - 24 * 3600 * 1000, 0, 2**53)
        limit = num("limit", 200, 1, 5000)
        user = q.get("user") or None
        patient = q.get("patient") or None
        if patient is not None and not valid_patient_id(patient):
            raise ApiError(400, "invalid_field", "patient must be a patient id")
        records, truncated = await audit_records(self.settings, self.partitions[self.settings.topic_audit], since,
                                                 until, limit, user=user, patient=patient)
        return _json(200, {"records": records, "truncated": truncated})


async def _no_events() -> list[dict[str, Any]]:
    return []


# ---------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="bind address (default: WEARWATCH_CONSOLE_HOST)")
    parser.add_argument("--port", type=int, help="port (default: WEARWATCH_CONSOLE_PORT)")


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["console_host"] = args.host
    if args.port:
        overrides["console_port"] = args.port
    settings = load_settings(**overrides)
    server = ConsoleServer(settings)
    ssl_ctx = None
    if settings.console_tls_cert:
        if not settings.console_tls_key:
            raise ConfigError("WEARWATCH_CONSOLE_TLS_KEY is required with WEARWATCH_CONSOLE_TLS_CERT")
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(settings.console_tls_cert, settings.console_tls_key)
    scheme = "https" if ssl_ctx is not None else "http"
    log.info("console starting on %s://%s:%d", scheme, settings.console_host, settings.console_port)
    web.run_app(server.app(), host=settings.console_host, port=settings.console_port, ssl_context=ssl_ctx,
                access_log=None, shutdown_timeout=3.0, print=lambda *_: log.info(
                    "console up on %s://%s:%d", scheme, settings.console_host, settings.console_port),
                handle_signals=True)
    return 0
