"""End-to-end latency under load: MQTT → gateway → Kafka → worker → Kafka ``alerts`` → InfluxDB.

Run: ``.venv/bin/python bench/bench_latency.py [--rate 2000] [--seconds 60] [--patients 100000]``
(stack credentials in the environment: ``make bench`` does that).

A publisher (paho, QoS 1, vendor account ``sim``) sends single-reading MQTT
messages at a fixed total rate: background patients with heart rate every 5 s,
steps every minute and glucose every 5 minutes (the rate sets how many
patients that takes; 2,000/s ≈ 9,100 patients; ``--patients N`` spreads the same
rate over N patients instead, each then sending less often: a worker holding a
large fleet's states at a modest rate), plus **probes**: a fresh
patient whose first reading is a glucose of 45 mg/dL, which opens exactly one
``glucose_urgent_low`` alert. Every reading carries its send time as ``ts``
(epoch ms), and an alert's ``ts_ms`` is the time of the reading that raised it, so

* latency to Kafka = wall time the bench's consumer of ``alerts`` received the
  event − ``ts_ms`` (the record's CreateTime − ``ts_ms`` is printed as well: it
  excludes the bench consumer's own fetch delay);
* latency to InfluxDB = wall time the point first answered an InfluxQL query
  (polled every 100 ms) − ``ts_ms``.

One gateway and one worker, as subprocesses; the first ``--warmup`` seconds are
not measured. Note: on a shared machine every running gateway (also other
people's test gateways) receives every vitals message of the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    LOGS,
    bench_settings,
    ensure,
    influxql,
    loadavg,
    log,
    percentiles,
    proc_stat,
    spawn,
    spawn_worker,
    start_pyspy,
    summarize_collapsed,
    table,
)

from wearwatch.config import Settings

PROBE_MGDL = 45.0


def background_patients(rate: float, probe_rate: float) -> int:
    """How many patients send ``rate - probe_rate`` readings/s at the devices' cadence (heart rate 12/min, steps
    1/min, glucose 0.2/min: 13.2 readings a minute each)."""
    return max(1, int((rate - probe_rate) * 60 / 13.2))


def background_id(run: str, p: int) -> str:
    return f"bg-{run}-{p:05d}"


def probe_id(run: str, n: int) -> str:
    return f"probe-{run}-{n}"


def probe_docs(value: bytes, probe_cipher: Any) -> list[Any]:
    """The readings documents of a ``vitals.raw`` record that are probes': a sealed record's entries under a
    probe's key (``probe_cipher`` gives no cipher for the others, which stay closed), a clear record as it is."""
    from wearwatch.datakeys import is_sealed, open_entries

    if not is_sealed(value):
        return [orjson.loads(value)] if b"probe-" in value else []
    return [orjson.loads(p) for _, p in open_entries(value, "vitals.raw", probe_cipher) if p is not None]


def wait_group_stable(settings: Settings, timeout_s: float = 90.0) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap.split(","), client_id="wearwatch-bench")
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:  # kafka-python 3.x: list_groups() gives dicts with group_id and group_state
                states = {g["group_id"]: g.get("group_state") for g in admin.list_groups()}
                if states.get(settings.app_id) == "Stable":
                    return
            except Exception:  # broker restarting
                pass
            time.sleep(0.5)
        raise SystemExit("worker's consumer group never became stable")
    finally:
        admin.close()


class Publisher(threading.Thread):
    """Publishes background readings and probes at ``rate`` per second until stopped (in its own process)."""

    def __init__(self, settings: Settings, rate: float, probe_rate: float, run: str, patients: int) -> None:
        super().__init__(daemon=True)
        from wearwatch.transport import mqtt_client, mqtt_connect

        self.rate, self.probe_rate, self.run_tag = rate, probe_rate, run
        self.n_patients = patients
        password = os.environ.get("STACK_MQTT_PASSWORD_SIM")
        self.client = mqtt_client(settings, f"ww-bench-pub-{run}", username="sim", password=password)
        self.client.max_inflight_messages_set(2000)
        mqtt_connect(self.client, settings)
        self.stop_event = threading.Event()
        self.sent = 0
        self.probes: dict[str, int] = {}  # probe patient id -> send ms
        self.measure_from_ms = 1 << 62
        self.behind_max_s = 0.0

    def run(self) -> None:
        n_patients = self.n_patients
        t0 = time.monotonic()
        i = probes = 0
        infos: list[Any] = []
        while not self.stop_event.is_set():
            due = t0 + i / self.rate
            delay = due - time.monotonic()
            if delay > 0.002:
                time.sleep(delay)
            else:
                self.behind_max_s = max(self.behind_max_s, -delay)
            now_ms = int(time.time() * 1000)
            if probes < (i + 1) * self.probe_rate / self.rate:
                pid = probe_id(self.run_tag, probes)
                probes += 1
                payload = {"patient_id": pid, "signal": "glucose", "value": PROBE_MGDL, "unit": "mg/dL", "ts": now_ms}
                if now_ms >= self.measure_from_ms:
                    self.probes[pid] = now_ms
            else:
                k = i % (n_patients * 66)  # 66 readings per patient per 5 min: 60 hr, 5 steps, 1 glucose
                p, slot = k % n_patients, k // n_patients
                pid = background_id(self.run_tag, p)
                if slot < 60:
                    payload = {"patient_id": pid, "signal": "heart_rate", "value": 62.0 + (i * 7919 % 17),
                               "unit": "bpm", "ts": now_ms}
                elif slot < 65:
                    payload = {"patient_id": pid, "signal": "steps", "value": float(i % 40), "unit": "steps",
                               "ts": now_ms}
                else:
                    payload = {"patient_id": pid, "signal": "glucose", "value": 105.0 + (i % 20), "unit": "mg/dL",
                               "ts": now_ms}
            infos.append(self.client.publish(f"wearwatch/v1/vitals/sim/{payload['patient_id']}",
                                             orjson.dumps(payload), qos=1))
            i += 1
            self.sent = i
            if i % 1000 == 0:
                infos = [x for x in infos if not x.is_published()]
        for x in infos:  # everything sent must reach the broker before the disconnect
            x.wait_for_publish(10)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)
        self.client.disconnect()
        self.client.loop_stop()


def publish_process(settings: Settings, rate: float, probe_rate: float, run: str, warmup_s: float,
                    duration_s: float, out: Any, patients: int) -> None:
    """Child process: publish for ``warmup_s + duration_s``; put (sent, behind_max_s, probes) on ``out``."""
    pub = Publisher(settings, rate, probe_rate, run, patients)
    t0 = time.time()
    pub.measure_from_ms = int((t0 + warmup_s) * 1000)
    pub.start()
    while time.time() < t0 + warmup_s + duration_s:
        time.sleep(0.5)
        out.put(("progress", pub.sent, len(pub.probes)))
    pub.stop()
    out.put(("done", pub.sent / (time.time() - t0), pub.behind_max_s, dict(pub.probes)))


async def consume_alerts(settings: Settings, probe_cipher: Any, stop: asyncio.Event,
                         seen: dict[str, tuple[int, int, int]],
                         alert_ids: dict[str, str], raw: dict[str, tuple[int, int, int, int]]) -> None:
    """Every probe alert on Kafka ``alerts``: patient -> (ts_ms, received wall ms, record CreateTime);
    every probe reading on ``vitals.raw``: patient -> (ts_ms, gateway received_ms, CreateTime, received wall ms)."""
    from aiokafka import AIOKafkaConsumer

    cons = AIOKafkaConsumer(settings.topic_alerts, settings.topic_vitals, bootstrap_servers=settings.kafka_bootstrap,
                            auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=5,
                            group_id=None)
    await cons.start()
    try:
        while not stop.is_set():
            batches = await cons.getmany(timeout_ms=50)
            now = int(time.time() * 1000)
            for tp, recs in batches.items():
                if tp.topic == settings.topic_vitals:
                    for r in recs:
                        for doc in probe_docs(r.value, probe_cipher):  # one reading, or a batch (the gateway groups)
                            for rd in doc.get("readings", [doc]):
                                if rd["patient_id"].startswith("probe-"):
                                    raw[rd["patient_id"]] = (rd["ts_ms"], rd["received_ms"], r.timestamp, now)
                    continue
                for r in recs:
                    ev = orjson.loads(r.value)
                    if ev["patient_id"].startswith("probe-") and ev["state"] == "open":
                        seen.setdefault(ev["patient_id"], (ev["ts_ms"], now, r.timestamp))
                        alert_ids.setdefault(ev["alert_id"], ev["patient_id"])
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await cons.stop()


def poll_influx(settings: Settings, start_ms: int, stop: threading.Event, seen: dict[str, int],
                ids: dict[str, str], took_ms: list[float]) -> None:
    """InfluxQL every 100 ms: alert_id -> wall ms the point was first seen (``took_ms``: each query's time).

    Only points of the last 20 s are asked for (a point's time is its reading's): asking for all since the
    start made each query slower as the run went on, and the query time counts into the figure."""
    db = settings.influx_bucket.split("/")[0]
    while not stop.is_set():
        t = time.time()
        q = f"SELECT alert_id FROM alerts WHERE time >= {max(start_ms, int(t * 1000) - 20_000)}ms"
        try:
            doc = influxql(settings, q, timeout_s=5, db=db, epoch="ms")
            now = int(time.time() * 1000)
            took_ms.append(now - t * 1000)
            for res in doc.get("results", []):
                for series in res.get("series", []):
                    for _ts, aid in series.get("values", []):
                        if aid in ids and aid not in seen:
                            seen[aid] = now
        except OSError:
            pass
        time.sleep(max(0.0, 0.1 - (time.time() - t)))


def plot_probes(probes: dict[str, int], raw: dict[str, tuple[int, int, int, int]],
                alerts: dict[str, tuple[int, int, int]], out: Path) -> Path:
    """Each probe's latency over the run, split into MQTT → ``vitals.raw`` and the worker: a stall shows
    as a falling ramp of probes that all came out at the same moment, and when it happened."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min(probes.values(), default=0)
    xs, gw, wk = [], [], []
    for p, ts in sorted(probes.items(), key=lambda kv: kv[1]):
        if p in raw and p in alerts:
            xs.append((ts - t0) / 1000)
            gw.append(raw[p][2] - ts)
            wk.append(alerts[p][2] - raw[p][2])
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.stackplot(xs, gw, wk, labels=["MQTT → gateway → Kafka vitals.raw", "vitals.raw → worker → Kafka alerts"],
                 colors=["#ff7f0e", "#1f77b4"], alpha=0.8)
    ax.axhline(500, color="#d62728", linestyle="--", linewidth=1, label="p99 target (500 ms)")
    ax.set_xlabel("probe sent (s into the measured window)")
    ax.set_ylabel("latency to Kafka alerts (ms)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=2000.0, help="readings per second over MQTT")
    ap.add_argument("--probe-rate", type=float, default=20.0, help="alert-raising probes per second (in the rate)")
    ap.add_argument("--seconds", type=float, default=60.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--patients", type=int, default=0,
                    help="background patients (0: as many as the rate takes at the devices' cadence)")
    ap.add_argument("--unenrolled-probes", action="store_true",
                    help="probes not enrolled: the gateway creates each probe's data key at its first reading")
    ap.add_argument("--profile", action="store_true", help="sample the worker with py-spy while measuring")
    args = ap.parse_args()

    settings = bench_settings("lat", partitions=8)
    run = settings.app_id.rsplit("-", 1)[-1]
    ensure(settings, [settings.topic_vitals, settings.topic_commands, settings.topic_alerts,
                      settings.topic_minutes, settings.topic_dlq])
    n_patients = args.patients or background_patients(args.rate, args.probe_rate)
    from wearwatch.datakeys import DataKeys, ensure_data_keys

    # every patient is enrolled, so their data keys exist before their first reading (the gateway creates one
    # only for a patient met without); the bench follows the keys to open the probes' readings on vitals.raw
    t = time.monotonic()
    probe_ids = [probe_id(run, n) for n in range(int(args.probe_rate * (args.warmup + args.seconds + 5)) + 50)]
    enrolled = [background_id(run, p) for p in range(n_patients)] + ([] if args.unenrolled_probes else probe_ids)
    ensure_data_keys(settings, enrolled, timeout_s=120)
    keys = DataKeys(settings, name="bench-datakeys")
    keys.start()
    if not keys.wait_ready(60):
        sys.exit("could not read the run's datakeys topic")
    log(f"{len(enrolled):,} patients enrolled in {time.monotonic() - t:.1f} s"
        f"{' (the probes not: the gateway creates their keys)' if args.unenrolled_probes else ''}")

    def probe_cipher(key_id: bytes) -> Any:
        owner = keys.ring.owner(key_id)
        if owner is None and args.unenrolled_probes:  # a key the gateway created moments ago: wait for it
            keys.cipher_of(key_id)
            owner = keys.ring.owner(key_id)
        return keys.ring.cipher(key_id) if owner is not None and owner.startswith("probe-") else None
    log(f"load average before: {loadavg()}; starting gateway and worker (prefix {settings.topic_prefix})")
    gw = spawn("gateway", settings, "gateway")
    wk = spawn_worker(settings)
    try:
        wait_group_stable(settings)
        log("worker ready; publishing")
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        q: Any = ctx.Queue()
        child = ctx.Process(target=publish_process, args=(settings, args.rate, args.probe_rate, run, args.warmup,
                                                          args.seconds, q, n_patients), daemon=True)
        start_ms = int(time.time() * 1000)
        kafka_seen: dict[str, tuple[int, int, int]] = {}
        influx_seen: dict[str, int] = {}
        influx_took: list[float] = []
        alert_ids: dict[str, str] = {}
        raw_seen: dict[str, tuple[int, int, int, int]] = {}
        stop_t = threading.Event()
        influx_t = threading.Thread(target=poll_influx, args=(settings, start_ms, stop_t, influx_seen, alert_ids,
                                                                         influx_took),
                                    daemon=True)
        results: dict[str, Any] = {}

        async def drive() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(consume_alerts(settings, probe_cipher, stop, kafka_seen, alert_ids, raw_seen))
            child.start()
            influx_t.start()
            spy = start_pyspy(wk.pid, LOGS / f"{settings.app_id}.pyspy.txt", int(args.warmup + args.seconds)) \
                if args.profile else None
            c0 = (proc_stat(wk.pid).cpu_s, proc_stat(gw.pid).cpu_s, time.monotonic())
            last = 0.0
            done: Any = None
            while done is None:
                await asyncio.sleep(0.5)
                while not q.empty():
                    msg = q.get()
                    if msg[0] == "done":
                        done = msg
                    elif time.monotonic() - last >= 10:
                        last = time.monotonic()
                        log(f"  sent {msg[1]:,}, probe alerts on Kafka {len(kafka_seen):,}, in InfluxDB "
                            f"{len(influx_seen):,}; load {loadavg()}")
                if not child.is_alive() and done is None and q.empty():
                    raise SystemExit("publisher died")
            el = time.monotonic() - c0[2]
            results.update(cpu_worker=(proc_stat(wk.pid).cpu_s - c0[0]) / el,
                           cpu_gateway=(proc_stat(gw.pid).cpu_s - c0[1]) / el,
                           rss_worker=proc_stat(wk.pid).rss_mb)
            _, rate, behind, probes = done
            if spy is not None:
                spy.wait(30)
                print(summarize_collapsed(LOGS / f"{settings.app_id}.pyspy.txt"), flush=True)
            results.update(rate=rate, behind=behind, probes=probes)
            wait_end = time.monotonic() + 15  # let the tail arrive
            while time.monotonic() < wait_end and (
                    len([p for p in probes if p in kafka_seen]) < len(probes) or len(influx_seen) < len(probes)):
                await asyncio.sleep(0.5)
            stop.set()
            await task

        asyncio.run(drive())
        stop_t.set()
        child.join(10)
    finally:
        keys.stop()
        wk.stop()
        gw.stop()

    probes: dict[str, int] = results["probes"]
    sent_rate = results["rate"]
    to_kafka = [kafka_seen[p][1] - ts for p, ts in probes.items() if p in kafka_seen]
    to_kafka_ct = [kafka_seen[p][2] - ts for p, ts in probes.items() if p in kafka_seen]
    id_of = {pid: aid for aid, pid in alert_ids.items()}
    to_influx = [influx_seen[id_of[p]] - ts for p, ts in probes.items() if id_of.get(p) in influx_seen]
    mqtt_gw = [raw_seen[p][1] - ts for p, ts in probes.items() if p in raw_seen]
    gw_kafka = [raw_seen[p][2] - ts for p, ts in probes.items() if p in raw_seen]
    worker = [kafka_seen[p][2] - raw_seen[p][2] for p in probes if p in raw_seen and p in kafka_seen]
    trace = LOGS / f"{settings.app_id}.probes.csv"
    with open(trace, "w", encoding="utf-8") as f:  # one row per probe: where its time went (for plots)
        f.write("send_ms,gateway_ms,vitals_create_ms,vitals_seen_ms,alert_create_ms,alert_seen_ms\n")
        for p, ts in sorted(probes.items(), key=lambda kv: kv[1]):
            r, k = raw_seen.get(p), kafka_seen.get(p)
            cells = [ts, *(r[1:4] if r else ("", "", "")), *((k[2], k[1]) if k else ("", ""))]
            f.write(",".join(map(str, cells)) + "\n")
    png = plot_probes(probes, raw_seen, kafka_seen, LOGS / f"{settings.app_id}.probes.png")
    log(f"per-probe times: {trace}; timeline: {png}")
    rows = []
    for name, xs in (("  MQTT → gateway (received_ms)", mqtt_gw),
                     ("  MQTT → Kafka vitals.raw (CreateTime)", gw_kafka),
                     ("  vitals.raw → alerts (CreateTimes: worker)", worker),
                     ("MQTT → Kafka alerts (bench consumer)", to_kafka),
                     ("MQTT → Kafka alerts (record CreateTime)", to_kafka_ct),
                     ("MQTT → InfluxDB alerts point (100 ms poll)", to_influx)):
        p50, p95, p99 = percentiles([float(x) for x in xs])
        rows.append([name, len(xs), f"{len(probes):,}", p50, p95, p99, float(max(xs, default=0))])
    print(f"\nend-to-end latency at {args.rate:,.0f} readings/s offered over MQTT ({sent_rate:,.0f}/s achieved, "
          f"{n_patients:,} background patients, worker RSS {results.get('rss_worker', 0):,.0f} MB, "
          f"publisher at most {results['behind']:.2f} s behind schedule), {args.seconds:.0f} s measured; "
          f"worker CPU {100 * results.get('cpu_worker', 0):.0f} %, gateway CPU "
          f"{100 * results.get('cpu_gateway', 0):.0f} %; load average {loadavg()}\n")
    print(table(["path", "alerts", "probes", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows))
    q50, _, q99 = percentiles(influx_took)
    print(f"(an InfluxDB poll query took p50 {q50:.0f} / p99 {q99:.0f} ms; polls every 100 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
