"""InfluxDB from :class:`~wearwatch.config.Settings`: the one client factory and the Flux literals.

The worker's sinks, the console, ``wearwatch report`` and ``wearwatch export``
build their client here (URL, token, org from the settings; a timeout per use)
and quote every value they put into a Flux query with :func:`flux_string`, so a
pseudonym, bucket or worker id can never end a string early.

InfluxDB 1.8's Flux (0.65) and 2.x accept the same literals.
"""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.parse
import urllib.request

import orjson
from influxdb_client import InfluxDBClient

from wearwatch.config import Settings
from wearwatch.contract.times import format_rfc3339
from wearwatch.errors import StackUnavailable

__all__ = ["delete_patient_points", "flux_string", "flux_time", "influx_client"]


def influx_client(settings: Settings, *, timeout_ms: int = 10_000) -> InfluxDBClient:
    """A client for ``settings``' InfluxDB (token may be unset for a server without auth).

    >>> from wearwatch.config import load_settings
    >>> c = influx_client(load_settings({"WEARWATCH_INFLUX_URL": "http://127.0.0.1:1"}), timeout_ms=500)
    >>> c.url, c.org
    ('http://127.0.0.1:1', 'wearwatch')
    >>> c.close()
    """
    return InfluxDBClient(url=settings.influx_url, token=settings.influx_token or "", org=settings.influx_org,
                          timeout=timeout_ms)


def flux_string(value: str) -> str:
    """A Flux string literal holding ``value`` exactly.

    >>> flux_string('a"b\\\\c'), flux_string("line\\nbreak"), flux_string("${x}")
    ('"a\\\\"b\\\\\\\\c"', '"line\\\\nbreak"', '"\\\\${x}"')
    """
    out = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + out.replace("\t", "\\t").replace("${", "\\${") + '"'


def flux_time(ms: int) -> str:
    """A Flux time literal for epoch milliseconds.

    >>> flux_time(0)
    '1970-01-01T00:00:00.000Z'
    """
    return format_rfc3339(ms)


def delete_patient_points(settings: Settings, patient_tag: str) -> None:
    """Delete every point tagged ``patient`` = ``patient_tag`` (a pseudonym) in every measurement of the bucket.

    InfluxDB 1.8 (token ``user:password``): InfluxQL ``DELETE WHERE "patient" = '…'`` on the bucket's database;
    2.x (an API token): ``/api/v2/delete`` over all time with the predicate ``patient="…"``.
    """
    token = settings.influx_token or ""
    tag = patient_tag.replace("\\", "\\\\").replace("'", "\\'")
    try:
        if ":" in token:
            db = settings.influx_bucket.split("/")[0]
            q = urllib.parse.urlencode({"q": f"DELETE WHERE \"patient\" = '{tag}'", "db": db}).encode()
            req = urllib.request.Request(f"{settings.influx_url}/query", data=q, headers={
                "Authorization": "Basic " + base64.b64encode(token.encode()).decode()})
            with urllib.request.urlopen(req, timeout=30) as r:
                doc = orjson.loads(r.read() or b"{}")
            errors = [res["error"] for res in doc.get("results", []) if "error" in res] + (
                [doc["error"]] if "error" in doc else [])
            if errors:
                raise StackUnavailable(f"InfluxDB refused the deletion: {errors[0]}")
            return
        with influx_client(settings, timeout_ms=30_000) as client:
            client.delete_api().delete("1970-01-01T00:00:00Z", format_rfc3339(int(time.time() * 1000) + 86_400_000),
                                       f'patient="{patient_tag}"', bucket=settings.influx_bucket,
                                       org=settings.influx_org)
    except (urllib.error.URLError, OSError) as exc:
        raise StackUnavailable(f"InfluxDB at {settings.influx_url}: {type(exc).__name__}") from exc
    except StackUnavailable:
        raise
    except Exception as exc:  # influxdb_client's ApiException
        raise StackUnavailable(f"InfluxDB at {settings.influx_url}: {type(exc).__name__}: {str(exc)[:200]}") from exc
