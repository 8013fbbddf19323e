"""``wearwatch dlq`` on the real Kafka: a vendor sees exactly its own dead letters, with reasons, no patient data."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from ingest.contract import DeadLetter
from ingest.gateway import Gateway
from wearwatch.config import Settings
from wearwatch.transport import ensure_topics, kafka_producer

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
SECRET_PID = "p-secret-42"


def _reading(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"patient_id": SECRET_PID, "signal": "heart_rate", "value": 77, "unit": "bpm",
                               "ts": int(time.time() * 1000) - 1000}
    base.update(kw)
    return base


def _dead_letters(settings: Settings) -> list[tuple[bytes, bytes]]:
    """(key, value) of dead letters as the gateway and the worker make them: 5 of acme, 1 of other, 1 command."""
    gw = Gateway(settings)
    records = []
    records += gw.records_for("wearwatch/v1/vitals/acme/w-1", orjson.dumps(
        [_reading(), _reading(signal="glucose", unit="bpm"), _reading(patient_id="")]))
    records += gw.records_for("wearwatch/v1/vitals/acme/w-2", b"not json")
    obs = {"resourceType": "Observation", "status": "cancelled",
           "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
           "subject": {"reference": f"Patient/{SECRET_PID}"}, "effectiveDateTime": "2026-01-05T00:00:00Z",
           "valueQuantity": {"value": 1234, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}
    records += gw.records_for("wearwatch/v1/fhir/acme/cgm-1", orjson.dumps(obs))
    records += gw.records_for("wearwatch/v1/vitals/other/w-9", b"[]")
    records += gw.records_for("wearwatch/v1/acks/3B/p-1", b"{}")
    dead = [(k, v) for topic, k, v in records if topic == settings.topic_dlq]
    late = {"schema_version": 1, "patient_id": SECRET_PID, "signal": "heart_rate", "value": 1234.0, "unit": "bpm",
            "ts_ms": 1, "vendor": "acme", "device_id": "w-3", "received_ms": 2}
    worker = DeadLetter(reason="too_late", detail="more than 600 s behind the newest heart_rate reading",
                        source="worker", payload=orjson.dumps(late).decode(), received_ms=int(time.time() * 1000))
    dead.append((b"worker", worker.to_json()))
    return dead


def _produce(settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
    producer = kafka_producer(settings)
    try:
        for key, value in records:
            producer.send(settings.topic_dlq, key=key, value=value)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEARWATCH_")}
    env.update(settings.env())
    return env


ACME_REASONS = "bad_patient_id 1, fhir_bad_status 1, invalid_json 1, too_late 1, unit_mismatch 1"


def test_dlq_shows_a_vendors_dead_letters(settings: Settings) -> None:
    ensure_topics(settings, [settings.topic_dlq])
    records = _dead_letters(settings)
    assert len(records) == 7
    _produce(settings, records)
    cmd = [sys.executable, "-m", "wearwatch.cli", "dlq", "--vendor", "acme", "--since", "10m"]
    got = subprocess.run(cmd, cwd=ROOT, env=_env(settings), capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert len(lines) == 5
    assert sorted(ln.split()[1] for ln in lines) == sorted(ACME_REASONS.replace(" 1", "").split(", "))
    assert got.stderr.splitlines()[-1] == f"5 dead letters of vendor acme: {ACME_REASONS} (7 records read)"
    assert any(" w-1 #1 " in ln and "unit_mismatch" in ln for ln in lines)
    assert SECRET_PID not in got.stdout and "1234" not in got.stdout  # no patient data without --show-payload

    shown = subprocess.run([*cmd, "--show-payload", "--json"], cwd=ROOT, env=_env(settings), capture_output=True,
                           text=True, timeout=120)
    docs = [orjson.loads(ln) for ln in shown.stdout.splitlines()]
    assert len(docs) == 5 and all(d["payload"] for d in docs)
    assert sorted(d["reason"] for d in docs if SECRET_PID in d["payload"]) == ["fhir_bad_status", "too_late",
                                                                               "unit_mismatch"]

    other = subprocess.run([*cmd[:-4], "--vendor", "other", "--since", "10m"], cwd=ROOT, env=_env(settings),
                           capture_output=True, text=True, timeout=120)
    assert other.stderr.splitlines()[-1] == "1 dead letter of vendor other: empty_batch 1 (7 records read)"


def test_dlq_follow_shows_new_dead_letters(settings: Settings) -> None:
    ensure_topics(settings, [settings.topic_dlq])
    records = _dead_letters(settings)
    _produce(settings, records)
    proc = subprocess.Popen([sys.executable, "-m", "wearwatch.cli", "dlq", "--vendor", "acme", "--since", "10m",
                             "--follow"], cwd=ROOT, env=_env(settings), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()  # type: ignore[union-attr]

    def take(n: int, timeout: float = 60.0) -> list[str]:
        got, deadline = [], time.monotonic() + timeout
        while len(got) < n:
            got.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        return got

    try:
        assert len(take(5)) == 5
        gw = Gateway(settings)
        _produce(settings, [(k, v) for t, k, v in gw.records_for("wearwatch/v1/vitals/acme/w-4",
                                                                  orjson.dumps(_reading(value=-3)))
                            if t == settings.topic_dlq])
        (new,) = take(1)
        assert "value_out_of_range" in new and " w-4 " in new
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert err.splitlines()[-1] == (f"6 dead letters of vendor acme: {ACME_REASONS}, value_out_of_range 1 "
                                    "(8 records read)")
