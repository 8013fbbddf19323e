"""Time stamps on the wire: one parser for RFC 3339 strings and epoch milliseconds.

Policy (devices, FHIR-less JSON, nurse commands, offline tools alike):

* a **number** is epoch milliseconds (an ``int``, or a finite ``float`` truncated to
  the millisecond) within ±10^15 ms; booleans are not numbers here;
* a **string** must be an RFC 3339 ``date-time``: ``YYYY-MM-DD``, ``T``, ``hh:mm:ss``,
  an optional fraction of 1–9 digits (kept to the millisecond, truncated), and an
  offset ``Z`` or ``±hh:mm``. A string without an offset is refused: a local time
  would be read in the gateway's zone, not the device's;
* **lowercase** ``t`` and ``z`` are accepted. RFC 3339 §5.6 allows them ("may
  alternatively be lower case"), some device firmware sends them, and refusing a
  reading for the case of one letter would lose a measurement that is exact. The
  same rule holds for nurse commands, so an app's time stamps are never valid in
  one place and dead-lettered in another;
* a space instead of ``T`` is refused (RFC 3339 lets applications choose it, this
  contract does not: it is not ISO 8601, and a space is how a date-only field and
  a time usually get glued together by mistake); so are ISO 8601 forms that are not
  RFC 3339 (``20260105T100000Z``, week dates, ``+0100``, missing seconds);
* fields out of range (month 13, hour 24, ``+24:00``) are refused. A leap second
  (``23:59:60``) is accepted and counted as the next second, as POSIX time does;
* the offset is explicit, so daylight-saving changes play no part: the same
  instant written in any zone gives the same milliseconds.

:func:`parse_timestamp` raises :class:`TimestampError` (a ``ValueError``) with a
message that never echoes more than 40 characters of the input.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

from pydantic.json_schema import JsonDict

__all__ = [
    "MAX_EPOCH_MS",
    "RFC3339_PATTERN",
    "TIMESTAMP_SCHEMA",
    "TimestampError",
    "format_rfc3339",
    "parse_rfc3339",
    "parse_timestamp",
]

#: largest magnitude accepted as epoch milliseconds (year 33658)
MAX_EPOCH_MS = 10**15

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})")
#: the accepted form as a JSON Schema pattern (field ranges are checked by :func:`parse_rfc3339` only)
RFC3339_PATTERN = r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
#: JSON Schema of a time stamp on the wire (for models' ``json_schema_extra``)
TIMESTAMP_SCHEMA: JsonDict = {"anyOf": [
    {"type": "number", "minimum": -MAX_EPOCH_MS, "maximum": MAX_EPOCH_MS, "description": "epoch milliseconds"},
    {"type": "string", "pattern": RFC3339_PATTERN, "maxLength": 64,
     "description": "RFC 3339 date-time with an offset (lowercase t/z accepted)"},
]}
_LOCAL = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class TimestampError(ValueError):
    """A time stamp that breaks the policy above."""


def parse_rfc3339(text: str) -> int:
    """Epoch milliseconds from an RFC 3339 date-time string.

    >>> parse_rfc3339("2026-01-05T00:00:00Z"), parse_rfc3339("2026-01-05t01:00:00.999+01:00")
    (1767571200000, 1767571200999)
    >>> parse_rfc3339("2026-01-05T00:00:00")
    Traceback (most recent call last):
    ...
    wearwatch.contract.times.TimestampError: '2026-01-05T00:00:00' has no time zone offset (end it with Z or ±hh:mm)
    """
    if len(text) > 64:
        raise TimestampError("time stamp string longer than 64 characters")
    if _RFC3339.fullmatch(text) is None:
        if _LOCAL.fullmatch(text):
            raise TimestampError(f"{text[:40]!r} has no time zone offset (end it with Z or ±hh:mm)")
        raise TimestampError(f"{text[:40]!r} is not RFC 3339 (YYYY-MM-DDThh:mm:ss[.f]Z or ±hh:mm)")
    # the form is checked; the C parser does the fields and their ranges (~1 µs instead of ~10 in Python)
    norm = text
    if text[10] == "t" or text[-1] == "z":
        norm = f"{text[:10]}T{text[11:-1]}{'Z' if text[-1] == 'z' else text[-1]}"
    leap = text[17:19] == "60"
    if leap:
        norm = f"{norm[:17]}59{norm[19:]}"
    try:
        dt = datetime.fromisoformat(norm)
    except ValueError as exc:
        raise TimestampError(f"{text[:40]!r} has a field out of range ({str(exc)[:60]})") from None
    return (dt - _EPOCH) // _MS + (1000 if leap else 0)


def parse_timestamp(raw: object) -> int:
    """Epoch milliseconds from an RFC 3339 string or a number of epoch milliseconds.

    >>> parse_timestamp(1767571200000), parse_timestamp(1767571200000.9), parse_timestamp("2026-01-05T00:00:00z")
    (1767571200000, 1767571200000, 1767571200000)
    >>> parse_timestamp(True)
    Traceback (most recent call last):
    ...
    wearwatch.contract.times.TimestampError: must be an RFC 3339 string or epoch milliseconds, got bool
    """
    if isinstance(raw, bool) or raw is None:
        raise TimestampError(f"must be an RFC 3339 string or epoch milliseconds, got {type(raw).__name__}")
    if isinstance(raw, int | float):
        if not math.isfinite(raw):
            raise TimestampError("is not finite")
        if abs(raw) > MAX_EPOCH_MS:
            raise TimestampError("is out of range for epoch milliseconds")
        return int(raw)
    if isinstance(raw, str):
        return parse_rfc3339(raw)
    raise TimestampError(f"must be an RFC 3339 string or epoch milliseconds, got {type(raw).__name__}")


def format_rfc3339(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 in UTC with milliseconds, as wearwatch writes time stamps.

    >>> format_rfc3339(1767571200123)
    '2026-01-05T00:00:00.123Z'
    >>> parse_rfc3339(format_rfc3339(-1))
    -1
    """
    return (_EPOCH + ms * _MS).isoformat(timespec="milliseconds").replace("+00:00", "Z")
