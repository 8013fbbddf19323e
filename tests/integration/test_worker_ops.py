"""The worker's operations endpoints on the real stack: a real worker process on its own app id and
topics, readings and bad records put straight into its ``vitals.raw``, and its web port asked.

``/healthz`` answers 200 from the first request; ``/readyz`` answers 503 (naming what is not
ready) until the worker holds partitions, has recovered its table and started its producers,
then 200; ``/metrics`` counts exactly the readings and dead letters sent; Faust's own views
(``/table`` with the pickled patient states, ``/router``, ...) are not served.
"""

from __future__ import annotations

import http.client
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from ingest.contract import InvalidReading, decode_record
from tests.integration.conftest import Proc
from wearwatch.config import Settings
from wearwatch.transport import kafka_producer

pytestmark = pytest.mark.stack

SIGNALS = {"heart_rate": ("bpm", 72.0), "glucose": ("mg/dL", 110.0), "steps": ("steps", 4.0)}


def get(port: int, path: str) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("Content-Type") or ""
    finally:
        conn.close()


def first_answer(port: int, path: str, worker: Proc, timeout_s: float = 60.0) -> tuple[int, bytes]:
    """The first answer the worker's web server gives (polling until it listens)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert worker.alive(), worker.log_text()[-4000:]
        try:
            status, body, _ = get(port, path)
            return status, body
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"the worker's web server never answered {path}")


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def samples(body: bytes, family: str) -> dict[str, float]:
    """``{label text: value}`` of one metric family's samples in a Prometheus text exposition."""
    out: dict[str, float] = {}
    for m in re.finditer(rf"^{family}(\{{[^}}]*\}})? (\S+)$", body.decode(), re.M):
        out[m.group(1) or ""] = float(m.group(2))
    return out


def readings(run_id: str, now_ms: int) -> list[tuple[bytes, bytes]]:
    """Valid readings of 3 patients, every signal, 5 s apart (no duplicates, nothing late)."""
    out: list[tuple[bytes, bytes]] = []
    for p in range(3):
        pid = f"ops-{run_id}-{p}"
        for i in range(20):
            for signal, (unit, value) in SIGNALS.items():
                doc: dict[str, Any] = {
                    "schema_version": 1, "patient_id": pid, "signal": signal, "value": value + i % 3, "unit": unit,
                    "ts_ms": now_ms - 600_000 + i * 5000, "vendor": "acme", "device_id": f"dev-{p}",
                    "received_ms": now_ms}
                out.append((pid.encode(), orjson.dumps(doc)))
    return out


BAD = [b"not json", b'{"schema_version": 7}', b'{"schema_version":1,"patient_id":"x"}', b"\xff\xfe"]


def test_worker_health_readiness_metrics_and_no_faust_views(
        settings: Settings, spawn: Callable[..., Proc], run_id: str) -> None:
    s = settings
    port = s.web_port
    worker = spawn("worker", s, "worker")

    # alive from the first request; not ready yet (no partition, no recovered table), and the body says why
    status, _ = first_answer(port, "/healthz", worker)
    assert status == 200
    # scraped before the consumer runs: still an answer (no lag series yet)
    status, _ = first_answer(port, "/metrics", worker)
    assert status == 200
    status, body = first_answer(port, "/readyz", worker)
    assert status == 503, body
    doc = orjson.loads(body)
    assert doc["ready"] is False and set(doc["checks"]) == {"partitions", "tables", "producers", "datakeys"}
    assert not all(c["ready"] for c in doc["checks"].values())

    wait_for("/readyz 200", lambda: get(port, "/readyz")[0] == 200)
    doc = orjson.loads(get(port, "/readyz")[1])
    assert doc["ready"] is True and all(c["ready"] for c in doc["checks"].values())
    assert doc["checks"]["partitions"]["detail"] == f"{s.partitions} partitions of the readings topic assigned"

    status, before, ctype = get(port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert samples(before, "wearwatch_readings_total") == {
        f'{{signal="{sig}"}}': 0.0 for sig in ("glucose", "heart_rate", "steps")}
    assert samples(before, "wearwatch_dead_letters_total") == {}
    assert samples(before, "wearwatch_ready") == {'{component="worker"}': 1.0}

    good = readings(run_id, int(time.time() * 1000))
    reasons = Counter(r.reason for data in BAD for r, _ in decode_record(data) if isinstance(r, InvalidReading))
    assert sum(reasons.values()) == len(BAD)
    producer = kafka_producer(s)
    try:
        for key, value in good:
            producer.send(s.topic_vitals, key=key, value=value)
        for i, value in enumerate(BAD):
            producer.send(s.topic_vitals, key=f"bad-{i}".encode(), value=value)
        producer.flush(30)
    finally:
        producer.close(5)

    def counted() -> bool:
        body = get(port, "/metrics")[1]
        return (sum(samples(body, "wearwatch_readings_total").values()) >= len(good)
                and sum(samples(body, "wearwatch_dead_letters_total").values()) >= len(BAD))

    wait_for("the readings and dead letters on /metrics", counted)
    time.sleep(2.0)  # anything counted twice would show by now
    after = get(port, "/metrics")[1]
    per_signal = Counter(orjson.loads(v)["signal"] for _, v in good)
    assert samples(after, "wearwatch_readings_total") == {
        f'{{signal="{sig}"}}': float(n) for sig, n in sorted(per_signal.items())}
    assert samples(after, "wearwatch_dead_letters_total") == {
        f'{{reason="{reason}"}}': float(n) for reason, n in reasons.items()}
    batches = samples(after, "wearwatch_processing_seconds_count")
    assert batches and batches[""] >= 1
    # the commits that wrote the three patients' states, each well within its 2-s interval
    def written() -> bool:
        return samples(get(port, "/metrics")[1], "wearwatch_worker_state_write_seconds_count")[""] >= 1

    wait_for("a commit's state write on /metrics", written)
    body = get(port, "/metrics")[1]
    writes = samples(body, "wearwatch_worker_state_write_seconds_count")[""]
    assert samples(body, "wearwatch_worker_state_write_seconds_bucket")['{le="1.0"}'] == writes
    # every partition of the readings topic this worker holds has a lag series, read to the end
    assert samples(after, "wearwatch_consumer_lag") == {
        f'{{partition="{p}"}}': 0.0 for p in range(s.partitions)}
    # the three patients' live states, and the RocksDB store (the default) holds its memtables in its cache
    assert samples(after, "wearwatch_worker_patients") == {"": 3.0}
    assert s.worker_store == "rocksdb" and samples(after, "wearwatch_store_memory_bytes")[""] > 0
    assert b"ops-" + run_id.encode() not in after  # no patient id anywhere in the exposition

    # only wearwatch's routes: Faust's own views are not served
    for path in ("/table", "/table/", "/table/patient-state/", "/router", "/router/", "/", "/graph/",
                 "/stats/", "/assignment/", "/performance/"):
        assert get(port, path)[0] == 404, path
    assert get(port, "/fhir/DetectedIssue")[0] == 200
