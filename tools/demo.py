"""``make demo``: a minute of the whole system on the local stack.

Starts the gateway, a worker and the alert console, runs the simulator (20
patients, one hour of data at 60× speed, a hypoglycemia and a tachycardia at
rest injected), prints alerts as they arrive on Kafka, and ends with a summary
and where to look in InfluxDB. Each run uses its own topic prefix, so runs never
mix. The console gets a login of its own for the run (a random password, made
with ``wearwatch users add``), printed with its URL.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer

from alerts.models import AlertEvent
from wearwatch.config import load_settings
from wearwatch.contract.priority import priority_rank
from wearwatch.logs import setup_logging
from wearwatch.transport import end_mqtt_session, kafka_client_config

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]


def _spawn(name: str, args: list[str], env: dict[str, str], logdir: Path) -> subprocess.Popen[bytes]:
    log = (logdir / f"{name}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "wearwatch.cli", *args], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def _console_port(preferred: int = 8080) -> int:
    """The console's usual port if it is free, else any free one (another console may be running)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def _add_demo_login(env: dict[str, str], logdir: Path, username: str) -> str:
    """A charge-nurse account for this run (the simulated patients are not enrolled: ward ``unassigned``),
    created through the users CLI; returns its random password."""
    password = secrets.token_urlsafe(12)
    with (logdir / "users.log").open("wb") as log:
        subprocess.run([sys.executable, "-m", "wearwatch.cli", "users", "--actor", "demo", "add", username,
                        "--role", "charge_nurse", "--ward", "unassigned", "--password-stdin"],
                       input=(password + "\n").encode(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                       check=True, timeout=120)
    return password


def main(duration_s: int = 60, patients: int = 20, accel: float = 60.0) -> int:
    setup_logging("WARNING")
    run = time.strftime("%Y%m%d%H%M%S")
    settings = load_settings(topic_prefix=f"demo{run}.", app_id=f"wearwatch-demo-{run}",
                             mqtt_client_id=f"wearwatch-demo-gw-{run}", partitions=4,
                             tick_interval_s=2.0, idle_close_s=10.0,
                             pseudonym_key=os.environ.get("WEARWATCH_PSEUDONYM_KEY") or secrets.token_hex(16),
                             console_port=_console_port(),
                             console_secret=os.environ.get("WEARWATCH_CONSOLE_SECRET") or secrets.token_urlsafe(32))
    logdir = ROOT / "out" / f"demo-{run}"
    logdir.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("WEARWATCH_")}
    env = {**base, **settings.env()}
    sim_env = {**env, "WEARWATCH_MQTT_USERNAME": "sim",
               "WEARWATCH_MQTT_PASSWORD": os.environ.get("STACK_MQTT_PASSWORD_SIM", "")}
    print(f"wearwatch demo {run}: {patients} patients, {duration_s} s at {accel:g}x "
          f"({duration_s * accel / 3600:.1f} h of data); logs in {logdir.relative_to(ROOT)}/")
    username = f"demo-{run}"
    password = _add_demo_login(env, logdir, username)
    procs = {
        "gateway": _spawn("gateway", ["gateway", "--stats-every", "10"], env, logdir),
        "worker": _spawn("worker", ["worker"], env, logdir),
        "console": _spawn("console", ["console"], env, logdir),
    }
    console_url = f"http://{settings.console_host}:{settings.console_port}/"
    login = f"console: {console_url}  login {username} / {password}  (charge nurse, ward unassigned; this run only)"
    print(login, flush=True)
    time.sleep(2)
    procs["simulator"] = _spawn(
        "simulator",
        ["simulate", "--patients", str(patients), "--duration", str(duration_s), "--accel", str(accel),
         "--event", "hypo:0", "--event", "tachy:1", "--seed", "1"],
        sim_env, logdir,
    )
    consumer = KafkaConsumer(settings.topic_alerts, **kafka_client_config(settings),
                             auto_offset_reset="earliest", group_id=f"demo-viewer-{run}",
                             consumer_timeout_ms=1000)
    events: Counter[str] = Counter()  # kind -> events
    last: dict[str, tuple[str, str, str]] = {}  # alert_id -> (kind, priority, state)
    deadline = time.monotonic() + duration_s + 40
    try:
        while time.monotonic() < deadline:
            for name, p in procs.items():
                if name != "simulator" and p.poll() is not None:
                    print(f"!! {name} exited with {p.returncode}; see {logdir}/{name}.log")
                    return 1
            for msg in consumer:
                ev = AlertEvent.from_json(msg.value)
                events[ev.kind] += 1
                last[ev.alert_id] = (ev.kind, ev.priority, ev.state)
                stamp = time.strftime("%H:%M", time.gmtime(ev.ts_ms / 1000))
                what = ev.cause if ev.cause in ("renotify", "escalated") else ev.state
                print(f"  {ev.audience:<8} {what:<12} {ev.priority:<6} {ev.patient_id:<10} {ev.kind:<24} "
                      f"{stamp}Z  {ev.message}", flush=True)
            if procs["simulator"].poll() is not None and time.monotonic() > deadline - 30:
                deadline = min(deadline, time.monotonic() + 15)
    finally:
        consumer.close()
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        # the demo gateway's client id is used once: its persistent session would make the broker
        # queue every reading published from now on for a gateway that never comes back
        with contextlib.suppress(Exception):
            end_mqtt_session(settings, settings.mqtt_client_id)
    print("\nsummary (alerts by kind; an alert's events are its opening, updates, reminders and resolution)")
    print(f"  {'kind':<26}{'priority':<10}{'alerts':>6}{'events':>8}{'still open':>12}")
    table: dict[str, list[Any]] = {}
    for kind, prio, state in last.values():
        row = table.setdefault(kind, [prio, 0, 0])
        row[1] += 1
        row[2] += state != "resolved"
    for kind, (prio, n, still) in sorted(table.items(), key=lambda kv: (priority_rank(kv[1][0]), kv[0])):
        print(f"  {kind:<26}{prio:<10}{n:>6}{events[kind]:>8}{still:>12}")
    if not last:
        print("  (no alerts — see the logs)")
    print(f"\nsimulator: {(logdir / 'simulator.log').read_text(errors='replace').strip().splitlines()[-1:]}")
    print("\nInfluxDB (bucket 'wearwatch'; patients appear under pseudonyms):")
    print("  set -a; . .stack/credentials.env; set +a")
    print(f"  curl -s {settings.influx_url}/api/v2/query -H \"Authorization: Token $WEARWATCH_INFLUX_TOKEN\" "
          "-H 'Content-Type: application/vnd.flux' -H 'Accept: application/csv' \\")
    print("    -d 'from(bucket:\"wearwatch\") |> range(start:-2h) |> filter(fn:(r)=>r._measurement==\"alerts\" "
          "and r._field==\"message\")'")
    print("  measurements: alerts, vitals_1m (1-minute mean/min/max/count), pipeline (worker metrics)")
    print(f"\n{login} — the console stopped with the demo; its accounts and alerts stay on the run's Kafka topics")
    return 0 if last else 1


if __name__ == "__main__":
    sys.exit(main())
