"""The gateway's one HTTP server: health, readiness, Prometheus metrics and the FHIR endpoints.

Routes (:data:`ROUTES`):

- ``GET /healthz`` — 200 while the process runs (liveness).
- ``GET /readyz`` — 200 when every readiness check passes (MQTT connected and subscribed,
  the Kafka producer up and acknowledging, the vendor tokens loaded), else 503; the JSON
  body says which check fails and why.
- ``GET /metrics`` — Prometheus text format (OpenMetrics if the scraper asks for it).
- ``GET /fhir/metadata`` — the R4 CapabilityStatement of what this endpoint really does; no token needed.
- ``POST /fhir/Observation``, ``POST /fhir`` (a Bundle: batch, transaction, collection) —
  FHIR in, for the vendor of the bearer token; ``POST /fhir/{vendor}/Observation``,
  ``POST /fhir/{vendor}`` — the same with the vendor named in the URL (the vendor's own
  FHIR base, ``GET /fhir/{vendor}/metadata`` too), refused with 403 unless the token is that
  vendor's. Every FHIR POST needs ``Authorization: Bearer <token>`` (:mod:`ingest.tokens`):
  401 without one or with an unknown one, 403 with a revoked one.

Why the standard library's ``ThreadingHTTPServer`` and not an async framework: the
gateway is built on threads (paho's network loop, kafka-python's sender, the group
flusher) and has no event loop to share; a FHIR POST blocks its thread until Kafka
acknowledged its records (up to :data:`ingest.gateway.HTTP_KAFKA_TIMEOUT_S`), which is
exactly a thread per request; the traffic is light (health probes, scrapes, vendor
clouds' uploads — the bulk of the readings comes over MQTT). A socket timeout
(:data:`REQUEST_TIMEOUT_S`) keeps a slow or idle client from holding a thread.
"""

from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import orjson

from ingest.fhir import operation_outcome
from ingest.tokens import TokenTable, is_reserved_vendor
from wearwatch.metrics import (
    HEALTH_PATH,
    METRICS_PATH,
    READY_PATH,
    GatewayMetrics,
    Telemetry,
    exposition,
    health_answer,
    ready_answer,
)

__all__ = ["FHIR_JSON", "REQUEST_TIMEOUT_S", "ROUTES", "FhirSink", "GatewayHttpServer", "capability_statement"]

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
#: a client idle this long inside a request (or between keep-alive requests) is disconnected
REQUEST_TIMEOUT_S = 30.0
#: every (method, path) the server answers; ``{vendor}`` is one path segment
ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", HEALTH_PATH),
    ("GET", READY_PATH),
    ("GET", METRICS_PATH),
    ("GET", "/fhir/metadata"),
    ("GET", "/fhir/{vendor}/metadata"),
    ("POST", "/fhir"),
    ("POST", "/fhir/Observation"),
    ("POST", "/fhir/{vendor}"),
    ("POST", "/fhir/{vendor}/Observation"),
)
#: when this capability statement last changed (CapabilityStatement.date)
CAPABILITY_DATE = "2026-12-06"

Kind = Literal["Observation", "Bundle"]


class FhirSink(Protocol):
    """What the server hands an authenticated FHIR POST to (the :class:`ingest.gateway.Gateway`)."""

    @property
    def max_payload_bytes(self) -> int: ...

    def fhir_http(self, kind: Kind, body: bytes, vendor: str) -> tuple[int, dict[str, Any]]: ...


def capability_statement(version: str) -> dict[str, Any]:
    """The R4 CapabilityStatement of the gateway's FHIR endpoint (``GET /fhir/metadata``)."""
    from ingest.fhir import SIGNAL_CODING

    codes = ", ".join(f"{c.code} ({sig})" for sig, c in SIGNAL_CODING.items())
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": CAPABILITY_DATE,
        "publisher": "wearwatch",
        "kind": "instance",
        "software": {"name": "wearwatch gateway", "version": version},
        "implementation": {"description": "wearwatch gateway: FHIR R4 Observations in, to the anomaly detection "
                                          "pipeline (write only: nothing is read back here)"},
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, "json"],
        "rest": [{
            "mode": "server",
            "documentation": "POST an Observation to [base]/Observation or a Bundle (batch, transaction or "
                             "collection) to [base]; [base] is /fhir or a vendor's own /fhir/{vendor}. A Bundle's "
                             "entries are accepted or rejected one by one, transactions too (not all-or-nothing). "
                             "The answer comes once the readings are durably queued.",
            "security": {
                "cors": False,
                "service": [{"text": "Bearer token (Authorization: Bearer <token>), one or more per vendor"}],
                "description": "Every POST needs a vendor API token; readings are recorded as the token's vendor. "
                               "401: no or unknown token; 403: revoked token, or another vendor's base URL. "
                               "This statement needs no token.",
            },
            "resource": [{
                "type": "Observation",
                "interaction": [{"code": "create"}],
                "documentation": f"vital signs by LOINC code: {codes}; status final, amended or preliminary; "
                                 "subject Patient/{id}; effectiveDateTime, effectiveInstant or effectivePeriod.start",
            }],
            "interaction": [
                {"code": "batch", "documentation": "Bundle of Observation creates, POST [base]"},
                {"code": "transaction", "documentation": "Bundle of Observation creates, POST [base]; entries "
                                                         "are processed independently, as in a batch"},
            ],
        }],
    }


def _route(path: str) -> tuple[str, str | None] | None:
    """``(what, vendor)`` for a FHIR path: what is ``Observation``, ``Bundle`` or ``metadata``.

    >>> _route("/fhir"), _route("/fhir/Observation"), _route("/fhir/acme"), _route("/fhir/acme/Observation")
    (('Bundle', None), ('Observation', None), ('Bundle', 'acme'), ('Observation', 'acme'))
    >>> _route("/fhir/metadata"), _route("/fhir/acme/metadata"), _route("/fhir/Patient/1"), _route("/other")
    (('metadata', None), ('metadata', 'acme'), None, None)
    """
    parts = path.split("/")[1:]
    if not parts or parts[0] != "fhir" or len(parts) > 3:
        return None
    rest = parts[1:]
    if not rest:
        return "Bundle", None
    if len(rest) == 1 and rest[0] in ("Observation", "metadata"):
        return rest[0], None
    vendor = rest[0]
    if not vendor or is_reserved_vendor(vendor) or not all(c.isalnum() or c in "_.-" for c in vendor):
        return None
    if len(rest) == 1:
        return "Bundle", vendor
    if rest[1] in ("Observation", "metadata"):
        return rest[1], vendor
    return None


class _Handler(BaseHTTPRequestHandler):
    server: GatewayHttpServer
    server_version = "wearwatch-gateway"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT_S

    # -- answers -------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, *, close: bool = False,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        # counted before the answer leaves: a client that reads /metrics right after its answer sees it
        if self.path.startswith("/fhir"):
            self.server.metrics.fhir_requests.labels(status=str(status)).inc()
        self.end_headers()
        self.wfile.write(body)

    def _fhir(self, status: int, doc: dict[str, Any], **kw: Any) -> None:
        self._send(status, orjson.dumps(doc), FHIR_JSON, **kw)

    def _fhir_error(self, status: int, code: str, detail: str, *, close: bool = True,
                    headers: dict[str, str] | None = None) -> None:
        doc = operation_outcome("error", detail)
        doc["issue"][0]["code"] = code
        self._fhir(status, doc, close=close, headers=headers)

    # -- GET ---------------------------------------------------------------------------
    def do_GET(self) -> None:
        srv = self.server
        path = urlsplit(self.path).path
        if path == HEALTH_PATH:
            self._send(*health_answer(), "application/json")
        elif path == READY_PATH:
            self._send(*ready_answer(srv.telemetry.readiness), "application/json")
        elif path == METRICS_PATH:
            body, ctype = exposition(srv.telemetry.registry, self.headers.get("Accept"))
            self._send(200, body, ctype)
        else:
            route = _route(path.rstrip("/"))
            if route is not None and route[0] == "metadata":
                self._fhir(200, srv.capability)
            elif route is not None:
                self._fhir_error(405, "not-supported", "this endpoint only accepts POST of Observations and Bundles")
            else:
                self._fhir_error(404, "not-found", "no such route", close=False)

    # -- POST --------------------------------------------------------------------------
    def do_POST(self) -> None:
        srv = self.server
        route = _route(urlsplit(self.path).path.rstrip("/"))
        if route is None or route[0] == "metadata":
            self._fhir_error(404, "not-found", "POST an Observation to /fhir/Observation or a Bundle to /fhir")
            return
        kind, url_vendor = route
        vendor = self._authenticate(url_vendor)
        if vendor is None:
            return
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype not in (FHIR_JSON, "application/json"):
            self._fhir_error(415, "not-supported", "send application/fhir+json")
            return
        length_raw = self.headers.get("Content-Length")
        if length_raw is None or not length_raw.isdigit():
            self._fhir_error(411, "invalid", "Content-Length is required")
            return
        length, limit = int(length_raw), srv.sink.max_payload_bytes
        if length > limit:
            self._fhir_error(413, "too-long", f"body over {limit} bytes")
            return
        body = self.rfile.read(length)
        try:
            status, doc = srv.sink.fhir_http("Observation" if kind == "Observation" else "Bundle", body, vendor)
        except Exception:  # never kill the server thread; the client may retry
            log.exception("unexpected error handling a FHIR HTTP request")
            srv.metrics.internal_errors.inc()
            self._fhir_error(500, "exception", "internal error")
            return
        self._fhir(status, doc)

    def _authenticate(self, url_vendor: str | None) -> str | None:
        """The vendor the request posts for, or None after answering 401/403."""
        header = self.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self._fhir_error(401, "login", "an Authorization: Bearer <token> header is required",
                             headers={"WWW-Authenticate": 'Bearer realm="wearwatch"'})
            return None
        auth = self.server.tokens.authenticate(token.strip())
        if auth.status == "unknown":
            self._fhir_error(401, "login", "unknown token",
                             headers={"WWW-Authenticate": 'Bearer realm="wearwatch", error="invalid_token"'})
            return None
        if auth.status == "revoked":
            log.info("refused a revoked token (id %s)", auth.token_id)
            self._fhir_error(403, "forbidden", "this token was revoked")
            return None
        if url_vendor is not None and url_vendor != auth.vendor:
            log.info("refused token %s for another vendor's FHIR base", auth.token_id)
            self._fhir_error(403, "forbidden", "this token may not post for that vendor")
            return None
        return auth.vendor

    def do_PUT(self) -> None:
        self._fhir_error(405, "not-supported", "only GET (health, metrics, metadata) and POST (FHIR) are served")

    do_DELETE = do_PATCH = do_PUT

    def log_message(self, format: str, *args: Any) -> None:
        """No access log at INFO (probes and scrapes every few seconds); DEBUG only."""
        log.debug("http: " + format, *args)


class GatewayHttpServer(ThreadingHTTPServer):
    """The gateway's HTTP server (a thread per connection; see the module docs)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], *, sink: FhirSink, telemetry: Telemetry, metrics: GatewayMetrics,
                 tokens: TokenTable, version: str = "0") -> None:
        self.sink, self.telemetry, self.metrics, self.tokens = sink, telemetry, metrics, tokens
        self.capability = capability_statement(version)
        super().__init__(address, _Handler)
