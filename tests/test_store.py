"""The RocksDB store of patient states (streams/store.py), on a real RocksDB in a temporary directory."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from streams.app import Pipeline
from streams.store import PatientStateStore
from wearwatch.config import load_settings
from wearwatch.partitioning import patient_partition


def _pipeline(tmp_path: Path, **overrides: Any) -> Pipeline:
    overrides.setdefault("worker_store", "rocksdb")
    return Pipeline(load_settings(influx_token="u:p", pseudonym_key="k" * 16, worker_data_dir=str(tmp_path),
                                  partitions=4, alerts_mqtt=False, **overrides))


def _store(p: Pipeline) -> PatientStateStore:
    store = p.table.data
    assert isinstance(store, PatientStateStore)
    return store


def test_a_state_goes_to_the_database_of_its_keys_partition(tmp_path: Path) -> None:
    p = _pipeline(tmp_path)
    store = _store(p)
    keys = [f"p-{i}".encode() for i in range(20)]
    for k in keys:
        p.table[k] = b"state-" + k  # outside any event, like write_states
    for k in keys:
        assert p.table.get(k) == b"state-" + k
        part = patient_partition(k, 4)
        assert store._dbs[part].get(k) == b"state-" + k
        assert all(db.get(k) is None for q, db in store._dbs.items() if q != part)
    assert len(p._changelog) == 20  # each write also goes to the changelog (write_states sends them)


def test_offsets_are_stored_only_for_partitions_held(tmp_path: Path) -> None:
    p = _pipeline(tmp_path)
    store = _store(p)
    k = b"p-1"
    part = patient_partition(k, 4)
    p.table[k] = b"x"
    other = (part + 1) % 4
    store.note_written(part, 41)
    store.note_written(part, 40)  # acknowledged out of order: the highest counts
    store.note_written(other, 7)  # a partition whose database is not open
    topic = p.table.changelog_topic.get_topic_name()
    store.persist_offsets(topic)
    from faust.types import TP

    assert store.persisted_offset(TP(topic, part)) == 41
    assert other not in store._dbs
    assert store._synced_path(part).exists() and not store._synced_path(other).exists()


def test_a_copy_older_than_half_the_tombstone_lifetime_is_not_used(tmp_path: Path) -> None:
    k = b"p-1"
    part = patient_partition(k, 4)
    p = _pipeline(tmp_path, erasure_compaction_hours=2.0)
    store = _store(p)
    p.table[k] = b"x"
    from faust.types import TP

    topic = p.table.changelog_topic.get_topic_name()
    store.set_persisted_offset(TP(topic, part), 5)
    path, marker = store.partition_path(part), store._synced_path(part)
    store._dbs.clear()  # as after a revocation

    # synced 50 minutes ago: used (limit 1 h)
    os.utime(marker, (time.time() - 3000, time.time() - 3000))
    assert store.max_age_s == pytest.approx(3600)
    assert store._db_for_partition(part).get(k) == b"x"
    store._dbs.clear()
    import gc

    gc.collect()
    # synced 70 minutes ago: deleted, so the changelog is read from its start
    os.utime(marker, (time.time() - 4200, time.time() - 4200))
    assert path.exists()
    assert store._db_for_partition(part).get(k) is None
    assert store.persisted_offset(TP(topic, part)) is None


def test_standby_replicas_need_the_rocksdb_store() -> None:
    from wearwatch.errors import ConfigError

    with pytest.raises(ConfigError, match="WEARWATCH_WORKER_STANDBY_REPLICAS needs WEARWATCH_WORKER_STORE=rocksdb"):
        load_settings({"WEARWATCH_WORKER_STANDBY_REPLICAS": "1", "WEARWATCH_WORKER_STORE": "memory"})
    assert load_settings({"WEARWATCH_WORKER_STANDBY_REPLICAS": "1",
                          "WEARWATCH_WORKER_STORE": "rocksdb"}).worker_standby_replicas == 1


def test_all_partitions_share_one_bounded_memory_budget(tmp_path: Path) -> None:
    # 4 partitions, a 4 MB budget, 24 MB of states written: the memtables are flushed as the budget needs,
    # not as 4 per-database write buffers would, and every state reads back
    p = _pipeline(tmp_path, worker_store_memory_mb=4)
    store = _store(p)
    options = store.rocksdb_options
    assert p.store_memory_bytes() == 0  # no database open yet
    value = os.urandom(1024)
    keys = [f"p-{i}".encode() for i in range(6000)]
    for _ in range(4):
        for k in keys:
            p.table[k] = value
    assert len(store._dbs) == 4
    budget = 4 * 1024 * 1024

    def memtables() -> int:  # the flushes the budget asked for run in RocksDB's background threads
        return sum(int(db.property_int_value("rocksdb.cur-size-all-mem-tables")) for db in store._dbs.values())

    def within() -> bool:  # the cache may run over by what is pinned
        return memtables() <= budget and p.store_memory_bytes() <= budget * 1.25

    deadline = time.monotonic() + 30
    while not within() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert within()
    assert memtables() > 0 and p.store_memory_bytes() > 0
    # every partition's database has the whole budget's cache (one object: a cache per database would be 4 of them)
    assert {int(db.property_int_value("rocksdb.block-cache-capacity")) for db in store._dbs.values()} == {budget}
    assert options.cache.get_usage() > 0
    assert all(p.table.get(k) == value for k in keys)


def test_the_memory_store_reports_no_store_memory(tmp_path: Path) -> None:
    p = _pipeline(tmp_path, worker_store="memory")
    p.table[b"p-1"] = b"x"
    assert p.store_memory_bytes() == 0
