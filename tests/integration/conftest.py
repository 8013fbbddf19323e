"""Fixtures for tests on the real local stack (``make stack-up``).

Every test run gets its own topic prefix, Faust app id and MQTT client id, so
reruns never collide with old data. Processes (gateway, worker) are started as
real subprocesses of the ``wearwatch`` command and killed at the end; their
logs go to ``out/test-logs/``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from wearwatch.config import Settings, load_settings
from wearwatch.transport import delete_topics, end_mqtt_session

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / "out" / "test-logs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def settings(run_id: str) -> Iterator[Settings]:
    """Settings for one test: the stack's credentials plus unique names (its topics are deleted afterwards)."""
    if not os.environ.get("WEARWATCH_MQTT_PASSWORD"):
        pytest.fail("stack credentials missing: run through `make test-stack` (sources .stack/credentials.env)")
    s = load_settings(
        topic_prefix=f"t{run_id}.",
        app_id=f"ww-test-{run_id}",
        mqtt_client_id=f"ww-gw-{run_id}",
        web_port=free_port(),
        gateway_http_port=free_port(),
        pseudonym_key=f"test-key-{run_id}",
        partitions=4,
        tick_interval_s=1.0,
        metrics_interval_s=1.0,
        idle_close_s=4.0,
        worker_recovery_stall_s=20.0,
    )
    yield s
    # best effort: a leftover topic costs disk; a leftover gateway session makes Mosquitto queue every reading
    with contextlib.suppress(Exception):
        delete_topics(s, [s.topic_prefix, f"{s.app_id}-"])
    with contextlib.suppress(Exception):
        end_mqtt_session(s, s.mqtt_client_id)


class Proc:
    """A wearwatch subprocess with its log file.

    With ``restart`` (a Popen factory) it is supervised like compose's restart policy
    does in a deployment: a worker that exits with code 75 ("restart me", see
    ``streams.monitor.RESTART_EXIT_CODE``) is started again, logging to the same file.
    """

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path,
                 restart: Callable[[], subprocess.Popen[bytes]] | None = None) -> None:
        self.name, self.popen, self.log = name, popen, log
        self.restarts = 0
        self._stopping = False
        if restart is not None:
            threading.Thread(target=self._supervise, args=(restart,), daemon=True).start()

    def _supervise(self, restart: Callable[[], subprocess.Popen[bytes]]) -> None:
        from streams.monitor import RESTART_EXIT_CODE

        while True:
            rc = self.popen.wait()
            if self._stopping or rc != RESTART_EXIT_CODE:
                return
            self.restarts += 1
            self.popen = restart()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return
            if not self.alive():
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}):\n{self.log_text()[-4000:]}")
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: no {needle!r} in log after {timeout}s:\n{self.log_text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        self._stopping = True
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


@pytest.fixture
def spawn(request: pytest.FixtureRequest) -> Iterator[Callable[..., Proc]]:
    """Start ``wearwatch <args>`` with the given settings; everything is stopped at teardown."""
    procs: list[Proc] = []
    app_ids: set[str] = set()
    LOGS.mkdir(parents=True, exist_ok=True)

    def _spawn(name: str, settings: Settings, *args: str, **extra_env: str) -> Proc:
        if not settings.worker_data_dir:
            app_ids.add(settings.app_id)
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEARWATCH_")}
        env.update(settings.env())
        env.update(extra_env)
        log = LOGS / f"{request.node.name}-{name}-{len(procs)}.log"
        log.write_bytes(b"")

        def start() -> subprocess.Popen[bytes]:
            with log.open("ab") as fh:
                return subprocess.Popen([sys.executable, "-m", "wearwatch.cli", *args], cwd=ROOT, env=env,
                                        stdout=fh, stderr=subprocess.STDOUT)

        p = Proc(name, start(), log, restart=start if args[:1] == ("worker",) else None)
        procs.append(p)
        return p

    yield _spawn
    for p in reversed(procs):
        p.stop()
    # the workers' default data directories (their RocksDB stores: streams.app.faust_app), kept across a restart
    # within the test, removed after it
    root = Path(tempfile.gettempdir()) / "wearwatch-faust"
    for app_id in app_ids:
        for d in root.glob(f"{glob.escape(app_id)}-*-data"):
            shutil.rmtree(d, ignore_errors=True)


def readings_in(record: Any) -> list[dict[str, Any]]:
    """The readings of one ``vitals.raw`` record: the gateway sends one reading or a batch of them."""
    doc = orjson.loads(record.value)
    return list(doc["readings"]) if "readings" in doc else [doc]


def consume_readings(settings: Settings, *, expect: int | None = None, idle_s: float = 3.0,
                     timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Every reading in ``vitals.raw`` (unpacked from the records), in record order;
    ``expect`` counts readings, not records."""
    records = consume_all(settings, settings.topic_vitals, expect=expect, idle_s=idle_s, timeout_s=timeout_s,
                          count=lambda r: len(readings_in(r)))
    return [doc for rec in records for doc in readings_in(rec)]


#: the data keys of each run's topics (by ``datakeys`` topic name), read again when a record names an unknown one
_RINGS: dict[str, Any] = {}


def _cipher_of(settings: Settings) -> Callable[[bytes], Any]:
    from wearwatch.datakeys import KeyRing, kek_of, read_data_keys

    def load() -> Any:
        ring = KeyRing(kek_of(settings.data_key_secret))
        for key_id, rec in read_data_keys(settings).items():
            ring.apply(key_id, rec.model_dump_json().encode())
        _RINGS[settings.topic_datakeys] = ring
        return ring

    def cipher_of(key_id: bytes) -> Any:
        ring = _RINGS.get(settings.topic_datakeys) or load()
        cipher = ring.cipher(key_id)
        return cipher if cipher is not None else load().cipher(key_id)

    return cipher_of


def opened(settings: Settings, topic: str, records: list[Any]) -> list[Any]:
    """The records of a transit topic as they were before sealing (README, Erasure): each sealed record becomes one
    record per patient entry, its value the entry's plaintext and its key the patient's id (``vitals.raw``,
    ``alerts.commands``; a dead letter keeps its key); an entry whose key is gone (erased) is left out. Records of
    other topics, and clear ones, come back as they are."""
    from ingest.contract import decode_record
    from wearwatch.contract.commands import parse_command_record
    from wearwatch.datakeys import is_sealed, open_entries, open_layers

    s = settings
    purpose = {s.topic_vitals: "vitals.raw", s.topic_minutes: "vitals.1m", s.topic_dlq: "vitals.dlq",
               s.topic_commands: "alerts.commands"}.get(topic)
    if purpose is None or not any(is_sealed(r.value) for r in records):
        return records
    cipher_of = _cipher_of(settings)
    out: list[Any] = []
    for r in records:
        if not is_sealed(r.value):
            out.append(r)
        elif topic == s.topic_dlq:
            plain = open_layers(r.value, "vitals.dlq", cipher_of)
            if plain is not None:
                out.append(r._replace(value=plain))
        else:
            for _, plain in open_entries(r.value, purpose, cipher_of):  # type: ignore[arg-type]
                if plain is None:
                    continue
                key = r.key
                if topic == s.topic_vitals:
                    first = decode_record(plain)[0][0]
                    key = getattr(first, "patient_id", "").encode()
                elif topic == s.topic_commands:
                    key = parse_command_record(plain).patient_id.encode()
                out.append(r._replace(value=plain, key=key))
    return out


def consume_all(settings: Settings, topic: str, *, expect: int | None = None, idle_s: float = 3.0,
                timeout_s: float = 120.0, count: Callable[[Any], int] | None = None, raw: bool = False) -> list[Any]:
    """Every record of ``topic`` from the beginning: waits until ``expect`` records
    arrived (then ``idle_s`` more, to catch extras) or, without ``expect``, until idle.
    ``count`` says how many items a record holds (default 1). The transit topics' sealed records come opened
    (:func:`opened`; ``raw``: as they are on Kafka)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap.split(","), enable_auto_commit=False,
                             consumer_timeout_ms=500)
    try:
        deadline = time.monotonic() + timeout_s
        parts: set[int] | None = None
        while parts is None and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                time.sleep(0.5)
        assert parts, f"topic {topic} never appeared"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        items = 0
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            n = sum(len(v) for v in batch.values())
            for recs in batch.values():
                if not raw:
                    recs = opened(settings, topic, recs)
                out.extend(recs)
                items += sum(count(r) for r in recs) if count is not None else len(recs)
            now = time.monotonic()
            if n:
                last_new = now
            done = items >= expect if expect is not None else True
            if done and now - last_new >= idle_s:
                break
        return out
    finally:
        consumer.close()
