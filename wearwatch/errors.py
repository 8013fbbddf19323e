"""One exception hierarchy for the whole project.

Library errors (aiokafka, paho, influxdb-client, pydantic) are wrapped with
``raise ... from exc`` so callers catch ``WearwatchError`` and still see the cause.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeliveryError",
    "InvalidCommand",
    "InvalidReading",
    "StackUnavailable",
    "StateFormatError",
    "WearwatchError",
]


class WearwatchError(Exception):
    """Base class of every error wearwatch raises on purpose."""


class ConfigError(WearwatchError):
    """A setting from the environment is missing or malformed."""


class InvalidReading(WearwatchError):
    """A device payload (or one reading inside it) breaks the ingest contract.

    ``reason`` is a short machine-readable code (e.g. ``"unit_mismatch"``); the
    message explains it for people. Both go to the dead-letter topic.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class InvalidCommand(WearwatchError):
    """A nurse command (acknowledgement, snooze) breaks its contract.

    ``reason`` is machine-readable (``bad_topic``, ``too_large``, ``invalid_json``,
    ``invalid_field``, ``bad_command``), the message explains it without echoing patient data.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DeliveryError(WearwatchError):
    """A sink (Kafka, InfluxDB, MQTT, webhook) could not take a record after its retries."""


class StackUnavailable(WearwatchError):
    """A backing service (Kafka, Mosquitto, InfluxDB) is not reachable."""


class StateFormatError(WearwatchError):
    """A stored patient state cannot be read: an unknown version or type, a name it may not
    call, or damaged bytes (the worker never runs anything a stored state names)."""
