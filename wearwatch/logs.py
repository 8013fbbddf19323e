"""Logging set-up shared by every process.

House rule: no patient identifiers or reading values in log records at INFO or
above. Log counts and pseudonyms; put identifiers only in DEBUG records.
"""

from __future__ import annotations

import logging
import os

from wearwatch.config import ENV_PREFIX, LOG_LEVELS
from wearwatch.errors import ConfigError

__all__ = ["setup_logging"]


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once (level from the argument or WEARWATCH_LOG_LEVEL).

    Raises :class:`~wearwatch.errors.ConfigError` for a level that is not one of :data:`LOG_LEVELS`.
    """
    lvl = (level or os.environ.get(f"{ENV_PREFIX}LOG_LEVEL") or "INFO").upper()
    if lvl not in LOG_LEVELS:
        raise ConfigError(f"{ENV_PREFIX}LOG_LEVEL: unknown log level {lvl.lower()!r} (use {', '.join(LOG_LEVELS)})")
    logging.basicConfig(
        level=lvl,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # third-party chatter stays at WARNING unless we debug
    for noisy in ("aiokafka", "kafka", "faust", "mode", "urllib3", "influxdb_client"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if lvl == "DEBUG" else logging.WARNING)
