"""wearwatch: streaming anomaly detection for wearable health data.

``wearwatch`` is the bottom layer of the distribution: settings, errors, logging,
privacy, connections to the services, the shared contract (:mod:`wearwatch.contract`)
and the command line's entry point. The data flows ``ingest`` → Kafka → ``streams``
→ ``detectors`` → ``alerts``; the offline tools (``tools``) sit on top. Every
package may import this one; it imports none of them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

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

try:  # the version is the installed distribution's (pyproject.toml), not a second copy here
    __version__ = version("wearwatch")
except PackageNotFoundError:  # a bare checkout without `pip install -e .`
    __version__ = "0+unknown"
