"""Logging set-up shared by every process.

House rule: no patient identifiers or reading values in log records at INFO or
above. Log counts and pseudonyms; put identifiers only in DEBUG records.

Two formats (``WEARWATCH_LOG_FORMAT``), both with ISO 8601 UTC timestamps with
milliseconds (``2026-11-27T10:05:00.123Z``), so lines from several hosts sort
and join without guessing a time zone:

- ``text`` (the default, for a terminal): ``<ts> <LEVEL> <logger>: <message>``,
  then the structured fields given with ``extra=`` as ``key=value``, then the
  traceback if there is one.
- ``json`` (for log pipelines: Loki, Elasticsearch, Cloud Logging, …): one JSON
  object per line with ``ts``, ``level``, ``logger``, ``message``, every
  ``extra=`` field under its own name, and ``exc`` (the traceback text) when
  the record carries an exception. A field named like one of those five is
  kept as ``extra_<name>``; a value JSON cannot hold is written as its ``str()``.

The formatters are written here rather than taken from python-json-logger: the
whole of it is the two classes below, the timestamp and field names are
exactly what the README promises, and orjson (already a dependency) serializes.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import orjson

from wearwatch.config import ENV_PREFIX, LOG_LEVELS
from wearwatch.errors import ConfigError

__all__ = ["JsonFormatter", "TextFormatter", "iso_utc", "setup_logging"]

#: the attributes every LogRecord has: anything else on a record came from ``extra=``
_STANDARD = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName"}
_CORE = ("ts", "level", "logger", "message", "exc")


def iso_utc(created: float) -> str:
    """``created`` (epoch seconds) as ISO 8601 UTC with milliseconds and ``Z``.

    >>> iso_utc(1764237900.1239)
    '2025-11-27T10:05:00.123Z'
    """
    whole = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((created - whole) * 1000):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """One readable line: ISO time, level, logger, message, ``key=value`` extras (then a traceback).

    >>> rec = logging.LogRecord("ingest.gateway", logging.WARNING, "f", 1, "sent %d", (3,), None)
    >>> rec.created, rec.topic_kind = 1764237900.5, "vitals"
    >>> TextFormatter().format(rec)
    '2025-11-27T10:05:00.500Z WARNING ingest.gateway: sent 3 topic_kind=vitals'
    """

    def format(self, record: logging.LogRecord) -> str:
        line = f"{iso_utc(record.created)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docs for the fields).

    >>> rec = logging.LogRecord("ingest.gateway", logging.INFO, "f", 1, "up on %s", ("mqtt",), None)
    >>> rec.created, rec.partitions = 1764237900.0, 8
    >>> JsonFormatter().format(rec)
    '{"ts":"2025-11-27T10:05:00.000Z","level":"INFO","logger":"ingest.gateway","message":"up on mqtt","partitions":8}'
    """

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": iso_utc(record.created), "level": record.levelname, "logger": record.name,
                               "message": record.getMessage()}
        for k, v in _extras(record).items():
            doc[f"extra_{k}" if k in _CORE else k] = v
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Configure the root logger once: level from the argument or WEARWATCH_LOG_LEVEL (an unknown one
    raises :class:`~wearwatch.errors.ConfigError`), format from the argument or WEARWATCH_LOG_FORMAT
    (``text``/``json``; an unknown one is reported by :func:`wearwatch.config.load_settings`, here it
    falls back to text)."""
    lvl = (level or os.environ.get(f"{ENV_PREFIX}LOG_LEVEL") or "INFO").upper()
    if lvl not in LOG_LEVELS:
        raise ConfigError(f"{ENV_PREFIX}LOG_LEVEL: unknown log level {lvl.lower()!r} (use {', '.join(LOG_LEVELS)})")
    kind = (fmt or os.environ.get(f"{ENV_PREFIX}LOG_FORMAT") or "text").lower()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if kind == "json" else TextFormatter())
    logging.basicConfig(level=lvl, handlers=[handler])
    # third-party chatter stays at WARNING unless we debug
    for noisy in ("aiokafka", "kafka", "faust", "mode", "urllib3", "influxdb_client"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if lvl == "DEBUG" else logging.WARNING)
