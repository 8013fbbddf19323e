"""InfluxDB from :class:`~wearwatch.config.Settings`: the one client factory and the Flux literals.

The worker's sinks, the console, ``wearwatch report`` and ``wearwatch export``
build their client here (URL, token, org from the settings; a timeout per use)
and quote every value they put into a Flux query with :func:`flux_string`, so a
pseudonym, bucket or worker id can never end a string early.

InfluxDB 1.8's Flux (0.65) and 2.x accept the same literals.
"""

from __future__ import annotations

from influxdb_client import InfluxDBClient

from wearwatch.config import Settings
from wearwatch.contract.times import format_rfc3339

__all__ = ["flux_string", "flux_time", "influx_client"]


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
