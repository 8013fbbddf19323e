"""Which ward each patient belongs to, and their per-patient detector overrides.

The enrollment is a CSV file, loaded once at start (path from the
``WEARWATCH_ENROLLMENT_FILE`` setting, or given directly)::

    patient_id,ward,overrides_json
    p-0001,3B,
    p-0002,ICU,"{""glucose_low_mgdl"": 75, ""hr_rest_high_bpm"": 110}"

* ``patient_id`` and ``ward``: 1–64 characters of ``[A-Za-z0-9_.:-]`` (they
  become MQTT topic levels); each patient at most once.
* ``overrides_json``: empty, or a JSON object of
  :class:`~detectors.config.DetectorConfig` field names → values; checked at
  load time (unknown names or values of the wrong type are errors).
* Lines whose first cell starts with ``#`` and blank lines are ignored.

Any problem raises :class:`~wearwatch.errors.ConfigError` naming the line, so a
bad file stops the worker at start instead of misrouting alerts. Patients not
enrolled go to ward :data:`UNASSIGNED` with no overrides.

The live roster is the compacted Kafka topic ``enrollment``
(:mod:`wearwatch.contract.enrollment`, ``wearwatch patients``): every service follows it
and applies each record to its :class:`Enrollment` with :meth:`Enrollment.apply` (a
record replaces the patient's enrolment, a tombstone removes it). ``wearwatch patients
import`` turns a file of this format into records (:meth:`Enrollment.records`).

Examples
--------
>>> import io
>>> e = Enrollment.from_csv(io.StringIO('patient_id,ward,overrides_json\\np-1,3B,"{""glucose_low_mgdl"": 75}"\\n'))
>>> e.ward_for("p-1"), e.ward_for("p-2")
('3B', 'unassigned')
>>> e.overrides_for("p-1")
{'glucose_low_mgdl': 75}
>>> e.detector_config_for("p-1").glucose_low_mgdl
75.0
>>> e.apply("p-1", e.records(5)[0].discharged(9))
>>> e.status_for("p-1"), e.admits("p-1"), e.admits("p-2"), e.admits("p-2", require_enrollment=True)
('discharged', False, True, False)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

import orjson

from detectors.config import DetectorConfig
from wearwatch.contract.enrollment import EnrollmentRecord, EnrollmentStatus
from wearwatch.contract.ids import ID_RULE, is_patient_id
from wearwatch.errors import ConfigError

__all__ = ["ENROLLMENT_ENV", "UNASSIGNED", "Enrollment", "PatientEnrollment", "check_overrides", "load_enrollment"]

log = logging.getLogger(__name__)

#: Environment variable with the enrollment CSV path.
ENROLLMENT_ENV = "WEARWATCH_ENROLLMENT_FILE"
#: Ward of patients that are not enrolled.
UNASSIGNED = "unassigned"
HEADER = ("patient_id", "ward", "overrides_json")
#: one shared default config (frozen): patients without overrides all use this object
_DEFAULT_CONFIG = DetectorConfig()
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PatientEnrollment:
    """One patient's enrollment: ward, detector overrides (validated) and status."""

    patient_id: str
    ward: str
    overrides: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    status: EnrollmentStatus = "enrolled"
    since_ms: int = 0

    def record(self, since_ms: int | None = None) -> EnrollmentRecord:
        """This enrolment as an ``enrollment`` topic record."""
        return EnrollmentRecord(patient_id=self.patient_id, ward=self.ward, overrides=dict(self.overrides),
                                status=self.status, since_ms=self.since_ms if since_ms is None else since_ms)


@dataclass(frozen=True, slots=True)
class _Standing:
    """What an enrolment says of a patient, without the patient: one object for every patient it says the same of
    (most patients: same ward, no overrides, enrolled at the same import)."""

    ward: str
    overrides: Mapping[str, Any]
    status: EnrollmentStatus
    since_ms: int

    def of(self, patient_id: str) -> PatientEnrollment:
        """The patient's enrolment."""
        return PatientEnrollment(patient_id, self.ward, self.overrides, self.status, self.since_ms)


#: how many distinct shared standings a roster remembers to share (then it starts remembering afresh)
_SHARED_MAX = 4096


def _check_overrides(raw: str, where: str) -> Mapping[str, Any]:
    raw = raw.strip()
    if not raw:
        return _EMPTY
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ConfigError(f"{where}: overrides_json is not valid JSON") from None
    return check_overrides(doc, where)


def check_overrides(doc: Any, where: str) -> Mapping[str, Any]:
    """A patient's detector overrides (a decoded JSON object) checked against :class:`DetectorConfig`.

    Raises :class:`~wearwatch.errors.ConfigError` starting with ``where`` for a non-object,
    an unknown setting or a value of the wrong type. The enrollment file and
    ``wearwatch replay --overrides`` share it.

    >>> dict(check_overrides({"glucose_low_mgdl": 75}, "p-1"))
    {'glucose_low_mgdl': 75}
    >>> check_overrides({"glucose_low": 75}, "p-1")
    Traceback (most recent call last):
    ...
    wearwatch.errors.ConfigError: p-1: unknown detector setting(s): glucose_low
    """
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: overrides must be a JSON object")
    types = {f.name: f.type for f in dataclasses.fields(DetectorConfig)}
    for k, v in doc.items():
        t = types.get(k)
        if t is None:
            continue  # reported by with_overrides below, with all unknown names
        ok = isinstance(v, bool) if t in ("bool", bool) else (
            isinstance(v, int | float) and not isinstance(v, bool) and (t not in ("int", int) or float(v).is_integer())
        )
        if not ok:
            raise ConfigError(f"{where}: {k} must be of type {t if isinstance(t, str) else t.__name__}, got {v!r}")
    try:
        DetectorConfig().with_overrides(doc)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return MappingProxyType(doc)


class Enrollment(Mapping[str, PatientEnrollment]):
    """Patient → ward and overrides; a read-only mapping of :class:`PatientEnrollment`."""

    def __init__(self, patients: Mapping[str, PatientEnrollment] | None = None, source: str = "") -> None:
        #: patient -> their standing, shared between patients (a roster of 100,000 patients holds a dict entry per
        #: patient and a few standings, instead of an object, a ward string and a time per patient)
        self._patients: dict[str, _Standing] = {}
        #: the standings without overrides met lately, to share: (ward, status, since) -> standing
        self._shared: dict[tuple[str, str, int], _Standing] = {}
        for pid, p in (patients or {}).items():
            self._patients[sys.intern(pid)] = self._standing(p.ward, p.overrides, p.status, p.since_ms)
        self.source = source

    def _standing(self, ward: str, overrides: Mapping[str, Any], status: EnrollmentStatus, since_ms: int) -> _Standing:
        """The standing of these values: shared with the patients that have the same (when without overrides)."""
        if overrides:
            return _Standing(sys.intern(ward), overrides, status, since_ms)
        key = (ward, status, since_ms)
        st = self._shared.get(key)
        if st is None:
            if len(self._shared) >= _SHARED_MAX:
                self._shared = {}  # bounded: standings already given stay shared
            st = self._shared[key] = _Standing(sys.intern(ward), _EMPTY, status, since_ms)
        return st

    @classmethod
    def from_csv(cls, stream: IO[str], source: str = "<enrollment>") -> Enrollment:
        """Parse an enrollment CSV (see the module docs); raise ConfigError naming the line."""
        reader = csv.reader(stream)
        patients: dict[str, PatientEnrollment] = {}
        header_seen = False
        for row in reader:
            line = reader.line_num
            where = f"{source}:{line}"
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            cells = [c.strip() for c in row]
            if not header_seen:
                if tuple(cells[:2]) != HEADER[:2] or (len(cells) > 2 and cells[2] != HEADER[2]) or len(cells) > 3:
                    raise ConfigError(f"{where}: expected the header {','.join(HEADER)}")
                header_seen = True
                continue
            if len(row) not in (2, 3):
                raise ConfigError(f"{where}: expected 2 or 3 columns (patient_id,ward,overrides_json), got {len(row)}")
            pid, ward = cells[0], cells[1]
            if not is_patient_id(pid):
                raise ConfigError(f"{where}: patient_id must be {ID_RULE}")
            if not is_patient_id(ward):
                raise ConfigError(f"{where}: ward must be {ID_RULE}")
            if pid in patients:
                raise ConfigError(f"{where}: patient enrolled twice")
            overrides = _check_overrides(row[2] if len(row) == 3 else "", where)
            patients[pid] = PatientEnrollment(pid, ward, overrides)
        if not header_seen:
            raise ConfigError(f"{source}: empty enrollment file (expected the header {','.join(HEADER)})")
        return cls(patients, source)

    @classmethod
    def from_text(cls, text: str, source: str = "<enrollment>") -> Enrollment:
        return cls.from_csv(io.StringIO(text), source)

    # Mapping
    def __getitem__(self, patient_id: str) -> PatientEnrollment:
        return self._patients[patient_id].of(patient_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._patients)

    def __len__(self) -> int:
        return len(self._patients)

    def apply(self, patient_id: str, record: EnrollmentRecord | None) -> None:
        """Apply one ``enrollment`` record (None: the patient's tombstone, they are forgotten).

        Raises :class:`~wearwatch.errors.ConfigError` for overrides the detectors do not know
        (the CLI checks them before writing; a follower logs and skips such a record).
        """
        if record is None:
            self._patients.pop(patient_id, None)
            return
        overrides = check_overrides(dict(record.overrides), patient_id) if record.overrides else _EMPTY
        # the id interned: one string per patient, shared with what else the process holds of them
        self._patients[sys.intern(patient_id)] = self._standing(record.ward, overrides, record.status,
                                                                record.since_ms)

    def records(self, since_ms: int) -> list[EnrollmentRecord]:
        """Every patient as an ``enrollment`` record (a file's patients enrolled at ``since_ms``)."""
        return [st.of(pid).record(since_ms if st.since_ms == 0 else None) for pid, st in list(self._patients.items())]

    def status_for(self, patient_id: str) -> EnrollmentStatus | None:
        """``enrolled``, ``discharged``, or None for a patient never enrolled (or erased)."""
        p = self._patients.get(patient_id)
        return p.status if p is not None else None

    def admits(self, patient_id: str, require_enrollment: bool = False) -> bool:
        """Whether the patient's readings are processed: not when discharged, nor when never enrolled
        and enrolment is required (their readings are dead-lettered as ``not_enrolled``)."""
        p = self._patients.get(patient_id)
        if p is None:
            return not require_enrollment
        return p.status == "enrolled"

    def ward_for(self, patient_id: str) -> str:
        """The patient's ward, or ``unassigned``."""
        p = self._patients.get(patient_id)
        return p.ward if p is not None else UNASSIGNED

    def overrides_for(self, patient_id: str) -> dict[str, Any]:
        """The patient's detector overrides (a fresh dict; empty if none)."""
        p = self._patients.get(patient_id)
        return dict(p.overrides) if p is not None else {}

    def detector_config_for(self, patient_id: str, base: DetectorConfig | None = None) -> DetectorConfig:
        """``base`` (default :class:`DetectorConfig`) with the patient's overrides applied."""
        cfg = base if base is not None else _DEFAULT_CONFIG
        overrides = self.overrides_for(patient_id)
        return cfg.with_overrides(overrides) if overrides else cfg

    def wards(self) -> dict[str, int]:
        """Ward -> number of enrolled patients (safe to log)."""
        out: dict[str, int] = {}
        for p in list(self._patients.values()):  # a copy: the follower's thread may apply a record meanwhile
            if p.status != "enrolled":
                continue
            out[p.ward] = out.get(p.ward, 0) + 1
        return out


def load_enrollment(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Enrollment:
    """Load the enrollment CSV from ``path``, else from ``$WEARWATCH_ENROLLMENT_FILE``; empty if neither is set.

    Raises :class:`~wearwatch.errors.ConfigError` if the file is missing or malformed.

    >>> len(load_enrollment(None, environ={}))
    0
    """
    env = os.environ if environ is None else environ
    if path is None:
        path = env.get(ENROLLMENT_ENV) or None
    if path is None:
        log.info("no enrollment file: every patient is in ward %s", UNASSIGNED)
        return Enrollment()
    p = Path(path)
    try:
        with p.open(encoding="utf-8", newline="") as f:
            enrollment = Enrollment.from_csv(f, source=p.name)
    except OSError as exc:
        raise ConfigError(f"{ENROLLMENT_ENV}: cannot read {p}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{ENROLLMENT_ENV}: {p} is not UTF-8") from None
    log.info("enrollment: %d patients in %d wards", len(enrollment), len(enrollment.wards()))
    return enrollment
