"""The worker's web server: only wearwatch's routes, none of Faust's built-in views.

=================  ======  ===================================================================
path               method  answer
=================  ======  ===================================================================
``/healthz``       GET     200 ``{"status":"alive"}`` while the process runs (liveness)
``/readyz``        GET     200 when partitions are assigned, the table is recovered and the
                           producers are started, else 503; the JSON body names each check
``/metrics``       GET     Prometheus exposition (:class:`streams.telemetry.WorkerTelemetry`)
``/fhir/...``      GET     current alerts as FHIR DetectedIssues (:mod:`streams.fhir_views`)
=================  ======  ===================================================================

Faust's aiohttp driver mounts its own views (``/router``, ``/table``, the statistics or
the production index at ``/``, ``/graph``, ``/performance``) from class-level lists of
blueprints; :class:`WorkerWeb` is that driver with the lists empty. ``/table`` would serve
the pickled patient states, ``/router`` the cluster's addresses. Faust finds the driver
through its ``faust.web.drivers`` entry point (``pyproject.toml``), selected by the
app's ``web="wearwatch://"`` setting (:func:`streams.app.faust_app`). Anything else
answers 404.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from faust import web
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from wearwatch.metrics import HEALTH_PATH, METRICS_PATH, READY_PATH, exposition, health_answer, ready_answer

if TYPE_CHECKING:
    from streams.telemetry import WorkerTelemetry

__all__ = ["WEB_DRIVER_URL", "WorkerWeb", "ops_blueprint"]

#: the app's ``web`` setting: :class:`WorkerWeb`, by its ``faust.web.drivers`` entry point
WEB_DRIVER_URL = "wearwatch://"

_JSON = "application/json"


class WorkerWeb(AiohttpWeb):
    """Faust's aiohttp web driver without any of Faust's own views."""

    default_blueprints: ClassVar[list[tuple[str, Any]]] = []
    production_blueprints: ClassVar[list[tuple[str, Any]]] = []
    debug_blueprints: ClassVar[list[tuple[str, Any]]] = []
    optional_blueprints: ClassVar[list[tuple[str, Any]]] = []


def ops_blueprint(telemetry: WorkerTelemetry) -> web.Blueprint:
    """``/healthz``, ``/readyz`` and ``/metrics`` answering from ``telemetry``; register it on the app."""
    bp = web.Blueprint("operations")

    @bp.route(HEALTH_PATH, name="health")
    class Health(web.View):
        async def get(self, request: web.Request) -> web.Response:
            status, body = health_answer()
            return self.bytes(body, content_type=_JSON, status=status, headers={"Cache-Control": "no-store"})

    @bp.route(READY_PATH, name="ready")
    class Ready(web.View):
        async def get(self, request: web.Request) -> web.Response:
            status, body = ready_answer(telemetry.readiness)
            return self.bytes(body, content_type=_JSON, status=status, headers={"Cache-Control": "no-store"})

    @bp.route(METRICS_PATH, name="metrics")
    class Metrics(web.View):
        async def get(self, request: web.Request) -> web.Response:
            telemetry.refresh()
            raw: Any = request
            body, content_type = exposition(telemetry.registry, raw.headers.get("Accept"))
            resp: Any = self.bytes(body, status=200, headers={"Cache-Control": "no-store"})
            # aiohttp refuses a charset inside content_type; prometheus' type carries one
            resp.headers["Content-Type"] = content_type
            return resp

    return bp
