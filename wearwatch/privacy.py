"""Pseudonyms for patient identifiers leaving the clinical paths.

InfluxDB and Grafana see ``patient`` = the first 16 hex characters of
HMAC-SHA256(key, patient_id), with the key from ``WEARWATCH_PSEUDONYM_KEY``.
Only nurse-facing paths (the alerts topic, MQTT alerts, the console) carry the
real identifier.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

__all__ = ["pseudonym"]


@lru_cache(maxsize=100_000)
def pseudonym(key: str, patient_id: str) -> str:
    """Stable, keyed, non-reversible patient pseudonym.

    >>> pseudonym("k" * 16, "patient-1")
    '97640f7f03a2f861'
    >>> len(pseudonym("another-key", "patient-1"))
    16
    """
    return hmac.new(key.encode(), patient_id.encode(), hashlib.sha256).hexdigest()[:16]
