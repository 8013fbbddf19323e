"""Throughput of one wearwatch worker on a pre-loaded ``vitals.raw`` backlog, against the raw Kafka ceiling.

Run: ``.venv/bin/python bench/bench_throughput.py [--patients 1000 10000] [--readings 400000] [--soak]``
(stack credentials in the environment: ``make bench`` does that).

For each patient count P:

1. **backlog**: P simulated patients (heart rate every 5 s, steps every minute,
   glucose every 5 minutes; ``ingest.scenarios.simulate_patient``, no artefacts),
   time-ordered, normalized Reading JSON, grouped per partition the way the gateway
   groups them (``--group``, default 12 readings per record: what its 5 ms linger makes
   at 20,000 readings/s over 8 partitions; 1 = one record per reading), produced to a
   fresh ``vitals.raw`` (8 partitions) with a batched aiokafka producer;
2. **ceiling**: a raw aiokafka consume → ``orjson.loads`` → produce passthrough of
   the same records, one process, acks=all, commit after each acknowledged batch
   (counted in readings, like the worker);
3. **Faust floor**: ``faust_floor.py``, one Faust worker process with the worker's settings
   and consumer whose agent takes the same batches and decodes each record (no detectors, no
   state, no sinks), twice: ``consume`` (decode only: the most Faust can hand any agent, a
   bound on the worker) and ``forward`` (also sends each record on: the Faust twin of the
   ceiling's passthrough). This is the framework's own cost;
4. **worker**: one ``wearwatch worker`` subprocess (full detector set, alert
   lifecycle, sinks to InfluxDB) consuming the backlog. Progress is the consumer
   group's committed offsets (kafka-python admin) mapped to the readings their
   records hold; the sustained rate (readings/s) is taken
   between 10 % and 90 % of the backlog; CPU and RSS from ``/proc``; state bytes
   per patient from the newest changelog record of each patient, and the changelog
   bytes written per reading processed (every state value in the changelog).

Every backlog ends at the same hour of the day (``--end-hour``): the simulated patients' days change what a
reading costs. ``--rounds N`` consumes each loaded backlog N times, the patient counts alternating, and prints
the ratio of readings per CPU-second to the first patient count per round.

``--soak`` instead feeds one worker at a fixed rate for 10 minutes and prints
its RSS every 30 s (memory must stay flat).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    GATEWAY_GROUP,
    LOGS,
    Backlog,
    Offsets,
    bench_settings,
    decode_raw,
    ensure,
    generate_backlog,
    group_backlog,
    loadavg,
    log,
    patient_ids,
    preload,
    proc_stat,
    spawn_faust_floor,
    spawn_worker,
    start_pyspy,
    summarize_collapsed,
    table,
)

from wearwatch.config import Settings

READINGS_PER_PATIENT_MINUTE = 12 + 1 + 0.2


@dataclass
class WorkerRun:
    rate: float
    drain_s: float
    lag_end: int
    cpu_pct: float
    rss_mb: float
    hwm_mb: float
    state_b: float
    state_max: int
    #: bytes of state values the worker wrote to its changelog per reading it processed
    changelog_b_per_reading: float = float("nan")
    #: state values the worker wrote to its changelog per reading it processed
    states_per_reading: float = float("nan")
    #: readings/s processed (the worker's own count, between 10 % and 90 % of the backlog), whether or not
    #: committed yet: the committed offsets lag the processing by up to WEARWATCH_WORKER_STATE_WRITE_MAX_S
    processed_rate: float = float("nan")
    #: CPU % over that window
    processed_cpu: float = float("nan")
    #: RSS (MB) when the worker answered first, before its first reading
    base_mb: float = float("nan")


async def _passthrough(settings: Settings, total: int, cipher_of: Callable[[bytes], Any]) -> tuple[float, float]:
    """Consume ``vitals.raw`` from the start, decode (a sealed record opened under the data keys ``cipher_of``
    gives: :func:`decode_raw`), produce to another topic; (readings/s, CPU %).

    ``total`` is in readings; a record holding several (the gateway's grouping) counts them all."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    out_topic = f"{settings.topic_prefix}passthrough"
    cons = AIOKafkaConsumer(settings.topic_vitals, bootstrap_servers=settings.kafka_bootstrap,
                            group_id=f"{settings.app_id}-passthrough", auto_offset_reset="earliest",
                            enable_auto_commit=False, max_partition_fetch_bytes=4 * 1024 * 1024)
    prod = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5,
                            max_batch_size=256 * 1024)
    await cons.start()
    await prod.start()
    n = 0
    t0 = c0 = 0.0
    try:
        while n < total:
            batches = await cons.getmany(timeout_ms=200, max_records=2000)
            if not batches:
                continue
            if not n:
                t0, c0 = time.monotonic(), time.process_time()
            futs = []
            for recs in batches.values():
                for r in recs:
                    n += decode_raw(r.value, cipher_of)
                    futs.append(await prod.send(out_topic, value=r.value, key=r.key))
            await asyncio.gather(*futs)
            await cons.commit()
        dt = time.monotonic() - t0
        return n / dt, 100 * (time.process_time() - c0) / dt
    finally:
        await cons.stop()
        await prod.stop()


def run_worker(
    settings: Settings, backlog: Backlog, timeout_s: float, n_patients: int, profile: bool = False,
    n_workers: int = 1, floor: str = "",
) -> WorkerRun:
    """Workers (same app id) on the backlog until it is committed; readings/s between 10 % and 90 %
    of the backlog's readings (committed offsets mapped to the readings their records hold), CPU summed.

    ``floor`` (``consume`` or ``forward``): the Faust floor (``faust_floor.py``: same framework and
    consumer, an agent doing no work) instead of the wearwatch worker; it keeps no state, so ``state_b``
    is nan."""
    total = backlog.readings
    off = Offsets(settings)
    workers = ([spawn_faust_floor(settings, floor)] if floor
               else [spawn_worker(settings, name=f"worker{i}") for i in range(n_workers)])
    w = workers[0]
    spy = None
    prof_path = LOGS / f"{settings.app_id}.pyspy.txt"
    group, topic = settings.app_id, settings.topic_vitals
    samples: list[tuple[float, int, float]] = []  # (t, committed, cpu_s)
    processed: list[tuple[float, int, float]] = []  # (t, readings processed, cpu_s)
    base = float("nan")
    try:
        deadline = time.monotonic() + timeout_s
        last_log = 0.0
        while time.monotonic() < deadline:
            for x in workers:
                if not x.alive():
                    raise SystemExit(f"worker exited ({x.popen.returncode}):\n{x.tail()}")
            done = backlog.readings_done(off.committed_by_partition(group, topic))
            samples.append((time.monotonic(), done, sum(proc_stat(x.pid).cpu_s for x in workers)))
            counts = [x.readings_processed() for x in workers] if not floor else []
            if counts and all(c is not None for c in counts) and base != base and not any(counts):
                base = sum(proc_stat(x.pid).rss_mb for x in workers)  # (nan != nan: not set yet)
            if counts and all(c is not None for c in counts):
                processed.append((time.monotonic(), sum(c or 0 for c in counts),
                                  sum(proc_stat(x.pid).cpu_s for x in workers)))
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                st = proc_stat(w.pid)
                log(f"  worker: {done:,}/{total:,} committed, RSS {st.rss_mb:.0f} MB, load {loadavg()}")
            if done >= total:
                break
            if profile and spy is None and done >= 0.05 * total:
                spy = start_pyspy(w.pid, prof_path, 30)
            time.sleep(0.5)
        if spy is not None:
            spy.wait(60)
            print(summarize_collapsed(prof_path), flush=True)
        st = proc_stat(w.pid)
        rss, hwm = sum(proc_stat(x.pid).rss_mb for x in workers), sum(proc_stat(x.pid).hwm_mb for x in workers)
        lag = total - samples[-1][1]
        lo = next((s for s in samples if s[1] >= 0.1 * total), samples[0])
        hi = next((s for s in samples if s[1] >= 0.9 * total), samples[-1])
        first = next((s for s in samples if s[1] > 0), samples[0])
        dt = max(hi[0] - lo[0], 1e-9)
        rate = (hi[1] - lo[1]) / dt
        cpu = 100 * (hi[2] - lo[2]) / dt
        if hi[1] - lo[1] < 0.5 * total:  # one commit took the group past 10 % and 90 %: no window to time
            log(f"  committed offsets moved in steps too big to time (commit every {settings.worker_commit_interval_s}"
                " s): rate not measured; use a bigger backlog")
            rate = cpu = float("nan")
        drain = samples[-1][0] - first[0]
        p_rate = p_cpu = float("nan")
        p_lo = next((s for s in processed if s[1] >= 0.1 * total), None)
        p_hi = next((s for s in processed if s[1] >= 0.9 * total), None)
        if p_lo is not None and p_hi is not None and p_hi[0] > p_lo[0]:
            p_rate = (p_hi[1] - p_lo[1]) / (p_hi[0] - p_lo[0])
            p_cpu = 100 * (p_hi[2] - p_lo[2]) / (p_hi[0] - p_lo[0])
        sizes = []
        per_reading = states_per_reading = float("nan")
        if not floor:
            log("  reading the patient-state changelog")
            states, written, count = changelog_scan(off, f"{settings.app_id}-patient-state-changelog")
            sizes = [len(v) for v in states.values()]
            per_reading = written / max(samples[-1][1], 1)
            states_per_reading = count / max(samples[-1][1], 1)
        return WorkerRun(rate, drain, lag, cpu, rss, hwm,
                         statistics.fmean(sizes) if sizes else float("nan"), max(sizes, default=0), per_reading,
                         states_per_reading, p_rate, p_cpu, base)
    finally:
        for x in workers:
            x.stop()
        off.close()


def changelog_scan(off: Offsets, topic: str) -> tuple[dict[bytes, bytes], int, int]:
    """The newest value per key of ``topic``, the bytes of every value in it and how many values, read from its
    start.

    The run's changelog is fresh and younger than a segment, so nothing is compacted yet: the sum is
    what the worker wrote (keys and Kafka's record overhead not counted)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=off.consumer.config["bootstrap_servers"], enable_auto_commit=False,
                      consumer_timeout_ms=2000,
                      fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or set()]
        ends = c.end_offsets(tps)
        c.assign(tps)
        c.seek_to_beginning(*tps)
        newest: dict[bytes, bytes] = {}
        written = count = 0
        remaining = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + 300
        while remaining and time.monotonic() < deadline:
            for tp, recs in c.poll(timeout_ms=1000, max_records=5000).items():
                for r in recs:
                    if r.value is not None:
                        newest[r.key] = r.value
                        written += len(r.value)
                        count += 1
                    if r.offset >= ends[tp] - 1:
                        remaining.discard(tp)
        if remaining:
            log(f"  the changelog was not read to its end within 300 s: {len(remaining)} partitions short")
        return newest, written, count
    finally:
        c.close()


@dataclass
class Prepared:
    """A patient count's backlog, pre-loaded in its own topics, and the ceiling and floors measured on it."""

    n_patients: int
    settings: Settings
    backlog: Backlog
    ceiling: float
    floor_rates: dict[str, float]
    clear: bool


def run_timeout(given_s: float, n_readings: int) -> float:
    """Seconds a run may take: ``given_s``, or (0) 150 s plus a second per 10,000 readings (a 12M-reading backlog
    of 100,000 patients drains in ~6 minutes at one worker's usual rate, and gets ~22)."""
    return given_s if given_s > 0 else 150.0 + n_readings / 10_000


def backlog_end_ms(end_hour: float) -> int:
    """The end of a backlog: the latest ``end_hour`` o'clock (UTC) before now.

    The simulated patients sleep, walk and eat by the hour of the day, and what they do changes what a reading
    costs: a backlog that ends at the time of the run is a different workload at every run. A fixed end makes
    the same command produce the same readings every day."""
    day = 86_400_000
    now = int(time.time() * 1000)
    end = now - now % day + int(end_hour * 3_600_000)
    return end if end <= now else end - day


def prepare(n_patients: int, n_readings: int, timeout_s: float, batch: int = 0, group: int = GATEWAY_GROUP,
            commit_s: float = 0.0, floors: bool = True, store: str = "memory", clear: bool = False,
            end_hour: float = 20.0, live_states: int = 0) -> Prepared:
    """Generate and pre-load one backlog of ``n_patients`` (sealed under their data keys, created in one batch
    first as enrolment does), then measure the ceiling and the Faust floors on it (unless not ``floors``)."""
    minutes = n_readings / (n_patients * READINGS_PER_PATIENT_MINUTE)
    extra: dict[str, Any] = {"worker_batch_size": batch} if batch else {}
    extra["worker_store"] = store
    if live_states:
        extra["worker_live_states"] = live_states
    if commit_s:
        extra["worker_commit_interval_s"] = commit_s
    settings = bench_settings(f"tp{n_patients}", partitions=8, **extra)
    end = backlog_end_ms(end_hour)
    log(f"P={n_patients:,}: generating {minutes:.1f} minutes of readings up to "
        f"{time.strftime('%H:%M', time.gmtime(end / 1000))} UTC (prefix {settings.topic_prefix})")
    ensure(settings, [settings.topic_vitals, settings.topic_commands, settings.topic_alerts,
                      settings.topic_minutes, settings.topic_dlq, f"{settings.topic_prefix}passthrough"])
    backlog, keys = gateway_backlog(settings, n_patients, minutes, group, end, sealed=not clear)
    rate_in = preload(settings, backlog)
    log(f"  preloaded {backlog.readings:,} readings in {len(backlog.records):,} records at {rate_in:,.0f}/s "
        f"({'clear text' if clear else 'sealed'})")
    nan = float("nan")
    ceiling, floor_rates = nan, {"consume": nan, "forward": nan}
    if floors:
        # the ceiling opens sealed records like the worker and the floors (their keys: this process's follower)
        ceiling, pt_cpu = asyncio.run(_passthrough(settings, backlog.readings,
                                                   keys.cipher_of if keys is not None else _no_keys))
        log(f"  ceiling {ceiling:,.0f}/s (CPU {pt_cpu:.0f} %); Faust floor …")
        for mode in ("consume", "forward"):
            # its own consumer group (app id), its own internal topics (cleaned up with the run's)
            fl = run_worker(settings.model_copy(update={"app_id": f"{settings.app_id}-{mode}"}),
                            backlog, timeout_s, n_patients, floor=mode)
            floor_rates[mode] = fl.rate
            log(f"  Faust floor ({mode}) {fl.rate:,.0f}/s = {fl.rate / ceiling:.2f} of the ceiling "
                f"(CPU {fl.cpu_pct:.0f} %)")
    if keys is not None:
        keys.stop()
    return Prepared(n_patients, settings, backlog, ceiling, floor_rates, clear)


def measure(prep: Prepared, timeout_s: float, profile: bool = False, write_readings: tuple[int, ...] = (-1,),
            state_versions: tuple[int, ...] = (-1,), variants: tuple[tuple[int, int], ...] = (),
            round_no: int = 1) -> list[list[object]]:
    """The worker on a prepared backlog once per ``write_readings`` and ``state_versions`` value (-1: the
    default setting; its own consumer group and changelog each), or once per (state version, write readings)
    of ``variants``: one row each."""
    settings, backlog, n_patients = prep.settings, prep.backlog, prep.n_patients
    ceiling, floor_rates = prep.ceiling, prep.floor_rates
    per_record = backlog.readings / len(backlog.records)
    rows: list[list[object]] = []
    for v, w in variants or [(v, w) for v in state_versions for w in write_readings]:
        update: dict[str, Any] = {"app_id": f"{settings.app_id}-w{max(w, 0)}v{max(v, 0)}r{round_no}"}
        if w >= 0:
            update["worker_state_write_readings"] = w
        if v >= 0:
            update["worker_state_version"] = v
        run_settings = settings.model_copy(update=update)
        r = run_worker(run_settings, backlog, timeout_s, n_patients, profile)
        log(f"  round {round_no}, P={n_patients:,}: worker (state write after "
            f"{run_settings.worker_state_write_readings} readings) {r.rate:,.0f}/s "
            f"committed, {r.processed_rate:,.0f}/s processed ({r.processed_cpu:.0f} % CPU), "
            f"{r.rate / ceiling:.2f} of the ceiling, {r.rate / floor_rates['consume']:.2f} of the Faust in, "
            f"lag at end {r.lag_end:,}, RSS {r.rss_mb:.0f} MB ({r.base_mb:.0f} MB before the first reading), "
            f"load {loadavg()}")
        rows.append([round_no, f"{n_patients:,}", settings.worker_store,
                     f"{settings.worker_live_states:,}" if settings.worker_live_states else "all",
                     "clear" if prep.clear else "sealed",
                     settings.worker_batch_size,
                     settings.worker_commit_interval_s,
                     run_settings.worker_state_version, run_settings.worker_state_write_readings,
                     f"{per_record:.1f}", backlog.readings, ceiling,
                     floor_rates["consume"], floor_rates["forward"], r.rate, r.processed_rate, r.processed_cpu,
                     r.processed_rate / max(r.processed_cpu, 1e-9) * 100, r.rate / ceiling,
                     r.drain_s, r.lag_end, r.rss_mb, r.hwm_mb,
                     (r.rss_mb - r.base_mb) * 1024 * 1024 / n_patients, r.state_b, r.state_max,
                     r.changelog_b_per_reading,
                     f"{r.states_per_reading:.4f}" if r.states_per_reading == r.states_per_reading else "-"])
    return rows


HEAD = ["round", "patients", "store", "live states", "records", "batch", "commit s", "state v", "write after",
        "per record", "readings", "ceiling/s", "Faust in/s",
        "Faust in→out/s", "committed/s", "**processed/s**", "CPU %", "per CPU-s", "of ceiling", "drain s",
        "lag end", "RSS MB", "peak MB", "RSS B/pt", "state B/pt", "max B", "changelog B/reading", "states/reading"]


def _no_keys(key_id: bytes) -> None:
    """A clear backlog's key source: it has no sealed record to open."""
    return None


def sealing_keys(settings: Any) -> Any:
    """The run's data keys (:class:`wearwatch.datakeys.DataKeys`), followed: the backlog is sealed with them."""
    from wearwatch.datakeys import DataKeys

    keys = DataKeys(settings, name="bench-datakeys")
    keys.start()
    if not keys.wait_ready(60):
        sys.exit("could not read the run's datakeys topic")
    return keys


def _variant(text: str) -> tuple[int, int]:
    """``VERSION:READINGS`` of ``--variant``."""
    version, readings = text.split(":")
    return int(version), int(readings)


def gateway_backlog(settings: Settings, n_patients: int, minutes: float, group: int = GATEWAY_GROUP,
                    end_ms: int | None = None, sealed: bool = True) -> tuple[Backlog, Any]:
    """``minutes`` of readings of ``n_patients`` in records of ``group`` readings as the gateway writes them:
    sealed under each patient's data key (created in one batch first, as enrolment does), or in clear text as
    written before sealing; with the data keys that open them (None: clear), which the caller stops."""
    keys = None
    if sealed:
        from wearwatch.datakeys import ensure_data_keys

        created = ensure_data_keys(settings, patient_ids(n_patients), timeout_s=120)
        log(f"  {created:,} data keys created")
        keys = sealing_keys(settings)
    return group_backlog(generate_backlog(n_patients, minutes, end_ms=end_ms), 8, group, keys), keys


def soak(n_patients: int, rate: float, duration_s: float, store: str = "memory", live_states: int = 0) -> None:
    """One worker fed at ``rate`` readings/s (in real time) for ``duration_s``, as the gateway writes them (sealed
    under each patient's data key, 12 readings per record); RSS, CPU and lag every 30 s, and RSS per patient."""
    from aiokafka import AIOKafkaProducer

    extra: dict[str, Any] = {"worker_store": store}
    if live_states:
        extra["worker_live_states"] = live_states
    settings = bench_settings("soak", partitions=8, **extra)
    ensure(settings, [settings.topic_vitals, settings.topic_commands, settings.topic_alerts,
                      settings.topic_minutes, settings.topic_dlq])
    minutes = rate * duration_s / (n_patients * READINGS_PER_PATIENT_MINUTE)
    backlog, keys = gateway_backlog(settings, n_patients, minutes)
    keys.stop()
    records = backlog.records
    log(f"soak: {n_patients:,} patients, {backlog.readings:,} readings in {len(records):,} sealed records at "
        f"{rate:,.0f} readings/s for {duration_s:.0f} s ({minutes:.1f} minutes of each patient's data); store "
        f"{store}, live states {live_states or 'all'}")
    w = spawn_worker(settings)
    off = Offsets(settings)
    # (s since the feed began, RSS MB, CPU %, committed lag, the RocksDB store's memory MB, patients held)
    rows: list[tuple[float, float, float, int, float, int]] = []
    deadline = time.monotonic() + 120
    while w.readings_processed() is None:  # its web server answers once it runs: RSS before any reading
        if not w.alive() or time.monotonic() > deadline:
            raise SystemExit(f"worker did not start:\n{w.tail()}")
        time.sleep(0.5)
    first_rss = proc_stat(w.pid).rss_mb
    last_cpu = (time.monotonic(), proc_stat(w.pid).cpu_s)

    def sample(el: float, sent: int) -> None:
        nonlocal last_cpu
        st = proc_stat(w.pid)
        now = time.monotonic()
        cpu_pct = 100 * (st.cpu_s - last_cpu[1]) / max(now - last_cpu[0], 1e-6)
        last_cpu = (now, st.cpu_s)
        lag = sent - off.committed(settings.app_id, settings.topic_vitals)
        got = w.metrics("wearwatch_store_memory_bytes", "wearwatch_worker_patients") or {}
        store_mb = got.get("wearwatch_store_memory_bytes", 0.0) / 2**20
        held = int(got.get("wearwatch_worker_patients", 0))
        rows.append((el, st.rss_mb, cpu_pct, lag, store_mb, held))
        log(f"  {el:4.0f} s  RSS {st.rss_mb:6.1f} MB (store {store_mb:4.1f})  CPU {cpu_pct:3.0f} %  lag {lag:,} "
            f"records  {held:,} patients held  load {loadavg()}")

    async def feed() -> None:
        prod = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
        await prod.start()
        per_record = duration_s / len(records)  # the readings' rate, in records
        t0 = time.monotonic()
        next_report = 0.0
        try:
            for i, (partition, k, v) in enumerate(records):
                due = t0 + i * per_record
                if due - time.monotonic() > 0.01:
                    await asyncio.sleep(due - time.monotonic())
                await prod.send(settings.topic_vitals, value=v, key=k, partition=partition)
                el = time.monotonic() - t0
                if el >= next_report:
                    next_report += 30
                    sample(el, i)
            await prod.flush()
        finally:
            await prod.stop()

    try:
        asyncio.run(feed())
        time.sleep(5)  # the last commit
        sample(duration_s + 5, len(records))
    finally:
        w.stop()
        off.close()
    print()
    # the store's memory moves with its memtables' flushes; RSS does not fall with it (the allocator keeps the
    # pages), so it is shown beside RSS, not taken off it
    print(table(["t (s)", "RSS MB", "RocksDB store MB", "CPU %", "lag (records)", "patients held"],
                [[f"{el:.0f}", rss, f"{sto:.1f}", f"{cpu:.0f}", f"{lag:,}", f"{held:,}"]
                 for el, rss, cpu, lag, sto, held in rows]))
    mid = [rss for el, rss, *_ in rows if el >= duration_s / 3]
    end_rss = rows[-1][1]
    print(f"\nRSS from minute {duration_s / 180:.0f} on: min {min(mid):.1f} MB, max {max(mid):.1f} MB "
          f"(growth {max(mid) - min(mid):.1f} MB); at the end {end_rss:.0f} MB, "
          f"{(end_rss - first_rss) * 1024 * 1024 / n_patients:,.0f} B per patient above the worker's RSS "
          f"before its first reading ({first_rss:.0f} MB)")
    last = [rss for el, rss, *_ in rows if el >= 2 * duration_s / 3]
    print(f"RSS over the last third, from minute {2 * duration_s / 180:.0f} on: min {min(last):.1f} MB, max "
          f"{max(last):.1f} MB (growth {max(last) - min(last):.1f} MB). The states and the RocksDB store's budget "
          "fill up over the first minutes, and cycles among objects older than a second wait for the worker's full "
          "collection (WEARWATCH_WORKER_GC_FULL_INTERVAL_S, 15 minutes); memory that keeps growing is a leak")
    print(log_summary(w.log_path.read_text(errors="replace")))


def log_summary(text: str, top: int = 5) -> str:
    """The worker log's warnings and errors, alike lines counted together (numbers read as N): what an
    operator's log-based alerting would have seen during the run."""
    seen: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        m = re.search(r"\[(WARNING|ERROR|CRITICAL)\] (.*)", line)
        if m:
            seen[f"[{m.group(1)}] {re.sub(r'[0-9]+(?:[.,][0-9]+)*', 'N', m.group(2).strip())[:110]}"] += 1
    if not seen:
        return "worker log: no WARNING or ERROR line"
    out = [f"worker log: {sum(seen.values()):,} WARNING/ERROR lines"]
    out += [f"  {n:6,}  {msg}" for msg, n in seen.most_common(top)]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--readings", type=int, nargs="*", default=[1_000_000],
                    help="backlog size (readings): one for every patient count, or one per --patients value")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure each prepared backlog this many times, the patient counts alternating (a new "
                         "worker and consumer group each time): the ratio between counts is then taken per round")
    ap.add_argument("--end-hour", type=float, default=20.0,
                    help="every backlog ends at the latest such hour of the day (UTC) before the run: the same "
                         "command gives the same readings on any day (default 20: daytime data)")
    ap.add_argument("--timeout", type=float, default=0.0,
                    help="seconds to give the worker per run (0: 150 s plus a second per 10,000 readings of the "
                         "backlog, room for a worker at a third of its usual rate)")
    ap.add_argument("--profile", action="store_true", help="sample the worker with py-spy for 30 s")
    ap.add_argument("--batch-size", type=int, nargs="*", default=[0],
                    help="WEARWATCH_WORKER_BATCH_SIZE values to run (0 = the default setting)")
    ap.add_argument("--group", type=int, nargs="*", default=[GATEWAY_GROUP],
                    help="readings per vitals.raw record in the backlog (1 = one record per reading)")
    ap.add_argument("--commit-interval", type=float, nargs="*", default=[0.0],
                    help="WEARWATCH_WORKER_COMMIT_INTERVAL_S values to run (0 = the default setting)")
    ap.add_argument("--store", choices=["memory", "rocksdb"], default="memory",
                    help="WEARWATCH_WORKER_STORE of the worker (the rocksdb store's data directory is the default one)")
    ap.add_argument("--live-states", type=int, default=0,
                    help="WEARWATCH_WORKER_LIVE_STATES of the worker (0 = every patient's state kept in memory)")
    ap.add_argument("--clear", action="store_true",
                    help="a backlog in clear text, as written before sealing (default: sealed, as the gateway does)")
    ap.add_argument("--state-write-readings", type=int, nargs="*", default=[-1],
                    help="WEARWATCH_WORKER_STATE_WRITE_READINGS values to run (-1 = the default setting; 0 = every "
                         "changed state at every commit)")
    ap.add_argument("--state-version", type=int, nargs="*", default=[-1],
                    help="WEARWATCH_WORKER_STATE_VERSION values to run (-1 = the default setting)")
    ap.add_argument("--variant", nargs="*", default=[], metavar="VERSION:READINGS",
                    help="(state version, state write readings) pairs to run instead of the product of the two "
                         "options above, e.g. 1:0 2:32 (the worker before write pacing and the current one)")
    ap.add_argument("--no-floors", action="store_true", help="skip the raw ceiling and the Faust floors")
    ap.add_argument("--soak", action="store_true", help="10-minute memory-flatness run instead")
    ap.add_argument("--soak-rate", type=float, default=2000.0)
    ap.add_argument("--soak-patients", type=int, default=10_000,
                    help="fewer patients = more history per patient in the same time (their states fill up in "
                         "~20 min of their data; after that memory must stay flat)")
    ap.add_argument("--soak-seconds", type=float, default=600.0)
    args = ap.parse_args()
    if args.soak:
        soak(args.soak_patients, args.soak_rate, args.soak_seconds, args.store, args.live_states)
        return 0
    log(f"load average before: {loadavg()}; store {args.store}")
    if len(args.readings) not in (1, len(args.patients)):
        ap.error("--readings takes one value, or one per --patients value")
    readings = dict(zip(args.patients, args.readings * len(args.patients)
                        if len(args.readings) == 1 else args.readings, strict=True))
    preps = [prepare(p, readings[p], run_timeout(args.timeout, readings[p]), b, g, c, not args.no_floors, args.store,
                     args.clear, args.end_hour, args.live_states)
             for p in args.patients for b in args.batch_size for g in args.group for c in args.commit_interval]
    rows = [row for r in range(1, args.rounds + 1) for prep in preps
            for row in measure(prep, run_timeout(args.timeout, prep.backlog.readings), args.profile,
                               tuple(args.state_write_readings), tuple(args.state_version),
                               tuple(_variant(v) for v in args.variant), r)]
    print(f"\nthroughput, one worker vs. raw aiokafka passthrough (load average after: {loadavg()})\n")
    print(table(HEAD, rows))
    summary = ratio_summary(rows)
    if summary:
        print(f"\nreadings processed per CPU-second, against {args.patients[0]:,} patients in the same round\n")
        print(table(["patients", "per CPU-s, each round", "ratio, each round", "ratio median", "ratio min"],
                    summary))
    return 0


def ratio_summary(rows: list[list[object]]) -> list[list[object]]:
    """Per patient count after the first: its readings per CPU-second in each round, the ratio to the first
    patient count's in the same round (the same worker settings), and the median and lowest ratio."""
    i_round, i_patients, i_cpu = HEAD.index("round"), HEAD.index("patients"), HEAD.index("per CPU-s")
    rate: dict[tuple[object, object], float] = {}
    counts: list[object] = []
    for row in rows:
        rate[(row[i_round], row[i_patients])] = float(row[i_cpu])  # type: ignore[arg-type]
        if row[i_patients] not in counts:
            counts.append(row[i_patients])
    rounds = sorted({r for r, _ in rate}, key=lambda r: int(r))  # type: ignore[call-overload]
    if len(counts) < 2:
        return []
    out: list[list[object]] = []
    for count in counts[1:]:
        ratios = [rate[(r, count)] / rate[(r, counts[0])] for r in rounds
                  if (r, count) in rate and (r, counts[0]) in rate]
        out.append([count, " · ".join(f"{rate[(r, count)] / 1000:.1f}k" for r in rounds if (r, count) in rate),
                    " · ".join(f"{x:.2f}" for x in ratios), statistics.median(ratios) if ratios else float("nan"),
                    min(ratios, default=float("nan"))])
    return out


if __name__ == "__main__":
    raise SystemExit(main())
