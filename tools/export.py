"""``wearwatch export fhir``: one patient's 1-minute series from InfluxDB as a FHIR R4 Bundle of Observations.

::

    wearwatch export fhir --patient p-0042 --since 6h [--until 2026-11-27T12:00:00Z] [--out p-0042.json]
                          [--bundle-type batch|transaction|collection]

InfluxDB's ``vitals_1m`` is tagged with the patient's pseudonym, never the real
id; the export takes the real id as its argument, computes the pseudonym with
``WEARWATCH_PSEUDONYM_KEY`` to query, and writes the real id into the
Observations (``subject`` = ``Patient/{id}``): the output is clinical data,
treat it so. Each closed minute of each signal becomes one Observation:

* ``code``/``valueQuantity``: the signal's LOINC code and UCUM unit
  (:data:`wearwatch.contract.codes.SIGNAL_CODING`: heart rate 8867-4 ``/min``, glucose 99504-3
  ``mg/dL``, steps 55423-8 ``{steps}``), value = the minute's **mean**;
* ``effectivePeriod`` = the minute [start, start + 60 s); a note gives the number of readings;
* ``status`` ``final``; ``id`` deterministic (pseudonym, signal, minute), so a re-export is identical.

The Bundle (default ``batch``, entries ``POST Observation``) goes straight back
into wearwatch through the gateway's ``POST /fhir`` or MQTT
``wearwatch/v1/fhir/{vendor}/{device}``: every Observation becomes a reading at the
minute's start with the mean as value (the round trip of ``tests/test_fhir.py`` and
``tests/integration/test_fhir_flow.py``). Readings older than
``WEARWATCH_MAX_READING_AGE_S`` are dead-lettered on the way back in, as any.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from fhir.resources.R4B.bundle import Bundle

from ingest.fhir import observation_for
from tools.files import write_atomically
from wearwatch.config import Settings, load_settings
from wearwatch.contract.codes import SIGNAL_CODING
from wearwatch.contract.ids import ID_RULE, is_patient_id
from wearwatch.contract.times import TimestampError, format_rfc3339, parse_rfc3339
from wearwatch.errors import ConfigError, StackUnavailable
from wearwatch.influxdb import flux_string, flux_time, influx_client
from wearwatch.privacy import pseudonym

__all__ = ["add_arguments", "export_bundle", "fetch_minutes", "flux_minutes_query", "parse_when", "run"]

log = logging.getLogger(__name__)

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MINUTE_MS = 60_000

#: (signal, minute start ms, mean, count) — one closed minute of one signal
MinuteRow = tuple[str, int, float, int]


def parse_when(text: str, now_ms: int) -> int:
    """Epoch ms from a duration back from now (``90s``, ``30m``, ``6h``, ``7d``, ``2w``) or an RFC 3339 time.

    >>> parse_when("2h", 10_000_000)
    2800000
    >>> parse_when("2026-11-27T10:00:00Z", 0)
    1795773600000
    >>> parse_when("yesterday", 0)
    Traceback (most recent call last):
    ...
    wearwatch.errors.ConfigError: 'yesterday' is neither a duration (30m, 6h, 7d) nor an RFC 3339 time
    """
    m = _DURATION_RE.match(text.strip())
    if m:
        return now_ms - int(float(m.group(1)) * _UNIT_S[m.group(2)] * 1000)
    try:
        return parse_rfc3339(text.strip())
    except TimestampError:
        raise ConfigError(f"{text!r} is neither a duration (30m, 6h, 7d) nor an RFC 3339 time") from None


def flux_minutes_query(bucket: str, patient_tag: str, start_ms: int, stop_ms: int) -> str:
    """Flux (InfluxDB 1.8's 0.65 and 2.x) for one patient's ``vitals_1m`` mean and count in [start, stop)."""
    return (
        f"from(bucket: {flux_string(bucket)}) |> range(start: {flux_time(start_ms)}, stop: {flux_time(stop_ms)})"
        f' |> filter(fn: (r) => r._measurement == "vitals_1m" and r.patient == {flux_string(patient_tag)}'
        ' and (r._field == "mean" or r._field == "count"))'
    )


def minutes_from_records(records: Iterable[tuple[str, str, int, Any]]) -> list[MinuteRow]:
    """``(signal, field, time_ms, value)`` → minute rows with a mean (sorted by signal, time).

    >>> minutes_from_records([("glucose", "mean", 60000, 80.5), ("glucose", "count", 60000, 1),
    ...                       ("steps", "count", 0, 2)])
    [('glucose', 60000, 80.5, 1)]
    """
    means: dict[tuple[str, int], float] = {}
    counts: dict[tuple[str, int], int] = {}
    for signal, field, t, value in records:
        if field == "mean" and isinstance(value, (int, float)):
            means[(signal, t)] = float(value)
        elif field == "count" and isinstance(value, (int, float)):
            counts[(signal, t)] = int(value)
    return [(sig, t, mean, counts.get((sig, t), 0)) for (sig, t), mean in sorted(means.items())
            if sig in SIGNAL_CODING]


def fetch_minutes(settings: Settings, patient_id: str, start_ms: int, stop_ms: int) -> list[MinuteRow]:
    """The patient's closed minutes in [start, stop) from InfluxDB (queried by pseudonym)."""
    settings.require("influx_token", "pseudonym_key")
    assert settings.pseudonym_key is not None
    tag = pseudonym(settings.pseudonym_key, patient_id)
    query = flux_minutes_query(settings.influx_bucket, tag, start_ms, stop_ms)
    try:
        with influx_client(settings, timeout_ms=30_000) as client:
            tables = client.query_api().query(query)
    except Exception as exc:  # ApiException, urllib3 and socket errors
        raise StackUnavailable(f"InfluxDB at {settings.influx_url}: {type(exc).__name__}: {str(exc)[:200]}") from exc
    return minutes_from_records(
        (str(r.values.get("signal")), str(r.get_field()), int(r.get_time().timestamp() * 1000), r.get_value())
        for table in tables
        for r in table.records
    )


def export_bundle(
    patient_id: str, rows: Iterable[MinuteRow], *, id_prefix: str, bundle_type: str = "batch"
) -> dict[str, Any]:
    """The Bundle of Observations for these minutes (validated with the ``fhir.resources`` model).

    ``id_prefix`` keeps the resource ids free of the real patient id (the export uses the pseudonym).

    >>> b = export_bundle("p-1", [("heart_rate", 60_000, 71.5, 12)], id_prefix="ab12")
    >>> o = b["entry"][0]["resource"]
    >>> o["id"], o["code"]["coding"][0]["code"], o["valueQuantity"]["value"], o["effectivePeriod"]["start"]
    ('ab12-heart-rate-60000', '8867-4', 71.5, '1970-01-01T00:01:00.000Z')
    """
    if bundle_type not in ("batch", "transaction", "collection"):
        raise ConfigError(f"bundle type {bundle_type!r}: use batch, transaction or collection")
    entries: list[dict[str, Any]] = []
    for signal, minute_ms, mean, count in rows:
        rid = f"{id_prefix}-{signal.replace('_', '-')}-{minute_ms}"
        note = f"1-minute mean of {count} reading{'s' if count != 1 else ''}" if count else "1-minute mean"
        obs = observation_for(patient_id, signal, mean, minute_ms, end_ms=minute_ms + MINUTE_MS, resource_id=rid,
                              note=note)
        entry: dict[str, Any] = {"fullUrl": f"urn:wearwatch:observation:{rid}", "resource": obs}
        if bundle_type != "collection":
            entry["request"] = {"method": "POST", "url": "Observation"}
        entries.append(entry)
    doc: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": bundle_type,
        "timestamp": format_rfc3339(int(time.time() * 1000)),
        "entry": entries,
    }
    Bundle.model_validate(doc)
    return doc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["fhir"], help="output format (FHIR R4 JSON Bundle of Observations)")
    parser.add_argument("--patient", required=True, help="the patient's real id (its pseudonym is queried)")
    parser.add_argument("--since", default="24h", help="start: duration back from now (30m, 6h, 7d) or RFC 3339")
    parser.add_argument("--until", default=None, help="end (exclusive): duration back from now or RFC 3339; "
                                                      "default now")
    parser.add_argument("--bundle-type", default="batch", choices=["batch", "transaction", "collection"])
    parser.add_argument("--out", type=Path, default=None, help="write here instead of stdout")


def run(args: argparse.Namespace) -> int:
    if not is_patient_id(args.patient):
        raise ConfigError(f"--patient must be {ID_RULE}")
    if args.out is not None and not args.out.resolve().parent.is_dir():
        raise ConfigError(f"--out {args.out}: folder {args.out.parent} does not exist")
    settings = load_settings()
    settings.require("influx_token", "pseudonym_key")
    assert settings.pseudonym_key is not None
    now_ms = int(time.time() * 1000)
    start_ms = parse_when(args.since, now_ms)
    stop_ms = parse_when(args.until, now_ms) if args.until else now_ms + 1
    if stop_ms <= start_ms:
        raise ConfigError("--until must be after --since")
    rows = fetch_minutes(settings, args.patient, start_ms, stop_ms)
    doc = export_bundle(args.patient, rows, id_prefix=pseudonym(settings.pseudonym_key, args.patient),
                        bundle_type=args.bundle_type)
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
    if args.out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        write_atomically(args.out, lambda fh: fh.write(data))
    log.info("exported %d observations (%d signals)", len(rows), len({r[0] for r in rows}))
    return 0
