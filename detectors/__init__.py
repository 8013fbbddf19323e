"""Pure per-patient detectors for wearable health data (numpy, scipy, river; no I/O).

The public entry point is :class:`PatientMonitor`; everything it reports is a
:class:`Finding` with a :class:`Priority` and an :class:`Audience`. What opens and
clears a finding is the rule table :mod:`detectors.rule_table` (one engine,
:mod:`detectors.rules`, steps it; ``detectors/RULES.md`` shows it for people).
"""

from __future__ import annotations

from detectors.activity import ActivityTracker
from detectors.base import SIGNALS, Audience, Finding, Priority
from detectors.config import DetectorConfig
from detectors.glucose import GlucoseDetector
from detectors.heart_rate import HeartRateDetector
from detectors.models import GlucoseVariabilityModel, RestingHeartRateModel
from detectors.monitor import PatientMonitor
from detectors.quality import DeviceQuality

__all__ = [
    "CLINICAL_KINDS",
    "DEVICE_KINDS",
    "SIGNALS",
    "ActivityTracker",
    "Audience",
    "DetectorConfig",
    "DeviceQuality",
    "Finding",
    "GlucoseDetector",
    "GlucoseVariabilityModel",
    "HeartRateDetector",
    "PatientMonitor",
    "Priority",
    "RestingHeartRateModel",
]

#: Every clinical finding kind the detectors emit.
CLINICAL_KINDS: tuple[str, ...] = (
    "glucose_urgent_low",
    "glucose_urgent_low_soon",
    "glucose_low",
    "glucose_high",
    "glucose_falling_fast",
    "glucose_rising_fast",
    "glucose_variability_change",
    "tachycardia_at_rest",
    "bradycardia",
    "hr_news2_band",
    "hr_abrupt_change",
    "hr_resting_drift",
)
#: Every device (data-quality) finding kind.
DEVICE_KINDS: tuple[str, ...] = ("sensor_stale", "sensor_flatline", "value_implausible")
