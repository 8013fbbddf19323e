"""The stored form of patient states (streams.state_codec): golden states, old versions, renames, refusals."""

from __future__ import annotations

import base64
import gzip
import io
import json
import pickle
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest
import zstandard

from alerts.lifecycle import DEFAULT_POLICY, AlertBook, LifecyclePolicy
from detectors import PatientMonitor
from streams import state_codec
from streams.processing import BatchProcessor
from streams.state import PatientState
from streams.state_codec import (
    STATE_VERSION,
    TAGS,
    WRITTEN_BY_DEFAULT,
    StateType,
    decode_state,
    encode_state,
    registry,
    stored_version,
)
from tests._files import load_script
from wearwatch.config import load_settings
from wearwatch.errors import ConfigError, StateFormatError

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _module(name: str) -> Any:
    return load_script(FIXTURES / f"{name}.py", name)


MAKER = _module("make_state_golden")


def _golden(version: int) -> dict[str, Any]:
    with gzip.open(FIXTURES / f"patient_states_v{version}.json.gz", "rb") as f:
        doc: dict[str, Any] = json.loads(f.read())
    return doc


#: every stored version since the format was versioned: each keeps loading and continuing exactly
GOLDENS = {1: _golden(1), 2: _golden(2), 3: _golden(3)}
GOLDEN = GOLDENS[1]
CASES: dict[str, Any] = GOLDEN["cases"]
READ = list[tuple[str, int, float]]


def _readings(case: dict[str, Any]) -> READ:
    return [(s, t, v) for s, t, v in case["readings_after"]]


def _tree(blob: bytes) -> bytes:
    """The pickled tree of a stored state of version 1, 2 or 3."""
    if blob[2] == 3:
        return zstandard.ZstdDecompressor(dict_data=_dictionary()).decompress(blob[3:])
    return blob[3:] if blob[2] == 1 else zlib.decompress(blob[3:])


def _dictionary() -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict((Path(state_codec.__file__).parent / "state_v3.zdict").read_bytes())


def _tags(blob: bytes) -> set[str]:
    """The type tags in a stored state (read with a plain unpickler: the tree is builtins only)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, tuple) and len(node) == 2 and isinstance(node[0], str) and isinstance(node[1], dict):
            found.add(node[0])
        if isinstance(node, tuple | list):
            for x in node:
                walk(x)
        elif isinstance(node, dict):
            for x in node.values():
                walk(x)

    walk(pickle.loads(_tree(blob)))
    return found & set(TAGS)


# -- the golden states ----------------------------------------------------------------------------
@pytest.mark.parametrize("version", sorted(GOLDENS))
def test_golden_file_is_its_version_and_covers_every_stored_type(version: int) -> None:
    golden = GOLDENS[version]
    assert golden["state_version"] == version
    assert sorted(golden["cases"]) == ["device", "glucose-fall", "models", "simulated-brady", "simulated-hypo",
                                       "simulated-tachy", "sleeper"]
    blobs = [base64.b64decode(c["state"]) for c in golden["cases"].values()]
    assert {stored_version(b) for b in blobs} == {version}
    assert set().union(*(_tags(b) for b in blobs)) == set(TAGS)


def test_the_newest_golden_file_is_the_current_version() -> None:
    assert max(GOLDENS) == STATE_VERSION == 3


def test_versions_2_and_3_are_version_1_compressed() -> None:
    for name in CASES:
        v1, v2, v3 = (base64.b64decode(GOLDENS[v]["cases"][name]["state"]) for v in (1, 2, 3))
        assert _tree(v2) == _tree(v3) == v1[3:]
        # these states hold per-patient thresholds and nurses' notes, which the dictionary's simulated states
        # lack: 0.68-0.85 of version 2 here, ~0.4 for simulated states of other seeds (tools/state_dictionary.py)
        assert len(v2) < 0.5 * len(v1) and len(v3) < 0.9 * len(v2)
        st = decode_state(v1)
        assert [encode_state(st, v) for v in (1, 2)] == [v1, v2] and encode_state(st) == v3


def test_version_3_needs_exactly_its_dictionary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = encode_state(STATES["models"])
    ours = _dictionary().as_bytes()
    assert ours[:4] == b"\x37\xa4\x30\xec"  # a zstd dictionary: its magic number, then its id
    another = zstandard.ZstdCompressionDict(ours[:4] + (int.from_bytes(ours[4:8], "little") ^ 1).to_bytes(4, "little")
                                            + ours[8:])
    frame = zstandard.ZstdCompressor(level=1, dict_data=another).compress(_tree(blob))
    with pytest.raises(StateFormatError, match="version 3"):  # made with another dictionary: refused, not misread
        decode_state(b"WW\x03" + frame)
    other = tmp_path / "state_v3.zdict"
    other.write_bytes(_dictionary().as_bytes()[:-1] + b"\x00")
    monkeypatch.setattr(state_codec, "_DICTIONARY_V3", other)
    monkeypatch.setattr(state_codec, "_PER_THREAD", threading.local())
    state_codec._dictionary_v3.cache_clear()
    try:
        with pytest.raises(StateFormatError, match="is not the dictionary of stored states"):
            decode_state(blob)
        monkeypatch.setattr(state_codec, "_DICTIONARY_V3", tmp_path / "missing.zdict")
        state_codec._dictionary_v3.cache_clear()
        with pytest.raises(StateFormatError, match="cannot be read"):
            encode_state(STATES["models"])
        assert stored_version(encode_state(STATES["models"], 2)) == 2  # the other versions need no dictionary
    finally:
        state_codec._dictionary_v3.cache_clear()


@pytest.mark.parametrize(("version", "name"), [(v, n) for v in sorted(GOLDENS) for n in sorted(CASES)])
def test_golden_state_loads_and_continues_with_the_same_findings_alerts_and_minutes(version: int, name: str) -> None:
    case = GOLDENS[version]["cases"][name]
    st = decode_state(base64.b64decode(case["state"]))
    assert st.book.patient_id == name and st.book.ward == "ward-7" and st.positions
    got = MAKER.feed(st, _readings(case))
    assert got == {k: case[k] for k in ("findings", "events", "minutes", "duplicate", "late")}
    # the three re-sent readings are recognised by the restored bitmaps (a glucose reading 10 minutes
    # old is too late instead: readings every 5 minutes; the simulated devices send duplicates of their own)
    assert got["duplicate"] >= 2 and got["duplicate"] + got["late"] >= 3
    assert len(got["findings"]) > 0 and len(got["minutes"]) > 0


def test_golden_states_keep_what_nurses_did() -> None:
    st = decode_state(base64.b64decode(CASES["device"]["state"]))
    assert st.book.policy == LifecyclePolicy(renotify_high_ms=60_000, max_episodes=4)
    assert "glucose_high" in st.book.snoozes()
    hypo = decode_state(base64.b64decode(CASES["simulated-hypo"]["state"]))
    acked = [a for a in hypo.book.open_alerts() if a.acked_by == "nurse-a"]
    assert len(acked) == 1 and [n.text for n in acked[0].notes] == ["sensor checked"]


# -- round trip and determinism -------------------------------------------------------------------
def _states() -> dict[str, PatientState]:
    out = {name: MAKER.make_case(name)[0] for name in sorted(CASES)}
    out["fresh"] = PatientState(PatientMonitor(), AlertBook("fresh"))
    out["no-monitor"] = PatientState(monitor=None)
    return out


STATES = _states()


def _values(obj: Any, skip: int = -1) -> bytes:
    """An object's pickled state by value only (unmemoised: NaN equals NaN, sharing does not matter),
    without its argument ``skip``."""
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=5)
    p.fast = True
    p.dump([a for i, a in enumerate(obj.__reduce__()[1]) if i != skip])
    return buf.getvalue()


@pytest.mark.parametrize("name", sorted(STATES))
def test_round_trip_is_exact_and_deterministic(name: str) -> None:
    st = STATES[name]
    blob = encode_state(st)
    assert encode_state(st) == blob
    back = decode_state(blob)
    assert type(back) is PatientState
    assert encode_state(back) == blob
    assert back.buckets == st.buckets and back.positions == st.positions and back.newest_ms == st.newest_ms
    assert back.seen == st.seen
    if st.monitor is not None:
        assert back.monitor.config == st.monitor.config
        assert _values(back.monitor) == _values(st.monitor)  # every part, field for field
        assert back.book.policy == st.book.policy  # (its sets' order may differ: compared as sets)
        assert _values(back.book, skip=2) == _values(st.book, skip=2)


def test_round_trip_covers_every_stored_type() -> None:
    assert set().union(*(_tags(encode_state(st)) for st in STATES.values())) == set(TAGS)


def test_a_decoded_state_continues_exactly_like_the_original() -> None:
    st, after = MAKER.make_case("simulated-hypo")
    twin = decode_state(encode_state(st))
    assert MAKER.feed(twin, after) == MAKER.feed(st, after)


def test_stored_form_names_no_module_or_class() -> None:
    blob = encode_state(STATES["device"])
    for tree in (_tree(blob), encode_state(STATES["device"], 1)):
        for name in (b"streams.", b"detectors.", b"alerts.", b"PatientState", b"AlertBook", b"GlucoseDetector",
                     b"river"):
            assert name not in tree
        assert b"patient_state/1" in tree and b"glucose_detector/1" in tree


# -- a class renamed or moved ---------------------------------------------------------------------
def test_renamed_classes_still_load_through_their_tags() -> None:
    # a later version calls the alert book and the monitor differently (and elsewhere): the tags stay
    ledger = type("WardLedger", (AlertBook,), {"__slots__": (), "__module__": "alerts.ledger"})
    watcher = type("VitalsWatcher", (PatientMonitor,), {"__module__": "detectors.watcher"})
    old = TAGS["alert_book/1"], TAGS["patient_monitor/1"]
    tags = registry({
        "alert_book/1": StateType("alert_book/1", ledger, old[0].fields, old[0].build),
        "patient_monitor/1": StateType("patient_monitor/1", watcher, old[1].fields, old[1].build),
    })
    case = CASES["simulated-hypo"]
    st = decode_state(base64.b64decode(case["state"]), tags)
    assert type(st.book) is ledger and type(st.monitor) is watcher
    assert MAKER.feed(st, _readings(case))["events"] == case["events"]


# -- refusals -------------------------------------------------------------------------------------
CALLED: list[str] = []


def _side_effect(what: str) -> None:
    CALLED.append(what)


class _Payload:
    """Pickles as a call of :func:`_side_effect`: what a forged stored state would carry."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_side_effect, ("ran",))


def test_a_payload_naming_a_callable_is_refused_and_nothing_runs() -> None:
    CALLED.clear()
    forged = pickle.dumps(("patient_state/1", {"monitor": _Payload()}), protocol=5)
    with pytest.raises(StateFormatError, match=r"names .*_side_effect: not allowed"):
        decode_state(b"WW\x01" + forged)
    with pytest.raises(StateFormatError, match=r"version 0\) names .*_side_effect: not allowed"):
        decode_state(pickle.dumps(_Payload(), protocol=5))
    with pytest.raises(StateFormatError, match=r"names os\.system"):
        decode_state(b"\x80\x02cos\nsystem\n(S'true'\ntR.")
    assert CALLED == []


def test_unknown_tags_versions_and_damaged_bytes_are_refused() -> None:
    body = pickle.dumps(("patient_state/9", {}), protocol=5)
    with pytest.raises(StateFormatError, match="unknown type 'patient_state/9'"):
        decode_state(b"WW\x01" + body)
    with pytest.raises(StateFormatError, match="version 4; this worker reads 0 to 3"):
        decode_state(b"WW\x04" + body)
    with pytest.raises(StateFormatError, match="damaged or inflates"):
        decode_state(b"WW\x02" + zlib.compress(body)[:-3])
    with pytest.raises(StateFormatError, match="damaged or inflates"):  # a bomb: 32 MB of zeros in 32 KB
        decode_state(b"WW\x02" + zlib.compress(bytes(32 * 1024 * 1024), 9))
    v3 = zstandard.ZstdCompressor(level=1, dict_data=_dictionary())
    with pytest.raises(StateFormatError, match=r"version 3\) is damaged or inflates"):
        decode_state(b"WW\x03" + v3.compress(body)[:-3])
    with pytest.raises(StateFormatError, match=r"version 3\) is damaged or inflates"):  # a bomb, its size given
        decode_state(b"WW\x03" + v3.compress(bytes(32 * 1024 * 1024)))
    unsized = zstandard.ZstdCompressor(level=1, dict_data=_dictionary(), write_content_size=False)
    with pytest.raises(StateFormatError, match=r"version 3\) is damaged or inflates"):  # a frame without its size
        decode_state(b"WW\x03" + unsized.compress(body))
    blob = encode_state(STATES["sleeper"], 1)
    with pytest.raises(StateFormatError, match="cannot be read"):
        decode_state(blob[:-40])
    with pytest.raises(StateFormatError, match="damaged"):
        decode_state(encode_state(STATES["sleeper"])[:-40])
    with pytest.raises(StateFormatError, match="no known header"):
        decode_state(b"{}")
    with pytest.raises(StateFormatError, match="not a patient state"):
        decode_state(b"WW\x01" + pickle.dumps(("alert_book/1", {"patient_id": "p"}), protocol=5))


def test_a_state_holding_an_unregistered_object_is_not_written() -> None:
    st = PatientState(monitor=None)
    st.positions = {0: io.BytesIO()}  # type: ignore[dict-item]
    with pytest.raises(StateFormatError, match="BytesIO, which has no stored form"):
        encode_state(st)


# -- version 0: the plain pickle of earlier workers --------------------------------------------------
@pytest.mark.parametrize("name", ["models", "device"])  # "device": a book with its own lifecycle policy
def test_version_0_states_load_and_continue_exactly(name: str) -> None:
    st, after = MAKER.make_case(name)
    v0 = pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL)  # what earlier workers stored
    assert stored_version(v0) == 0
    migrated = decode_state(v0)
    assert stored_version(encode_state(migrated)) == STATE_VERSION
    assert stored_version(encode_state(migrated, WRITTEN_BY_DEFAULT)) == WRITTEN_BY_DEFAULT
    assert MAKER.feed(migrated, after) == MAKER.feed(st, after)


def test_states_pickled_by_older_detectors_load() -> None:
    with gzip.open(FIXTURES / "detector_states.pickle.gz", "rb") as f:
        old = pickle.load(f)["cases"]
    for case in old.values():
        st = decode_state(case["state"])
        assert isinstance(st.monitor, PatientMonitor) and st.book.policy is DEFAULT_POLICY
        assert decode_state(encode_state(st)).book.open_alerts() == st.book.open_alerts()


def test_the_worker_reads_version_0_and_writes_its_default_version() -> None:
    st, _after = MAKER.make_case("sleeper")
    stored = {"p1": pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL)}
    proc = BatchProcessor(lambda pid: PatientState(PatientMonitor(), AlertBook(pid)), stored.get, lambda: 0)
    loaded = proc.state_for("p1")
    proc.dirty.add("p1")
    (blob,) = proc.take_dirty().values()
    assert stored_version(blob) == WRITTEN_BY_DEFAULT == 2
    assert encode_state(loaded, 2) == encode_state(st, 2) == blob


def test_a_worker_told_to_writes_version_3_and_reads_it_back() -> None:
    # WEARWATCH_WORKER_STATE_VERSION=3, once every worker of a deployment reads it
    st, after = MAKER.make_case("simulated-tachy")
    stored: dict[str, bytes] = {}
    proc = BatchProcessor(lambda pid: PatientState(PatientMonitor(), AlertBook(pid)), stored.get, lambda: 0,
                          state_version=3)
    proc.cache["p1"] = st
    proc.dirty.add("p1")
    stored.update(proc.take_dirty())
    assert stored_version(stored["p1"]) == 3 and len(stored["p1"]) < len(encode_state(st, 2))
    successor = BatchProcessor(lambda pid: PatientState(PatientMonitor(), AlertBook(pid)), stored.get, lambda: 0)
    assert MAKER.feed(successor.state_for("p1"), after) == MAKER.feed(st, after)


def test_the_first_phase_of_an_upgrade_writes_what_earlier_workers_read() -> None:
    # WEARWATCH_WORKER_STATE_VERSION=0: states are written as the plain pickle earlier workers load
    st, after = MAKER.make_case("glucose-fall")
    proc = BatchProcessor(lambda pid: PatientState(PatientMonitor(), AlertBook(pid)), {}.get, lambda: 0,
                          state_version=0)
    proc.cache["p1"] = st
    proc.dirty.add("p1")
    (blob,) = proc.take_dirty().values()
    assert stored_version(blob) == 0
    earlier = pickle.loads(blob)  # how an earlier worker reads it
    assert MAKER.feed(earlier, after) == MAKER.feed(decode_state(blob), after)
    assert load_settings({}).worker_state_version == WRITTEN_BY_DEFAULT
    assert load_settings({"WEARWATCH_WORKER_STATE_VERSION": "3"}).worker_state_version == 3
    assert load_settings({"WEARWATCH_WORKER_STATE_VERSION": "0"}).worker_state_version == 0
    with pytest.raises(ConfigError, match="WEARWATCH_WORKER_STATE_VERSION"):
        load_settings({"WEARWATCH_WORKER_STATE_VERSION": "4"})
    with pytest.raises(StateFormatError, match="cannot write stored states of version 4"):
        encode_state(st, 4)


def test_every_attribute_of_a_state_has_a_stored_field() -> None:
    # an attribute added to the state, the monitor or the alert book (a new detector part, say) must
    # get a field in streams/state_codec.py, or a restored state would silently go without it
    st = STATES["models"]
    fields = {tag: set(TAGS[tag].fields(obj, lambda o: o)) for tag, obj in (
        ("patient_state/1", st), ("patient_monitor/1", st.monitor), ("alert_book/1", st.book))}
    attributes = {
        "patient_state/1": set(PatientState.__slots__) - {"_due_ms"},  # a cache, recomputed on first use
        "patient_monitor/1": set(PatientMonitor.__slots__),
        "alert_book/1": set(AlertBook.__slots__),
    }
    stored_as = {"_hr": "heart_rate", "_g_model": "glucose_model", "_snoozed": "snoozes", "_by_slot": "alerts",
                 "_last_ms": "last_ms", "_found_ms": "found_ms", "_retired_ids": "retired",
                 # a state's replay positions: one (partition, offset) pair, a dict only for further partitions
                 "_partition": "positions", "_offset": "positions", "_more": "positions", "_seen": "seen"}
    for tag, attrs in attributes.items():
        assert {stored_as.get(a, a.lstrip("_")) for a in attrs} == fields[tag], tag
