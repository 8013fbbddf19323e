"""Webhook calls are signed the Standard Webhooks way: the specification's reference verifier
(the ``standardwebhooks`` package) accepts what the sink really sends over HTTP, and refuses a
tampered body, a replayed (old) call, a changed timestamp or another endpoint's secret."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from alerts.models import AlertEvent
from alerts.webhook import WebhookSink, make_webhook_sink, sign
from wearwatch.config import load_settings
from wearwatch.errors import ConfigError

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
T0 = 1_795_773_600_000


def _event(revision: int = 0) -> AlertEvent:
    return AlertEvent(
        alert_id="al-0123456789abcdef0123", state="open", patient_id="p-sig", signal="glucose",
        kind="glucose_urgent_low", priority="high", audience="clinical", source="rule",
        message="glucose 50 mg/dL below 54 mg/dL", ts_ms=T0, onset_ms=T0 - 60_000, emitted_ms=T0, revision=revision,
        explanation={"source": "rule", "value": 50.0, "threshold": 54.0},
    )


class _Receiver(http.server.BaseHTTPRequestHandler):
    calls: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    fail_first: ClassVar[int] = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        # header names are case-insensitive (urllib sends "Webhook-id"): keep them lower-case
        type(self).calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(500 if len(type(self).calls) <= self.fail_first else 204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("R", (_Receiver,), {"calls": [], "fail_first": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    finally:
        server.shutdown()
        server.server_close()


def _deliver(url: str, secret: str, *events: AlertEvent, **kw: Any) -> WebhookSink:
    sink = WebhookSink(url, secret=secret, backoff_initial_s=0.01, **kw)
    for ev in events:
        sink.submit(ev)
    assert sink.flush(10.0)
    sink.close()
    return sink


def test_the_reference_verifier_accepts_what_the_sink_sends(receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    ev = _event()
    before = int(time.time())
    _deliver(url, SECRET, ev)
    ((headers, body),) = handler.calls
    assert headers["webhook-id"] == ev.event_id == headers["x-wearwatch-event-id"]
    assert before <= int(headers["webhook-timestamp"]) <= int(time.time())
    assert headers["webhook-signature"].startswith("v1,")
    doc = Webhook(SECRET).verify(body, headers)
    assert AlertEvent.model_validate(doc) == ev
    with pytest.raises(WebhookVerificationError):  # another endpoint's secret
        Webhook(OTHER).verify(body, headers)


def test_tampering_and_replays_are_refused(receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    _deliver(url, SECRET, _event())
    ((headers, body),) = handler.calls
    verifier = Webhook(SECRET)
    tampered = body.replace(b'"priority":"high"', b'"priority":"low"')
    assert tampered != body
    with pytest.raises(WebhookVerificationError):
        verifier.verify(tampered, headers)
    # the same call replayed ten minutes later: its signature is right, its timestamp too old
    old = int(time.time()) - 600
    replay = {**headers, "webhook-timestamp": str(old),
              "webhook-signature": sign(SECRET, headers["webhook-id"], old, body)}
    with pytest.raises(WebhookVerificationError, match="too old"):
        verifier.verify(body, replay)
    # a fresh timestamp pasted onto an old signature does not match
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        verifier.verify(body, {**replay, "webhook-timestamp": str(int(time.time()))})
    # another id (a receiver's duplicate key) breaks the signature as well
    with pytest.raises(WebhookVerificationError):
        verifier.verify(body, {**headers, "webhook-id": "al-other"})


def test_retries_keep_the_id_and_are_signed_again(receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    handler.fail_first = 2
    sink = _deliver(url, SECRET, _event(revision=3), max_attempts=4)
    assert sink.stats["sent"] == 1 and len(handler.calls) == 3
    assert len({h["webhook-id"] for h, _ in handler.calls}) == 1
    for headers, body in handler.calls:  # every attempt verifies on its own
        Webhook(SECRET).verify(body, headers)


def test_rotation_signs_with_every_secret(receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    _deliver(url, f"{OTHER} {SECRET}", _event())
    ((headers, body),) = handler.calls
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (SECRET, OTHER):  # the receiver may hold the old or the new one
        Webhook(secret).verify(body, headers)


def test_bytes_and_mappings_get_a_message_id(receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    sink = WebhookSink(url, secret=SECRET)
    sink.submit({"kind": "test"})
    sink.submit(b'{"kind": "ping"}')
    assert sink.flush(10.0)
    sink.close()
    ids = [h["webhook-id"] for h, _ in handler.calls]
    assert len(ids) == 2 and all(i.startswith("msg_") for i in ids) and ids[0] != ids[1]
    assert [Webhook(SECRET).verify(b, h) for h, b in handler.calls] == [{"kind": "test"}, {"kind": "ping"}]


def test_no_unsigned_webhook() -> None:
    with pytest.raises(ConfigError, match="WEARWATCH_WEBHOOK_SECRET is required"):
        load_settings({"WEARWATCH_WEBHOOK_URL": "https://hooks.example/x"})
    with pytest.raises(ConfigError, match="WEARWATCH_WEBHOOK_SECRET"):
        load_settings({"WEARWATCH_WEBHOOK_URL": "https://hooks.example/x", "WEARWATCH_WEBHOOK_SECRET": "hunter2"})
    with pytest.raises(ConfigError, match="at least 24 bytes"):
        load_settings({"WEARWATCH_WEBHOOK_SECRET": "whsec_c2hvcnQ="})
    s = load_settings({"WEARWATCH_WEBHOOK_URL": "https://hooks.example/x", "WEARWATCH_WEBHOOK_SECRET": SECRET})
    assert s.webhook_secret == SECRET and SECRET not in repr(s)
    with pytest.raises(ConfigError, match="needs a secret"):
        make_webhook_sink(s.webhook_url)
    with pytest.raises(ConfigError):
        WebhookSink("https://hooks.example/x", secret="")
    sink = make_webhook_sink(s.webhook_url, secret=s.webhook_secret)
    assert sink is not None
    sink.close()


def test_the_worker_refuses_to_start_with_a_webhook_url_and_no_secret() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith("WEARWATCH_")}
    env["WEARWATCH_WEBHOOK_URL"] = "https://hooks.example/alerts"
    r = subprocess.run([sys.executable, "-m", "wearwatch.cli", "worker"], cwd=Path(__file__).resolve().parents[1],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "WEARWATCH_WEBHOOK_SECRET is required when WEARWATCH_WEBHOOK_URL is set" in r.stderr
