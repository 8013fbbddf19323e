"""wearwatch: streaming anomaly detection for wearable health data.

The distribution holds five packages. ``wearwatch`` is the shared core (settings,
errors, the command line); the data flows one way through the other four:
``ingest`` → Kafka → ``streams`` → ``detectors`` → ``alerts``.
"""

from __future__ import annotations

from wearwatch.errors import (
    ConfigError,
    DeliveryError,
    InvalidReading,
    StackUnavailable,
    WearwatchError,
)

__all__ = [
    "ConfigError",
    "DeliveryError",
    "InvalidReading",
    "StackUnavailable",
    "WearwatchError",
    "__version__",
]

__version__ = "0.1.0"
