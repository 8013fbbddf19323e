"""A service that meets a data key written moments ago by another waits for its own follower to read it
(:meth:`wearwatch.datakeys.DataKeys.cipher_of` → :meth:`wearwatch.compacted.CompactedFollower.sync`): on the real
Kafka, the wait ends with the key there, never before, whether it had already arrived or not."""

from __future__ import annotations

import pytest

from wearwatch.config import Settings
from wearwatch.datakeys import DataKeys

pytestmark = pytest.mark.stack


def test_a_key_written_by_another_process_is_there_once_the_wait_for_it_ends(settings: Settings) -> None:
    writer = DataKeys(settings, name="test-key-writer")
    reader = DataKeys(settings, name="test-key-reader", recreate_erased=False)
    writer.start()
    reader.start()
    try:
        assert writer.wait_ready(30) and reader.wait_ready(30)
        assert reader.follower.sync(10)  # nothing new to wait for
        for i in range(25):
            pid = f"p-{i}"
            assert writer.ensure_keys([pid]) == 1
            cur = writer.ring.current(pid)
            assert cur is not None
            cipher = reader.cipher_of(cur[0])  # reads the key now, or waits for the follower to
            assert cipher is not None and reader.ring.owner(cur[0]) == pid
            sealed = cur[1].encrypt(b"\x00" * 12, b"reading", None)
            assert cipher.decrypt(b"\x00" * 12, sealed, None) == b"reading"  # the same key
        assert len(reader.ring) == len(writer.ring) == 25 and reader.created == 0
    finally:
        writer.stop()
        reader.stop()
