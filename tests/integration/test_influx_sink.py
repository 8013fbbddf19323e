"""The InfluxDB sink against the real InfluxDB: a batch holding points older than the
database keeps is stored except those points, and is not retried forever."""

from __future__ import annotations

import time

import pytest

from alerts.influx import InfluxSink, escape_tag
from wearwatch.config import Settings
from wearwatch.influxdb import flux_string, influx_client

pytestmark = pytest.mark.stack

_DAY_MS = 86_400_000


def test_points_beyond_retention_are_dropped_and_the_rest_stored(settings: Settings, run_id: str) -> None:
    sink = InfluxSink(settings)
    measurement = f"sink_{run_id}"
    now = int(time.time() * 1000)
    # the stack's retention policy keeps WEARWATCH_INFLUX_RETENTION_DAYS (1 year by default): 3 of these are older
    ages_days = [0, 1, 2, 800, 900, 1000]
    lines = [f"{measurement},probe={escape_tag(run_id)} v={i}i {now - age * _DAY_MS - i}"
             for i, age in enumerate(ages_days)]
    try:
        assert sink.write(lines) == 3
        # a batch of only current points: nothing dropped
        assert sink.write([f"{measurement},probe={escape_tag(run_id)} v=9i {now - 9}"]) == 0
        flux = (f'from(bucket: {flux_string(settings.influx_bucket)}) |> range(start: -30d) '
                f'|> filter(fn: (r) => r._measurement == {flux_string(measurement)})')
        with influx_client(settings, timeout_ms=10_000) as client:
            values = sorted(int(r.get_value()) for t in client.query_api().query(flux) for r in t.records)
        assert values == [0, 1, 2, 9]
    finally:
        sink.close()
