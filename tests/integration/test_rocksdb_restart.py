"""A worker on the RocksDB store (``WEARWATCH_WORKER_STORE=rocksdb``) SIGKILLed and started again on the
same data directory, on the real stack.

What must hold:

* the restarted worker reads no changelog record back (its states are on disk with the changelog offset
  they hold: every record it wrote was acknowledged and its offset stored before the kill);
* the states are intact: every reading of the first phase sent again after the restart is recognised as
  a duplicate (exact count), and patient G's second urgent-low reading opens no second alert;
* the alerts are those of the first phase, exactly (same ids), and nothing is dead-lettered.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from ingest.contract import Reading
from tests.integration.conftest import Proc, consume_all
from wearwatch.config import Settings
from wearwatch.partitioning import patient_partition

pytestmark = pytest.mark.stack

PATIENTS, MINUTES = 12, 5
MIN = 60_000


def _readings(run_id: str, end_ms: int) -> list[Reading]:
    """Heart rate every 5 s for PATIENTS patients over MINUTES minutes, time-ordered; patient G's
    glucose reads 40 mg/dL (urgent low: one reading opens the alert) in the last minute."""
    start = end_ms - MINUTES * MIN
    out: list[Reading] = []
    for k in range(MINUTES * 12):
        ts = start + k * 5000
        for n in range(PATIENTS):
            out.append(Reading(patient_id=f"H{n:02d}-{run_id}", signal="heart_rate", value=60.0 + n + k % 3,
                               unit="bpm", ts_ms=ts, vendor="test", device_id=f"hr-{n}", received_ms=ts))
    ts = end_ms - MIN
    out.append(Reading(patient_id=f"G-{run_id}", signal="glucose", value=40.0, unit="mg/dL", ts_ms=ts,
                       vendor="test", device_id="cgm", received_ms=ts))
    return out


def _produce(s: Settings, readings: list[Reading]) -> None:
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=s.kafka_bootstrap.split(","), acks="all")
    for r in readings:
        prod.send(s.topic_vitals, key=r.patient_id.encode(), value=r.to_json(),
                  partition=patient_partition(r.patient_id, s.partitions))
    prod.flush()
    prod.close()


def _offsets(s: Settings) -> tuple[dict[int, int], dict[int, int]]:
    """(committed offsets of the worker group, end offsets) of vitals.raw."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient

    boot = s.kafka_bootstrap.split(",")
    consumer = KafkaConsumer(bootstrap_servers=boot, enable_auto_commit=False)
    admin = KafkaAdminClient(bootstrap_servers=boot)
    try:
        ends = consumer.end_offsets([TopicPartition(s.topic_vitals, p) for p in range(s.partitions)])
        try:
            got = admin.list_group_offsets({s.app_id: None}).get(s.app_id, {})
        except Exception:  # the group's coordinator is moving
            got = {}
        committed = {tp.partition: int(om.offset) for tp, om in got.items() if tp.topic == s.topic_vitals}
        return committed, {tp.partition: int(o) for tp, o in ends.items()}
    finally:
        consumer.close()
        admin.close()


def _wait_all_committed(s: Settings, worker: Proc, timeout_s: float = 40.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        committed, ends = _offsets(s)
        # a partition none of the run's patients hash to has nothing to commit
        if committed == {p: end for p, end in ends.items() if end}:
            return
        assert worker.alive(), worker.log_text()[-4000:]
        time.sleep(0.5)
    raise AssertionError(f"offsets not all committed: {_offsets(s)}\n{worker.log_text()[-4000:]}")


def _stats(worker: Proc) -> dict[str, int]:
    found = re.findall(r"worker stats (\{.*\})", worker.log_text())
    return {k: int(float(v)) for k, v in re.findall(r"'(\w+)': ([\d.]+)", found[-1])} if found else {}


@pytest.mark.parametrize("live_states", [0, 3])
def test_rocksdb_store_restart_keeps_states(settings: Settings, spawn: Callable[..., Proc], run_id: str,
                                            tmp_path: Path, live_states: int) -> None:
    """With ``live_states`` 3 the worker keeps 3 of the 13 patients' states decoded between commits: the others
    are packed in memory and decoded again at their next readings, before and after the kill; what is stored and
    recovered is the same."""
    s = settings.model_copy(update={"worker_store": "rocksdb", "alerts_mqtt": False,
                                    "worker_live_states": live_states})
    datadir = str(tmp_path / "worker-data")
    end = int(time.time() * 1000) // MIN * MIN
    first = _readings(run_id, end)
    _produce(s, first)
    worker = spawn("worker", s, "worker", WEARWATCH_WORKER_DATA_DIR=datadir)
    _wait_all_committed(s, worker)
    alerts_before = consume_all(s, s.topic_alerts, expect=1, idle_s=2.0, timeout_s=30)
    ids_before = sorted(orjson.loads(r.value)["alert_id"] for r in alerts_before)
    assert len(ids_before) == 1 and all(orjson.loads(r.value)["patient_id"] == f"G-{run_id}" for r in alerts_before)
    time.sleep(2 * s.worker_commit_interval_s)  # a commit with nothing new: every state write acknowledged
    worker.stop(signal.SIGKILL)

    # the first phase again (duplicates), and G's glucose still at 40 a minute later
    later = Reading(patient_id=f"G-{run_id}", signal="glucose", value=40.0, unit="mg/dL", ts_ms=end - 1000,
                    vendor="test", device_id="cgm", received_ms=end)
    _produce(s, [*first, later])
    restarted = spawn("worker", s, "worker", WEARWATCH_WORKER_DATA_DIR=datadir)
    restarted.wait_log("patient-state table recovered", timeout=40)
    assert re.search(r"patient-state table recovered: 0 changelog records read", restarted.log_text()), \
        restarted.log_text()[-4000:]
    _wait_all_committed(s, restarted)
    if live_states:
        # past the cap the states wait packed; the first phase a third time decodes each packed one (and finds
        # its readings there: duplicates again)
        deadline = time.monotonic() + 40
        while _stats(restarted).get("states_packed", 0) < PATIENTS + 1 - live_states:
            assert time.monotonic() < deadline, restarted.log_text()[-4000:]
            time.sleep(0.5)
        _produce(s, first)
        _wait_all_committed(s, restarted)
    time.sleep(2 * s.metrics_interval_s)  # the next stats report counts everything committed
    stats = _stats(restarted)
    assert stats.get("duplicates") == len(first) * (2 if live_states else 1), stats
    assert stats.get("dead_letters", 0) == 0, stats
    if live_states:
        assert stats.get("states_unpacked", 0) >= PATIENTS + 1 - live_states, stats
    else:
        assert stats.get("states_unpacked") == stats.get("states_packed") == 0, stats
    alerts_after = consume_all(s, s.topic_alerts, idle_s=3.0, timeout_s=30)
    assert sorted(orjson.loads(r.value)["alert_id"] for r in alerts_after) == ids_before
