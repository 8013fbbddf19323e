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

import rocksdict
from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as RocksDBStore
from faust.types import TP

from wearwatch.partitioning import patient_partition

__all__ = ["ROCKSDB_OPTIONS", "STORE_URLS", "PatientStateStore", "SharedMemoryOptions"]

log = logging.getLogger(__name__)

#: the ``store`` URL of each ``WEARWATCH_WORKER_STORE`` value (``patients-rocksdb`` is this module's store,
#: found by Faust through its ``faust.stores`` entry point in pyproject.toml)
STORE_URLS = {"memory": "memory://", "rocksdb": "patients-rocksdb://"}

#: Faust's defaults (64 MB write buffers x 3, a 2 GB block cache) are sized for one large database, and
#: the table has one per partition; ``memory_mb`` is the budget all of a worker's partition databases share
#: (see :class:`SharedMemoryOptions`)
ROCKSDB_OPTIONS: dict[str, Any] = {
    "driver": "rocksdict",
    "max_write_buffer_number": 2,
    "memory_mb": 32,
}


class SharedMemoryOptions(RocksDBOptions):
    """Faust's RocksDB options with one memory budget for all the databases they open.

    A budget per database multiplies with the partitions a worker holds, and the worker needs little
    of it: live states are in the worker's memory, so the store is read only when a patient is first
    seen and at recovery, and written at commits. One block cache of ``memory_mb`` is shared by every
    partition's database, the memtables are charged to it (a write-buffer manager limits them to
    three quarters of it) and so are the index and filter blocks, which otherwise grow with the data
    stored. With 100,000 patients' states over 8 partitions the store held 57 MB of RSS against 203 MB
    with two 8-MB write buffers and a 16-MB cache per database (``bench/bench_store_memory.py``).
    """

    def __init__(self, memory_mb: int, **kwargs: Any) -> None:
        budget = int(memory_mb) * 1024 * 1024
        memtables = budget * 3 // 4
        n_buffers = int(kwargs.get("max_write_buffer_number") or 2)
        # a memtable is flushed when full or when the manager's share is used up, whichever comes first
        kwargs.setdefault("write_buffer_size", max(1024 * 1024, memtables // (4 * n_buffers)))
        super().__init__(block_cache_size=budget, use_rocksdict=True, **kwargs)
        self.cache = rocksdict.Cache(budget)
        self.write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            memtables, False, self.cache)

    def as_options(self) -> Any:
        options = super().as_options()
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, True)
        table.set_block_cache(self.cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        options.set_write_buffer_manager(self.write_buffers)
        return options

    def memory_bytes(self) -> int:
        """Bytes the store holds in its shared cache: blocks read, index and filter blocks, memtables."""
        return int(self.cache.get_usage())


class PatientStateStore(RocksDBStore):
    """Faust's RocksDB store with the partition of every key taken from the key itself."""

    def __init__(self, url: Any, app: Any, table: Any, *, options: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        options = dict(options or {})
        #: a local database last synced longer ago than this is not used (see the module's docs)
        self.max_age_s = float(options.pop("max_age_s", float("inf")))
        memory_mb = options.pop("memory_mb", None)
        super().__init__(url, app, table, options=options, **kwargs)
        if memory_mb is not None:
            rest = {k: v for k, v in options.items() if k not in ("driver", "read_only")}
            self.rocksdb_options = SharedMemoryOptions(memory_mb, **rest)
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
