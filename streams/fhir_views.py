"""The worker's FHIR read endpoint: current alerts as a searchset Bundle of DetectedIssues.

Registered on the worker's own web server (``WEARWATCH_WEB_HOST``/``_PORT``,
the same aiohttp server as the console) by :func:`register_fhir_views`:

============================================  ======  ==========================================================
path                                          method  answer
============================================  ======  ==========================================================
``/fhir/DetectedIssue``                       GET     ``searchset`` Bundle of the current alerts (200)
``/fhir/DetectedIssue/{alert_id}``            GET     one current alert as a DetectedIssue (200), else 404
============================================  ======  ==========================================================

Search parameters: ``patient`` (``{id}`` or ``Patient/{id}``) and ``status``
(comma-separated DetectedIssue status codes, any of them matches: ``preliminary``
= open, ``amended`` = updated, ``final`` = acknowledged; see
:data:`alerts.fhir.FHIR_STATUS`). ``_format`` is accepted and ignored (always
JSON); other parameters are ignored, as FHIR's lenient search handling allows,
and left out of the ``self`` link. Invalid values answer 400 with an
OperationOutcome. Responses are ``application/fhir+json``.

"Current" alerts are the active ones (open, updated, acknowledged: not
resolved) from each patient's :class:`~alerts.lifecycle.AlertBook`
(``pipeline.processor.state_for(pid).book.open_alerts()``) — the same data as the
console and the retained MQTT state.

Scope: each worker holds only the patients of its own Kafka partitions, so a
worker answers for those patients only; a patient on another worker's partitions
gives an empty Bundle here. The Bundle says so in an OperationOutcome entry
(``search.mode`` = ``outcome``). Ask every worker (or put a fan-out proxy in
front) for a fleet-wide answer.

Like the console, the endpoint carries real patient identifiers and has no login
of its own: bind it to 127.0.0.1 (the default) or put it behind the hospital's
authenticating proxy. Nothing about patients is logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
from faust import web

from alerts.fhir import FHIR_STATUS, R4_STATUSES, detected_issue, search_bundle
from alerts.models import AlertEvent
from ingest.fhir import operation_outcome
from wearwatch.contract.ids import ID_RULE, is_alert_id, is_patient_id
from wearwatch.contract.priority import priority_rank

if TYPE_CHECKING:
    from streams.app import Pipeline

__all__ = ["FhirError", "current_alerts", "parse_search", "register_fhir_views", "search"]

FHIR_JSON = "application/fhir+json"
SCOPE_NOTE = "only patients on this worker's Kafka partitions are searched"


class FhirError(Exception):
    """Answered as an OperationOutcome with an HTTP status."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail

    def outcome(self) -> dict[str, Any]:
        doc = operation_outcome("error", self.detail)
        doc["issue"][0]["code"] = "not-found" if self.status == 404 else "invalid"
        return doc


def parse_search(query: dict[str, str]) -> tuple[str | None, frozenset[str] | None]:
    """``(patient_id, statuses)`` from the query parameters, or :class:`FhirError` 400.

    >>> pid, statuses = parse_search({"patient": "Patient/p-1", "status": "preliminary,amended"})
    >>> pid, sorted(statuses)
    ('p-1', ['amended', 'preliminary'])
    >>> parse_search({})
    (None, None)
    >>> parse_search({"status": "open"})
    Traceback (most recent call last):
    ...
    streams.fhir_views.FhirError: 400 invalid_status: status 'open' is not a DetectedIssue status ...
    """
    patient: str | None = None
    statuses: frozenset[str] | None = None
    raw = query.get("patient")
    if raw is not None:
        pid = raw.removeprefix("Patient/")
        if not is_patient_id(pid):
            raise FhirError(400, "invalid_patient", f"patient must be {{id}} or Patient/{{id}} with an id of {ID_RULE}")
        patient = pid
    raw = query.get("status")
    if raw is not None:
        codes = frozenset(c.strip() for c in raw.split(",") if c.strip())
        bad = sorted(codes - R4_STATUSES)
        if bad or not codes:
            raise FhirError(400, "invalid_status", f"status {','.join(bad)[:60]!r} is not a DetectedIssue status "
                                                   f"(use {', '.join(sorted(set(FHIR_STATUS.values())))})")
        statuses = codes
    return patient, statuses


def search(events: list[AlertEvent], patient: str | None, statuses: frozenset[str] | None) -> list[AlertEvent]:
    """The events matching the search, most urgent (priority) first, then oldest onset."""
    hits = [e for e in events
            if (patient is None or e.patient_id == patient) and (statuses is None or FHIR_STATUS[e.state] in statuses)]
    return sorted(hits, key=lambda e: (priority_rank(e.priority), e.onset_ms, e.alert_id))


def current_alerts(pipeline: Pipeline, patient: str | None = None) -> list[AlertEvent]:
    """The active alerts of the patients this worker holds (its partitions), or of one of them."""
    proc, table = pipeline.processor, pipeline.table
    pids = set(proc.held())
    pids.update(k.decode() for k in list(table.keys()))
    if patient is not None:
        # never create a state for a patient this worker does not hold
        pids &= {patient}
    events: list[AlertEvent] = []
    for pid in pids:
        events.extend(proc.view(pid).book.open_alerts())
    return events


def _response(view: Any, status: int, body: dict[str, Any]) -> Any:
    return view.bytes(orjson.dumps(body), content_type=FHIR_JSON, status=status,
                      headers={"Cache-Control": "no-store"})


def register_fhir_views(pipeline: Pipeline) -> None:
    """Add the FHIR endpoints to the worker's web server (call once, when wiring the app)."""
    app = pipeline.app

    def base_url(request: Any) -> str:
        url = request.url
        return f"{url.scheme}://{url.host}:{url.port}/fhir"

    class DetectedIssueSearch(web.View):
        async def get(self, request: web.Request) -> web.Response:
            raw: Any = request
            query = {k: raw.query.get(k) for k in raw.query}
            try:
                patient, statuses = parse_search(query)
            except FhirError as exc:
                return _response(self, exc.status, exc.outcome())
            hits = search(current_alerts(pipeline, patient), patient, statuses)
            params = {k: v for k, v in (("patient", query.get("patient")), ("status", query.get("status"))) if v}
            base = base_url(raw)
            self_url = f"{base}/DetectedIssue" + (f"?{urlencode(params)}" if params else "")
            return _response(self, 200, search_bundle(hits, self_url, base, note=SCOPE_NOTE))

    class DetectedIssueRead(web.View):
        async def get(self, request: web.Request, alert_id: str = "") -> web.Response:
            if not is_alert_id(alert_id):
                return _response(self, 400, FhirError(400, "invalid_id", "id must be al- and 20 hex digits").outcome())
            ev = next((e for e in current_alerts(pipeline) if e.alert_id == alert_id), None)
            if ev is None:
                return _response(self, 404, FhirError(
                    404, "not_found", "no current alert with this id on this worker (resolved, or its patient is "
                                      "on another worker's partitions)").outcome())
            return _response(self, 200, detected_issue(ev))

    app.page("/fhir/DetectedIssue")(DetectedIssueSearch)
    app.page("/fhir/DetectedIssue/{alert_id}")(DetectedIssueRead)
