"""Glucose in the reader's units: one conversion for structured values, series and alert text.

wearwatch computes in mg/dL (the canonical unit of the ingest contract). A console
account may read glucose in mmol/L instead (``PUT /api/me/preferences``); every
glucose value the console shows then goes through :func:`glucose` (concentrations)
or :func:`glucose_rate` (mg/dL per minute): the ``explanation``'s numbers, the
1-minute series, and the numbers inside the alert's ``message`` text, so the text
and the numbers beside it always agree. Each converted value is named with its unit.

The detectors write their messages with a few fixed phrasings (``detectors/glucose.py``,
``detectors/models.py``, ``detectors/quality.py``); :func:`glucose_text` recognises the
glucose quantities in them: a number followed by ``mg/dL`` or ``mg/dL/min``, a bare
number after *below*, *above*, *crosses*, *forecast*, *vs* or *SD* (a threshold or a
forecast; times such as "for 20 min" are left alone), and a *plausible* range. In both
units the unit is then written after every such number.

>>> glucose_text("Low glucose: 62 mg/dL, below 70 for 20 min (trend -1.0 mg/dL/min)", "mmol/L")
'Low glucose: 3.4 mmol/L, below 3.9 mmol/L for 20 min (trend -0.06 mmol/L/min)'
>>> glucose_text("Low glucose: 62 mg/dL, below 70 for 20 min (trend -1.0 mg/dL/min)", "mg/dL")
'Low glucose: 62 mg/dL, below 70 mg/dL for 20 min (trend -1.0 mg/dL/min)'
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Literal

from wearwatch.contract.units import MMOL_TO_MGDL

__all__ = [
    "MGDL_PER_MMOLL",
    "UNITS",
    "GlucoseUnits",
    "convert_explanation",
    "convert_series_point",
    "glucose",
    "glucose_rate",
    "glucose_text",
    "signal_unit",
]

GlucoseUnits = Literal["mg/dL", "mmol/L"]
UNITS: tuple[str, ...] = ("mg/dL", "mmol/L")
#: mg/dL per mmol/L of glucose: the contract's one factor
MGDL_PER_MMOLL = MMOL_TO_MGDL
_OTHER_UNITS = {"heart_rate": "bpm", "steps": "steps"}
#: explanation fields holding a concentration, per kind where it differs from the default
_CONCENTRATION_FIELDS: dict[str, tuple[str, ...]] = {
    # value and baseline are standard deviations (mg/dL); the threshold is a ratio of the two
    "glucose_variability_change": ("value", "baseline"),
}
_DEFAULT_CONCENTRATION_FIELDS = ("value", "threshold", "baseline")

_NUM = r"[+-]?\d+(?:\.\d+)?"
_TEXT = re.compile(
    rf"(?P<rate>{_NUM})\s*mg/dL/min"
    rf"|(?P<conc>{_NUM})\s*mg/dL"
    rf"|(?P<kw>\b(?:below|above|crosses|forecast|vs|SD))\s+(?P<bare>{_NUM})(?![\d.]|\s*(?:mg/dL|min\b|h\b|s\b|%))"
    rf"|(?P<range_kw>\bplausible)\s+(?P<lo>{_NUM})-(?P<hi>{_NUM})"
)


def glucose(mgdl: float, units: str) -> float:
    """A glucose concentration in ``units``: mg/dL as it is, mmol/L to one decimal.

    >>> glucose(55, "mmol/L"), glucose(180.0, "mmol/L"), glucose(52.4, "mg/dL")
    (3.1, 10.0, 52.4)
    """
    if units == "mmol/L":
        return round(float(mgdl) / MGDL_PER_MMOLL, 1)
    return float(mgdl)


def glucose_rate(mgdl_per_min: float, units: str) -> float:
    """A rate of change of glucose in ``units`` per minute (mmol/L: two decimals).

    >>> glucose_rate(-2.0, "mmol/L"), glucose_rate(-2.0, "mg/dL")
    (-0.11, -2.0)
    """
    if units == "mmol/L":
        return round(float(mgdl_per_min) / MGDL_PER_MMOLL, 2)
    return float(mgdl_per_min)


def signal_unit(signal: str, units: str) -> str | None:
    """The unit a signal's values are shown in.

    >>> signal_unit("glucose", "mmol/L"), signal_unit("heart_rate", "mmol/L"), signal_unit("spo2", "mg/dL")
    ('mmol/L', 'bpm', None)
    """
    return units if signal == "glucose" else _OTHER_UNITS.get(signal)


def _fmt_conc(text: str, units: str) -> str:
    if units == "mmol/L":
        return f"{glucose(float(text), units):.1f}"
    return text


def _fmt_rate(text: str, units: str) -> str:
    if units == "mmol/L":
        v = glucose_rate(float(text), units)
        return f"{v:+.2f}" if text[:1] in "+-" else f"{v:.2f}"
    return text


@lru_cache(maxsize=65_536)
def glucose_text(text: str, units: str) -> str:
    """Alert text with every glucose quantity in ``units`` and named (see the module docs).

    >>> glucose_text("glucose 80 mg/dL falling -2.0 mg/dL/min, forecast 48 in 25 min (crosses 55 in ~12 min)",
    ...              "mmol/L")
    'glucose 4.4 mmol/L falling -0.11 mmol/L/min, forecast 2.7 mmol/L in 25 min (crosses 3.1 mmol/L in ~12 min)'
    >>> glucose_text("Implausible glucose value 700 mg/dL (plausible 20-600), 3 within 10 min", "mmol/L")
    'Implausible glucose value 38.9 mmol/L (plausible 1.1-33.3 mmol/L), 3 within 10 min'
    """

    def sub(m: re.Match[str]) -> str:
        if m.group("rate") is not None:
            return f"{_fmt_rate(m.group('rate'), units)} {units}/min"
        if m.group("conc") is not None:
            return f"{_fmt_conc(m.group('conc'), units)} {units}"
        if m.group("kw") is not None:
            return f"{m.group('kw')} {_fmt_conc(m.group('bare'), units)} {units}"
        return f"{m.group('range_kw')} {_fmt_conc(m.group('lo'), units)}-{_fmt_conc(m.group('hi'), units)} {units}"

    return _TEXT.sub(sub, text)


def convert_explanation(signal: str, kind: str, explanation: dict[str, Any], units: str) -> dict[str, Any]:
    """An alert's ``explanation`` with its glucose values in ``units`` and the units named.

    Concentrations (``value``, ``threshold``, ``baseline``; for ``glucose_variability_change``
    the threshold is a ratio and stays) go through :func:`glucose`, ``trend_per_min`` through
    :func:`glucose_rate`; a glucose ``message`` inside goes through :func:`glucose_text`.
    Other signals only get their ``unit`` named.

    >>> convert_explanation("glucose", "glucose_low", {"value": 62.0, "threshold": 70.0, "trend_per_min": -1.0},
    ...                     "mmol/L")
    {'value': 3.4, 'threshold': 3.9, 'trend_per_min': -0.06, 'unit': 'mmol/L', 'trend_unit': 'mmol/L/min'}
    """
    out = dict(explanation)
    if signal != "glucose":
        unit = _OTHER_UNITS.get(signal)
        if unit is not None:
            out["unit"] = unit
        return out
    for name in _CONCENTRATION_FIELDS.get(kind, _DEFAULT_CONCENTRATION_FIELDS):
        v = out.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = glucose(v, units)
    v = out.get("trend_per_min")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        out["trend_per_min"] = glucose_rate(v, units)
    if isinstance(out.get("message"), str):
        out["message"] = glucose_text(out["message"], units)
    out["unit"] = units
    out["trend_unit"] = f"{units}/min"
    return out


def convert_series_point(signal: str, point: dict[str, Any], units: str) -> dict[str, Any]:
    """A 1-minute point ``{"t_ms", "mean", "min", "max"}`` with glucose values in ``units``.

    >>> convert_series_point("glucose", {"t_ms": 0, "mean": 90.08, "min": 90.08, "max": None}, "mmol/L")
    {'t_ms': 0, 'mean': 5.0, 'min': 5.0, 'max': None}
    """
    if signal != "glucose" or units == "mg/dL":
        return point
    return {k: (glucose(v, units) if k != "t_ms" and isinstance(v, (int, float)) else v) for k, v in point.items()}
