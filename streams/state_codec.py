"""The stored form of a patient's state: versioned, with stable type tags and named fields.

The worker keeps each patient's :class:`~streams.state.PatientState` in its table,
whose changelog outlives every deploy. What is stored must therefore not depend on
where a class lives or what it is called, and loading it must not run anything the
stored bytes name. This module defines that form:

* every object of a state is stored as ``(tag, {field: value})``: the tag is stable
  (``"patient_state/1"``, ``"glucose_detector/1"``; see :data:`TAGS`) and maps to the
  current class through a registry, so a class can be renamed or moved without
  touching stored states; the fields are named, and a field the stored form lacks
  gets the default a new object has (a field added later loads from older states);
* a detector part's own state is its ``dump_state()`` (builtins only, the detectors'
  own compatibility contract: ``detectors/test_state_compat.py``);
* the tree holds builtins only (dict, tuple, list, str, int, float, bool, None,
  bytes) and is serialised with pickle's C implementation, unmemoised (equal states
  give equal bytes), behind the header ``b"WW" + version``. It is loaded with an
  unpickler whose ``find_class`` refuses every name: the stored bytes cannot call
  anything. A tag outside the registry is refused too.

**Version 3** is version 1's pickled tree compressed with zstd (level :data:`ZSTD_LEVEL`)
against a fixed dictionary, ``streams/state_v3.zdict`` (made by :mod:`tools.state_dictionary`
from simulated patients' states; its SHA-256 is checked when it is loaded). The dictionary
holds what every state repeats (type tags, field names, the shapes of the windows), so a
state of ~3 KB stores in ~0.4 KB, compressed in ~5 µs and opened in ~2 µs. A state is
written to the changelog every time it is stored, and with 100,000 patients compressing
was the biggest part of writing states: zlib took ~50 µs a state, for ~1.1 KB.

**Version 2** is the same tree compressed with zlib (level 1): a third of the bytes of
version 1, for ~50 µs more per encode and ~14 µs per decode. Versions 1 and 2 are still
read, and written on request (the first phase of an upgrade from workers that do not read
version 3 yet). A stored state inflates to at most :data:`MAX_TREE_BYTES`.

**Version 0** is what the worker stored before this format: a plain pickle of the
state. :func:`decode_state` still loads it (a rolling upgrade reads the old workers'
states; they are written in the current version on their next change), through an
unpickler that allows exactly the three restore functions those pickles name
(``streams.state._restore_state``, ``detectors.monitor._restore_monitor``,
``alerts.lifecycle._restore_book``), mapped to the current code, and nothing else.

>>> from detectors import PatientMonitor
>>> from alerts.lifecycle import AlertBook
>>> from streams.state import PatientState
>>> st = PatientState(PatientMonitor(), AlertBook("p1"))
>>> blob = encode_state(st)
>>> blob[:3] == b"WW" + bytes([STATE_VERSION])
True
>>> encode_state(decode_state(blob)) == blob
True
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import pickle
import sys
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from alerts.lifecycle import DEFAULT_POLICY, AlertBook, LifecyclePolicy, _Alert, _restore_book
from detectors.activity import ActivityTracker
from detectors.episodes import config_diff, config_from_diff
from detectors.glucose import GlucoseDetector
from detectors.heart_rate import HeartRateDetector
from detectors.models import GlucoseVariabilityModel, RestingHeartRateModel
from detectors.monitor import PatientMonitor, _restore_monitor
from detectors.quality import DeviceQuality
from streams.state import PatientState, _restore_state
from wearwatch.errors import StateFormatError

__all__ = [
    "LEGACY_GLOBALS",
    "MAX_TREE_BYTES",
    "STATE_VERSION",
    "TAGS",
    "WRITTEN_BY_DEFAULT",
    "WRITTEN_VERSIONS",
    "ZSTD_LEVEL",
    "StateType",
    "decode_state",
    "encode_state",
    "registry",
    "stored_version",
]

#: The newest version, what :func:`encode_state` writes unless told otherwise. 0 is the plain pickle of earlier
#: workers, 1 the uncompressed tree, 2 the tree compressed with zlib (all read, and written on request).
STATE_VERSION = 3
#: The version the worker writes unless ``WEARWATCH_WORKER_STATE_VERSION`` says otherwise. Version 3 is new:
#: this release reads it everywhere and writes it on request, so that switching to it later needs no first
#: phase (a worker that cannot read it is gone by then); and at 100,000 patients the worker writing it did
#: not yet process faster than with version 2 on the stack, although each state costs less (bench/README.md).
WRITTEN_BY_DEFAULT = 2
#: versions :func:`encode_state` writes: the current one and, for the first phase of an upgrade, older ones
WRITTEN_VERSIONS = (0, 1, 2, 3)
_HEADER = b"WW"
_PICKLE_PROTOCOL = 5
_ZLIB_LEVEL = 1
#: zstd's level for version 3: its fastest (the dictionary, not the level, makes the states small)
ZSTD_LEVEL = 1
#: version 3's dictionary: part of the format, read with exactly these bytes (never to be replaced; a new
#: dictionary is a new version)
_DICTIONARY_V3 = Path(__file__).with_name("state_v3.zdict")
_DICTIONARY_V3_SHA256 = "25340009df4e02b1c66a0000d8bcb548f45b7a886f840a428d0718467b759b5a"
#: the most bytes a compressed state (version 2 or 3) inflates to (a warm state's tree is ~3-5 KB)
MAX_TREE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class StateType:
    """How one class is stored: its stable ``tag``, its named ``fields`` and how to rebuild it.

    ``fields(obj, encode)`` gives the object's fields as builtins, those holding another
    stored object passed through ``encode``; ``build(cls, fields, decode)`` rebuilds it, those
    fields passed through ``decode``, a field absent from ``fields`` taking its default.
    """

    tag: str
    cls: type[Any]
    fields: Callable[[Any, Callable[[Any], Any]], dict[str, Any]]
    build: Callable[[type[Any], dict[str, Any], Callable[[Any], Any]], Any]


Encode = Callable[[Any], Any]
Decode = Callable[[Any], Any]


# -- the state's types ------------------------------------------------------------------------
# PatientState: its own fields; the seen-seconds bitmaps as (newest_s, bits) pairs.
def _state_fields(st: PatientState, enc: Encode) -> dict[str, Any]:
    return {
        "monitor": enc(st.monitor),
        "book": enc(st.book),
        "seen": st.seen,
        "buckets": st.buckets,
        "newest_ms": st.newest_ms,
        "positions": st.positions,
    }


def _state_build(cls: type[Any], f: dict[str, Any], dec: Decode) -> PatientState:
    st: PatientState = object.__new__(cls)
    PatientState.__init__(st, dec(f.get("monitor")), dec(f.get("book")))
    st.seen = {signal: (s[0], s[1]) for signal, s in f.get("seen", {}).items()}
    st.buckets = f.get("buckets", {})
    st.newest_ms = f.get("newest_ms", 0)
    st.positions = f.get("positions", {})
    return st  # its cache of the next minute to close stays unset: recomputed on first use


# PatientMonitor: its config's differences from the defaults (stored once: the parts share the
# config), and each part (None: not created yet) as its tag and its own dump_state.
_PARTS: dict[str, str] = {
    # field name -> attribute of the monitor
    "quality": "_quality",
    "heart_rate": "_hr",
    "glucose": "_glucose",
    "activity": "_activity",
    "hr_model": "_hr_model",
    "glucose_model": "_g_model",
}


def _monitor_fields(m: PatientMonitor, enc: Encode) -> dict[str, Any]:
    out: dict[str, Any] = {"config": config_diff(m.config)}
    for name, attr in _PARTS.items():
        out[name] = enc(getattr(m, attr))
    return out


def _monitor_build(cls: type[Any], f: dict[str, Any], dec: Decode) -> PatientMonitor:
    cfg = config_from_diff(f.get("config", {}))
    m: PatientMonitor = object.__new__(cls)
    PatientMonitor.__init__(m, cfg)
    for name, attr in _PARTS.items():
        part = dec(f.get(name))
        if part is not None:
            part_cls, state = part
            part = part_cls.__new__(part_cls)
            part.load_state(cfg, state)
        setattr(m, attr, part)
    return m


# A detector part: its dump_state (builtins only, without the config: the monitor holds it);
# decoded to (class, state) for its monitor to rebuild with the monitor's config.
def _part_fields(part: Any, enc: Encode) -> dict[str, Any]:
    return {"state": part.dump_state()}


def _part_build(cls: type[Any], f: dict[str, Any], dec: Decode) -> tuple[type[Any], Any]:
    return (cls, f["state"])


# AlertBook: named fields; each alert as its dump_state (its findings as plain tuples).
def _book_fields(b: AlertBook, enc: Encode) -> dict[str, Any]:
    policy = b.policy
    return {
        "patient_id": b.patient_id,
        "ward": b.ward,
        "policy": None if policy is DEFAULT_POLICY or policy == DEFAULT_POLICY else enc(policy),
        "alerts": {slot: a.dump_state() for slot, a in b._alerts.items()},
        "snoozes": b._snoozes,
        "last_ms": b._last_ms,
        "found_ms": b._found_ms,
        "retired": b._retired,
    }


def _book_build(cls: type[Any], f: dict[str, Any], dec: Decode) -> AlertBook:
    b: AlertBook = object.__new__(cls)
    # the patient id and ward interned: one string each however many states are loaded (the worker's structures
    # hold the patient's id interned too; a ward is shared by its patients), not ~50-60 B more in every state
    ward = f.get("ward")
    AlertBook.__init__(b, sys.intern(f["patient_id"]), sys.intern(ward) if isinstance(ward, str) else ward,
                       dec(f.get("policy")))
    b._alerts = {slot: _Alert.from_state(a) for slot, a in f.get("alerts", {}).items()}
    b._snoozes = f.get("snoozes", {})
    b._last_ms = f.get("last_ms", 0)
    b._found_ms = f.get("found_ms", 0)
    b._retired = f.get("retired", [])
    return b


# LifecyclePolicy (stored only when not the default): its dataclass fields, sets as sorted
# tuples (a frozenset's order varies between processes; the stored bytes must not).
def _policy_fields(p: LifecyclePolicy, enc: Encode) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fld in dataclasses.fields(p):
        v = getattr(p, fld.name)
        out[fld.name] = tuple(sorted(v)) if isinstance(v, frozenset) else v
    return out


def _policy_build(cls: type[Any], f: dict[str, Any], dec: Decode) -> LifecyclePolicy:
    known = {fld.name for fld in dataclasses.fields(LifecyclePolicy)}
    kwargs = {k: frozenset(v) if isinstance(getattr(DEFAULT_POLICY, k), frozenset) else v
              for k, v in f.items() if k in known}
    policy: LifecyclePolicy = cls(**kwargs)
    return policy


#: Stable tag -> how the current class is stored. A tag never changes meaning: a new layout of a
#: type gets a new tag (``.../2``) and the old one stays readable.
TAGS: dict[str, StateType] = {
    t.tag: t
    for t in (
        StateType("patient_state/1", PatientState, _state_fields, _state_build),
        StateType("patient_monitor/1", PatientMonitor, _monitor_fields, _monitor_build),
        StateType("device_quality/1", DeviceQuality, _part_fields, _part_build),
        StateType("heart_rate_detector/1", HeartRateDetector, _part_fields, _part_build),
        StateType("glucose_detector/1", GlucoseDetector, _part_fields, _part_build),
        StateType("activity_tracker/1", ActivityTracker, _part_fields, _part_build),
        StateType("resting_heart_rate_model/1", RestingHeartRateModel, _part_fields, _part_build),
        StateType("glucose_variability_model/1", GlucoseVariabilityModel, _part_fields, _part_build),
        StateType("alert_book/1", AlertBook, _book_fields, _book_build),
        StateType("lifecycle_policy/1", LifecyclePolicy, _policy_fields, _policy_build),
    )
}


def registry(overrides: Mapping[str, StateType] | None = None) -> dict[str, StateType]:
    """The tag registry, with ``overrides`` (tag -> type) replacing entries (a class renamed or moved)."""
    out = dict(TAGS)
    if overrides:
        out.update(overrides)
    return out


_BY_CLASS: dict[type, StateType] = {t.cls: t for t in TAGS.values()}


def _encoder(by_class: Mapping[type, StateType]) -> Encode:
    def enc(obj: Any) -> Any:
        """A stored object as ``(tag, {field: value})`` (None stays None)."""
        if obj is None:
            return None
        t = by_class.get(type(obj))
        if t is None:
            raise StateFormatError(f"a patient state holds a {type(obj).__name__}, which has no stored form")
        return (t.tag, t.fields(obj, enc))
    return enc


def _decoder(tags: Mapping[str, StateType]) -> Decode:
    def dec(node: Any) -> Any:
        """Inverse of the encoder: ``(tag, {field: value})`` -> the tag's current class."""
        if node is None:
            return None
        if not (isinstance(node, tuple) and len(node) == 2 and isinstance(node[1], dict)):
            raise StateFormatError(f"stored state has a {type(node).__name__} where an object is expected")
        tag, fields = node
        t = tags.get(tag)
        if t is None:
            raise StateFormatError(f"stored state names the unknown type {tag!r}: written by a newer version?")
        return t.build(t.cls, fields, dec)
    return dec


_ENCODE = _encoder(_BY_CLASS)
_DECODE = _decoder(TAGS)


class _BuiltinsOnly(pickle.Pickler):
    """Pickles builtins only: anything pickle would store by name is refused when writing already."""

    def reducer_override(self, obj: Any) -> Any:
        raise StateFormatError(f"a patient state holds a {type(obj).__name__}, which has no stored form")


@functools.cache
def _dictionary_v3() -> zstandard.ZstdCompressionDict:
    """Version 3's dictionary, loaded once and checked against its SHA-256."""
    try:
        data = _DICTIONARY_V3.read_bytes()
    except OSError as exc:
        raise StateFormatError(f"the dictionary of stored states (version 3) cannot be read: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != _DICTIONARY_V3_SHA256:
        raise StateFormatError(f"{_DICTIONARY_V3.name} is not the dictionary of stored states (version 3): "
                               "states written with it could not be read")
    return zstandard.ZstdCompressionDict(data)


_PER_THREAD = threading.local()


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    """A compressor and a decompressor with version 3's dictionary, made once per thread (neither may be
    used by two threads at once)."""
    pair: tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor] | None = getattr(_PER_THREAD, "pair", None)
    if pair is None:
        zd = _dictionary_v3()
        # the frame names the dictionary (a frame made with another one is refused, not misread) and its
        # size (checked against the limit before anything is inflated); no checksum: the changelog's
        # records have their own
        pair = _PER_THREAD.pair = (
            zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=zd, write_checksum=False, write_content_size=True,
                                     write_dict_id=True),
            zstandard.ZstdDecompressor(dict_data=zd),
        )
    return pair


def encode_state(st: PatientState, version: int = STATE_VERSION) -> bytes:
    """The stored form of ``st`` in ``version`` (default the current :data:`STATE_VERSION`: equal states
    give equal bytes). Version 0 is what earlier workers read: the first phase of an upgrade writes it."""
    if version == 0:
        return pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL)
    if version not in WRITTEN_VERSIONS:
        raise StateFormatError(f"cannot write stored states of version {version}; this worker writes "
                               f"{', '.join(map(str, WRITTEN_VERSIONS))}")
    tree = _ENCODE(st)
    buf = io.BytesIO()
    p = _BuiltinsOnly(buf, protocol=_PICKLE_PROTOCOL)
    p.fast = True  # no memo: the bytes depend on the values only, not on which objects are shared
    p.dump(tree)
    body = buf.getvalue()
    if version == 3:
        body = _zstd()[0].compress(body)
    elif version == 2:
        body = zlib.compress(body, _ZLIB_LEVEL)
    return _HEADER + bytes([version]) + body


class _NoGlobals(pickle.Unpickler):
    """Loads builtins only: any name the bytes give (a class, a function) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise StateFormatError(f"stored state names {module}.{name}: not allowed in a stored state")


#: (module, name) a version-0 state may name -> the current function that restores it
LEGACY_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("streams.state", "_restore_state"): _restore_state,
    ("detectors.monitor", "_restore_monitor"): _restore_monitor,
    ("alerts.lifecycle", "_restore_book"): _restore_book,
    # a book with its own policy (the default is not stored)
    ("alerts.lifecycle", "LifecyclePolicy"): LifecyclePolicy,
}


class _Legacy(pickle.Unpickler):
    """Loads a version-0 state: only the names of :data:`LEGACY_GLOBALS`, mapped to the current code."""

    def find_class(self, module: str, name: str) -> Any:
        hit = LEGACY_GLOBALS.get((module, name))
        if hit is None:
            raise StateFormatError(f"stored state (version 0) names {module}.{name}: not allowed in a stored state")
        return hit


def stored_version(blob: bytes) -> int:
    """The format version of a stored state (0: the plain pickle of earlier workers)."""
    if blob[:2] == _HEADER and len(blob) > 2:
        return blob[2]
    if blob[:1] == b"\x80":
        return 0
    raise StateFormatError("stored state has no known header")


def _inflate(data: bytes) -> bytes:
    """A version-2 body inflated: at most :data:`MAX_TREE_BYTES`, and all of it."""
    z = zlib.decompressobj()
    out = z.decompress(data, MAX_TREE_BYTES)
    if z.unconsumed_tail or not z.eof:
        raise StateFormatError("stored state (version 2) is damaged or inflates beyond its limit")
    return out


def _unzstd(data: bytes) -> bytes:
    """A version-3 body decompressed: its frame must give its size, at most :data:`MAX_TREE_BYTES`."""
    damaged = "stored state (version 3) is damaged or inflates beyond its limit"
    try:
        size = zstandard.frame_content_size(data)
        if not 0 <= size <= MAX_TREE_BYTES:
            raise StateFormatError(damaged)
        out = _zstd()[1].decompress(data, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise StateFormatError(f"{damaged}: {exc}") from exc
    if len(out) != size:
        raise StateFormatError(damaged)
    return out


def decode_state(blob: bytes, tags: Mapping[str, StateType] | None = None) -> PatientState:
    """The :class:`PatientState` stored as ``blob`` (any version this code reads).

    ``tags`` replaces the registry (see :func:`registry`). Raises
    :class:`~wearwatch.errors.StateFormatError` for a version this code does not know (written by a
    newer worker), a name or a tag outside the registry, or bytes that are not a stored state.
    """
    version = stored_version(blob)
    try:
        if version == 0:
            obj = _Legacy(io.BytesIO(blob)).load()
        elif version in (1, 2, 3):
            body = blob[3:] if version == 1 else _inflate(blob[3:]) if version == 2 else _unzstd(blob[3:])
            dec = _DECODE if tags is None else _decoder(tags)
            obj = dec(_NoGlobals(io.BytesIO(body)).load())
        else:
            raise StateFormatError(f"stored state has version {version}; this worker reads 0 to {STATE_VERSION}")
    except StateFormatError:
        raise
    except Exception as exc:
        raise StateFormatError(f"stored state (version {version}) cannot be read: {type(exc).__name__}") from exc
    if not isinstance(obj, PatientState):
        raise StateFormatError(f"stored state holds a {type(obj).__name__}, not a patient state")
    return obj
