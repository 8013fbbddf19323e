"""Restart and fail-over of workers holding many patients' states, per state store.

Run: ``.venv/bin/python bench/bench_recovery.py [--patients 1000 10000 100000] [--store memory rocksdb]``
(stack credentials in the environment: ``make bench`` does that).

For each patient count P and store (``WEARWATCH_WORKER_STORE``), on fresh topics:

1. **states**: P simulated patients' readings (``--minutes`` of data each: heart rate every 5 s,
   steps every minute, glucose every 5 minutes; grouped 12 a record like the gateway groups them)
   are produced to ``vitals.raw`` and one worker processes them all, so the patient-state table
   holds P states (its changelog: the records it wrote, one per patient and commit that touched it);
2. **restart**: that worker is SIGKILLed; one reading per partition is produced (so there is
   something to commit), and the worker is started again on the same data directory.
   **build readings/s** and **RSS built**: the worker's rate over the whole backlog (start-up included)
   and its RSS once done (every state in its cache). **restart s**: from its start to its first
   committed batch (the consumer group's committed offset moves on any partition); **ready s**: to
   ``/readyz`` answering 200; **records read**: the changelog records its table recovery read (the
   worker logs them); **RSS restarted**: after the restart;
3. **fail-over**: a second worker (data directory of its own) joins; once both serve, the one that
   held the partitions longest is SIGKILLed and a reading that must alert (glucose 40 mg/dL: urgent
   low, one reading suffices) is produced for patients of each of its partitions.
   **fail-over s**: from the kill to the first alert in ``alerts`` for one of those patients (the
   survivor must notice the death — session timeout —, take the partitions over, recover their
   states and process the reading); with ``rocksdb+standby`` the kill waits until the survivor's
   standby copies have caught up (its changelog reads stop growing); **records read**: what the
   survivor's recovery read.

Topics and app ids are unique per run and deleted at exit; the data directories too.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Offsets,
    Worker,
    bench_settings,
    ensure,
    free_port,
    generate_backlog,
    group_backlog,
    loadavg,
    log,
    patient_ids,
    preload,
    proc_stat,
    reading_json,
    spawn,
    table,
)

from wearwatch.config import Settings
from wearwatch.partitioning import patient_partition

PARTITIONS = 8
GLUCOSE, MGDL = 1, 1  # _common's signal and unit indexes
URGENT_LOW_MGDL = 40.0
_RECOVERED = re.compile(r"patient-state table recovered: (\d+) changelog records read in ([\d.]+) s")


@dataclass
class Run:
    patients: int
    store: str
    build_s: float
    build_rate: float
    build_rss_mb: float
    changelog_records: int
    restart_s: float
    ready_s: float
    restart_read: int
    rss_mb: float
    failover_s: float
    failover_read: int


@dataclass
class Proc:
    worker: Worker
    port: int
    datadir: str

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                return int(r.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def partitions(self) -> set[int]:
        """The vitals.raw partitions it holds (its per-partition lag gauges on /metrics)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except (urllib.error.URLError, OSError):
            return set()
        return {int(p) for p in re.findall(r'^wearwatch_consumer_lag\{partition="(\d+)"\}', text, re.M)}

    def recoveries(self) -> list[int]:
        return [int(n) for n, _ in _RECOVERED.findall(self.worker.log_path.read_text(errors="replace"))]


def standby_caught_up(p: Proc) -> bool:
    """Whether the worker's last three stats reports show the same changelog records read."""
    found = re.findall(r"worker stats \{.*'changelog_read': (\d+)", p.worker.log_path.read_text(errors="replace"))
    return len(found) >= 3 and len(set(found[-3:])) == 1


def start(settings: Settings, name: str, datadir: str) -> Proc:
    port = free_port()
    w = spawn(name, settings, "worker", "--web-port", str(port), extra_env={"WEARWATCH_WORKER_DATA_DIR": datadir})
    return Proc(w, port, datadir)


def kill(p: Proc) -> None:
    p.worker.popen.send_signal(signal.SIGKILL)
    p.worker.popen.wait()


def committed(off: Offsets, s: Settings) -> dict[int, int]:
    return off.committed_by_partition(s.app_id, s.topic_vitals)


def end_offsets(off: Offsets, topic: str) -> dict[int, int]:
    from kafka import TopicPartition

    ends = off.consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    return {tp.partition: int(o) for tp, o in ends.items()}


def wait_for(what: str, cond: object, timeout_s: float, procs: list[Proc], every_s: float = 10.0) -> float:
    """Poll ``cond()`` until true; seconds it took. Exits with the workers' log tails on a timeout."""
    t0 = last = time.monotonic()
    while not cond():  # type: ignore[operator]
        now = time.monotonic()
        if now - t0 > timeout_s or any(not p.worker.alive() for p in procs):
            for p in procs:
                print(f"--- {p.worker.name} (alive: {p.worker.alive()})\n{p.worker.tail()}", file=sys.stderr)
            sys.exit(f"timed out after {now - t0:.0f} s waiting for {what}")
        if now - last >= every_s:
            last = now
            log(f"  ... {what} ({now - t0:.0f} s)")
        time.sleep(0.1)
    return time.monotonic() - t0


def produce(s: Settings, records: list[tuple[int, bytes, bytes]]) -> None:
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=s.kafka_bootstrap.split(","), acks="all")
    for p, k, v in records:
        prod.send(s.topic_vitals, key=k, value=v, partition=p)
    prod.flush()
    prod.close()


def readings_for(pids: list[str], mgdl: float) -> list[tuple[int, bytes, bytes]]:
    now = int(time.time() * 1000)
    return [(patient_partition(pid, PARTITIONS), pid.encode(),
             reading_json(pid, GLUCOSE, mgdl, MGDL, now, now, 10**6 + i)) for i, pid in enumerate(pids)]


def one_per_partition(ids: list[str], partitions: set[int], per: int = 1) -> list[str]:
    got: dict[int, list[str]] = {}
    for pid in ids:
        part = patient_partition(pid, PARTITIONS)
        if part in partitions and len(got.setdefault(part, [])) < per:
            got[part].append(pid)
    return [pid for pids in got.values() for pid in pids]


def measure(n: int, store: str, minutes: float, timeout_s: float) -> Run:
    standby = 1 if store.endswith("+standby") else 0
    s = bench_settings("rec", partitions=PARTITIONS, log_level="INFO", worker_store=store.removesuffix("+standby"),
                       worker_standby_replicas=standby, metrics_interval_s=2.0)
    dirs = [tempfile.mkdtemp(prefix="ww-rec-"), tempfile.mkdtemp(prefix="ww-rec-")]
    procs: list[Proc] = []
    try:
        return _measure(s, n, store, minutes, timeout_s, dirs, procs)
    finally:
        for p in procs:
            p.worker.stop()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def _measure(s: Settings, n: int, store: str, minutes: float, timeout_s: float, dirs: list[str],
             procs: list[Proc]) -> Run:
    log(f"P = {n:,}, store {store}: generating {minutes:g} min of readings per patient; load {loadavg()}")
    backlog = group_backlog(generate_backlog(n, minutes), PARTITIONS)
    ensure(s, [s.topic_vitals, s.topic_commands, s.topic_alerts, s.topic_minutes, s.topic_dlq])
    log(f"  producing {backlog.readings:,} readings ({len(backlog.records):,} records)")
    preload(s, backlog)
    off = Offsets(s)
    try:
        ends = end_offsets(off, s.topic_vitals)
        w0 = start(s, "w0", dirs[0])
        procs.append(w0)
        log("  one worker builds the states")
        build_s = wait_for("the states are built", lambda: committed(off, s) == ends, timeout_s, procs)
        changelog = f"{s.app_id}-patient-state-changelog"
        n_changelog = sum(end_offsets(off, changelog).values())
        build_rss = proc_stat(w0.worker.pid).rss_mb
        log(f"  {n:,} states built in {build_s:.0f} s ({n_changelog:,} changelog records); restart")

        # restart: SIGKILL, one reading per partition to commit, start again on the same data directory
        ids = patient_ids(n)
        kill(w0)
        before = committed(off, s)
        produce(s, readings_for(one_per_partition(ids, set(range(PARTITIONS))), 110.0))
        w0 = start(s, "w0-restarted", dirs[0])
        procs[0] = w0
        t0 = time.monotonic()
        ready_s = float("nan")

        def first_commit() -> bool:
            nonlocal ready_s
            if ready_s != ready_s and w0.ready():
                ready_s = time.monotonic() - t0
            now = committed(off, s)
            return any(now.get(p, 0) > o for p, o in before.items())

        restart_s = wait_for("the restarted worker's first commit", first_commit, timeout_s, procs, every_s=5)
        if ready_s != ready_s:
            wait_for("/readyz", w0.ready, timeout_s, procs)
            ready_s = time.monotonic() - t0
        rss = proc_stat(w0.worker.pid).rss_mb
        wait_for("the restart's recovery log line", lambda: bool(w0.recoveries()), 30, procs)
        restart_read = w0.recoveries()[0]
        log(f"  restart: first commit {restart_s:.1f} s, ready {ready_s:.1f} s, {restart_read:,} changelog "
            f"records read, RSS {rss:.0f} MB; fail-over")

        # fail-over: a second worker joins; once both serve, kill the first
        w1 = start(s, "w1", dirs[1])
        procs.append(w1)

        def both_serve() -> bool:
            a, b = w0.partitions(), w1.partitions()
            return bool(a) and bool(b) and a | b == set(range(PARTITIONS)) and w0.ready() and w1.ready()

        wait_for("two workers sharing the partitions", both_serve, timeout_s, procs)
        if s.worker_standby_replicas:
            # standbys are read after the active partitions are recovered: kill once they are caught up
            # (the survivor's changelog reads stop growing), like a worker that has been running a while
            wait_for("the standby copies to catch up", lambda: standby_caught_up(w1), timeout_s, procs)
        victim, survivor = w0, w1
        moved = victim.partitions()
        pids = one_per_partition(ids, moved, per=3)
        seen = survivor.recoveries()
        consumer = alerts_consumer(s)
        t_kill = time.monotonic()
        kill(victim)
        produce(s, readings_for(pids, URGENT_LOW_MGDL))
        wanted = set(pids)

        def alerted() -> bool:
            for recs in consumer.poll(timeout_ms=100).values():
                for r in recs:
                    if r.value and orjson.loads(r.value).get("patient_id") in wanted:
                        return True
            return False

        failover_s = wait_for("an alert from a moved partition", alerted, timeout_s, [survivor], every_s=5)
        failover_s = time.monotonic() - t_kill
        consumer.close()
        wait_for("the survivor's recovery log line", lambda: len(survivor.recoveries()) > len(seen), 30, [survivor])
        failover_read = survivor.recoveries()[-1]
        log(f"  fail-over of {len(moved)} partitions: first alert after {failover_s:.1f} s, "
            f"{failover_read:,} changelog records read")
        return Run(n, store, build_s, backlog.readings / build_s, build_rss, n_changelog, restart_s, ready_s,
                   restart_read, rss, failover_s, failover_read)
    finally:
        off.close()


def alerts_consumer(s: Settings) -> Any:
    """A consumer of ``alerts`` positioned at its end."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap.split(","), enable_auto_commit=False)
    tps = [TopicPartition(s.topic_alerts, p) for p in (c.partitions_for_topic(s.topic_alerts) or set())]
    c.assign(tps)
    c.seek_to_end(*tps)
    for tp in tps:
        c.position(tp)
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, nargs="*", default=[100_000])
    ap.add_argument("--store", nargs="*", choices=["memory", "rocksdb", "rocksdb+standby"],
                    default=["memory", "rocksdb", "rocksdb+standby"],
                    help="rocksdb+standby: WEARWATCH_WORKER_STANDBY_REPLICAS=1")
    ap.add_argument("--minutes", type=float, default=1.0, help="minutes of readings per patient")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per wait")
    args = ap.parse_args()

    load_start = loadavg()
    runs = [measure(n, store, args.minutes, args.timeout) for n in args.patients for store in args.store]
    print()
    print(table(["patients", "store", "build s", "build readings/s", "RSS built MB", "changelog records",
                 "restart s (first commit)", "ready s", "records read at restart", "RSS restarted MB", "fail-over s",
                 "records read at fail-over"],
                [[r.patients, r.store, r.build_s, r.build_rate, r.build_rss_mb, r.changelog_records, r.restart_s,
                  r.ready_s, r.restart_read, r.rss_mb, r.failover_s, r.failover_read] for r in runs]))
    print(f"\ntargets: restart within 20 s, fail-over within 15 s; load average {load_start} at the start, "
          f"{loadavg()} at the end")
    for r in runs:
        ok = "meets" if r.restart_s <= 20 and r.failover_s <= 15 else "MISSES"
        print(f"  {r.patients:,} patients, {r.store} store: restart {r.restart_s:.1f} s, fail-over "
              f"{r.failover_s:.1f} s — {ok} the targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
