"""Checks that hold after every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from detectors.episodes import IDLE_FIELDS, idle_fields


@pytest.fixture(autouse=True)
def _shared_idle_episode_untouched() -> Iterator[None]:
    # every detector shares one not-started episode (detectors.episodes.IDLE): whatever starts an
    # episode must take its own first, or one patient's episode would leak into every other's
    yield
    assert idle_fields() == IDLE_FIELDS, "the shared idle episode was written to"
