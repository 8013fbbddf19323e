"""Signals, units and the one glucose conversion factor.

Every signal has one canonical unit; values travel on Kafka in it. Glucose may
arrive in mmol/L and is converted with :data:`MMOL_TO_MGDL` (the molar mass of
glucose, 180.16 g/mol, over 10), the same factor everywhere: gateway, FHIR
mapping, simulator, replay.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "CANONICAL_UNIT",
    "MMOL_TO_MGDL",
    "SIGNALS",
    "SIGNAL_UNITS",
    "Signal",
    "Unit",
    "to_canonical",
]

MMOL_TO_MGDL = 18.016

Signal = Literal["heart_rate", "glucose", "steps"]
#: units a device may send
Unit = Literal["bpm", "mg/dL", "mmol/L", "steps"]
SIGNALS: tuple[str, ...] = ("heart_rate", "glucose", "steps")
SIGNAL_UNITS: dict[str, frozenset[str]] = {
    "heart_rate": frozenset({"bpm"}),
    "glucose": frozenset({"mg/dL", "mmol/L"}),
    "steps": frozenset({"steps"}),
}
CANONICAL_UNIT: dict[str, str] = {"heart_rate": "bpm", "glucose": "mg/dL", "steps": "steps"}
_FACTOR = {"mmol/L": MMOL_TO_MGDL}


def to_canonical(value: float, unit: str) -> float:
    """``value`` in ``unit`` converted to its signal's canonical unit.

    >>> to_canonical(2.0, "mmol/L"), to_canonical(54.0, "mg/dL"), to_canonical(72, "bpm")
    (36.032, 54.0, 72)
    """
    factor = _FACTOR.get(unit)
    return value * factor if factor is not None else value
