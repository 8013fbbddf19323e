"""Passwords, session tokens, CSRF tokens and login throttling. Pure: no I/O, clocks passed in.

Passwords
---------
argon2id through ``argon2-cffi`` with its default profile (RFC 9106 "low memory":
time cost 3, 64 MiB, parallelism 4, 16-byte salt, 32-byte hash): ~50-100 ms per check
on one core. A hash made with other parameters still verifies and is re-hashed at the
next successful login (:func:`needs_rehash`). Unknown usernames are checked against a
dummy hash so that the time taken does not tell which accounts exist.

Sessions
--------
A session is a signed token in an HttpOnly cookie, not a server-side record, so every
console replica accepts it without sharing memory: ``base64url(payload).base64url(mac)``
with ``mac = HMAC-SHA256(WEARWATCH_CONSOLE_SECRET, "session" | payload)`` and the payload
``[version, username, session id, issued_ms, seen_ms]``.

* **absolute lifetime**: ``now - issued_ms > max_ms`` → expired, whatever happens;
* **idle timeout**: ``now - seen_ms > idle_ms`` → idle. Each authenticated request
  (not the event stream) re-issues the cookie with ``seen_ms = now`` when the last one is
  older than :data:`REFRESH_AFTER_MS`;
* **locked screen**: a token past its idle timeout but within its absolute lifetime still
  reads the ward-level alarm counts (no patient data) and nothing else, so a shared ward screen
  keeps sounding alarms after the nurse walked away;
* **logout** is a :class:`~console.models.Revocation` on a compacted topic every replica
  follows; a disabled account or a changed password kills older sessions through
  ``Account.sessions_valid_after_ms``.

The CSRF token is ``HMAC(secret, "csrf" | session id)``: bound to the session, derivable
on every replica, never stored.

Throttling
----------
:class:`LoginThrottle` counts failed logins per username and per client address within a
window; past ``max_failures`` (addresses: 4 times as many) the key is locked for a
back-off that doubles with each further failure (30 s, 60 s, ... up to 15 min). The
failures it counts are the ``login_failed`` records of the audit topic, which every
replica follows, so the limit holds across replicas.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
from collections import deque
from dataclasses import dataclass, field

import orjson
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "HASHER",
    "MIN_PASSWORD_CHARS",
    "REFRESH_AFTER_MS",
    "LoginThrottle",
    "Session",
    "SessionCodec",
    "SessionInvalid",
    "check_password_policy",
    "hash_password",
    "needs_rehash",
    "verify_password",
]

#: argon2id, RFC 9106 low-memory profile (argon2-cffi's default parameters)
HASHER = PasswordHasher()
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024
#: the session cookie is re-issued (sliding idle timeout) when its ``seen`` is older than this
REFRESH_AFTER_MS = 30_000
_dummy_hash: str | None = None


def _dummy() -> str:
    """A hash of a random password, made on first use (hashing at import would cost every process ~0.5 s)."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = HASHER.hash(secrets.token_urlsafe(24))
    return _dummy_hash


def check_password_policy(password: str) -> None:
    """Raise ValueError unless ``password`` is acceptable for an account.

    >>> check_password_policy("correct horse battery")
    >>> check_password_policy("short")
    Traceback (most recent call last):
    ...
    ValueError: a password needs at least 12 characters
    """
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(f"a password has at most {MAX_PASSWORD_CHARS} characters")


def hash_password(password: str, hasher: PasswordHasher = HASHER) -> str:
    """The argon2id hash (PHC string, salt and parameters included) of ``password``."""
    return hasher.hash(password)


def verify_password(password_hash: str | None, password: str, hasher: PasswordHasher = HASHER) -> bool:
    """True if ``password`` matches; False for a mismatch, a malformed hash or no hash at all
    (then a dummy hash is checked, so the answer takes as long as for a real account)."""
    try:
        return hasher.verify(password_hash or _dummy(), password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str, hasher: PasswordHasher = HASHER) -> bool:
    """True if the hash was made with other parameters than ``hasher``'s (re-hash at the next login)."""
    try:
        return hasher.check_needs_rehash(password_hash)
    except (InvalidHashError, ValueError):
        return True


# ---------------------------------------------------------------------- sessions
class SessionInvalid(Exception):
    """A session token that is not (or no longer) valid; ``reason``: invalid, idle or expired."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Session:
    username: str
    sid: str
    issued_ms: int
    seen_ms: int


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class SessionCodec:
    """Issues and checks session tokens and their CSRF tokens (see the module docs).

    >>> codec = SessionCodec("s" * 32, idle_ms=900_000, max_ms=43_200_000)
    >>> token, session = codec.issue("nurse.kim", now_ms=1_000)
    >>> codec.decode(token, now_ms=2_000).username
    'nurse.kim'
    >>> codec.decode(token, now_ms=1_000 + 900_001)
    Traceback (most recent call last):
    ...
    console.auth.SessionInvalid: idle
    """

    def __init__(self, secret: str, *, idle_ms: int, max_ms: int) -> None:
        if len(secret) < 32:
            raise ValueError("the session secret needs at least 32 characters")
        self._key = secret.encode()
        self.idle_ms = idle_ms
        self.max_ms = max_ms

    def _mac(self, purpose: bytes, data: bytes) -> bytes:
        return hmac.new(self._key, purpose + b"\x1f" + data, hashlib.sha256).digest()

    def _encode(self, s: Session) -> str:
        payload = orjson.dumps([1, s.username, s.sid, s.issued_ms, s.seen_ms])
        return f"{_b64(payload)}.{_b64(self._mac(b'session', payload))}"

    def issue(self, username: str, now_ms: int) -> tuple[str, Session]:
        s = Session(username, secrets.token_hex(16), now_ms, now_ms)
        return self._encode(s), s

    def refresh(self, s: Session, now_ms: int) -> tuple[str, Session]:
        """The same session, seen now (extends the idle timeout, never the absolute lifetime)."""
        s2 = Session(s.username, s.sid, s.issued_ms, max(now_ms, s.seen_ms))
        return self._encode(s2), s2

    def decode(self, token: str | None, now_ms: int, *, allow_idle: bool = False) -> Session:
        """The session of a valid token; :class:`SessionInvalid` otherwise. ``allow_idle``: a token past its
        idle timeout (but not past its absolute lifetime) is still returned, for the locked screen's
        ward-level alarm status (``GET /api/alarm-status``), which shows no patient data."""
        if not token or len(token) > 1024 or token.count(".") != 1:
            raise SessionInvalid("invalid")
        p64, m64 = token.split(".")
        try:
            payload, mac = _unb64(p64), _unb64(m64)
        except (ValueError, TypeError):
            raise SessionInvalid("invalid") from None
        if not hmac.compare_digest(mac, self._mac(b"session", payload)):
            raise SessionInvalid("invalid")
        try:
            version, username, sid, issued, seen = orjson.loads(payload)
        except (ValueError, TypeError):
            raise SessionInvalid("invalid") from None
        if version != 1 or not isinstance(username, str) or not isinstance(sid, str):
            raise SessionInvalid("invalid")
        if not isinstance(issued, int) or not isinstance(seen, int):
            raise SessionInvalid("invalid")
        if now_ms - issued > self.max_ms:
            raise SessionInvalid("expired")
        if now_ms - seen > self.idle_ms and not allow_idle:
            raise SessionInvalid("idle")
        return Session(username, sid, issued, seen)

    def deadline_ms(self, s: Session) -> tuple[int, str]:
        """When this token stops being valid, and why (``idle`` or ``expired``)."""
        idle, absolute = s.seen_ms + self.idle_ms, s.issued_ms + self.max_ms
        return (idle, "idle") if idle < absolute else (absolute, "expired")

    def csrf_token(self, s: Session) -> str:
        return _b64(self._mac(b"csrf", s.sid.encode()))

    def check_csrf(self, s: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given).encode(), self.csrf_token(s).encode())


# ---------------------------------------------------------------------- throttling
@dataclass
class _Failures:
    times: deque[int] = field(default_factory=deque)


class LoginThrottle:
    """Failed logins per username and per address, with exponential back-off (see the module docs).

    >>> t = LoginThrottle(max_failures=3, window_ms=900_000)
    >>> for i in range(3):
    ...     t.record_failure("kim", "10.0.0.9", 1_000 + i, f"r{i}")
    >>> t.retry_after_s("kim", "10.0.0.1", 1_003)
    30
    >>> t.retry_after_s("bo", "10.0.0.1", 1_003)
    0
    """

    def __init__(self, max_failures: int, window_ms: int, *, base_delay_ms: int = 30_000,
                 max_delay_ms: int = 900_000, address_factor: int = 4) -> None:
        self.max_failures = max_failures
        self.window_ms = window_ms
        self.base_delay_ms = base_delay_ms
        self.max_delay_ms = max_delay_ms
        self.address_factor = address_factor
        self._by_user: dict[str, _Failures] = {}
        self._by_address: dict[str, _Failures] = {}
        self._seen: dict[str, int] = {}  # record id -> ts (a failure counted locally and again from Kafka)

    def _prune(self, f: _Failures, now_ms: int) -> None:
        while f.times and f.times[0] < now_ms - self.window_ms:
            f.times.popleft()

    def record_failure(self, username: str, address: str | None, ts_ms: int, record_id: str) -> None:
        if record_id in self._seen:
            return
        self._seen[record_id] = ts_ms
        if len(self._seen) > 100_000:
            cutoff = ts_ms - self.window_ms
            self._seen = {k: v for k, v in self._seen.items() if v >= cutoff}
        for table, key in ((self._by_user, username), (self._by_address, address)):
            if key:
                table.setdefault(key, _Failures()).times.append(ts_ms)

    def record_success(self, username: str) -> None:
        """A successful login clears the username's failures (not the address's)."""
        self._by_user.pop(username, None)

    def _locked_until(self, f: _Failures | None, limit: int, now_ms: int) -> int:
        if f is None:
            return 0
        self._prune(f, now_ms)
        n = len(f.times)
        if n < limit:
            return 0
        delay = min(self.max_delay_ms, self.base_delay_ms * 2 ** min(n - limit, 20))
        return f.times[-1] + delay

    def retry_after_s(self, username: str, address: str | None, now_ms: int) -> int:
        """Seconds until a login for ``username`` from ``address`` may be tried; 0: now."""
        until = max(
            self._locked_until(self._by_user.get(username), self.max_failures, now_ms),
            self._locked_until(self._by_address.get(address or ""), self.max_failures * self.address_factor,
                               now_ms),
        )
        return max(0, math.ceil((until - now_ms) / 1000))
