"""Vendor API tokens for the gateway's FHIR HTTP endpoint: issued, listed and revoked with
``wearwatch tokens``, followed live by every gateway.

A token is ``wwt_<token id>_<secret>``: the id (12 hex characters) names it in listings
and revocations and is not secret; the secret is 32 random bytes (256 bits, URL-safe
base64). Only the SHA-256 of the whole token is stored. A salted slow hash (bcrypt,
argon2) protects *guessable* passwords; a 256-bit random secret cannot be guessed or
found from its hash (preimage resistance), and no two tokens share a hash, so a plain
SHA-256 is enough and costs a microsecond per request. The comparison is
constant-time (:func:`hmac.compare_digest`) on the digests, looked up by the id.

Where tokens live: a compacted Kafka topic ``gateway.tokens`` (one partition, key = token
id, value = the :class:`TokenRecord` as JSON; a revocation is the same record with
``revoked_ms`` set, so compaction keeps exactly the latest state of each token). Every
gateway replica already talks to Kafka; each one follows the topic from the beginning in
a thread (:class:`TokenFollower`), so a token added or revoked anywhere takes effect on
all replicas within about a second, with no restart, no shared volume and no file to
distribute (a file re-read on change would need one per host and something to copy it
there). A gateway is not ready (``/readyz``) until it has read the topic to its end, so
it never refuses a valid token because it has not seen it yet. In production only the
operators' account may produce to the topic (Kafka ACL); gateways only read it.

Binding a vendor to what it posts: a request is authenticated as the token's vendor and
every reading it carries gets that ``vendor``. A request naming a vendor in its URL
(``/fhir/{vendor}/…``, the per-vendor FHIR base) is refused with 403 unless it is the
token's own; requests to ``/fhir/Observation`` and ``/fhir`` post for the token's vendor.
Like the MQTT ACL, a vendor can only ever publish as itself.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import hmac
import logging
import re
import secrets
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wearwatch.compacted import CompactedFollower
from wearwatch.config import Settings, load_settings
from wearwatch.errors import ConfigError, StackUnavailable

__all__ = [
    "TOKEN_PREFIX",
    "AuthResult",
    "TokenFollower",
    "TokenRecord",
    "TokenTable",
    "add_arguments",
    "ensure_token_topic",
    "is_reserved_vendor",
    "new_token",
    "publish_tokens",
    "read_tokens",
    "run",
]

log = logging.getLogger(__name__)

TOKEN_PREFIX = "wwt_"
_TOKEN_RE = re.compile(r"^wwt_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})$")
_VENDOR_RE = r"^[A-Za-z0-9_.\-]{1,64}$"  # an MQTT vendor topic segment (ingest.contract)


@functools.lru_cache(maxsize=4096)
def is_reserved_vendor(name: str) -> bool:
    """Whether ``name`` cannot be a vendor because ``/fhir/{name}`` already means something in FHIR:
    ``metadata``, a FHIR type (``Observation``, ``Patient``, …), ``_history``-like or ``$operation`` names.

    >>> [is_reserved_vendor(n) for n in ("acme", "Acme", "metadata", "Patient", "_search", "$validate")]
    [False, False, True, True, True, True]
    """
    if name == "metadata" or name.startswith(("_", "$")):
        return True
    from fhir.resources.R4B import get_fhir_model_class

    try:
        get_fhir_model_class(name)
    except (ValueError, KeyError, AttributeError, ImportError):
        return False
    return True


class TokenRecord(BaseModel):
    """One token's stored state (the value of its ``gateway.tokens`` record)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    token_id: str = Field(pattern=r"^[0-9a-f]{12}$")
    vendor: str = Field(pattern=_VENDOR_RE)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_ms: int
    revoked_ms: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_ms is None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(vendor: str, now_ms: int | None = None) -> tuple[str, TokenRecord]:
    """A fresh token for ``vendor`` and its record (the token itself is stored nowhere).

    >>> token, rec = new_token("acme", now_ms=1)
    >>> token.startswith("wwt_" + rec.token_id + "_"), len(token), rec.vendor, rec.active
    (True, 60, 'acme', True)
    >>> new_token("metadata")
    Traceback (most recent call last):
    ...
    wearwatch.errors.ConfigError: vendor name 'metadata' is reserved (it would clash with the gateway's FHIR paths)
    """
    if is_reserved_vendor(vendor):
        raise ConfigError(f"vendor name {vendor!r} is reserved (it would clash with the gateway's FHIR paths)")
    if not re.match(_VENDOR_RE, vendor):
        raise ConfigError(f"vendor name {vendor!r}: 1-64 characters of [A-Za-z0-9_.-], as in its MQTT topics")
    token_id = secrets.token_hex(6)
    token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return token, TokenRecord(token_id=token_id, vendor=vendor, sha256=_digest(token), created_ms=now)


@dataclass(frozen=True)
class AuthResult:
    """``status``: ``ok`` (``vendor`` set), ``unknown`` (no such token: 401) or ``revoked`` (403)."""

    status: Literal["ok", "unknown", "revoked"]
    vendor: str | None = None
    token_id: str | None = None


class TokenTable:
    """The tokens a gateway knows, by id (thread-safe: the follower writes, requests read).

    >>> table = TokenTable()
    >>> token, rec = new_token("acme", now_ms=1)
    >>> table.apply(rec)
    >>> ok = table.authenticate(token)
    >>> ok.status, ok.vendor, ok.token_id == rec.token_id
    ('ok', 'acme', True)
    >>> table.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")).status
    'unknown'
    >>> table.apply(rec.model_copy(update={"revoked_ms": 2}))
    >>> table.authenticate(token).status, table.counts()
    ('revoked', (0, 1))
    """

    def __init__(self) -> None:
        self._by_id: dict[str, TokenRecord] = {}
        self._lock = threading.Lock()

    def apply(self, record: TokenRecord) -> None:
        with self._lock:
            self._by_id[record.token_id] = record

    def records(self) -> list[TokenRecord]:
        with self._lock:
            return sorted(self._by_id.values(), key=lambda r: (r.created_ms, r.token_id))

    def counts(self) -> tuple[int, int]:
        """(active, revoked)."""
        with self._lock:
            active = sum(1 for r in self._by_id.values() if r.active)
            return active, len(self._by_id) - active

    def authenticate(self, token: str) -> AuthResult:
        m = _TOKEN_RE.match(token)
        if m is None:
            return AuthResult("unknown")
        with self._lock:
            rec = self._by_id.get(m.group(1))
        # the id is public (listings); the secret part is compared in constant time via the digests
        if rec is None or not hmac.compare_digest(_digest(token), rec.sha256):
            return AuthResult("unknown")
        if not rec.active:
            return AuthResult("revoked", rec.vendor, rec.token_id)
        return AuthResult("ok", rec.vendor, rec.token_id)


def _decode(value: bytes | None) -> TokenRecord | None:
    if value is None:
        return None
    try:
        return TokenRecord.model_validate_json(value)
    except ValidationError:
        return None


def ensure_token_topic(settings: Settings) -> None:
    """Create the compacted ``gateway.tokens`` topic (one partition) if it does not exist."""
    from wearwatch.transport import ensure_topics

    ensure_topics(settings, [settings.topic_tokens], partitions=1)


def read_tokens(settings: Settings, timeout_s: float = 30.0) -> TokenTable:
    """Every token's latest state, read from the topic to its current end."""
    from wearwatch.transport import read_to_end

    table = TokenTable()
    for rec in read_to_end(settings, settings.topic_tokens, 0, client_id="wearwatch-tokens", timeout_s=timeout_s,
                           fetch_max_wait_ms=200):
        tok = _decode(rec.value)
        if tok is not None:
            table.apply(tok)
    return table


def publish_tokens(settings: Settings, records: Iterable[TokenRecord], timeout_s: float = 30.0) -> None:
    """Write token records (new or revoked) and wait until Kafka acknowledged every one."""
    from wearwatch.transport import kafka_producer

    producer = kafka_producer(settings, client_id="wearwatch-tokens")
    try:
        futures = [producer.send(settings.topic_tokens, key=r.token_id.encode(), value=r.model_dump_json().encode())
                   for r in records]
        for fut in futures:
            fut.get(timeout=timeout_s)
    except Exception as exc:  # KafkaError, KafkaTimeoutError
        raise StackUnavailable(f"Kafka did not take the token records: {type(exc).__name__}: {exc}") from exc
    finally:
        producer.close(timeout=10)


class TokenFollower(CompactedFollower):
    """Follows ``gateway.tokens`` into a :class:`TokenTable` (:class:`~wearwatch.compacted.CompactedFollower`).

    :meth:`ready` turns true once the records that were in the topic when the thread
    started have all been applied; from then on each new record is applied within the
    consumer's fetch wait (200 ms) of being written. While Kafka is unreachable the table
    stays as it was (a revocation takes effect when Kafka is back). :attr:`last_contact`
    tells the gateway's readiness whether Kafka still answers while no reading flows.
    """

    def __init__(self, settings: Settings, table: TokenTable | None = None) -> None:
        self.table = table if table is not None else TokenTable()
        super().__init__(settings, settings.topic_tokens, self._decode, name="token-follower",
                         describe=self._counts)

    def _counts(self) -> str:
        active, revoked = self.table.counts()
        return f"{active} active token(s), {revoked} revoked"

    def _decode(self, key: bytes | None, value: bytes | None) -> None:
        tok = _decode(value)
        if tok is None:
            raise ValueError("not a token record")
        self.table.apply(tok)


# -- the ``wearwatch tokens`` command ------------------------------------------------------
def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="issue a token for VENDOR (printed once, alone on the last line)")
    add.add_argument("vendor")
    sub.add_parser("list", help="every token: id, vendor, created, revoked")
    revoke = sub.add_parser("revoke", help="revoke a token (by id, or the token itself) or every token of a vendor")
    revoke.add_argument("target", metavar="TOKEN_ID|VENDOR")


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    ensure_token_topic(settings)
    out = sys.stdout
    if args.action == "add":
        token, rec = new_token(args.vendor)
        publish_tokens(settings, [rec])
        log.info("token %s issued for vendor %s", rec.token_id, rec.vendor)
        print(f"token id {rec.token_id} for vendor {rec.vendor}; shown only now, stored as its SHA-256:", file=out)
        print(token, file=out)
        return 0
    table = read_tokens(settings)
    if args.action == "list":
        print(f"{'token id':<12}  {'vendor':<24}  {'created':<20}  revoked", file=out)
        for r in table.records():
            print(f"{r.token_id:<12}  {r.vendor:<24}  {_iso(r.created_ms):<20}  {_iso(r.revoked_ms)}", file=out)
        return 0
    target = args.target
    m = _TOKEN_RE.match(target)
    if m is not None:
        target = m.group(1)
    records = table.records()
    hits = [r for r in records if r.token_id == target] or [r for r in records if r.vendor == target]
    if not hits:
        print(f"no token with id {target!r} and no vendor of that name", file=sys.stderr)
        return 1
    now = int(time.time() * 1000)
    todo = [r.model_copy(update={"revoked_ms": now}) for r in hits if r.active]
    publish_tokens(settings, todo)
    for r in hits:
        state = "revoked" if r.active else f"already revoked at {_iso(r.revoked_ms)}"
        print(f"{r.token_id}  {r.vendor}  {state}", file=out)
    log.info("revoked %d token(s)", len(todo))
    return 0
