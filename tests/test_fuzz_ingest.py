"""Property-based fuzzing of the gateway's parser and the worker's decoder.

≥ 100,000 generated payloads in all (``WEARWATCH_FUZZ_EXAMPLES`` scales it):
wrong types, missing fields, NaN/Infinity, huge numbers, wrong units,
timestamps far in the future or past, oversized and non-UTF-8 payloads, arrays
of mixed validity. Properties: nothing raises; every reading of a payload is
either accepted (and then the worker's decoder accepts it unchanged) or
dead-lettered with a reason; the counts add up exactly.
"""

from __future__ import annotations

import math
import os
import random
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.contract import decode_reading, parse_payload
from wearwatch.contract.units import SIGNAL_UNITS

TOPIC = "wearwatch/v1/vitals/acme/dev-1"
NOW = 1_780_000_000_000
EXAMPLES = int(os.environ.get("WEARWATCH_FUZZ_EXAMPLES", "2500"))
#: payloads of the seeded mutation fuzzer (cheap per payload, so it carries the volume)
MUTATIONS = int(os.environ.get("WEARWATCH_FUZZ_MUTATIONS", "100000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
)
any_json = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                          max_size=4), max_leaves=12)
timestamps = st.one_of(
    st.integers(min_value=NOW - 8 * 86_400_000, max_value=NOW + 600_000),  # around the edges of the window
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.datetimes(timezones=st.timezones() | st.none()).map(lambda d: d.isoformat()),
    st.text(max_size=40), st.none(), st.booleans(),
)
values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(2**70), max_value=2**70),
                   st.booleans(), st.text(max_size=5), st.none())


@st.composite
def readings(draw: st.DrawFn) -> dict[str, Any]:
    signal = draw(st.sampled_from([*SIGNAL_UNITS, "spo2", ""]))
    units = sorted(SIGNAL_UNITS.get(signal, {"bpm"}))
    r: dict[str, Any] = {
        "patient_id": draw(st.one_of(st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True), any_json)),
        "signal": signal,
        "value": draw(values),
        "unit": draw(st.sampled_from([*units, "mmol/L", "bpm", "kg"])),
        "ts": draw(timestamps),
    }
    if draw(st.booleans()):
        r["seq"] = draw(st.one_of(st.integers(min_value=-5, max_value=2**64), json_scalars))
    for key in draw(st.lists(st.sampled_from(list(r)), max_size=2)):
        r.pop(key, None)  # missing fields
    return r


def check(payload: bytes) -> tuple[int, int]:
    ok, bad = parse_payload(TOPIC, payload, NOW)
    for r in ok:
        assert math.isfinite(r.value)
        assert decode_reading(r.to_json()) == r  # what the gateway accepts, the worker accepts
    for d in bad:
        assert d.reason and d.detail
    return len(ok), len(bad)


@FUZZ
@given(st.lists(readings(), min_size=1, max_size=8))
def test_arrays_of_mixed_validity_split_exactly(items: list[dict[str, Any]]) -> None:
    n_ok, n_bad = check(orjson.dumps(items, option=orjson.OPT_NON_STR_KEYS) if _jsonable(items) else b"[")
    assert n_ok + n_bad == len(items) or (n_ok == 0 and n_bad == 1)


@FUZZ
@given(readings())
def test_single_readings(item: dict[str, Any]) -> None:
    payload = orjson.dumps(item) if _jsonable(item) else b"{"
    n_ok, n_bad = check(payload)
    assert (n_ok, n_bad) in {(1, 0), (0, 1)}


@FUZZ
@given(st.one_of(st.binary(max_size=300), any_json.map(lambda v: orjson.dumps(v) if _jsonable(v) else b"?"),
                 st.integers(min_value=1, max_value=3).map(lambda n: b"[" + b" " * (256 * 1024 + n))))
def test_arbitrary_bytes_never_crash(payload: bytes) -> None:
    n_ok, n_bad = check(payload)
    assert n_bad >= 1 or n_ok >= 1


@FUZZ
@given(st.one_of(st.binary(max_size=200), any_json.map(lambda v: orjson.dumps(v) if _jsonable(v) else b"?")))
def test_worker_decoder_never_crashes_unexpectedly(data: bytes) -> None:
    from wearwatch.errors import InvalidReading

    try:
        decode_reading(data)
    except InvalidReading as exc:
        assert exc.reason == "bad_record"


def mutated_payload(rng: random.Random) -> bytes:
    """One payload from a valid batch with random mutations (the seeded, fast fuzzer)."""
    base = {"patient_id": "p-1", "signal": "glucose", "value": 5.5, "unit": "mmol/L", "ts": NOW - 60_000, "seq": 1}
    items: list[Any] = []
    for _ in range(rng.randint(1, 6)):
        r: dict[str, Any] = dict(base)
        for _ in range(rng.randint(0, 3)):
            key = rng.choice(["patient_id", "signal", "value", "unit", "ts", "seq", "extra"])
            r[key] = rng.choice(POOL)
            if rng.random() < 0.15:
                r.pop(key, None)
        items.append(r if rng.random() > 0.05 else rng.choice(POOL))
    doc: Any = items if rng.random() < 0.7 else items[0]
    raw = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    roll = rng.random()
    if roll < 0.05:  # byte-level damage: truncation, bit flips, invalid UTF-8
        cut = rng.randint(0, len(raw))
        raw = raw[:cut] + bytes([rng.randint(0, 255)]) + raw[cut + 1:]
    elif roll < 0.07:
        raw = raw.replace(b"5.5", rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"0x10"]))
    elif roll < 0.08:
        raw = b"\xff\xfe" + raw
    return raw


POOL: list[Any] = [
    None, True, False, 0, -1, 1, 2**63 - 1, -(2**63), 1.5e308, -0.0, 1e-320, "", " ", "72", "NaN",
    "heart_rate", "glucose", "steps", "spo2", "bpm", "mg/dL", "mmol/L", "steps", "kg", "BPM",
    NOW, NOW + 86_400_000, NOW - 30 * 86_400_000, (NOW - 60_000) // 1000, "2026-05-28T20:26:39Z",
    "2026-05-28T20:26:39", "2126-01-01T00:00:00+00:00", "1970-01-01T00:00:00Z", "not a time", "p" * 65,
    "p-2", "pat\u00efent", "a/b", [], {}, [1, 2], {"a": 1}, 40, 400.5, 1500, 70, -5, 12345678901234,
]


def test_seeded_mutation_fuzzer_accounts_for_every_reading() -> None:
    rng = random.Random(20261127)
    totals = {"payloads": 0, "accepted": 0, "dead": 0}
    for _ in range(MUTATIONS):
        payload = mutated_payload(rng)
        ok, bad = parse_payload(TOPIC, payload, NOW)
        for r in ok:
            assert decode_reading(r.to_json()) == r
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, list) and doc:
            assert len(ok) + len(bad) == len(doc) or (ok == [] and len(bad) == 1)
        else:
            assert len(ok) + len(bad) == 1
        totals["payloads"] += 1
        totals["accepted"] += len(ok)
        totals["dead"] += len(bad)
    assert totals["payloads"] == MUTATIONS
    # the mutations must exercise both outcomes substantially, or the fuzzer tests nothing
    assert totals["accepted"] > MUTATIONS // 10 and totals["dead"] > MUTATIONS // 10


def _jsonable(v: Any) -> bool:
    try:
        orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)
        return True
    except TypeError:
        return False  # e.g. integers beyond 64 bits: not representable, send broken JSON instead
