"""The console's live push under load, its start-up with 10,000 patients, and a patient history read.

Run: ``.venv/bin/python bench/bench_console_push.py [--rate 2000] [--seconds 60] [--patients 10000]``
(stack credentials in the environment: ``make bench`` does that).

1. **Push latency.** A gateway, a worker and a console run as subprocesses; the publisher of
   ``bench_latency.py`` sends single-reading MQTT messages at ``--rate`` (2,000/s), of which 20/s are
   *probes* (a new patient's glucose of 45 mg/dL opens one ``glucose_urgent_low`` alert). A bench
   client logged in to the console (a charge-nurse account made with the ``wearwatch users`` code)
   holds ``GET /api/events`` open. For every probe alert: time from the alert event landing on
   Kafka ``alerts`` (its record timestamp, set by the worker's producer) to the event stream
   delivering a ``patient`` event that holds it (wall clock of this process; same machine).
2. **Start-up.** ``--patients`` patients with open alerts (one or two each, built by the real alert
   lifecycle) are written to a fresh ``alerts.state``; a console is started on them: time to
   ``/readyz`` = 200, and to the first full ``/api/alerts`` answer of an admin account (goal ≤ 10 s).
   Then the locked screen's poll, ``GET /api/alarm-status`` (asked every 2 s by each locked page): the
   admin's (every ward) and a nurse's of one of the 20 wards.
3. **Patient history.** One ``alerts`` partition holding ``--history-events`` events (12,500 ≈ a day of
   a fleet raising 100,000 alert events a day over 8 partitions): time of ``GET /api/patients/{id}``'s
   history read (``console.history.patient_events``), the patient's own 24 events among them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import multiprocessing as mp
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_settings, ensure, free_port, loadavg, log, percentiles, spawn, spawn_worker, table
from bench_latency import PROBE_MGDL, Publisher, background_patients, wait_group_stable

from wearwatch.config import Settings

PASSWORD = "bench-password-0123456789"


class SteadyPublisher(Publisher):
    """``bench_latency``'s publisher (same readings, probes and pacing), counting a message paho could not
    queue (``ERR_QUEUE_SIZE`` when the machine is overloaded) instead of stopping on it."""

    def run(self) -> None:
        bg_rate = self.rate - self.probe_rate
        n_patients = max(1, int(bg_rate * 60 / 13.2))  # heart rate 12/min, steps 1/min, glucose 0.2/min each
        t0 = time.monotonic()
        i = probes = 0
        self.unqueued = 0
        infos: list[Any] = []
        while not self.stop_event.is_set():
            delay = t0 + i / self.rate - time.monotonic()
            if delay > 0.002:
                time.sleep(delay)
            else:
                self.behind_max_s = max(self.behind_max_s, -delay)
            now_ms = int(time.time() * 1000)
            if probes < (i + 1) * self.probe_rate / self.rate:
                pid = f"probe-{self.run_tag}-{probes}"
                probes += 1
                payload: dict[str, Any] = {"patient_id": pid, "signal": "glucose", "value": PROBE_MGDL,
                                           "unit": "mg/dL", "ts": now_ms}
                if now_ms >= self.measure_from_ms:
                    self.probes[pid] = now_ms
            else:
                k = i % (n_patients * 66)
                p, slot = k % n_patients, k // n_patients
                pid = f"bg-{self.run_tag}-{p:05d}"
                signal, value, unit = (("heart_rate", 62.0 + (i * 7919 % 17), "bpm") if slot < 60 else
                                       ("steps", float(i % 40), "steps") if slot < 65 else
                                       ("glucose", 105.0 + (i % 20), "mg/dL"))
                payload = {"patient_id": pid, "signal": signal, "value": value, "unit": unit, "ts": now_ms}
            infos.append(self.client.publish(f"wearwatch/v1/vitals/sim/{payload['patient_id']}",
                                             orjson.dumps(payload), qos=1))
            i += 1
            self.sent = i
            if i % 1000 == 0:
                infos = [x for x in infos if not self._settled(x)]
        for x in infos:
            with contextlib.suppress(ValueError, RuntimeError):
                x.wait_for_publish(10)

    def _settled(self, info: Any) -> bool:
        try:
            return bool(info.is_published())
        except ValueError:  # never queued: lost (counted)
            self.unqueued += 1
            return True


def publish_process(settings: Settings, rate: float, probe_rate: float, run: str, warmup_s: float,
                    duration_s: float, out: Any) -> None:
    """Child process: publish for ``warmup_s + duration_s``; put (sent, behind_max_s, probes) on ``out``."""
    pub = SteadyPublisher(settings, rate, probe_rate, run, background_patients(rate, probe_rate))
    t0 = time.time()
    pub.measure_from_ms = int((t0 + warmup_s) * 1000)
    pub.start()
    while time.time() < t0 + warmup_s + duration_s:
        time.sleep(0.5)
        out.put(("progress", pub.sent, len(pub.probes)))
    pub.stop()
    out.put(("done", pub.sent / (time.time() - t0), pub.behind_max_s, dict(pub.probes)))


def add_user(settings: Settings, name: str, role: str, ward: str) -> None:
    from console.users import apply_change

    apply_change(settings, "add", name, actor="cli:bench", role=role, wards=[ward], password=PASSWORD)


def wait_ready(base: str, timeout_s: float = 120.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise SystemExit(f"console at {base} never became ready")


def login(base: str, name: str) -> str:
    req = urllib.request.Request(base + "/api/login", data=orjson.dumps({"username": name, "password": PASSWORD}),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        cookie = next(c for c in r.headers.get_all("Set-Cookie") if c.startswith("ww_session="))
    return cookie.split(";")[0].split("=", 1)[1]


class Stream(threading.Thread):
    """``/api/events``: first wall time (ms) each (alert_id, revision) arrived in a ``patient`` event."""

    def __init__(self, port: int, cookie: str) -> None:
        super().__init__(daemon=True)
        self.port, self.cookie = port, cookie
        self.seen: dict[tuple[str, int], int] = {}
        self.events = 0

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.request("GET", "/api/events", headers={"Cookie": f"ww_session={self.cookie}"})
        resp = conn.getresponse()
        event, data = "", ""
        while True:
            line = resp.readline()
            if not line:
                return
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                event = text[7:]
            elif text.startswith("data: "):
                data = text[6:]
            elif text == "" and data:
                now = int(time.time() * 1000)
                if event == "patient":
                    self.events += 1
                    for a in json.loads(data)["alerts"]:
                        self.seen.setdefault((a["alert_id"], a["revision"]), now)
                event, data = "", ""


async def alert_times(settings: Settings, stop: asyncio.Event, out: dict[tuple[str, int], tuple[int, str]]) -> None:
    """Every probe alert's opening event on Kafka ``alerts``: (alert_id, revision) -> (record timestamp, patient)."""
    from aiokafka import AIOKafkaConsumer

    cons = AIOKafkaConsumer(settings.topic_alerts, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                            auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=20)
    await cons.start()
    try:
        while not stop.is_set():
            for recs in (await cons.getmany(timeout_ms=100)).values():
                for r in recs:
                    ev = orjson.loads(r.value)
                    if ev["patient_id"].startswith("probe-") and ev["state"] == "open":
                        out.setdefault((ev["alert_id"], ev["revision"]), (r.timestamp, ev["patient_id"]))
    finally:
        await cons.stop()


def push_latency(args: argparse.Namespace) -> list[list[Any]]:
    settings = bench_settings("push", partitions=8, console_port=free_port(),
                              console_secret="bench-console-secret-0123456789-abcdef")
    run = settings.app_id.rsplit("-", 1)[-1]
    ensure(settings, [settings.topic_vitals, settings.topic_commands, settings.topic_alerts,
                      settings.topic_minutes, settings.topic_dlq])
    add_user(settings, "bench.charge", "charge_nurse", "unassigned")  # probes are not enrolled
    log(f"push: load average {loadavg()}; starting gateway, worker and console (prefix {settings.topic_prefix})")
    gw = spawn("gateway", settings, "gateway")
    wk = spawn_worker(settings)
    console = spawn("console", settings, "console")
    base = f"http://127.0.0.1:{settings.console_port}"
    try:
        wait_group_stable(settings)
        wait_ready(base)
        stream = Stream(settings.console_port, login(base, "bench.charge"))
        stream.start()
        ctx = mp.get_context("spawn")
        q: Any = ctx.Queue()
        child = ctx.Process(target=publish_process, args=(settings, args.rate, 20.0, run, args.warmup,
                                                          args.seconds, q), daemon=True)
        kafka_ts: dict[tuple[str, int], tuple[int, str]] = {}
        result: dict[str, Any] = {}

        async def drive() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(alert_times(settings, stop, kafka_ts))
            child.start()
            last = 0.0
            done = None
            while done is None:
                await asyncio.sleep(0.5)
                while not q.empty():
                    msg = q.get()
                    if msg[0] == "done":
                        done = msg
                    elif time.monotonic() - last >= 10:
                        last = time.monotonic()
                        log(f"  sent {msg[1]:,}; probe alerts on Kafka {len(kafka_ts):,}, on the console's stream "
                            f"{sum(1 for k in kafka_ts if k in stream.seen):,}; load {loadavg()}")
                if done is None and not child.is_alive() and q.empty():
                    raise SystemExit("publisher died")
            _, rate, behind, probes = done
            result.update(rate=rate, behind=behind, probes=probes)
            tail = time.monotonic() + 15
            while time.monotonic() < tail and any(k not in stream.seen for k in kafka_ts):
                await asyncio.sleep(0.5)
            stop.set()
            await task

        asyncio.run(drive())
        child.join(10)
    finally:
        console.stop()
        wk.stop()
        gw.stop()
    measured = set(result["probes"])  # probes sent after the warm-up
    lat = [float(stream.seen[k] - ts) for k, (ts, pid) in kafka_ts.items() if k in stream.seen and pid in measured]
    lost = [k for k in kafka_ts if k not in stream.seen]
    print(f"\npush: {args.rate:,.0f} readings/s offered over MQTT ({result['rate']:,.0f}/s achieved, publisher at most "
          f"{result['behind']:.2f} s behind); {len(measured):,} probes in the measured window, {len(kafka_ts):,} "
          f"probe alerts on Kafka in all, {len(lost)} never on the stream; {stream.events:,} patient events; "
          f"load average {loadavg()}")
    p50, p95, p99 = percentiles(lat)
    return [["Kafka alerts (record time) → console SSE client", len(lat), p50, p95, p99, max(lat, default=0.0)]]


def state_records(n: int) -> list[tuple[bytes, bytes]]:
    """``alerts.state`` records of ``n`` patients with one or two open alerts, made by the real lifecycle."""
    from alerts.lifecycle import AlertBook
    from alerts.mqtt import state_payload
    from detectors.base import Audience, Finding, Priority

    t0 = int(time.time() * 1000) - 3_600_000
    out = []
    for i in range(n):
        pid = f"boot-{i:05d}"
        book = AlertBook(pid, ward=f"W{i % 20:02d}")
        book.on_finding(Finding("glucose_low", "glucose", Priority.MEDIUM, Audience.CLINICAL, t0 + i, t0 + i, "rule",
                                "Low glucose: 62 mg/dL, below 70 for 20 min (trend -1.0 mg/dL/min)", value=62.0,
                                threshold=70.0, window_s=1200.0, trend_per_min=-1.0), t0 + i)
        if i % 2:
            book.on_finding(Finding("tachycardia_at_rest", "heart_rate", Priority.HIGH, Audience.CLINICAL, t0 + i,
                                    t0 + i, "rule", "High heart rate at rest: 142 bpm, above 120 for 12 min",
                                    value=142.0, threshold=120.0, window_s=720.0), t0 + i)
        out.append((pid.encode(), state_payload(pid, book.ward or "unassigned", book.open_alerts(), t0 + i)))
    return out


def start_up(args: argparse.Namespace) -> list[list[Any]]:
    from console.topics import ensure_console_topics
    from wearwatch.transport import kafka_producer

    settings = bench_settings("boot", partitions=8, console_port=free_port(),
                              console_secret="bench-console-secret-0123456789-abcdef")
    ensure_console_topics(settings)
    add_user(settings, "bench.admin", "admin", "IT")
    add_user(settings, "bench.nurse", "nurse", "W00")
    records = state_records(args.patients)
    alerts = sum(len(orjson.loads(v)["alerts"]) for _, v in records)
    ward_alerts = sum(len(doc["alerts"]) for _, v in records if (doc := orjson.loads(v))["ward"] == "W00")
    size = sum(len(v) for _, v in records)
    prod = kafka_producer(settings)
    for k, v in records:
        prod.send(settings.topic_alert_state, key=k, value=v)
    prod.flush(120)
    prod.close()
    log(f"start-up: {args.patients:,} patients, {alerts:,} open alerts, {size / 1e6:.1f} MB in alerts.state")
    rows = []
    for attempt in range(2):
        t0 = time.monotonic()
        console = spawn(f"console-{attempt}", settings, "console")
        base = f"http://127.0.0.1:{settings.console_port}"
        try:
            t_ready = wait_ready(base)
            cookie = login(base, "bench.admin")
            req = urllib.request.Request(base + "/api/alerts", headers={"Cookie": f"ww_session={cookie}"})
            t1 = time.monotonic()
            with urllib.request.urlopen(req, timeout=60) as r:
                body = orjson.loads(r.read())
            t_served = time.monotonic()
            assert len(body["alerts"]) == alerts, (len(body["alerts"]), alerts)
            assert len({a["patient_id"] for a in body["alerts"]}) == args.patients
            locked = [alarm_status(base, cookie, alerts, "admin"),
                      alarm_status(base, login(base, "bench.nurse"), ward_alerts, "one ward")]
        finally:
            console.stop()
        rows.append([f"start-up {attempt + 1}: process start → /readyz 200", args.patients, t_ready - t0])
        rows.append([f"start-up {attempt + 1}: process start → full /api/alerts ({alerts:,} rows)", args.patients,
                     t_served - t0])
        rows.append([f"start-up {attempt + 1}: one full /api/alerts answer", args.patients, t_served - t1])
        rows.extend(locked)
    return rows


def alarm_status(base: str, cookie: str, alerts: int, who: str, n: int = 50) -> list[Any]:
    """The locked screen's poll: the median of ``n`` ``GET /api/alarm-status`` answers (counts over ``alerts``)."""
    took = []
    for _ in range(n):
        req = urllib.request.Request(base + "/api/alarm-status", headers={"Cookie": f"ww_session={cookie}"})
        t = time.monotonic()
        with urllib.request.urlopen(req, timeout=30) as r:
            doc = orjson.loads(r.read())
        took.append(time.monotonic() - t)
    assert sum(doc["counts"].values()) == alerts, (doc["counts"], alerts)
    took.sort()
    median, worst = took[n // 2] * 1000, took[-1] * 1000
    return [f"  /api/alarm-status, {who}: {n} answers, median {median:.1f} ms, max {worst:.1f} ms", alerts,
            took[n // 2]]


def history(args: argparse.Namespace) -> list[list[Any]]:
    from alerts.lifecycle import AlertBook
    from console.history import patient_events
    from detectors.base import Audience, Finding, Priority
    from wearwatch.transport import kafka_producer

    settings = bench_settings("hist", partitions=8)
    ensure(settings, [settings.topic_alerts])
    target = "hist-target"
    from aiokafka.partitioner import murmur2

    part = (murmur2(target.encode()) & 0x7FFFFFFF) % 8
    t0 = int(time.time() * 1000) - 20 * 3_600_000
    prod = kafka_producer(settings)
    n = 0
    for i in range(args.history_events):
        pid = target if i % (args.history_events // 24) == 0 else f"hist-{i % 500}"
        book = AlertBook(pid, ward="3B")
        (ev,) = book.on_finding(Finding("glucose_low", "glucose", Priority.MEDIUM, Audience.CLINICAL, t0 + i, t0 + i,
                                        "rule", "Low glucose: 62 mg/dL, below 70", value=62.0, threshold=70.0),
                                t0 + i)
        prod.send(settings.topic_alerts, key=ev.record_key, value=ev.to_json(), partition=part)
        n += pid == target
    prod.flush(120)
    prod.close()
    rows = []
    for attempt in range(3):
        t = time.monotonic()
        events = asyncio.run(patient_events(settings, 8, target, int(time.time() * 1000) - 24 * 3_600_000))
        took = time.monotonic() - t
        assert len(events) == n, (len(events), n)
        rows.append([f"history {attempt + 1}: {args.history_events:,} events in the partition, {n} the patient's",
                     n, took])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=2000.0, help="readings per second over MQTT")
    ap.add_argument("--seconds", type=float, default=60.0, help="measured seconds of push")
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--patients", type=int, default=10_000, help="patients with open alerts at start-up")
    ap.add_argument("--history-events", type=int, default=12_500)
    ap.add_argument("--skip-push", action="store_true")
    args = ap.parse_args()

    push_rows = [] if args.skip_push else push_latency(args)
    boot_rows = start_up(args)
    hist_rows = history(args)
    if push_rows:
        print("\nlive push (goal: p99 ≤ 1,000 ms)\n")
        print(table(["path", "alerts", "p50 ms", "p95 ms", "p99 ms", "max ms"], push_rows))
    print(f"\nconsole start-up with {args.patients:,} patients with open alerts (goal: served ≤ 10 s), and history "
          "reads\n")
    print(table(["what", "patients/events", "seconds"], boot_rows + hist_rows))
    print(f"\nload average at the end: {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
