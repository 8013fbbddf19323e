"""The console's Kafka records: accounts, preferences, ended sessions and the audit trail.

Each is a frozen pydantic model with a schema version, serialized as JSON:

================================  ===========  ===========================================================
topic                             key          value
================================  ===========  ===========================================================
``console.users`` (compacted)     username     :class:`Account` (written by ``wearwatch users``)
``console.preferences`` (compac.)  username     :class:`Preferences` (written by the console for its user)
``console.sessions`` (compacted)  session id   :class:`Revocation`: a session that ended (logout)
``audit`` (append-only)           actor        :class:`AuditRecord`
================================  ===========  ===========================================================

Accounts and preferences are separate records so a preference saved by the console can
never overwrite an administrator's change (a disable, new wards) it has not seen yet.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from console.units import GlucoseUnits

__all__ = [
    "ACTIONS",
    "ROLES",
    "USERNAME_PATTERN",
    "Account",
    "AuditAction",
    "AuditRecord",
    "Preferences",
    "Revocation",
    "Role",
    "valid_username",
]

Role = Literal["nurse", "charge_nurse", "admin"]
ROLES: tuple[str, ...] = ("nurse", "charge_nurse", "admin")
#: lower case, so "Kim" and "kim" are never two accounts; fits the commands' ``by`` field
USERNAME_PATTERN = r"^[a-z0-9][a-z0-9_.@-]{0,63}$"
_USERNAME_RE = re.compile(USERNAME_PATTERN)
_WARD = r"^[A-Za-z0-9_.:\-]{1,64}$"
_WARD_RE = re.compile(_WARD)

AuditAction = Literal[
    "login", "login_failed", "logout", "screen_locked", "patient_view", "ack", "snooze", "note", "preferences",
    "user_add", "user_disable", "user_enable", "user_passwd", "user_set_wards", "user_set_role",
    "patient_erase",  # wearwatch patients erase: that an erasure happened, never whom it was about
]
ACTIONS: tuple[str, ...] = AuditAction.__args__  # type: ignore[attr-defined]


def valid_username(name: str) -> bool:
    """True if ``name`` can be an account name.

    >>> valid_username("nurse.kim"), valid_username("Kim"), valid_username("a b")
    (True, False, False)
    """
    return bool(_USERNAME_RE.match(name))


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump())


class Account(_Record):
    """A console account. ``sessions_valid_after_ms``: sessions that began earlier are dead
    (set when the account is disabled or its password changes)."""

    schema_version: Literal[1] = 1
    username: str = Field(pattern=USERNAME_PATTERN)
    role: Role
    wards: tuple[str, ...] = Field(min_length=1, max_length=200)
    password_hash: str = Field(repr=False, min_length=20)
    disabled: bool = False
    sessions_valid_after_ms: int = 0
    created_ms: int
    updated_ms: int

    @field_validator("wards")
    @classmethod
    def _wards(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for w in v:
            if not _WARD_RE.match(w):
                raise ValueError(f"ward must be 1-64 characters of [A-Za-z0-9_.:-], got {w[:70]!r}")
        return tuple(dict.fromkeys(v))


class Preferences(_Record):
    """What an account chose for itself (``PUT /api/me/preferences``); None: the site default."""

    schema_version: Literal[1] = 1
    username: str = Field(pattern=USERNAME_PATTERN)
    units: GlucoseUnits | None = None
    silence_minutes: int | None = Field(default=None, ge=1, le=10)
    updated_ms: int


class Revocation(_Record):
    """A session that ended before its time (logout); kept until ``expires_ms``, its latest possible end."""

    schema_version: Literal[1] = 1
    sid: str = Field(pattern=r"^[0-9a-f]{32}$")
    username: str
    reason: Literal["logout"] = "logout"
    revoked_ms: int
    expires_ms: int


class AuditRecord(_Record):
    """One audited action: who (``actor``), when, what, on which patient or alert, from which address."""

    schema_version: Literal[1] = 1
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    ts_ms: int
    actor: str = Field(min_length=1, max_length=80)
    action: AuditAction
    address: str | None = None
    patient_id: str | None = None
    alert_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)

    @property
    def record_key(self) -> bytes:
        """The record's key on Kafka ``audit`` (compact,delete): its id, one key per record, so erasing a patient
        removes each record about them with a tombstone of its key (the actor is in the payload)."""
        return self.id.encode()
