"""Optional webhook delivery of alert events: JSON POST, signed, retried, in a background thread.

Every call is signed the Standard Webhooks way (https://www.standardwebhooks.com), so a
receiver can tell wearwatch's calls from forged or replayed ones with any of that
specification's libraries:

- ``webhook-id``: the event's id (:attr:`AlertEvent.event_id`; ``msg_<random>`` for other
  payloads), the same on every retry — the receiver's key to drop duplicates (also sent
  as ``X-Wearwatch-Event-Id``);
- ``webhook-timestamp``: the attempt's time, integer seconds since the epoch (receivers
  refuse calls more than 5 minutes off their clock: a captured call cannot be replayed later);
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with
  the endpoint's secret (``WEARWATCH_WEBHOOK_SECRET``, ``whsec_<base64 key>``); while a
  secret is rotated, several space-separated secrets give one signature each.

The pipeline must never wait for a webhook: :meth:`WebhookSink.submit` only
appends to a bounded in-memory queue and returns. A daemon thread POSTs each
event (``Content-Type: application/json``, body = :meth:`AlertEvent.to_json`) and retries
connection errors, timeouts and HTTP 408/429/5xx with exponential backoff
(``backoff_initial_s`` · 2^k, at most ``backoff_max_s``) up to ``max_attempts``
attempts; other 4xx answers are not retried. When the queue is full the
*oldest* event is dropped and counted (``stats["dropped"]``). Failures are
logged at WARNING with the endpoint's host and the error class only, never
patient data. Delivery is at-most-once per submit (Kafka ``alerts`` remains the
source of truth); stdlib only (``urllib.request``).

Examples
--------
>>> make_webhook_sink(None) is None
True
>>> make_webhook_sink("https://example.org/hook")
Traceback (most recent call last):
...
wearwatch.errors.ConfigError: a webhook URL needs a secret (WEARWATCH_WEBHOOK_SECRET, whsec_<base64>)
>>> make_webhook_sink("ftp://example.org/hook", secret="whsec_" + "A" * 32)
Traceback (most recent call last):
...
ValueError: webhook URL must be http(s)://host/...
>>> sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
...      b'{"test": 2432232314}')
'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE='
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from alerts.models import AlertEvent
from wearwatch.config import whsec_key
from wearwatch.errors import ConfigError

__all__ = ["WebhookSink", "make_webhook_sink", "sign"]

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def sign(secrets: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>`` for
    each space-separated ``whsec_`` secret (several while rotating), space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(whsec_key(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets.split()
    )


class WebhookSink:
    """POST alert events to one URL from a background thread (see the module docs).

    Parameters
    ----------
    url
        ``http://`` or ``https://`` endpoint.
    secret
        ``whsec_<base64>`` signing secret of this endpoint (several, space-separated, while rotating).
    max_queue
        Events waiting at most; beyond it the oldest is dropped.
    max_attempts
        Attempts per event (1 = no retry).
    backoff_initial_s, backoff_max_s
        Wait before the 2nd attempt, doubling per attempt, capped.
    timeout_s
        Socket timeout of one attempt (connect and read).
    headers
        Extra request headers (e.g. an ``Authorization`` token).

    Attributes
    ----------
    stats : dict[str, int]
        ``submitted``, ``sent``, ``failed`` (gave up), ``dropped`` (queue full),
        ``attempts`` (HTTP requests made).
    """

    def __init__(
        self,
        url: str,
        *,
        secret: str,
        max_queue: int = 1000,
        max_attempts: int = 5,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        timeout_s: float = 5.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("webhook URL must be http(s)://host/...")
        if max_queue < 1 or max_attempts < 1 or timeout_s <= 0 or backoff_initial_s < 0:
            raise ValueError("max_queue and max_attempts must be >= 1, timeout_s > 0, backoff_initial_s >= 0")
        if not secret or not secret.split():
            raise ConfigError("a webhook needs a signing secret (whsec_<base64>)")
        for one in secret.split():
            try:
                whsec_key(one)
            except ValueError as exc:
                raise ConfigError(f"webhook secret: {exc}") from exc
        self._secret = secret
        self.url = url
        self.host = parts.hostname
        self.max_queue = max_queue
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": "application/json", "User-Agent": "wearwatch-webhook/1", **(headers or {})}
        self.stats: dict[str, int] = {"submitted": 0, "sent": 0, "failed": 0, "dropped": 0, "attempts": 0}
        self._queue: deque[tuple[bytes, str]] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="wearwatch-webhook", daemon=True)
        self._thread.start()

    # -- caller side (never blocks beyond a short lock) --------------------------------
    def submit(self, event: AlertEvent | bytes | Mapping[str, Any]) -> None:
        """Queue one event for delivery and return at once."""
        if isinstance(event, AlertEvent):
            item: tuple[bytes, str] = (event.to_json(), event.event_id)
        elif isinstance(event, bytes):
            item = (event, f"msg_{uuid.uuid4().hex}")
        else:
            item = (orjson.dumps(dict(event)), f"msg_{uuid.uuid4().hex}")
        dropped = 0
        with self._cond:
            self.stats["submitted"] += 1
            if len(self._queue) >= self.max_queue:
                self._queue.popleft()
                self.stats["dropped"] += 1
                dropped = self.stats["dropped"]
            self._queue.append(item)
            self._cond.notify()
        if dropped and (dropped == 1 or dropped % 1000 == 0):
            log.warning("webhook %s: queue full, dropped %d oldest event(s) so far", self.host, dropped)

    def pending(self) -> int:
        """Events queued or being delivered."""
        with self._cond:
            return len(self._queue) + (1 if self._busy else 0)

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until every queued event was delivered or given up; True if so."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (waiting at most ``timeout_s``); events still queued are abandoned and counted as dropped."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout_s)
        with self._cond:
            self.stats["dropped"] += len(self._queue)
            self._queue.clear()

    # -- background thread -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
                body, event_id = self._queue.popleft()
                self._busy = True
            try:
                self._deliver(body, event_id)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _deliver(self, body: bytes, event_id: str) -> None:
        error = "?"
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 2))
                if self._stop.wait(delay):
                    break
            ok, retry, error = self._post(body, event_id)
            if ok:
                with self._cond:
                    self.stats["sent"] += 1
                return
            if not retry:
                break
        with self._cond:
            self.stats["failed"] += 1
        log.warning("webhook %s: delivery failed after %d attempt(s): %s", self.host, attempt, error)

    def _post(self, body: bytes, event_id: str) -> tuple[bool, bool, str]:
        """One attempt: (delivered, worth retrying, error description). Signed anew: the timestamp is the attempt's."""
        headers = dict(self.headers)
        ts = int(time.time())
        headers["webhook-id"] = event_id
        headers["webhook-timestamp"] = str(ts)
        headers["webhook-signature"] = sign(self._secret, event_id, ts, body)
        headers["X-Wearwatch-Event-Id"] = event_id
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with self._cond:
            self.stats["attempts"] += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
                return True, False, ""
        except urllib.error.HTTPError as exc:
            return False, exc.code in _RETRY_STATUS, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timeout, reset
            reason = getattr(exc, "reason", exc)
            return False, True, type(reason).__name__


def make_webhook_sink(url: str | None, secret: str | None = None, **kwargs: Any) -> WebhookSink | None:
    """A :class:`WebhookSink` for ``url`` signing with ``secret``, or None when no URL is configured
    (empty or None). A URL without a secret is a :class:`ConfigError`: wearwatch never sends an
    unsigned call (the worker passes ``settings.webhook_secret``)."""
    if not url:
        return None
    if not secret:
        raise ConfigError("a webhook URL needs a secret (WEARWATCH_WEBHOOK_SECRET, whsec_<base64>)")
    return WebhookSink(url, secret=secret, **kwargs)
