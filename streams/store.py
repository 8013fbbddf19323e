"""The patient-state table's RocksDB store (``WEARWATCH_WORKER_STORE=rocksdb``).

Faust's RocksDB store (``faust.stores.rocksdb``, through ``rocksdict``) keeps each changelog partition
in a database of its own under the worker's data directory, with the changelog offset it holds. A
worker restarted on the same data directory reads only the changelog written since that offset,
instead of every stored state (the memory store reads the whole changelog at each start).

Faust's store finds the partition of a write from the event being processed. The worker writes
states outside any event (:meth:`streams.app.Pipeline.write_states`, before each commit), so this
store takes the partition from the key instead — the changelog partition the worker's state
producer gives the record (Kafka's default partitioner; :mod:`wearwatch.partitioning`) — and reads
look in that one database, not in every open one. The offsets the changelog records got are kept
by :meth:`PatientStateStore.note_written` and stored once Kafka has them
(:meth:`PatientStateStore.persist_offsets`), never for a partition the worker no longer holds.

Erasure: a patient erased while another worker held their partition is a tombstone in the changelog,
which a worker coming back reads (it resumes at its stored offset) — unless compaction has removed
the tombstone by then, after ``WEARWATCH_ERASURE_COMPACTION_HOURS`` at the earliest. So a partition's
local database is used only if it was last brought up to date with the changelog less than half that
time ago (the mtime of a ``.synced`` file next to it); an older one is deleted and the partition read
from the changelog again, as the memory store always does.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from faust.stores.rocksdb import Store as RocksDBStore
from faust.types import TP

from wearwatch.partitioning import patient_partition

__all__ = ["ROCKSDB_OPTIONS", "STORE_URLS", "PatientStateStore"]

log = logging.getLogger(__name__)

#: the ``store`` URL of each ``WEARWATCH_WORKER_STORE`` value (``patients-rocksdb`` is this module's store,
#: found by Faust through its ``faust.stores`` entry point in pyproject.toml)
STORE_URLS = {"memory": "memory://", "rocksdb": "patients-rocksdb://"}

#: per partition database: Faust's defaults (64 MB write buffers x 3, a 2 GB block cache) are sized
#: for one large database, and the table has one per partition
ROCKSDB_OPTIONS: dict[str, Any] = {
    "driver": "rocksdict",
    "write_buffer_size": 8 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 16 * 1024 * 1024,
}


class PatientStateStore(RocksDBStore):
    """Faust's RocksDB store with the partition of every key taken from the key itself."""

    def __init__(self, url: Any, app: Any, table: Any, *, options: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        options = dict(options or {})
        #: a local database last synced longer ago than this is not used (see the module's docs)
        self.max_age_s = float(options.pop("max_age_s", float("inf")))
        super().__init__(url, app, table, options=options, **kwargs)
        self._n_partitions: int = table.partitions or app.conf.topic_partitions
        #: changelog partition -> highest offset acknowledged and not yet stored
        self._acked: dict[int, int] = {}

    def _partition(self, key: bytes) -> int:
        return patient_partition(key, self._n_partitions)

    def _set(self, key: bytes, value: bytes | None) -> None:
        self._db_for_partition(self._partition(key)).put(key, value)

    def _get(self, key: bytes) -> bytes | None:
        db = self._dbs.get(self._partition(key))
        if db is None:  # a partition this worker does not hold
            return None
        value: bytes | None = db.get(key)
        return value

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None

    def _del(self, key: bytes) -> None:
        db = self._dbs.get(self._partition(key))
        if db is not None:
            db.delete(key)

    def _synced_path(self, partition: int) -> Path:
        path = self.partition_path(partition)
        return path.with_name(path.name + ".synced")

    def _open_for_partition(self, partition: int) -> Any:
        path = self.partition_path(partition)
        if path.exists():
            try:
                age = time.time() - self._synced_path(partition).stat().st_mtime
            except FileNotFoundError:
                age = float("inf")
            if age > self.max_age_s:
                log.info("partition %d: the local patient states were last synced %.1f h ago (limit %.1f h); "
                         "deleted, read from the changelog instead", partition, age / 3600, self.max_age_s / 3600)
                shutil.rmtree(path)
        return super()._open_for_partition(partition)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        super().set_persisted_offset(tp, offset)
        self._synced_path(tp.partition).touch()

    def note_written(self, partition: int, offset: int) -> None:
        """A changelog record of ``partition`` is in Kafka at ``offset``."""
        if offset > self._acked.get(partition, -1):
            self._acked[partition] = offset

    def persist_offsets(self, topic: str) -> None:
        """Store the acknowledged changelog offsets of the partitions this worker holds: a restart
        reads the changelog from there on."""
        acked, self._acked = self._acked, {}
        for partition, offset in acked.items():
            if partition in self._dbs:
                self.set_persisted_offset(TP(topic, partition), offset)

    def revoke_partitions(self, table: Any, tps: Any) -> None:
        topics = table.changelog_topic.topics
        for tp in tps:
            if tp.topic in topics:
                self._acked.pop(tp.partition, None)
        super().revoke_partitions(table, tps)
