"""Console accounts without services: argon2 hashing, session tokens, CSRF tokens, login throttling."""

from __future__ import annotations

import base64

import pytest
from argon2 import PasswordHasher

from console.auth import (
    HASHER,
    LoginThrottle,
    SessionCodec,
    SessionInvalid,
    check_password_policy,
    hash_password,
    needs_rehash,
    verify_password,
)
from console.models import Account

SECRET = "0123456789abcdef0123456789abcdef-test"
IDLE, MAX = 15 * 60_000, 12 * 3600_000
T0 = 1_800_000_000_000


# ---------------------------------------------------------------------- passwords
def test_hash_is_argon2id_with_the_rfc9106_low_memory_parameters() -> None:
    h = hash_password("correct horse battery")
    assert h.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert (HASHER.time_cost, HASHER.memory_cost, HASHER.parallelism, HASHER.hash_len, HASHER.salt_len) == (
        3, 65536, 4, 32, 16)
    assert hash_password("correct horse battery") != h  # salted


def test_verify_right_and_wrong_password() -> None:
    h = hash_password("correct horse battery")
    assert verify_password(h, "correct horse battery") is True
    assert verify_password(h, "correct horse batterY") is False
    assert verify_password(h, "") is False


def test_verify_never_raises_on_bad_hashes_and_unknown_accounts() -> None:
    assert verify_password(None, "anything at all") is False  # unknown user: a dummy hash is checked
    assert verify_password("not-a-hash", "anything at all") is False
    assert verify_password("$argon2id$v=19$m=65536,t=3,p=4$broken", "anything at all") is False


def test_hash_with_other_parameters_verifies_and_needs_a_rehash() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    old = weak.hash("correct horse battery")
    assert verify_password(old, "correct horse battery") is True
    assert needs_rehash(old) is True
    assert needs_rehash(hash_password("correct horse battery")) is False
    assert needs_rehash("garbage") is True


def test_password_policy() -> None:
    check_password_policy("x" * 12)
    for bad in ("", "x" * 11, "x" * 1025):
        with pytest.raises(ValueError):
            check_password_policy(bad)


def test_account_record_keeps_no_plain_password_and_validates_wards() -> None:
    a = Account(username="nurse.kim", role="nurse", wards=("3B", "3B", "4A"), password_hash=hash_password("x" * 12),
                created_ms=T0, updated_ms=T0)
    assert a.wards == ("3B", "4A") and "x" * 12 not in a.to_json().decode()
    assert "password_hash" not in repr(a)
    with pytest.raises(ValueError):
        Account(username="Nurse Kim", role="nurse", wards=("3B",), password_hash="h" * 30, created_ms=T0,
                updated_ms=T0)
    with pytest.raises(ValueError):
        Account(username="kim", role="nurse", wards=("3/B",), password_hash="h" * 30, created_ms=T0, updated_ms=T0)
    with pytest.raises(ValueError):
        Account(username="kim", role="doctor", wards=("3B",), password_hash="h" * 30,  # type: ignore[arg-type]
                created_ms=T0, updated_ms=T0)


# ---------------------------------------------------------------------- sessions
@pytest.fixture
def codec() -> SessionCodec:
    return SessionCodec(SECRET, idle_ms=IDLE, max_ms=MAX)


def test_session_round_trip(codec: SessionCodec) -> None:
    token, s = codec.issue("nurse.kim", T0)
    got = codec.decode(token, T0 + 1000)
    assert got == s and (got.username, got.issued_ms, got.seen_ms) == ("nurse.kim", T0, T0)
    assert len(s.sid) == 32
    assert codec.issue("nurse.kim", T0)[1].sid != s.sid


def test_idle_timeout_exactly(codec: SessionCodec) -> None:
    token, _ = codec.issue("kim", T0)
    assert codec.decode(token, T0 + IDLE).username == "kim"
    with pytest.raises(SessionInvalid) as e:
        codec.decode(token, T0 + IDLE + 1)
    assert e.value.reason == "idle"


def test_refresh_extends_idle_but_never_the_absolute_lifetime(codec: SessionCodec) -> None:
    token, s = codec.issue("kim", T0)
    t = T0
    while t + IDLE - 1000 < T0 + MAX:  # used every 14 minutes, all day
        t += IDLE - 1000
        token, s = codec.refresh(codec.decode(token, t), t)
    assert s.issued_ms == T0 and s.seen_ms == t
    with pytest.raises(SessionInvalid) as e:
        codec.decode(token, T0 + MAX + 1)
    assert e.value.reason == "expired"
    assert codec.deadline_ms(s) == (T0 + MAX, "expired")
    fresh = codec.issue("kim", T0)[1]
    assert codec.deadline_ms(fresh) == (T0 + IDLE, "idle")


def _tamper(token: str, fn: object) -> str:
    p64, m64 = token.split(".")
    payload = base64.urlsafe_b64decode(p64 + "=" * (-len(p64) % 4))
    new = fn(payload)  # type: ignore[operator]
    return base64.urlsafe_b64encode(new).rstrip(b"=").decode() + "." + m64


def test_tampered_tokens_are_invalid(codec: SessionCodec) -> None:
    token, _ = codec.issue("kim", T0)
    cases = [
        _tamper(token, lambda p: p.replace(b'"kim"', b'"bob"')),  # another user
        _tamper(token, lambda p: p.replace(str(T0).encode(), str(T0 + MAX).encode())),  # younger
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),  # mac changed
        SessionCodec("another-secret-of-at-least-32-chars", idle_ms=IDLE, max_ms=MAX).issue("kim", T0)[0],
        "", "garbage", "a.b.c", "x" * 5000, token + ".", None,
    ]
    for bad in cases:
        with pytest.raises(SessionInvalid) as e:
            codec.decode(bad, T0 + 1)
        assert e.value.reason == "invalid", bad


def test_secret_must_be_long() -> None:
    with pytest.raises(ValueError):
        SessionCodec("short", idle_ms=IDLE, max_ms=MAX)


# ---------------------------------------------------------------------- CSRF
def test_csrf_token_is_bound_to_the_session(codec: SessionCodec) -> None:
    _, s1 = codec.issue("kim", T0)
    _, s2 = codec.issue("kim", T0)
    t1 = codec.csrf_token(s1)
    assert codec.check_csrf(s1, t1)
    assert codec.check_csrf(codec.refresh(s1, T0 + 60_000)[1], t1)  # same session, refreshed cookie
    assert not codec.check_csrf(s2, t1)
    for bad in (None, "", t1[:-1], t1 + "x", "x" * len(t1)):
        assert not codec.check_csrf(s1, bad)
    other = SessionCodec("another-secret-of-at-least-32-chars", idle_ms=IDLE, max_ms=MAX)
    assert other.csrf_token(s1) != t1


# ---------------------------------------------------------------------- throttling
def test_throttle_locks_a_username_after_max_failures_with_doubling_backoff() -> None:
    t = LoginThrottle(max_failures=5, window_ms=900_000)
    for i in range(4):
        t.record_failure("kim", f"10.0.0.{i}", T0 + i, f"r{i}")
        assert t.retry_after_s("kim", "10.0.0.99", T0 + i) == 0
    t.record_failure("kim", "10.0.0.4", T0 + 4, "r4")
    assert t.retry_after_s("kim", "10.0.0.99", T0 + 4) == 30
    assert t.retry_after_s("kim", "10.0.0.99", T0 + 4 + 30_000) == 0
    t.record_failure("kim", "10.0.0.5", T0 + 40_000, "r5")
    assert t.retry_after_s("kim", "10.0.0.99", T0 + 40_000) == 60
    t.record_failure("kim", "10.0.0.6", T0 + 110_000, "r6")
    assert t.retry_after_s("kim", "10.0.0.99", T0 + 110_000) == 120
    for i in range(7, 20):
        t.record_failure("kim", None, T0 + 200_000 + i, f"r{i}")
    assert t.retry_after_s("kim", None, T0 + 200_019) == 900  # capped at 15 min
    assert t.retry_after_s("bo", None, T0 + 200_019) == 0  # other users are not affected


def test_throttle_forgets_failures_after_the_window() -> None:
    t = LoginThrottle(max_failures=3, window_ms=60_000)
    for i in range(3):
        t.record_failure("kim", None, T0 + i, f"r{i}")
    assert t.retry_after_s("kim", None, T0 + 10) == 30
    assert t.retry_after_s("kim", None, T0 + 61_000) == 0


def test_success_clears_the_username_not_the_address() -> None:
    t = LoginThrottle(max_failures=2, window_ms=900_000, address_factor=2)
    for i in range(4):
        t.record_failure(f"user{i % 2}", "10.9.9.9", T0 + i, f"r{i}")
    assert t.retry_after_s("user0", "10.1.1.1", T0 + 4) > 0
    t.record_success("user0")
    assert t.retry_after_s("user0", "10.1.1.1", T0 + 4) == 0
    # the address tried 4 = 2 x 2 times across users: locked for any username
    assert t.retry_after_s("someone.else", "10.9.9.9", T0 + 4) == 30


def test_throttle_counts_a_record_once() -> None:
    # a replica counts its own failure at once, and again when it reads it back from the audit topic
    t = LoginThrottle(max_failures=2, window_ms=900_000)
    t.record_failure("kim", None, T0, "same-id")
    t.record_failure("kim", None, T0, "same-id")
    assert t.retry_after_s("kim", None, T0) == 0
    t.record_failure("kim", None, T0 + 1, "other-id")
    assert t.retry_after_s("kim", None, T0 + 1) == 30
