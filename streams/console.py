"""The alert console: a nurse-facing web page served by the worker's own web server.

Faust runs an aiohttp server in every worker (``WEARWATCH_WEB_HOST``/``_PORT``);
:func:`register_console` adds these routes to it:

=========================================  ======  ==============================================================
path                                       method  answer
=========================================  ======  ==============================================================
``/console``                               GET     the page (one self-contained HTML file: no CDN, no build step)
``/api/alerts``                            GET     open alerts of this worker's patients, most urgent first
``/api/patients/{patient_id}/series``      GET     the patient's 1-minute series of the last 2 h (InfluxDB)
``/api/alerts/{alert_id}/ack``             POST    ``{"by": "nurse.kim"}``: acknowledge one open alert
=========================================  ======  ==============================================================

Where the data comes from
-------------------------
* **Open alerts** are read from the worker's in-memory patient states (the
  :class:`~alerts.lifecycle.AlertBook` of each patient, the same data as the
  retained MQTT state). Sorted by :func:`sort_key`: priority (high, medium,
  low), then unacknowledged before acknowledged, then oldest onset first.
* **Series**: the detectors keep no long history, so the page asks InfluxDB
  (``vitals_1m``, tagged with the patient's pseudonym) for the last 2 hours;
  the blocking query runs in an executor.
* **Acknowledge** goes the same way as an acknowledgement from a nurse app over
  MQTT: an :class:`~wearwatch.contract.commands.Ack` command record is produced to Kafka
  ``alerts.commands`` keyed by patient id (so it lands on the patient's
  partition), the worker that owns the patient applies it to the lifecycle and
  emits the ``acknowledged`` event on Kafka ``alerts``. The endpoint answers
  ``202`` once Kafka has the command; the page then polls until it sees the new state.

Scope: one worker, its partitions
---------------------------------
Each worker only holds the states of the patients on its own partitions, so
with several workers each console shows only that worker's patients (the JSON
says so in ``scope``). A console over all workers (an aggregator reading Kafka
``alerts``, or a proxy fanning out to every worker) is future work.

Privacy and safety
------------------
The console is nurse-facing, so it shows real patient identifiers; they never
go to logs at INFO (Faust's web server keeps no access log). There is no login
yet: the server binds to ``WEARWATCH_WEB_HOST`` (127.0.0.1 by default) and
``by`` is whatever name the nurse types. Put it behind the hospital's
authenticating proxy before exposing it. ``POST`` requires
``Content-Type: application/json``, which a cross-site form cannot send
without a CORS preflight (which this server never grants).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from alerts.models import AlertEvent
from wearwatch.contract.commands import Ack, command_record
from wearwatch.privacy import pseudonym

if TYPE_CHECKING:
    from streams.app import Pipeline

__all__ = [
    "PRIORITY_RANK",
    "SERIES_FIELDS",
    "ApiError",
    "Console",
    "alert_row",
    "flux_series_query",
    "parse_ack_body",
    "register_console",
    "series_from_records",
    "sort_key",
    "sorted_rows",
    "validate_alert_id",
    "validate_patient_id",
]

log = logging.getLogger(__name__)

PRIORITY_RANK: dict[str, int] = {"high": 0, "medium": 1, "low": 2}
#: the vitals_1m fields the series endpoint returns, in this order per point
SERIES_FIELDS: tuple[str, ...] = ("mean", "min", "max")
#: how far back the series endpoint looks
SERIES_WINDOW_S = 2 * 3600
#: largest acknowledgement body accepted
MAX_BODY_BYTES = 4096
#: how long the ack endpoint waits for Kafka to take the command
SEND_TIMEOUT_S = 10.0
_UNITS = {"glucose": "mg/dL", "heart_rate": "bpm", "steps": "steps"}

_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_ALERT_ID_RE = re.compile(r"^al-[0-9a-f]{20}$")
_BY_RE = re.compile(r"^[A-Za-z0-9_.:@\-]{1,64}$")


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": ...}`` with an HTTP status."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail}


# ---------------------------------------------------------------------- pure helpers
def validate_patient_id(patient_id: str) -> str:
    """The patient id from a URL, or :class:`ApiError` 400.

    >>> validate_patient_id("p-0042")
    'p-0042'
    >>> validate_patient_id("p/1")
    Traceback (most recent call last):
    ...
    streams.console.ApiError: 400 invalid_patient_id: patient id must be 1-64 characters of [A-Za-z0-9_.:-]
    """
    if not _ID_RE.match(patient_id):
        raise ApiError(400, "invalid_patient_id", "patient id must be 1-64 characters of [A-Za-z0-9_.:-]")
    return patient_id


def validate_alert_id(alert_id: str) -> str:
    """The alert id from a URL, or :class:`ApiError` 400."""
    if not _ALERT_ID_RE.match(alert_id):
        raise ApiError(400, "invalid_alert_id", "alert id must look like al- followed by 20 hex digits")
    return alert_id


def parse_ack_body(body: bytes) -> str:
    """The ``by`` of an acknowledgement request body ``{"by": "nurse.kim"}``, or :class:`ApiError` 400.

    >>> parse_ack_body(b'{"by": "nurse.kim"}')
    'nurse.kim'
    >>> parse_ack_body(b'{"by": ""}')
    Traceback (most recent call last):
    ...
    streams.console.ApiError: 400 invalid_field: by must be 1-64 characters of [A-Za-z0-9_.:@-]
    """
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"body over {MAX_BODY_BYTES} bytes")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", 'body must be a JSON object like {"by": "nurse.kim"}') from None
    if not isinstance(doc, dict):
        raise ApiError(400, "invalid_json", 'body must be a JSON object like {"by": "nurse.kim"}')
    unknown = sorted(set(doc) - {"by"})
    if unknown:
        raise ApiError(400, "invalid_field", f"unknown field(s): {', '.join(unknown)[:200]}")
    by = doc.get("by")
    if by is None:
        raise ApiError(400, "invalid_field", "missing field: by (who acknowledges)")
    if not isinstance(by, str) or not _BY_RE.match(by):
        raise ApiError(400, "invalid_field", "by must be 1-64 characters of [A-Za-z0-9_.:@-]")
    return by


def alert_row(ev: AlertEvent, now_ms: int) -> dict[str, Any]:
    """One alert as the console shows it (JSON-ready); ``age_s`` counts from the episode's onset."""
    return {
        "alert_id": ev.alert_id,
        "ward": ev.ward or "unassigned",
        "patient_id": ev.patient_id,
        "kind": ev.kind,
        "signal": ev.signal,
        "unit": _UNITS.get(ev.signal),
        "priority": ev.priority,
        "state": ev.state,
        "audience": ev.audience,
        "route": ev.audience_route or ev.audience,
        "escalated": ev.escalated,
        "message": ev.message,
        "explanation": ev.explanation,
        "onset_ms": ev.onset_ms,
        "ts_ms": ev.ts_ms,
        "age_s": max(0, (now_ms - ev.onset_ms) // 1000),
        "revision": ev.revision,
        "acked_by": ev.acked_by,
        "acked_ms": ev.acked_ms,
        "snoozed_until_ms": ev.snoozed_until_ms,
        "snoozed_by": ev.snoozed_by,
    }


def sort_key(row: Mapping[str, Any]) -> tuple[int, int, int, str]:
    """Most urgent first: priority, then not yet acknowledged, then oldest onset (longest waiting)."""
    return (
        PRIORITY_RANK.get(row["priority"], len(PRIORITY_RANK)),
        1 if row["state"] == "acknowledged" else 0,
        int(row["onset_ms"]),
        str(row["alert_id"]),
    )


def sorted_rows(events: Iterable[AlertEvent], now_ms: int) -> list[dict[str, Any]]:
    """Console rows for ``events`` in :func:`sort_key` order."""
    return sorted((alert_row(ev, now_ms) for ev in events), key=sort_key)


def _flux_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def flux_series_query(bucket: str, patient_tag: str, window_s: int = SERIES_WINDOW_S) -> str:
    """The Flux query for one patient's ``vitals_1m`` points of the last ``window_s`` seconds."""
    fields = " or ".join(f"r._field == {_flux_string(f)}" for f in SERIES_FIELDS)
    return (
        f"from(bucket: {_flux_string(bucket)}) |> range(start: -{int(window_s)}s)"
        f' |> filter(fn: (r) => r._measurement == "vitals_1m" and r.patient == {_flux_string(patient_tag)}'
        f" and ({fields}))"
    )


def series_from_records(records: Iterable[tuple[str, str, int, float]]) -> dict[str, dict[str, Any]]:
    """``(signal, field, time_ms, value)`` tuples → ``{signal: {"unit", "fields", "points": [[t, mean, min, max]]}}``.

    Points are sorted by time; a field missing at a minute is ``None``.

    >>> series_from_records([("glucose", "mean", 120000, 60.0), ("glucose", "min", 120000, 55.0),
    ...                      ("glucose", "mean", 60000, 70.0)])["glucose"]["points"]
    [[60000, 70.0, None, None], [120000, 60.0, 55.0, None]]
    """
    by_signal: dict[str, dict[int, list[float | None]]] = {}
    for signal, field, t_ms, value in records:
        if field not in SERIES_FIELDS:
            continue
        row = by_signal.setdefault(signal, {}).setdefault(int(t_ms), [None] * len(SERIES_FIELDS))
        row[SERIES_FIELDS.index(field)] = float(value)
    return {
        signal: {
            "unit": _UNITS.get(signal),
            "fields": ["t_ms", *SERIES_FIELDS],
            "points": [[t, *vals] for t, vals in sorted(points.items())],
        }
        for signal, points in sorted(by_signal.items())
    }


def _page() -> bytes:
    return resources.files("streams").joinpath("console_assets/console.html").read_bytes()


# ---------------------------------------------------------------------- the worker side
@dataclass
class Console:
    """The console's data access on one worker (used by the web views)."""

    pipeline: Pipeline
    _influx: Any = None

    def __post_init__(self) -> None:
        s = self.pipeline.settings
        self.commands = self.pipeline.app.topic(
            s.topic_commands, partitions=s.partitions, key_type=bytes, value_type=bytes,
            key_serializer="raw", value_serializer="raw",
        )

    # -- alerts ---------------------------------------------------------------
    def open_events(self) -> list[AlertEvent]:
        """The open alerts of every patient this worker holds (its partitions)."""
        proc, table = self.pipeline.processor, self.pipeline.table
        pids = set(proc.cache)
        pids.update(k.decode() for k in list(table.keys()))
        events: list[AlertEvent] = []
        for pid in pids:
            # the cached state (newest) or the table's; view() never caches what it loads
            events.extend(proc.view(pid).book.open_alerts())
        return events

    def alerts(self, now_ms: int) -> dict[str, Any]:
        s = self.pipeline.settings
        rows = sorted_rows(self.open_events(), now_ms)
        return {
            "now_ms": now_ms,
            "alerts": rows,
            "scope": {"worker": s.app_id, "note": "patients on this worker's partitions only"},
        }

    # -- series ---------------------------------------------------------------
    def _query_api(self) -> Any:
        if self._influx is None:
            from influxdb_client import InfluxDBClient

            s = self.pipeline.settings
            self._influx = InfluxDBClient(url=s.influx_url, token=s.influx_token or "", org=s.influx_org,
                                          timeout=10_000)
        return self._influx.query_api()

    def series(self, patient_id: str) -> dict[str, Any]:
        """Blocking: the patient's ``vitals_1m`` of the last 2 h (run it in an executor)."""
        s = self.pipeline.settings
        if not s.pseudonym_key:
            raise ApiError(503, "series_unavailable", "the worker has no pseudonym key configured")
        tag = pseudonym(s.pseudonym_key, patient_id)
        try:
            tables = self._query_api().query(flux_series_query(s.influx_bucket, tag))
        except Exception as exc:  # influxdb_client raises ApiException, urllib3 and socket errors
            log.warning("console series query failed: %s", type(exc).__name__)
            raise ApiError(503, "series_unavailable", "InfluxDB did not answer; try again") from None
        records = [
            (str(r.values.get("signal")), str(r.get_field()), int(r.get_time().timestamp() * 1000), r.get_value())
            for table in tables
            for r in table.records
            if isinstance(r.get_value(), (int, float))
        ]
        now_ms = int(time.time() * 1000)
        return {
            "patient_id": patient_id,
            "from_ms": now_ms - SERIES_WINDOW_S * 1000,
            "to_ms": now_ms,
            "signals": series_from_records(records),
        }

    # -- acknowledge ------------------------------------------------------------
    async def acknowledge(self, alert_id: str, by: str) -> tuple[int, dict[str, Any]]:
        """Produce the ack command for an open alert of this worker; (status, body)."""
        ev = next((e for e in self.open_events() if e.alert_id == alert_id), None)
        if ev is None:
            raise ApiError(404, "alert_not_found", "no open alert with this id on this worker "
                                                   "(resolved, or its patient is on another worker)")
        if ev.state == "acknowledged":
            return 200, {"status": "already_acknowledged", "alert_id": alert_id, "acked_by": ev.acked_by}
        try:
            ack = Ack(ward=ev.ward or "unassigned", patient_id=ev.patient_id, alert_id=alert_id, by=by,
                      ts_ms=int(time.time() * 1000))
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ApiError(400, "invalid_field", f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        try:
            fut = await self.commands.send(key=ev.patient_id.encode(), value=command_record(ack), force=True)
            await asyncio.wait_for(fut, SEND_TIMEOUT_S)
        except Exception as exc:  # Kafka down or slow: the nurse must know it did not go through
            log.warning("console acknowledgement not sent: %s", type(exc).__name__)
            raise ApiError(503, "kafka_unavailable", "the acknowledgement was not sent; try again") from None
        log.info("console acknowledgement sent")
        log.debug("console ack %s for patient %s by %s", alert_id, ev.patient_id, by)
        return 202, {"status": "sent", "alert_id": alert_id, "patient_id": ev.patient_id, "by": by}

    def close(self) -> None:
        if self._influx is not None:
            self._influx.close()
            self._influx = None


def _json(view: Any, status: int, body: Any) -> Any:
    return view.bytes(orjson.dumps(body), content_type="application/json", status=status,
                      headers={"Cache-Control": "no-store"})


def register_console(pipeline: Pipeline) -> Console:
    """Add the console's pages to the worker's web server (call once, when wiring the app)."""
    from faust import web

    app = pipeline.app
    console = Console(pipeline)

    class ConsolePage(web.View):
        async def get(self, request: web.Request) -> web.Response:
            try:
                page = _page()
            except (FileNotFoundError, OSError):
                return _json(self, 500, {"error": "page_missing", "detail": "console_assets not installed"})
            return self.bytes(page, content_type="text/html", headers={"Cache-Control": "no-store"})

    class AlertsApi(web.View):
        async def get(self, request: web.Request) -> web.Response:
            return _json(self, 200, console.alerts(int(time.time() * 1000)))

    class SeriesApi(web.View):
        async def get(self, request: web.Request, patient_id: str = "") -> web.Response:
            try:
                pid = validate_patient_id(patient_id)
                loop = asyncio.get_running_loop()
                body = await loop.run_in_executor(None, console.series, pid)
            except ApiError as exc:
                return _json(self, exc.status, exc.body())
            return _json(self, 200, body)

    class AckApi(web.View):
        async def post(self, request: web.Request, alert_id: str = "") -> web.Response:
            try:
                aid = validate_alert_id(alert_id)
                raw: Any = request
                if raw.content_type != "application/json":
                    raise ApiError(415, "unsupported_media_type", "send the body as application/json")
                if (raw.content_length or 0) > MAX_BODY_BYTES:
                    raise ApiError(413, "too_large", f"body over {MAX_BODY_BYTES} bytes")
                by = parse_ack_body(await raw.read())
                status, body = await console.acknowledge(aid, by)
            except ApiError as exc:
                return _json(self, exc.status, exc.body())
            return _json(self, status, body)

    app.page("/console")(ConsolePage)
    app.page("/api/alerts")(AlertsApi)
    app.page("/api/patients/{patient_id}/series")(SeriesApi)
    app.page("/api/alerts/{alert_id}/ack")(AckApi)
    return console
