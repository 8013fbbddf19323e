"""How much one worker crash makes the worker read again, at a steady input rate.

Run: ``.venv/bin/python bench/bench_replay_after_crash.py [--rate 2000] [--crashes 5] [--every 15]``
(stack credentials in the environment: ``make bench`` does that).

A producer writes ``vitals.raw`` at ``--rate`` readings/s (simulated patients, time-ordered, grouped 12
readings a record like the gateway groups them) for the whole run; one ``wearwatch worker`` consumes
it and is SIGKILLed ``--crashes`` times, every ``--every`` seconds, and started again at once (as a
supervisor would). For each crash:

* the kill waits until the worker keeps up (its last two reports show at most 24 unread records:
  **unread before**), then comes at a random moment of the commit cycle;
* **uncommitted at the kill**: readings in the records between the group's committed offsets and
  the end of ``vitals.raw`` at the moment of the kill (read right after it, kafka-python admin).
  The successor starts reading at the committed offsets, so this is what it reads again
  (an upper bound: the newest of those records may not have been read before the kill);
* **replayed**: those of them the stored patient states already held, as the successor counted
  them (its ``replayed`` metric): recognised by their offsets, they change nothing;
* **too late / dead letters**: what the successor dead-lettered (must be 0: the data is on time);
* **recommitted after**: seconds from the restart until the group's committed offsets are past
  the end offsets of the moment of the kill on every partition (start-up, table recovery,
  catching up, and the next commit).

The bound the README states: at most about one commit interval of input (plus what was in flight)
is read again per crash, whatever happened before it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Backlog,
    Offsets,
    Worker,
    bench_settings,
    ensure,
    generate_backlog,
    group_backlog,
    loadavg,
    log,
    spawn_worker,
    table,
)
from bench_throughput import READINGS_PER_PATIENT_MINUTE

from wearwatch.config import Settings


class Producer(threading.Thread):
    """Writes the backlog's records to ``vitals.raw`` at ``rate`` readings/s, in order."""

    def __init__(self, settings: Settings, backlog: Backlog, rate: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.backlog, self.rate = settings, backlog, rate
        self.sent_readings = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._produce())
        except BaseException as exc:  # reported by main
            self.error = exc

    async def _produce(self) -> None:
        from aiokafka import AIOKafkaProducer

        s = self.settings
        prod = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=5)
        await prod.start()
        try:
            t0 = time.monotonic()
            pending: list[asyncio.Future[object]] = []
            for p, k, v in self.backlog.records:
                n = v.count(b'"patient_id"')
                due = t0 + self.sent_readings / self.rate
                if due > time.monotonic():
                    if pending:
                        await asyncio.gather(*pending)
                        pending = []
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                pending.append(await prod.send(s.topic_vitals, value=v, key=k, partition=p))
                self.sent_readings += n
            await asyncio.gather(*pending)
        finally:
            await prod.stop()


def worker_stats(w: Worker) -> dict[str, float]:
    found = re.findall(r"worker stats (\{.*\})", w.log_path.read_text(errors="replace"))
    return {k: float(v) for k, v in re.findall(r"'(\w+)': ([\d.]+)", found[-1])} if found else {}


def keeps_up(w: Worker) -> bool:
    """Whether the worker's last two reports show it has read (nearly) everything there is."""
    found = re.findall(r"worker stats \{.*'lag': (-?\d+)", w.log_path.read_text(errors="replace"))
    return len(found) >= 2 and all(0 <= int(x) <= 24 for x in found[-2:])


def readings_between(backlog: Backlog, lo: dict[int, int], hi: dict[int, int]) -> int:
    """Readings in the records at offsets [lo, hi) of each partition (the topic holds only the backlog)."""
    pre = backlog.prefix
    return sum(pre[p][min(hi[p], len(pre[p]) - 1)] - pre[p][min(lo.get(p, 0), len(pre[p]) - 1)] for p in hi)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=2000.0, help="readings/s into vitals.raw")
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--crashes", type=int, default=5)
    ap.add_argument("--every", type=float, default=15.0, help="seconds between a restart and the next kill")
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds of input before the first kill")
    ap.add_argument("--commit-interval", type=float, default=None,
                    help="WEARWATCH_WORKER_COMMIT_INTERVAL_S for the worker (default: the setting's default)")
    args = ap.parse_args()

    overrides = {"worker_commit_interval_s": args.commit_interval} if args.commit_interval else {}
    s = bench_settings("replay", partitions=8, log_level="INFO", metrics_interval_s=1.0, **overrides)
    seconds = args.warmup + args.crashes * (args.every + 10) + 20
    minutes = args.rate * seconds / (args.patients * READINGS_PER_PATIENT_MINUTE)
    readings = generate_backlog(args.patients, minutes)
    backlog = group_backlog(readings, s.partitions)
    log(f"replay after a crash: {args.rate:,.0f} readings/s for up to {seconds:.0f} s ({backlog.readings:,} readings "
        f"of {args.patients:,} patients, {len(backlog.records):,} records), {args.crashes} SIGKILLs every "
        f"{args.every:.0f} s; commit interval {s.worker_commit_interval_s} s; load {loadavg()}")
    ensure(s, [s.topic_vitals, s.topic_commands, s.topic_alerts, s.topic_minutes, s.topic_dlq])
    off = Offsets(s)
    worker = spawn_worker(s, name="w0")
    deadline = time.monotonic() + 120
    while "worker assigned" not in worker.log_path.read_text(errors="replace"):
        if time.monotonic() > deadline or not worker.alive():
            sys.exit(f"worker did not start:\n{worker.tail()}")
        time.sleep(0.2)
    producer = Producer(s, backlog, args.rate)
    producer.start()
    time.sleep(args.warmup)
    rows: list[list[object]] = []
    workers = [worker]
    rng = random.Random(5)
    for crash in range(1, args.crashes + 1):
        # kill a worker that keeps up (what it reads again is then what it processed since its last commit,
        # not a backlog it had not read yet), at a random moment of the commit cycle
        caught_up = time.monotonic() + 60
        while time.monotonic() < caught_up and not keeps_up(worker):
            time.sleep(0.5)
        lag = int(worker_stats(worker).get("lag", -1))
        time.sleep(rng.uniform(0.0, s.worker_commit_interval_s))
        worker.popen.send_signal(signal.SIGKILL)
        worker.popen.wait()
        committed = off.committed_by_partition(s.app_id, s.topic_vitals)
        ends = end_offsets(off, s)
        uncommitted = readings_between(backlog, committed, ends)
        t_restart = time.monotonic()
        worker = spawn_worker(s, name=f"w{crash}")
        workers.append(worker)
        recommitted = float("nan")
        while time.monotonic() - t_restart < max(args.every, 0.0 if recommitted == recommitted else 90.0):
            now = off.committed_by_partition(s.app_id, s.topic_vitals)
            if recommitted != recommitted and all(now.get(p, 0) >= o for p, o in ends.items()):
                recommitted = time.monotonic() - t_restart
            time.sleep(0.25)
        st = worker_stats(worker)
        rows.append([crash, lag, uncommitted, int(st.get("replayed", 0)), int(st.get("too_late", 0)),
                     int(st.get("dead_letters", 0)), int(st.get("duplicates", 0)), recommitted])
        log(f"  crash {crash}: {uncommitted:,} readings uncommitted at the kill; successor replayed "
            f"{int(st.get('replayed', 0)):,}, too late {int(st.get('too_late', 0))}, recommitted after "
            f"{recommitted:.1f} s")
        if producer.error is not None:
            raise producer.error
    # idle: the last worker commits everything
    producer.join(timeout=seconds)
    t_idle = time.monotonic()
    committed, ends = {}, {0: 1}
    while time.monotonic() - t_idle < 60:
        committed, ends = off.committed_by_partition(s.app_id, s.topic_vitals), end_offsets(off, s)
        if committed == ends:
            break
        time.sleep(0.5)
    left = readings_between(backlog, committed, ends)
    for w in workers:
        w.stop()
    off.close()

    print()
    print(table(["crash", "unread before (records)", "uncommitted at kill (readings)", "replayed by successor",
                 "too late", "dead letters", "duplicates", "recommitted after (s)"], rows))
    unc = [int(str(r[2])) for r in rows]
    rate = args.rate
    print(f"\nper crash at {rate:,.0f} readings/s: read again {statistics.mean(unc):,.0f} on average, at most "
          f"{max(unc):,} readings ({max(unc) / rate:.1f} s of input; commit interval {s.worker_commit_interval_s} s); "
          f"idle at the end: {left:,} readings uncommitted; load {loadavg()}")
    return 0 if left == 0 and all(r[4] == 0 for r in rows) else 1


def end_offsets(off: Offsets, s: Settings) -> dict[int, int]:
    from kafka import TopicPartition

    ends = off.consumer.end_offsets([TopicPartition(s.topic_vitals, p) for p in range(s.partitions)])
    return {tp.partition: int(o) for tp, o in ends.items()}


if __name__ == "__main__":
    sys.exit(main())
