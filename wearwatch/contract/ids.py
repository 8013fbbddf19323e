"""Identifiers: patients, wards, devices, vendors, nurses, alerts.

One pattern per kind of identifier, used by the device contract, the FHIR
mapping, the nurse commands, the enrollment file, the alert topics, the worker's
HTTP endpoints and the tools. Patient and ward identifiers are MQTT topic
segments, so they exclude ``/``, ``+``, ``#`` and spaces.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

__all__ = [
    "ALERT_ID_PATTERN",
    "DEVICE_ID_PATTERN",
    "ID_RULE",
    "NURSE_ID_PATTERN",
    "NURSE_ID_RULE",
    "PATIENT_ID_PATTERN",
    "VENDOR_PATTERN",
    "AlertId",
    "NurseId",
    "PatientId",
    "WardId",
    "is_alert_id",
    "is_nurse_id",
    "is_patient_id",
    "topic_segment",
]

_ID_CHARS = r"A-Za-z0-9_.:\-"
#: a patient id (also a ward id): 1–64 of ``[A-Za-z0-9_.:-]``
PATIENT_ID_PATTERN = rf"^[{_ID_CHARS}]{{1,64}}$"
#: the rule in words, for error messages and docs
ID_RULE = "1-64 characters of [A-Za-z0-9_.:-]"
#: a device id in a device topic or a FHIR ``Device/{id}`` reference: 1–128 of ``[A-Za-z0-9_.:-]``
DEVICE_ID_PATTERN = rf"^[{_ID_CHARS}]{{1,128}}$"
#: a vendor (the MQTT account's topic prefix): 1–64 of ``[A-Za-z0-9_.-]`` (no ``:``)
VENDOR_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
#: who acknowledged or snoozed (a nurse's login, may be an e-mail-like ``kim@3B``)
NURSE_ID_PATTERN = r"^[A-Za-z0-9_.:@\-]{1,64}$"
NURSE_ID_RULE = "1-64 characters of [A-Za-z0-9_.:@-]"
#: an alert id: ``al-`` and 20 hex digits (:func:`alerts.models.alert_id_for`)
ALERT_ID_PATTERN = r"^al-[0-9a-f]{20}$"

_PATIENT_RE = re.compile(PATIENT_ID_PATTERN)
_NURSE_RE = re.compile(NURSE_ID_PATTERN)
_ALERT_RE = re.compile(ALERT_ID_PATTERN)

PatientId = Annotated[str, Field(pattern=PATIENT_ID_PATTERN)]
WardId = Annotated[str, Field(pattern=PATIENT_ID_PATTERN)]
NurseId = Annotated[str, Field(pattern=NURSE_ID_PATTERN)]
AlertId = Annotated[str, Field(pattern=ALERT_ID_PATTERN)]


def is_patient_id(value: object) -> bool:
    """Whether ``value`` is a valid patient (or ward) id.

    >>> is_patient_id("p-0042"), is_patient_id("ward:3B"), is_patient_id(""), is_patient_id("p/1")
    (True, True, False, False)
    >>> is_patient_id("x" * 64), is_patient_id("x" * 65), is_patient_id(42), is_patient_id("p-1\\n")
    (True, False, False, False)
    """
    return isinstance(value, str) and _PATIENT_RE.fullmatch(value) is not None


def is_nurse_id(value: object) -> bool:
    """Whether ``value`` is a valid nurse id (``by`` of a command).

    >>> is_nurse_id("nurse.kim@3B"), is_nurse_id("")
    (True, False)
    """
    return isinstance(value, str) and _NURSE_RE.fullmatch(value) is not None


def is_alert_id(value: object) -> bool:
    """Whether ``value`` is an alert id.

    >>> is_alert_id("al-7c35ac37f0732fad6862"), is_alert_id("al-XYZ")
    (True, False)
    """
    return isinstance(value, str) and _ALERT_RE.fullmatch(value) is not None


def topic_segment(name: str, value: str) -> str:
    """``value`` if it is a valid patient/ward id (an MQTT topic segment), else ``ValueError`` naming ``name``.

    >>> topic_segment("ward", "3B")
    '3B'
    >>> topic_segment("patient_id", "p/1")
    Traceback (most recent call last):
    ...
    ValueError: patient_id must be 1-64 characters of [A-Za-z0-9_.:-], got 'p/1'
    """
    if not is_patient_id(value):
        raise ValueError(f"{name} must be {ID_RULE}, got {value!r}")
    return value
