"""The InfluxDB sink: ``vitals_1m``, ``alerts`` and ``pipeline`` points.

Writes are batched and idempotent: every point's measurement, tags and
timestamp are derived from the record itself, so a batch written twice (after a
retry or a worker restart) overwrites the same points instead of adding new
ones. Patient identifiers are pseudonymized (:func:`wearwatch.privacy.pseudonym`)
before they reach InfluxDB.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import orjson
from influxdb_client import WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

from alerts.models import AlertEvent
from wearwatch.config import Settings
from wearwatch.errors import DeliveryError
from wearwatch.influxdb import influx_client
from wearwatch.privacy import pseudonym

__all__ = ["InfluxSink", "alert_line", "beyond_retention", "escape_tag", "minute_docs", "minute_line", "pipeline_line"]

log = logging.getLogger(__name__)

_BEYOND_RETENTION = re.compile(r"partial write: points beyond retention policy dropped=(\d+)")


def beyond_retention(status: int | None, body: str) -> int:
    """How many points InfluxDB dropped as older than its retention policy, from a refused write's answer.

    InfluxDB stores the other points of such a batch and answers 400 "partial write": writing
    the batch again cannot change the answer (the points are past what the database keeps), so
    the sink must not retry it — a retry loop there would hold every later batch back forever.

    >>> beyond_retention(400, '{"error":"partial write: points beyond retention policy dropped=3"}')
    3
    >>> beyond_retention(400, '{"error":"unable to parse line"}'), beyond_retention(503, "")
    (0, 0)
    """
    if status != 400:
        return 0
    m = _BEYOND_RETENTION.search(body)
    return int(m.group(1)) if m else 0


def escape_tag(v: str) -> str:
    """Escape a tag key or value for line protocol.

    >>> escape_tag("a b,c=d")
    'a\\\\ b\\\\,c\\\\=d'
    """
    return v.replace("\\", "\\\\").replace(" ", "\\ ").replace(",", "\\,").replace("=", "\\=")


def _field_str(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def minute_line(record: dict[str, Any], key: str) -> str:
    """One ``vitals_1m`` point (ms precision) from a ``vitals.1m`` record.

    >>> minute_line({"patient_id": "p1", "signal": "heart_rate", "minute_ms": 60000,
    ...              "mean": 70.5, "min": 60.0, "max": 80.0, "sum": 141.0, "count": 2}, "k" * 16)
    'vitals_1m,patient=330117678f434269,signal=heart_rate mean=70.5,min=60.0,max=80.0,sum=141.0,count=2i 60000'
    """
    return (
        f"vitals_1m,patient={pseudonym(key, record['patient_id'])},signal={escape_tag(record['signal'])} "
        f"mean={float(record['mean'])!r},min={float(record['min'])!r},max={float(record['max'])!r},"
        f"sum={float(record['sum'])!r},count={int(record['count'])}i {int(record['minute_ms'])}"
    )


def minute_docs(value: bytes) -> list[dict[str, Any]]:
    """The minute aggregates of one ``vitals.1m`` record: schema 2 packs a partition's aggregates
    (``{"schema_version": 2, "minutes": [...]}``), schema 1 (before 2026-11) held one.

    >>> minute_docs(b'{"schema_version": 2, "minutes": [{"minute_ms": 0}, {"minute_ms": 60000}]}')
    [{'minute_ms': 0}, {'minute_ms': 60000}]
    >>> minute_docs(b'{"schema_version": 1, "minute_ms": 0}')
    [{'schema_version': 1, 'minute_ms': 0}]
    """
    doc = orjson.loads(value)
    if doc.get("schema_version") == 2:
        return list(doc["minutes"])
    return [doc]


def alert_line(ev: AlertEvent, key: str) -> str:
    """One ``alerts`` point per event, at the reading time that caused it (microsecond precision).

    The revision is added as microseconds, so every event of an alert — reminders
    included, which repeat the state and reading time — is its own point, and a
    re-written event overwrites exactly itself.
    """
    value = ev.explanation.get("value")
    fields = [
        f"alert_id={_field_str(ev.alert_id)}",
        f"state_code={ {'open': 1, 'updated': 2, 'acknowledged': 3, 'resolved': 0}[ev.state] }i",
        f"revision={ev.revision}i",
        f"message={_field_str(ev.message)}",
        f"onset_ms={ev.onset_ms}i",
        f"latency_ms={ev.emitted_ms - ev.ts_ms}i",
    ]
    if isinstance(value, (int, float)):
        fields.append(f"value={float(value)!r}")
    tags = (
        f"patient={pseudonym(key, ev.patient_id)},signal={escape_tag(ev.signal)},kind={escape_tag(ev.kind)},"
        f"priority={ev.priority},audience={ev.audience},state={ev.state}"
    )
    return f"alerts,{tags} {','.join(fields)} {ev.ts_ms * 1000 + min(ev.revision, 999)}"


def pipeline_line(worker: str, ts_ms: int, fields: dict[str, float | int]) -> str:
    """One ``pipeline`` point of worker metrics.

    >>> pipeline_line("w1", 1000, {"readings": 5, "lag": 1.5})
    'pipeline,worker=w1 lag=1.5,readings=5i 1000'
    """
    parts = [f"{k}={v}i" if isinstance(v, int) else f"{k}={float(v)!r}" for k, v in sorted(fields.items())]
    return f"pipeline,worker={escape_tag(worker)} {','.join(parts)} {ts_ms}"


class InfluxSink:
    """Batched, idempotent writes to the ``wearwatch`` bucket.

    ``write`` is blocking (run it in an executor from async code) and raises
    :class:`~wearwatch.errors.DeliveryError` when InfluxDB does not take the
    batch; the caller retries with backoff and keeps the Kafka offsets
    uncommitted until it succeeds.
    """

    def __init__(self, settings: Settings) -> None:
        settings.require("influx_token", "pseudonym_key")
        self.settings = settings
        self.key: str = settings.pseudonym_key or ""
        self._client: Any = None
        self._write: Any = None

    def _api(self) -> Any:
        if self._write is None:
            self._client = influx_client(self.settings, timeout_ms=10_000)
            self._write = self._client.write_api(write_options=SYNCHRONOUS)
        return self._write

    def lines_for_minutes(self, values: Iterable[bytes]) -> list[str]:
        """``vitals_1m`` points from ``vitals.1m`` records (:func:`minute_docs`)."""
        return [minute_line(doc, self.key) for v in values for doc in minute_docs(v)]

    def lines_for_alerts(self, values: Iterable[bytes | None]) -> list[str]:
        """``alerts`` points from ``alerts`` records; an erasure's tombstones (no value) are skipped."""
        return [alert_line(AlertEvent.from_json(v), self.key) for v in values if v is not None]

    def write(self, lines: list[str], precision: str = "ms") -> int:
        """Write line-protocol points with timestamps in ``precision`` ("ms" or "us").

        Returns how many points InfluxDB dropped as older than its retention policy (the rest
        of the batch is stored; see :func:`beyond_retention`); raises
        :class:`~wearwatch.errors.DeliveryError` when the batch was not taken.
        """
        if not lines:
            return 0
        try:
            self._api().write(
                bucket=self.settings.influx_bucket, org=self.settings.influx_org,
                record=lines, write_precision=WritePrecision.US if precision == "us" else WritePrecision.MS,
            )
        except Exception as exc:  # urllib3 / ApiException / socket errors
            status = getattr(exc, "status", None)
            dropped = beyond_retention(status, str(getattr(exc, "body", "") or ""))
            if dropped:
                log.warning("InfluxDB dropped %d of %d points as older than its retention policy", dropped, len(lines))
                return dropped
            self.close()
            why = f"HTTP {status} {str(getattr(exc, 'body', '') or '')[:200]}" if status else type(exc).__name__
            raise DeliveryError(f"InfluxDB write of {len(lines)} points failed: {why}") from exc
        return 0

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None
                self._write = None
