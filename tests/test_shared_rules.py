"""One of each small rule (wearwatch.contract, wearwatch.influxdb): each rule tested once, every user agreeing.

Rules: patient id, time stamps (RFC 3339 / epoch ms), the mmol/L factor, priority order,
Flux string quoting, the InfluxDB client from the settings. A guard at the end fails
when a copy of one of them appears again in the packages.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from alerts.enrollment import Enrollment
from alerts.lifecycle import AlertBook
from detectors.base import Audience, Finding, Priority
from ingest.contract import parse_payload, validate_item
from ingest.fhir import observation_for, observation_to_reading
from streams.fhir_views import search
from tools.export import flux_minutes_query, parse_when
from tools.replay import parse_ts, read_csv
from wearwatch.config import load_settings
from wearwatch.contract.codes import LOINC_MAP
from wearwatch.contract.commands import parse_ack
from wearwatch.contract.ids import ID_RULE, is_patient_id, topic_segment
from wearwatch.contract.priority import PRIORITIES, priority_rank
from wearwatch.contract.times import TimestampError, format_rfc3339, parse_rfc3339, parse_timestamp
from wearwatch.contract.units import MMOL_TO_MGDL, to_canonical
from wearwatch.errors import ConfigError, InvalidCommand, InvalidReading
from wearwatch.influxdb import flux_string, influx_client

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z
AID = "al-7c35ac37f0732fad6862"


# ------------------------------------------------------------------------------------------------ patient id
IDS = {"p-0042": True, "ward:3B": True, "a.b_c-d:e": True, "x" * 64: True, "": False, "x" * 65: False,
       "p/1": False, "p 1": False, "p+1": False, "p#1": False, "p-1\n": False, "pé": False}


def _gateway_accepts(pid: str) -> bool:
    ok, _ = parse_payload("wearwatch/v1/vitals/acme/w", orjson.dumps(
        {"patient_id": pid, "signal": "steps", "value": 1, "unit": "steps", "ts": T0}), T0)
    return bool(ok)


def _fhir_accepts(pid: str) -> bool:
    try:
        observation_to_reading(observation_for(pid, "steps", 1.0, T0), "acme", "w", T0)
        return True
    except InvalidReading:
        return False


def _ack_accepts(pid: str) -> bool:
    try:
        parse_ack(f"wearwatch/v1/acks/3B/{pid}", orjson.dumps({"alert_id": AID, "by": "kim", "ts": T0}))
        return True
    except InvalidCommand:
        return False


def _enrollment_accepts(pid: str) -> bool:
    try:
        Enrollment.from_text(f"patient_id,ward\n{pid},3B\n")
        return True
    except ConfigError:
        return False


def _topic_accepts(pid: str) -> bool:
    try:
        topic_segment("patient_id", pid)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize(("pid", "expected"), IDS.items(), ids=[repr(k[:12]) for k in IDS])
def test_patient_id_rule_is_the_same_everywhere(pid: str, expected: bool) -> None:
    assert is_patient_id(pid) is expected
    assert _gateway_accepts(pid) is expected
    assert _topic_accepts(pid) is expected
    if "/" not in pid and "+" not in pid and "#" not in pid and "\n" not in pid and pid:
        assert _ack_accepts(pid) is expected  # (a topic with such characters is not even one topic)
    if "\n" not in pid and " " not in pid and pid:  # CSV trims those
        assert _enrollment_accepts(pid) is expected
    if "/" not in pid and pid:  # Patient/{id} reference syntax
        assert _fhir_accepts(pid) is expected
    assert ID_RULE == "1-64 characters of [A-Za-z0-9_.:-]"


# ------------------------------------------------------------------------------------------------ time stamps
@pytest.mark.parametrize(("text", "ms"), [
    ("2026-01-05T00:00:00Z", T0),
    ("2026-01-05t00:00:00z", T0),  # lowercase: RFC 3339 section 5.6 allows it; accepted everywhere
    ("2026-01-05T01:00:00+01:00", T0),  # offsets: the same instant in any zone
    ("2026-01-04T18:30:00-05:30", T0),
    ("2026-01-05T00:00:00.5Z", T0 + 500),  # fractions of 1-9 digits, kept to the millisecond (truncated)
    ("2026-01-05T00:00:00.123456789Z", T0 + 123),
    ("2026-01-05T00:00:00.9999Z", T0 + 999),
    ("2026-03-29T03:30:00+02:00", 1_774_747_800_000),  # the hour a European clock skips: offsets decide,
    ("2026-03-29T01:30:00+00:00", 1_774_747_800_000),  # so daylight saving plays no part
    ("2026-10-25T02:30:00+02:00", 1_792_888_200_000),  # the hour a European clock repeats: two instants,
    ("2026-10-25T02:30:00+01:00", 1_792_891_800_000),  # told apart by the offset
    ("2016-12-31T23:59:60Z", 1_483_228_800_000),  # a leap second counts as the next second (POSIX)
    ("2024-02-29T00:00:00Z", 1_709_164_800_000),  # a leap day
])
def test_rfc3339_accepted(text: str, ms: int) -> None:
    assert parse_rfc3339(text) == ms
    assert parse_timestamp(text) == ms


@pytest.mark.parametrize(("text", "why"), [
    ("2026-01-05T00:00:00", "no time zone offset"),
    ("2026-01-05 00:00:00Z", "not RFC 3339"),  # a space instead of T
    ("20260105T000000Z", "not RFC 3339"),  # ISO 8601 basic format
    ("2026-01-05T00:00Z", "not RFC 3339"),  # no seconds
    ("2026-01-05T00:00:00+0100", "not RFC 3339"),
    ("2026-01-05", "not RFC 3339"),
    ("2026-W01-1T00:00:00Z", "not RFC 3339"),
    ("2026-13-05T00:00:00Z", "out of range"),
    ("2026-01-32T00:00:00Z", "out of range"),
    ("2026-02-29T00:00:00Z", "out of range"),  # not a leap year
    ("2026-01-05T24:00:00Z", "out of range"),
    ("2026-01-05T00:60:00Z", "out of range"),
    ("2026-01-05T00:00:61Z", "out of range"),
    ("2026-01-05T00:00:00+24:00", "out of range"),
    ("2026-01-05T00:00:00.1234567890Z", "not RFC 3339"),  # 10 fraction digits
    ("2026-01-05T00:00:00Z" + " " * 50, "longer than 64"),
    ("yesterday", "not RFC 3339"),
])
def test_rfc3339_refused(text: str, why: str) -> None:
    with pytest.raises(TimestampError, match=why):
        parse_rfc3339(text)


@pytest.mark.parametrize(("raw", "result"), [
    (T0, T0), (T0 + 0.9, T0), (-1, -1), (10**15, 10**15), (True, None), (None, None), (float("nan"), None),
    (float("inf"), None), (10**15 + 1, None), ([T0], None),
])
def test_epoch_milliseconds(raw: Any, result: int | None) -> None:
    if result is None:
        with pytest.raises(TimestampError):
            parse_timestamp(raw)
    else:
        assert parse_timestamp(raw) == result


@pytest.mark.parametrize("text", ["2026-01-05t00:00:00z", "2026-01-05T01:00:00.000+01:00", "2026-01-05T00:00:00",
                                  "2026-13-05T00:00:00Z"])
def test_one_time_policy_for_devices_commands_and_tools(text: str) -> None:
    """The gateway, the nurse commands, replay and export accept and refuse the same strings."""
    try:
        expected: int | None = parse_rfc3339(text)
    except TimestampError:
        expected = None
    item = {"patient_id": "p1", "signal": "steps", "value": 1, "unit": "steps", "ts": text}
    try:
        device = validate_item(item, None)[3]
    except InvalidReading:
        device = None
    try:
        command = parse_ack("wearwatch/v1/acks/3B/p1", orjson.dumps({"alert_id": AID, "by": "kim", "ts": text})).ts_ms
    except InvalidCommand:
        command = None
    try:
        export = parse_when(text, 0)
    except ConfigError:
        export = None
    assert device == command == export == expected
    assert parse_ts(text) == text  # replay hands the text to the same contract check


def test_format_rfc3339_round_trips() -> None:
    for ms in (0, T0, T0 + 1, -1, 1_483_228_800_999):
        assert parse_rfc3339(format_rfc3339(ms)) == ms
    assert format_rfc3339(T0 + 7) == "2026-01-05T00:00:00.007Z"


# ------------------------------------------------------------------------------------------------ units
def test_one_mmol_factor_everywhere(tmp_path: Path) -> None:
    assert MMOL_TO_MGDL == 18.016  # molar mass of glucose 180.16 g/mol / 10
    want = 5.0 * MMOL_TO_MGDL
    ok, _ = parse_payload("wearwatch/v1/vitals/acme/w", orjson.dumps(
        {"patient_id": "p1", "signal": "glucose", "value": 5.0, "unit": "mmol/L", "ts": T0}), T0)
    obs = observation_for("p1", "glucose", 5.0, T0)
    obs["code"]["coding"][0]["code"] = "15074-8"
    obs["valueQuantity"].update(unit="mmol/L", code="mmol/L")
    fhir = observation_to_reading(obs, "acme", "w", T0)
    csv = tmp_path / "in.csv"
    csv.write_text("ts,patient_id,signal,value,unit\n2026-01-05T00:00:00Z,p1,glucose,5.0,mmol/L\n")
    (row,) = list(read_csv(str(csv)))
    assert ok[0].value == fhir.value == row[3] == to_canonical(5.0, "mmol/L") == want
    assert {m.factor for m in LOINC_MAP.values() if m.ucum == ("mmol/L",)} == {MMOL_TO_MGDL}


# ------------------------------------------------------------------------------------------------ priority
def _finding(kind: str, prio: Priority, onset: int) -> Finding:
    return Finding(kind, "glucose", prio, Audience.CLINICAL, ts_ms=onset, onset_ms=onset, source="rule",
                   message="m")


def test_one_priority_order() -> None:
    assert PRIORITIES == ("high", "medium", "low")
    assert tuple(p.value for p in Priority) == PRIORITIES  # the detectors' enum names the same levels
    assert sorted(["low", "high", "medium", "urgent"], key=priority_rank) == ["high", "medium", "low", "urgent"]
    book = AlertBook("p1", ward="3B")
    events = []
    for i, (kind, prio) in enumerate([("glucose_low", Priority.LOW), ("glucose_urgent_low", Priority.HIGH),
                                      ("glucose_high", Priority.MEDIUM)]):
        events += book.on_finding(_finding(kind, prio, T0 + i), T0 + i)
    assert [e.priority for e in search(book.open_alerts(), None, None)] == ["high", "medium", "low"]


# ------------------------------------------------------------------------------------------------ InfluxDB
def test_flux_strings_cannot_escape() -> None:
    hostile = 'x") |> drop() // \\ ${secret}\n'
    lit = flux_string(hostile)
    assert lit == '"x\\") |> drop() // \\\\ \\${secret}\\n"'
    q = flux_minutes_query('b"ucket', "ab12", 0, 60_000)
    assert 'from(bucket: "b\\"ucket")' in q and 'r.patient == "ab12"' in q


def test_influx_client_from_settings() -> None:
    s = load_settings({"WEARWATCH_INFLUX_URL": "http://127.0.0.1:1", "WEARWATCH_INFLUX_ORG": "org-x",
                       "WEARWATCH_INFLUX_TOKEN": "u:p"})
    with influx_client(s, timeout_ms=1234) as c:
        assert (c.url, c.org, c.token) == ("http://127.0.0.1:1", "org-x", "u:p")
        assert c.api_client.configuration.timeout == 1234


# ------------------------------------------------------------------------------------------------ no copies
#: a copy of a rule, as code (not prose) - (what, pattern, where the one definition lives)
COPIES = [
    ("patient-id pattern", re.compile(r"re\.compile\(r?[\"']\^?\[A-Za-z0-9_\.:"), "wearwatch/contract/ids.py"),
    ("mmol factor", re.compile(r"=\s*18\.016\b"), "wearwatch/contract/units.py"),
    ("time-stamp parser", re.compile(r"\.fromisoformat\("), "wearwatch/contract/times.py"),
    ("InfluxDB client", re.compile(r"\bInfluxDBClient\("), "wearwatch/influxdb.py"),
    ("priority order", re.compile(r"[\"']high[\"']:\s*[0-2]\b|[\"']low[\"']:\s*0\b"), "wearwatch/contract/priority.py"),
    ("Flux quoting", re.compile(r"def _?flux_str"), "wearwatch/influxdb.py"),
]
#: known exceptions, each with its reason
ALLOWED = {
    # NAB's own time stamps are naive local times ("2014-04-10 07:15:00"), not RFC 3339
    ("time-stamp parser", "tools/nab.py"),
}


def test_no_copies_of_the_rules() -> None:
    found = []
    for pkg in ("wearwatch", "ingest", "alerts", "streams", "detectors", "tools", "console"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            text = path.read_text(encoding="utf-8")
            for what, pattern, home in COPIES:
                if rel != home and (what, rel) not in ALLOWED and pattern.search(text):
                    found.append(f"{rel}: a copy of the {what} (the rule lives in {home})")
    assert found == []
