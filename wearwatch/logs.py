"""Logging set-up shared by every process.

House rule: no patient identifiers or reading values in log records at INFO or
above. Log counts and pseudonyms; put identifiers only in DEBUG records.
"""

from __future__ import annotations

import logging
import os

__all__ = ["setup_logging"]


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once (level from the argument or WEARWATCH_LOG_LEVEL)."""
    lvl = (level or os.environ.get("WEARWATCH_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(
        level=lvl,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # third-party chatter stays at WARNING unless we debug
    for noisy in ("aiokafka", "kafka", "faust", "mode", "urllib3", "influxdb_client"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if lvl == "DEBUG" else logging.WARNING)
