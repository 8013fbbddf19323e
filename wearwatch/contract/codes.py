"""Clinical codes: the LOINC codes wearwatch reads and writes, with their UCUM units.

The gateway maps incoming FHIR Observations with :data:`LOINC_MAP`; the export
and the alerts' DetectedIssue evidence write each signal with
:data:`SIGNAL_CODING`. One table for both directions, so what wearwatch writes it
also reads back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from wearwatch.contract.units import MMOL_TO_MGDL

__all__ = ["LOINC_MAP", "LOINC_SYSTEM", "SIGNAL_CODING", "UCUM_SYSTEM", "LoincMapping"]

LOINC_SYSTEM = "http://loinc.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"


@dataclass(frozen=True, slots=True)
class LoincMapping:
    """How one LOINC code becomes a reading."""

    code: str
    display: str
    signal: Literal["heart_rate", "glucose", "steps"]
    #: UCUM codes accepted for the value; the first is the one we write
    ucum: tuple[str, ...]
    #: multiply the value by this to get the signal's canonical unit
    factor: float = 1.0
    #: the FHIR observation category (``http://terminology.hl7.org/CodeSystem/observation-category``)
    category: str = "vital-signs"


LOINC_MAP: dict[str, LoincMapping] = {
    m.code: m
    for m in (
        LoincMapping("8867-4", "Heart rate", "heart_rate", ("/min", "{beats}/min")),
        LoincMapping("99504-3", "Glucose [Mass/volume] in Interstitial fluid", "glucose", ("mg/dL",),
                     category="laboratory"),
        LoincMapping("2339-0", "Glucose [Mass/volume] in Blood", "glucose", ("mg/dL",), category="laboratory"),
        LoincMapping("15074-8", "Glucose [Moles/volume] in Blood", "glucose", ("mmol/L",), MMOL_TO_MGDL,
                     category="laboratory"),
        LoincMapping("14743-9", "Glucose [Moles/volume] in Capillary blood by Glucometer", "glucose", ("mmol/L",),
                     MMOL_TO_MGDL, category="laboratory"),
        LoincMapping("55423-8", "Number of steps in unspecified time Pedometer", "steps", ("{steps}", "{step}", "1"),
                     category="activity"),
    )
}
#: signal → the LOINC mapping used when wearwatch writes FHIR (values in the canonical unit).
#: Glucose is written as CGM (interstitial fluid, mg/dL): the wearables' glucose source.
SIGNAL_CODING: dict[str, LoincMapping] = {
    "heart_rate": LOINC_MAP["8867-4"],
    "glucose": LOINC_MAP["99504-3"],
    "steps": LOINC_MAP["55423-8"],
}
