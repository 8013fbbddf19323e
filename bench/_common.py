"""Shared pieces of the pipeline benchmarks (throughput, latency, scale-out).

Everything runs against the real local stack (``make stack-up``), with a unique
topic prefix and Faust app id per run so nothing collides with tests running
at the same time. The worker is started as a real ``wearwatch worker``
subprocess; its progress is read from the outside (consumer-group offsets via
kafka-python's admin client, CPU and RSS via ``/proc``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ingest.scenarios import simulate_patient  # noqa: E402
from wearwatch.config import Settings, load_settings  # noqa: E402
from wearwatch.contract.units import MMOL_TO_MGDL  # noqa: E402

LOGS = ROOT / "out" / "bench-logs"
_SIGNALS = ("heart_rate", "glucose", "steps")
_UNITS = ("bpm", "mg/dL", "mmol/L", "steps")
_CANONICAL = ("bpm", "mg/dL", "steps")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

Record = tuple[bytes, bytes]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """This process's resident set size now (bytes)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def bench_settings(tag: str, partitions: int = 8, **overrides: Any) -> Settings:
    """Settings for one bench run: the stack's credentials plus unique names."""
    if not os.environ.get("WEARWATCH_MQTT_PASSWORD"):
        sys.exit("stack credentials missing: run `make bench`, or `set -a; . .stack/credentials.env; set +a` first")
    run = f"{tag}{uuid.uuid4().hex[:6]}"
    base: dict[str, Any] = {
        "topic_prefix": f"b{run}.",
        "app_id": f"ww-bench-{run}",
        "mqtt_client_id": f"ww-gw-bench-{run}",
        # a database of its own, dropped at exit: the shared one holds every earlier run's series
        # (314k on the development stack), which made InfluxDB queries take ~0.5 s under load
        "influx_bucket": f"wwbench_{run}",
        "web_port": free_port(),
        "gateway_http_port": free_port(),  # its health/metrics/FHIR server: never the default port of a running one
        "pseudonym_key": f"bench-key-{run}-0123456789",
        "partitions": partitions,
        "log_level": os.environ.get("WEARWATCH_BENCH_LOG_LEVEL", "WARNING"),
    }
    base.update(overrides)
    settings = load_settings(**base)
    influxql(settings, f'CREATE DATABASE "{settings.influx_bucket}"')
    atexit.register(_clean_up, settings)
    return settings


def _clean_up(settings: Settings) -> None:
    """At exit: the run's topics (Faust's included) and its gateway's MQTT session go, so the
    development stack does not pile them up."""
    from wearwatch.transport import delete_topics, end_mqtt_session

    with contextlib.suppress(Exception):
        delete_topics(settings, [settings.topic_prefix, f"{settings.app_id}-"])
    with contextlib.suppress(Exception):
        end_mqtt_session(settings, settings.mqtt_client_id)
    # the workers' default data directories (their RocksDB stores: streams.app.faust_app)
    import glob
    import tempfile

    for d in glob.glob(os.path.join(tempfile.gettempdir(), "wearwatch-faust", f"{settings.app_id}-*")):
        shutil.rmtree(d, ignore_errors=True)
    if settings.influx_bucket.startswith("wwbench_"):
        with contextlib.suppress(Exception):
            influxql(settings, f'DROP DATABASE "{settings.influx_bucket}"')


def influxql(settings: Settings, statement: str, timeout_s: float = 30.0, **params: str) -> Any:
    """Run one InfluxQL statement as the stack's InfluxDB user (InfluxDB 1.8: token = ``user:password``);
    ``params`` are further query parameters (``db``, ``epoch``)."""
    import urllib.parse
    import urllib.request

    user, _, pw = (settings.influx_token or ":").partition(":")
    url = f"{settings.influx_url}/query?" + urllib.parse.urlencode({"u": user, "p": pw, **params})
    data = urllib.parse.urlencode({"q": statement}).encode()
    with urllib.request.urlopen(url, data=data, timeout=timeout_s) as resp:
        return orjson.loads(resp.read())


# ---------------------------------------------------------------------------- data
def reading_json(pid: str, signal: int, value: float, unit: int, ts_ms: int, received_ms: int, seq: int) -> bytes:
    """The normalized ``vitals.raw`` value, byte-identical to ``ingest.contract.Reading.to_json``."""
    d: dict[str, Any] = {"schema_version": 1, "patient_id": pid, "signal": _SIGNALS[signal]}
    if unit == 2:
        d["value"] = value * MMOL_TO_MGDL
    else:
        d["value"] = float(value)
    d["unit"] = _CANONICAL[signal]
    d["ts_ms"] = ts_ms
    d["vendor"] = "bench"
    d["device_id"] = f"dev-{pid}"
    d["seq"] = seq
    d["received_ms"] = received_ms
    if unit == 2:
        d["source_unit"] = "mmol/L"
    # a copy of its own size: orjson's result keeps a 4 KB allocation, which a backlog of millions holds
    return bytes(memoryview(orjson.dumps(d)))


def patient_ids(n: int) -> list[str]:
    return [f"bp-{i:05d}" for i in range(n)]


def generate_backlog(n_patients: int, minutes: float, seed: int = 7, end_ms: int | None = None) -> list[Record]:
    """Time-ordered ``vitals.raw`` records of ``n_patients`` simulated patients over ``minutes``.

    Heart rate every 5 s, steps every minute, glucose every 5 minutes
    (``ingest.scenarios.simulate_patient``, random events, no delivery artefacts),
    ending at ``end_ms`` (default: now), keyed by patient_id.
    """
    end = end_ms if end_ms is not None else int(time.time() * 1000) // 60_000 * 60_000
    start = end - int(minutes * 60_000)
    cols: list[tuple[np.ndarray, ...]] = []
    ids = patient_ids(n_patients)
    for i in range(n_patients):
        d = simulate_patient(ids[i], start, end, seed=seed * 100_000 + i, artefacts=False)
        cols.append((d.ts_ms, np.full(len(d), i, dtype=np.int32), d.signal, d.value, d.unit))
    ts = np.concatenate([c[0] for c in cols])
    pidx = np.concatenate([c[1] for c in cols])
    sig = np.concatenate([c[2] for c in cols])
    val = np.concatenate([c[3] for c in cols])
    unit = np.concatenate([c[4] for c in cols])
    order = np.lexsort((pidx, ts))
    out: list[Record] = []
    keys = [p.encode() for p in ids]
    seq = [0] * n_patients
    for t, p, s, v, u in zip(ts[order].tolist(), pidx[order].tolist(), sig[order].tolist(),
                             val[order].tolist(), unit[order].tolist(), strict=True):
        seq[p] += 1
        out.append((keys[p], reading_json(ids[p], s, v, u, t, t + 1000, seq[p])))
    return out


#: readings per vitals.raw record the gateway makes at 20,000 readings/s (its default 5 ms
#: linger spread over 8 partitions): what a pre-loaded backlog is grouped into by default
GATEWAY_GROUP = 12


@dataclass
class Backlog:
    """Pre-loaded ``vitals.raw`` records, grouped the way the gateway groups readings."""

    #: (partition, key, value) in produce order
    records: list[tuple[int, bytes, bytes]]
    readings: int
    #: partition -> readings in its first k records, k = 0..n
    prefix: dict[int, list[int]]

    def readings_done(self, committed: dict[int, int]) -> int:
        """Readings covered by committed offsets (partition -> next offset to read)."""
        return sum(self.prefix[p][min(off, len(self.prefix[p]) - 1)] for p, off in committed.items()
                   if p in self.prefix and off > 0)


def group_backlog(readings: list[Record], partitions: int, per_record: int = GATEWAY_GROUP,
                  keys: Any = None) -> Backlog:
    """Group time-ordered readings per partition into records of ``per_record`` readings
    with the gateway's own :class:`ingest.gateway.Grouper` (1: one record per reading), sealed under
    the patients' data keys when ``keys`` (:class:`wearwatch.datakeys.DataKeys`) is given, as the gateway does."""
    from ingest.gateway import Grouper

    grouper = Grouper(partitions, per_record, linger_s=float("inf"))
    out: list[tuple[int, bytes, bytes]] = []
    prefix: dict[int, list[int]] = {p: [0] for p in range(partitions)}

    def emit(grp: Any) -> None:
        key, value = grp.sealed_record(keys) if keys is not None else (grp.key, grp.record())
        out.append((grp.partition, key, value))
        prefix[grp.partition].append(prefix[grp.partition][-1] + len(grp.values))

    for k, v in readings:
        full = grouper.add(k, v, None, 0.0)
        if full is not None:
            emit(full)
    for grp in grouper.take_all():
        emit(grp)
    return Backlog(out, len(readings), prefix)


# ---------------------------------------------------------------------------- kafka
def decode_raw(value: bytes, cipher_of: Callable[[bytes], Any]) -> int:
    """Decode one ``vitals.raw`` record as the worker must before its detectors; the readings it holds.

    A sealed record (as the gateway writes them) is opened under the patients' data keys first
    (:func:`wearwatch.datakeys.open_entries`, AES-GCM per patient entry), each entry parsed with ``orjson``; a
    clear one is parsed as it is. ValueError (orjson's errors and a broken envelope are ones) if it cannot be."""
    from wearwatch.datakeys import is_sealed, open_entries

    if not is_sealed(value):
        return _readings_of(orjson.loads(value))
    n = 0
    for _, plaintext in open_entries(value, "vitals.raw", cipher_of):
        if plaintext is None:
            raise ValueError("a data key of the backlog is not known")
        n += _readings_of(orjson.loads(plaintext))
    return n


def _readings_of(doc: Any) -> int:
    return len(doc["readings"]) if isinstance(doc, dict) and "readings" in doc else 1


def ensure(settings: Settings, topics: list[str], partitions: int | None = None) -> None:
    from wearwatch.transport import ensure_topics

    ensure_topics(settings, topics, partitions)


async def _produce(bootstrap: str, topic: str, records: list[tuple[int, bytes, bytes]],
                   progress: Callable[[int], None]) -> None:
    from aiokafka import AIOKafkaProducer

    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024,
                            enable_idempotence=True, compression_type=None)
    await prod.start()
    try:
        chunk = 20_000
        for i in range(0, len(records), chunk):
            futs = [await prod.send(topic, value=v, key=k, partition=p) for p, k, v in records[i:i + chunk]]
            await asyncio.gather(*futs)
            progress(min(i + chunk, len(records)))
    finally:
        await prod.stop()


def preload(settings: Settings, backlog: Backlog) -> float:
    """Produce the backlog's records to ``vitals.raw`` (aiokafka, batched, acks=all); returns readings/s."""
    records = backlog.records
    t0 = time.monotonic()
    last = [t0]

    def progress(n: int) -> None:
        if time.monotonic() - last[0] > 5:
            last[0] = time.monotonic()
            log(f"  preloaded {n:,}/{len(records):,}")

    asyncio.run(_produce(settings.kafka_bootstrap, settings.topic_vitals, records, progress))
    return backlog.readings / (time.monotonic() - t0)


class Offsets:
    """Committed offsets of a consumer group and end offsets of a topic (kafka-python admin)."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaConsumer
        from kafka.admin import KafkaAdminClient

        boot = settings.kafka_bootstrap.split(",")
        self.admin = KafkaAdminClient(bootstrap_servers=boot, client_id="wearwatch-bench")
        self.consumer = KafkaConsumer(bootstrap_servers=boot, enable_auto_commit=False)

    def end(self, topic: str) -> int:
        from kafka import TopicPartition

        parts = self.consumer.partitions_for_topic(topic) or set()
        ends = self.consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return int(sum(ends.values()))

    def committed(self, group: str, topic: str) -> int:
        try:
            got = self.admin.list_group_offsets({group: None}).get(group, {})
        except Exception:  # group not there yet / coordinator moving
            return 0
        return int(sum(max(om.offset, 0) for tp, om in got.items() if tp.topic == topic))

    def committed_by_partition(self, group: str, topic: str) -> dict[int, int]:
        """partition -> committed offset of ``group`` on ``topic`` (empty until it committed)."""
        try:
            got = self.admin.list_group_offsets({group: None}).get(group, {})
        except Exception:  # group not there yet / coordinator moving
            return {}
        return {tp.partition: max(om.offset, 0) for tp, om in got.items() if tp.topic == topic}

    def tail(self, topic: str, per_partition: int) -> dict[bytes, bytes]:
        """Newest value per key among the last ``per_partition`` records of each partition."""
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(bootstrap_servers=self.consumer.config["bootstrap_servers"], enable_auto_commit=False,
                          consumer_timeout_ms=2000, fetch_max_bytes=64 * 1024 * 1024,
                          max_partition_fetch_bytes=16 * 1024 * 1024)
        try:
            parts = c.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in parts]
            ends = c.end_offsets(tps)
            c.assign(tps)
            for tp in tps:
                c.seek(tp, max(0, ends[tp] - per_partition))
            out: dict[bytes, bytes] = {}
            remaining = {tp for tp in tps if ends[tp] > 0}
            deadline = time.monotonic() + 60
            while remaining and time.monotonic() < deadline:
                for tp, recs in c.poll(timeout_ms=1000, max_records=5000).items():
                    for r in recs:
                        if r.value is not None:
                            out[r.key] = r.value
                        if r.offset >= ends[tp] - 1:
                            remaining.discard(tp)
            return out
        finally:
            c.close()

    def close(self) -> None:
        self.admin.close()
        self.consumer.close()


# ---------------------------------------------------------------------------- processes
@dataclass
class ProcStat:
    cpu_s: float
    rss_mb: float
    hwm_mb: float


def proc_stat(pid: int) -> ProcStat:
    """CPU seconds (user+system, with reaped children), current and peak RSS of ``pid``."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(f[11]) + int(f[12])) / CLK_TCK
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ProcStat(0.0, 0.0, 0.0)
    kv = {line.split(":")[0]: line.split(":")[1].strip() for line in status.splitlines() if ":" in line}
    rss = int(kv.get("VmRSS", "0 kB").split()[0]) / 1024
    hwm = int(kv.get("VmHWM", "0 kB").split()[0]) / 1024
    return ProcStat(cpu, rss, hwm)


@dataclass
class Worker:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    #: the port of its HTTP server (/metrics), 0: unknown
    web_port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def readings_processed(self) -> int | None:
        """The worker's ``wearwatch_readings_total`` over all signals (readings taken: processed, whether
        or not their states are written and their offsets committed yet); None if it does not answer."""
        got = self.metrics("wearwatch_readings_total")
        return None if got is None else int(got["wearwatch_readings_total"])

    def metrics(self, *names: str) -> dict[str, float] | None:
        """Per name, the sum of the worker's ``/metrics`` samples of it over their labels (one request); None if
        it does not answer."""
        if not self.web_port:
            return None
        try:
            series = scrape(self.web_port, timeout_s=2)
        except OSError:
            return None
        return {name: sum(v for k, v in series.items() if k == name or k.startswith(f"{name}{{")) for name in names}


def scrape(port: int, timeout_s: float = 10) -> dict[str, float]:
    """A service's ``/metrics`` on loopback: each sample's series (its name and labels, as written) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def spawn(name: str, settings: Settings, *args: str, script: Path | None = None,
          extra_env: dict[str, str] | None = None) -> Worker:
    """``wearwatch <args>`` (or ``script <args>``) as a subprocess with ``settings`` in its environment
    (like the stack tests)."""
    LOGS.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEARWATCH_")}
    env.update(settings.env())
    env.update(extra_env or {})
    log_path = LOGS / f"{settings.app_id}-{name}.log"
    fh = log_path.open("wb")
    program = [str(script)] if script is not None else ["-m", "wearwatch.cli"]
    popen = subprocess.Popen([sys.executable, *program, *args], cwd=ROOT, env=env,
                             stdout=fh, stderr=subprocess.STDOUT)
    return Worker(name, popen, log_path)


def spawn_worker(settings: Settings, name: str = "worker", **extra_env: str) -> Worker:
    port = free_port()
    w = spawn(name, settings, "worker", "--web-port", str(port), extra_env=extra_env)
    w.web_port = port
    return w


def spawn_faust_floor(settings: Settings, mode: str) -> Worker:
    """``bench/faust_floor.py``: a Faust worker whose agent only decodes (``consume``) or decodes and
    forwards (``forward``) each record (see there)."""
    return spawn(f"faust-{mode}", settings, str(free_port()), mode, script=Path(__file__).with_name("faust_floor.py"))


def percentiles(xs: list[float], qs: tuple[float, ...] = (50, 95, 99)) -> list[float]:
    if not xs:
        return [float("nan")] * len(qs)
    return [float(np.percentile(np.asarray(xs), q)) for q in qs]


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[h for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.rjust(widths[i]) if i else c.ljust(widths[i]) for i, c in enumerate(r)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        if c != c:
            return "-"
        return f"{c:,.0f}" if abs(c) >= 100 else f"{c:.2f}"
    if isinstance(c, int):
        return f"{c:,}"
    return str(c)


def chunks(xs: list[Record], n: int) -> Iterator[list[Record]]:
    for i in range(0, len(xs), n):
        yield xs[i:i + n]


# ---------------------------------------------------------------------------- profiling
#: py-spy for --profile: $PYSPY, else the one on PATH (pip install py-spy)
PYSPY = (os.environ.get("PYSPY") or shutil.which("py-spy")
         or shutil.which("py-spy", path=str(Path(sys.executable).parent)))  # the bench extras' py-spy


def start_pyspy(pid: int, out: Path, seconds: int) -> subprocess.Popen[bytes] | None:
    """Sample ``pid`` with py-spy (collapsed stacks) if py-spy is available (``--profile``)."""
    exe = PYSPY if PYSPY and Path(PYSPY).exists() else None
    if exe is None:
        log("  py-spy not found (set PYSPY or put py-spy on PATH): no profile")
        return None
    return subprocess.Popen([str(exe), "record", "-p", str(pid), "-d", str(seconds), "-r", "200", "--format", "raw",
                             "-o", str(out), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_collapsed(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed-stack output."""
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].split("/")[-1] + ")" if " (" in f else f
                  for f in stack.split(";")]
        for f in set(frames):
            incl_n[f] = incl_n.get(f, 0) + n
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
    if not total:
        return "(no samples)"
    rows = sorted(self_n.items(), key=lambda kv: -kv[1])[:top]
    lines = [f"{total} samples; top functions by self time (self %, inclusive %):"]
    lines += [f"  {100 * n / total:5.1f}  {100 * incl_n[f] / total:5.1f}  {f}" for f, n in rows]
    return "\n".join(lines)
