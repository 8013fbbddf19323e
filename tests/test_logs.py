"""Log formats: JSON lines for log pipelines, readable text for a terminal, both with ISO 8601 UTC times."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from wearwatch.config import load_settings
from wearwatch.errors import ConfigError
from wearwatch.logs import JsonFormatter, TextFormatter, iso_utc

ROOT = Path(__file__).resolve().parents[1]
ISO_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def _record(msg: str = "sent %d records", args: tuple[object, ...] = (3,), exc: bool = False,
            **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("ingest.gateway", logging.WARNING, __file__, 10, msg, args, exc_info)
    rec.created, rec.msecs = 1_795_773_600.0421, 42.1
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_iso_utc_has_milliseconds_and_z() -> None:
    assert iso_utc(1_795_773_600.0421) == "2026-11-27T10:00:00.042Z"
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1_795_773_600.9999) == "2026-11-27T10:00:00.999Z"  # never rounds up into the next second


def test_json_line_has_the_fields_and_the_extras() -> None:
    line = JsonFormatter().format(_record(partitions=8, topic_kind="vitals"))
    assert "\n" not in line
    doc = orjson.loads(line)
    assert doc == {"ts": "2026-11-27T10:00:00.042Z", "level": "WARNING", "logger": "ingest.gateway",
                   "message": "sent 3 records", "partitions": 8, "topic_kind": "vitals"}
    assert ISO_MS_Z.match(doc["ts"])


def test_json_exception_collisions_and_odd_values() -> None:
    doc = orjson.loads(JsonFormatter().format(_record(exc=True, level="custom", path=Path("/x"), n={1, 2})))
    assert doc["level"] == "WARNING" and doc["extra_level"] == "custom"  # an extra never hides a core field
    assert doc["path"] == "/x" and doc["n"] in ("{1, 2}", "{2, 1}")  # not JSON-native: str()
    assert doc["exc"].startswith("Traceback") and "ValueError: boom" in doc["exc"]
    assert "\n" not in JsonFormatter().format(_record(exc=True))  # the traceback is escaped inside one line


def test_text_line() -> None:
    assert TextFormatter().format(_record()) == "2026-11-27T10:00:00.042Z WARNING ingest.gateway: sent 3 records"
    assert TextFormatter().format(_record(partitions=8)).endswith("sent 3 records partitions=8")
    text = TextFormatter().format(_record(exc=True))
    assert text.splitlines()[0].endswith("sent 3 records") and text.rstrip().endswith("ValueError: boom")


def _run_logging(fmt: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEARWATCH_")}
    if fmt is not None:
        env["WEARWATCH_LOG_FORMAT"] = fmt
    code = ("import logging; from wearwatch.logs import setup_logging; setup_logging(); "
            "log = logging.getLogger('wearwatch.x'); log.info('hello %s', 'world', extra={'count': 2}); "
            "log.debug('not shown')\n"
            "try:\n    1/0\nexcept ZeroDivisionError:\n    log.exception('failed')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # logs go to stderr; stdout stays for a command's output
    return r.stderr


def test_setup_logging_json_from_the_environment() -> None:
    lines = _run_logging("json").splitlines()
    docs = [orjson.loads(line) for line in lines]  # every line is one JSON object
    assert len(docs) == 2
    assert {k: docs[0][k] for k in ("level", "logger", "message", "count")} == {
        "level": "INFO", "logger": "wearwatch.x", "message": "hello world", "count": 2}
    assert all(ISO_MS_Z.match(d["ts"]) for d in docs)
    assert docs[1]["message"] == "failed" and "ZeroDivisionError" in docs[1]["exc"]


def test_setup_logging_text_is_the_default() -> None:
    first = _run_logging(None).splitlines()[0]
    assert re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z INFO    wearwatch\.x: hello world count=2$", first)


def test_log_format_setting() -> None:
    assert load_settings({}).log_format == "text"
    assert load_settings({"WEARWATCH_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="WEARWATCH_LOG_FORMAT"):
        load_settings({"WEARWATCH_LOG_FORMAT": "xml"})
