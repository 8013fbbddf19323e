"""The gateway as an operator meets it, on the real stack: /healthz and /readyz (503 while its MQTT
broker is unreachable), /metrics counting exactly what reached Kafka (our readings and dead letters by
reason among them), JSON logs, and the FHIR endpoint closed by vendor tokens issued, added and revoked
with ``wearwatch tokens`` while the gateway runs."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from signal import SIGKILL
from typing import Any

import orjson
import pytest

from ingest.fhir import observation_for
from tests.integration.conftest import ROOT, Proc, consume_all, free_port, opened, readings_in
from tests.integration.test_pipeline import publish
from wearwatch.config import Settings
from wearwatch.transport import end_mqtt_session

pytestmark = pytest.mark.stack

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


# ------------------------------------------------------------------ helpers
def wearwatch(settings: Settings, *args: str) -> str:
    """Run ``wearwatch ARGS`` with these settings; its stdout (it must succeed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEARWATCH_")}
    env.update(settings.env())
    r = subprocess.run([sys.executable, "-m", "wearwatch.cli", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"wearwatch {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


def issue_token(settings: Settings, vendor: str) -> str:
    """A new token for ``vendor`` from ``wearwatch tokens add`` (the last line of its output, alone)."""
    out = wearwatch(settings, "tokens", "add", vendor)
    token = out.rstrip("\n").splitlines()[-1]
    assert re.fullmatch(r"wwt_[0-9a-f]{12}_[A-Za-z0-9_\-]{43}", token), out
    return token


def http_call(port: int, method: str, path: str, body: Any = None, token: str | None = None,
              timeout: float = 30.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/fhir+json"} if body is not None else {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=orjson.dumps(body) if body is not None else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_http(port: int, path: str, want: int, proc: Proc, timeout: float = 90.0) -> bytes:
    """Poll ``GET path`` until it answers ``want``; the last body."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            status, body = http_call(port, "GET", path, timeout=5.0)
            if status == want:
                return body
            last = (status, body[:500])
        except OSError as exc:  # not listening yet
            last = exc
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited:\n{proc.log_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"GET {path} never answered {want} in {timeout} s; last: {last}\n{proc.log_text()[-3000:]}")


def scrape(port: int) -> Series:
    status, body = http_call(port, "GET", "/metrics")
    assert status == 200
    out: Series = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, rest = series.partition("{")
        labels = frozenset(tuple(p.split("=", 1)) for p in re.findall(r'\w+="[^"]*"', rest))
        out[(name, frozenset((k, v.strip('"')) for k, v in labels))] = float(value)
    return out


def by(series: Series, name: str, label: str) -> dict[str, float]:
    """``{label value: sample}`` of one family, zeros left out."""
    return {dict(lbl)[label]: v for (n, lbl), v in series.items() if n == name and v}


def spawn_gateway(spawn: Any, settings: Settings, name: str = "gateway", **env: str) -> Proc:
    return spawn(name, settings, "gateway", "--stats-every", "2", **env)


def publish_heart_rates(settings: Settings, run_id: str, readings: Iterable[tuple[str, int]]) -> None:
    """One MQTT message per (patient, ts) heart rate, as vendor ``sim``; with no resend (a copy on Kafka could
    then be the publisher's)."""
    assert publish(settings, [
        (f"wearwatch/v1/vitals/sim/{run_id}-dev-{pid[-2:]}",
         orjson.dumps({"patient_id": pid, "signal": "heart_rate", "value": 70, "unit": "bpm", "ts": ts}))
        for pid, ts in sorted(readings)]) == 0


def readings_on_kafka(settings: Settings, pids: set[str]) -> Counter[tuple[str, int]]:
    """How many times each (patient, ts) of ``pids`` is on ``vitals.raw`` now."""
    records = consume_all(settings, settings.topic_vitals, idle_s=1.5, timeout_s=60)
    return Counter((r["patient_id"], r["ts_ms"]) for rec in records for r in readings_in(rec)
                   if r["patient_id"] in pids)


# ------------------------------------------------------------------ readiness
def test_ready_only_when_mqtt_is_connected(settings: Settings, spawn: Any, run_id: str) -> None:
    # a gateway whose MQTT broker is unreachable (a closed port; the shared broker stays up) runs, is alive and
    # says it is not ready, and why
    cut_off = settings.model_copy(update={"mqtt_port": free_port(), "gateway_http_port": free_port(),
                                          "mqtt_client_id": f"ww-gw-{run_id}-nobroker"})
    lonely = spawn_gateway(spawn, cut_off, "gateway-nobroker")
    port = cut_off.gateway_http_port
    assert orjson.loads(wait_http(port, "/healthz", 200, lonely)) == {"status": "alive"}
    deadline = time.monotonic() + 60
    while True:  # Kafka and the tokens come up; MQTT never does
        status, body = http_call(port, "GET", "/readyz")
        doc = orjson.loads(body)
        if doc["checks"].get("kafka", {}).get("ready") and doc["checks"].get("tokens", {}).get("ready"):
            break
        assert time.monotonic() < deadline, doc
        time.sleep(0.3)
    assert status == 503 and doc["ready"] is False
    assert doc["checks"]["mqtt"]["ready"] is False
    assert doc["checks"]["mqtt"]["detail"] == f"cannot reach the MQTT broker at 127.0.0.1:{cut_off.mqtt_port}; retrying"
    m = scrape(port)
    assert m[("wearwatch_ready", frozenset({("component", "gateway")}))] == 0.0
    assert m[("wearwatch_ready_check", frozenset({("component", "gateway"), ("check", "mqtt")}))] == 0.0
    assert m[("wearwatch_gateway_mqtt_connected", frozenset())] == 0.0
    assert "gateway up" not in lonely.log_text() and lonely.alive()

    # a gateway with the real broker: its HTTP server answers before it has connected (503, MQTT not ready),
    # then 200 once connected and subscribed
    gateway = spawn_gateway(spawn, settings)
    answers: list[tuple[int, dict[str, Any]]] = []
    deadline = time.monotonic() + 90
    while not answers or answers[-1][0] != 200:
        assert time.monotonic() < deadline and gateway.alive(), (answers[-3:], gateway.log_text()[-2000:])
        try:
            status, body = http_call(settings.gateway_http_port, "GET", "/readyz", timeout=5.0)
            answers.append((status, orjson.loads(body)))
        except OSError:  # not listening yet
            time.sleep(0.01)
    first_status, first = answers[0]
    assert first_status == 503 and first["checks"]["mqtt"]["ready"] is False, answers[0]
    doc = answers[-1][1]
    assert doc["ready"] is True and all(c["ready"] for c in doc["checks"].values())
    assert {s for s, _ in answers} == {503, 200}
    lonely.stop()
    assert lonely.popen.returncode == 0, lonely.log_text()[-2000:]


# ------------------------------------------------------------------ metrics
def _messages(run_id: str) -> tuple[list[tuple[str, bytes]], Counter[str], Counter[str], set[str]]:
    now = int(time.time() * 1000)
    messages: list[tuple[str, bytes]] = []
    signals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    pids = {f"M-{run_id}-{i}" for i in range(12)}
    for i, pid in enumerate(sorted(pids)):
        rows: list[dict[str, Any]] = [{"patient_id": pid, "signal": "heart_rate", "value": 60 + k, "unit": "bpm",
                                       "ts": now - 60_000 + 5_000 * k, "seq": k} for k in range(5)]
        rows.append({"patient_id": pid, "signal": "glucose", "value": 5.4, "unit": "mmol/L", "ts": now - 30_000})
        rows.append({"patient_id": pid, "signal": "steps", "value": 12, "unit": "steps", "ts": now - 60_000})
        signals.update({"heart_rate": 5, "glucose": 1, "steps": 1})
        if i % 4 == 0:  # a reading in a unit that does not fit its signal: the rest of the message goes on
            rows.append({"patient_id": pid, "signal": "heart_rate", "value": 70, "unit": "mg/dL", "ts": now})
            reasons["unit_mismatch"] += 1
        messages.append((f"wearwatch/v1/vitals/sim/{run_id}-dev-{i}", orjson.dumps(rows)))
    for i in range(3):
        messages.append((f"wearwatch/v1/vitals/sim/{run_id}-broken-{i}", b'{"patient_id": '))
        reasons["invalid_json"] += 1
    future = {"patient_id": f"M-{run_id}-0", "signal": "steps", "value": 1, "unit": "steps", "ts": now + 3_600_000}
    messages.append((f"wearwatch/v1/vitals/sim/{run_id}-future", orjson.dumps(future)))
    reasons["ts_in_future"] += 1
    return messages, signals, reasons, pids


def _quiet_cut(settings: Settings, port: int, timeout_s: float = 180.0) -> tuple[Series, list[Any], list[Any]]:
    """The gateway's metrics together with everything it put on its Kafka topics, taken when no message
    arrived in between (every gateway on the shared stack sees every vendor topic, ours included)."""
    deadline = time.monotonic() + timeout_s
    keys = ("wearwatch_readings_total", "wearwatch_dead_letters_total", "wearwatch_gateway_kafka_ack_seconds_count")
    while True:
        before = scrape(port)
        if before[("wearwatch_gateway_inflight_messages", frozenset())] == 0:
            # as on Kafka (the gateway observes one ack per record), opened by the caller
            vitals = consume_all(settings, settings.topic_vitals, idle_s=1.5, timeout_s=60, raw=True)
            dlq = consume_all(settings, settings.topic_dlq, idle_s=1.5, timeout_s=60, raw=True)
            after = scrape(port)
            if all({k: v for k, v in before.items() if k[0] == n} == {k: v for k, v in after.items() if k[0] == n}
                   for n in keys):
                return after, vitals, dlq
        assert time.monotonic() < deadline, "the gateway never had a quiet moment to compare with Kafka"
        time.sleep(1.0)


def test_metrics_count_exactly_what_reached_kafka(settings: Settings, spawn: Any, run_id: str) -> None:
    gateway = spawn_gateway(spawn, settings, WEARWATCH_LOG_FORMAT="json")
    port = settings.gateway_http_port
    wait_http(port, "/readyz", 200, gateway)
    messages, signals, reasons, pids = _messages(run_id)
    publish(settings, messages)

    # our readings and dead letters, exactly, on Kafka
    deadline = time.monotonic() + 90
    while True:
        metrics, vitals, dlq = _quiet_cut(settings, port)
        readings = [r for rec in opened(settings, settings.topic_vitals, vitals) for r in readings_in(rec)]
        ours = Counter(r["signal"] for r in readings if r["patient_id"] in pids)
        dead = [orjson.loads(rec.value) for rec in opened(settings, settings.topic_dlq, dlq)]
        ours_dead = Counter(d["reason"] for d in dead if run_id in (d.get("mqtt_topic") or ""))
        if (ours, ours_dead) == (signals, reasons) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert ours == signals and ours_dead == reasons

    # the counters say exactly what the gateway put on Kafka (ours, and any other test's traffic it also saw)
    assert by(metrics, "wearwatch_readings_total", "signal") == dict(Counter(r["signal"] for r in readings))
    assert by(metrics, "wearwatch_dead_letters_total", "reason") == dict(Counter(d["reason"] for d in dead))
    acked = metrics[("wearwatch_gateway_kafka_ack_seconds_count", frozenset())]
    assert acked == len(vitals) + len(dlq)  # one observation per Kafka record
    for signal, n in signals.items():
        assert by(metrics, "wearwatch_readings_total", "signal")[signal] >= n
    foreign = sum(by(metrics, "wearwatch_readings_total", "signal").values()) - sum(signals.values())
    print(f"\nreadings {dict(signals)} ours; {foreign} from other tests' traffic; {acked:.0f} Kafka acks")
    outcomes = by(metrics, "wearwatch_gateway_messages_total", "outcome")
    assert outcomes["partial"] >= 3 and outcomes["dead_lettered"] >= 4 and outcomes["accepted"] >= 9

    _, text = http_call(port, "GET", "/metrics")
    assert not any(pid.encode() in text for pid in pids) and run_id.encode() not in text
    # JSON logs: every line one object with an ISO 8601 UTC time; no patient identifier
    lines = [ln for ln in gateway.log_text().splitlines() if ln.strip()]
    docs = [orjson.loads(ln) for ln in lines]
    assert any(d["message"].startswith("gateway up") for d in docs)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", d["ts"]) and d["level"] and d["logger"]
               for d in docs)
    assert not any(pid in gateway.log_text() for pid in pids)


# ------------------------------------------------------------------ several gateways
def test_gateways_sharing_a_group_split_the_messages_and_take_each_once(settings: Settings, spawn: Any,
                                                                         run_id: str) -> None:
    """Two gateways in one WEARWATCH_MQTT_SHARE_GROUP: every reading reaches Kafka exactly once, through one
    of them, and each takes its share. The first one ran alone before (its persistent session still holds the
    plain subscriptions): joining the group drops them, or it would also take every message itself. A gateway
    that stops leaves the group while another stays; the last one stays subscribed, so nothing is lost while
    none runs."""
    group = f"ww-gw-{run_id}"
    alone = spawn_gateway(spawn, settings, "gateway-alone")
    wait_http(settings.gateway_http_port, "/readyz", 200, alone)
    alone.stop()
    assert alone.popen.returncode == 0, alone.log_text()[-2000:]

    other = settings.model_copy(update={"mqtt_client_id": f"ww-gw-{run_id}-2", "gateway_http_port": free_port()})
    second = None
    try:
        first = spawn_gateway(spawn, settings, "gateway-1", WEARWATCH_MQTT_SHARE_GROUP=group)
        second = spawn_gateway(spawn, other, "gateway-2", WEARWATCH_MQTT_SHARE_GROUP=group)
        for gw, s in ((first, settings), (second, other)):
            wait_http(s.gateway_http_port, "/readyz", 200, gw)
            assert f"(shared with group {group})" in gw.log_text()
        now = int(time.time() * 1000)
        pids = {f"S-{run_id}-{i}" for i in range(12)}

        def send(first_ts: int) -> Counter[tuple[str, int]]:
            readings = Counter({(pid, first_ts + 5_000 * k): 1 for pid in pids for k in range(10)})
            publish_heart_rates(settings, run_id, readings)
            return readings

        def on_kafka(want: Counter[tuple[str, int]]) -> Counter[tuple[str, int]]:
            deadline = time.monotonic() + 90
            while True:
                got = readings_on_kafka(settings, pids)
                if sum(got.values()) >= sum(want.values()) or time.monotonic() > deadline:
                    return got

        sent = send(now - 120_000)
        assert on_kafka(sent) == sent  # each of the 120 readings once: none lost, none copied by both gateways
        took = [sum(by(scrape(s.gateway_http_port), "wearwatch_readings_total", "signal").values())
                for s in (settings, other)]
        # the broker hands the group's messages out in turn: each took about half of ours (and its share of any
        # other traffic on the shared broker)
        assert all(n >= len(sent) // 4 for n in took), took
        print(f"\n{len(sent)} readings through two gateways: {took[0]:.0f} and {took[1]:.0f}")

        # the first one, which ran alone before (a single gateway being replaced by a group: README, Deployment
        # on Kubernetes), stops: it leaves the group, so the broker hands everything to the second from then on
        # (were its session still subscribed, it would keep half of what comes next, or a copy of all of it,
        # until it came back, which a retired gateway never does)
        first.stop()
        assert first.popen.returncode == 0, first.log_text()[-2000:]
        assert f"gateway left share group {group} with every message it took acknowledged" in first.log_text()
        before = sum(by(scrape(other.gateway_http_port), "wearwatch_readings_total", "signal").values())
        sent += send(now - 60_000)
        assert on_kafka(sent) == sent
        after = sum(by(scrape(other.gateway_http_port), "wearwatch_readings_total", "signal").values())
        assert after - before >= 120  # all of them through the second

        # the second is now the group's last gateway: it stays subscribed as it stops (had it left, the broker would
        # keep nothing for the group and the next readings would be lost), and takes them once it is back
        second.stop()
        assert second.popen.returncode == 0, second.log_text()[-2000:]
        assert f"gateway stays subscribed in share group {group}" in second.log_text()
        sent += send(now - 180_000)  # while no gateway runs
        second = spawn_gateway(spawn, other, "gateway-2-back", WEARWATCH_MQTT_SHARE_GROUP=group)
        wait_http(other.gateway_http_port, "/readyz", 200, second)
        assert on_kafka(sent) == sent
    finally:
        # the gateway first: ending a session its gateway still holds only makes that gateway connect again,
        # with a new persistent session that the broker would then fill for good
        if second is not None:
            second.stop()
        with contextlib.suppress(Exception):
            end_mqtt_session(other, other.mqtt_client_id)


# ------------------------------------------------------------------ what the broker drops
@contextlib.contextmanager
def private_broker(tmp_path: Path, max_queued: int) -> Iterator[int]:
    """A Mosquitto of the test's own (the stack's binary, accounts and ACL) whose clients' queues hold
    ``max_queued`` messages each, and which sends its ``$SYS`` figures every second; its port."""
    stack = Path(os.environ.get("STACK_DIR") or ROOT / ".stack")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("\n".join([
        "user root",  # as the stack's: started as root it would switch to a user that cannot read .stack/
        f"listener {port} 127.0.0.1",
        "allow_anonymous false",
        f"password_file {stack / 'mosquitto' / 'passwd'}",
        f"acl_file {ROOT / 'deploy' / 'mosquitto' / 'acl'}",
        "persistence false",
        f"max_queued_messages {max_queued}",
        "sys_interval 1",
        f"log_dest file {tmp_path / 'mosquitto.log'}",
        "",
    ]))
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, f"mosquitto exited ({proc.returncode})"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, "mosquitto did not listen in 15 s"
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


GatewayRun = tuple[Settings, Proc]  # a running gateway: its settings and process


def two_gateways_in_a_group(settings: Settings, spawn: Any, run_id: str, port: int,
                            rescue_after_s: float) -> tuple[GatewayRun, GatewayRun, dict[str, str]]:
    """Two gateways of one share group on the broker at ``port``, both ready: each one's settings and process,
    and the environment they were started with (to start one again alike)."""
    one = settings.model_copy(update={"mqtt_port": port})
    two = one.model_copy(update={"mqtt_client_id": f"ww-gw-{run_id}-2", "gateway_http_port": free_port()})
    env = {"WEARWATCH_MQTT_SHARE_GROUP": f"ww-gw-{run_id}", "WEARWATCH_MQTT_RESCUE_AFTER_S": str(rescue_after_s)}
    first = spawn_gateway(spawn, one, "gateway-1", **env)
    second = spawn_gateway(spawn, two, "gateway-2", **env)
    for gw, s in ((first, one), (second, two)):
        wait_http(s.gateway_http_port, "/readyz", 200, gw)
    return (one, first), (two, second), env


def test_what_the_broker_drops_for_a_crashed_gateway_is_counted(settings: Settings, spawn: Any, run_id: str,
                                                                tmp_path: Path) -> None:
    """Two gateways in a share group; one crashes. The broker still hands it its share, queued in its session
    up to max_queued_messages (10 here), and drops the rest. Every reading is then either on Kafka once or
    counted in wearwatch_gateway_broker_dropped_messages_total, and logged: lost, but never silently."""
    with private_broker(tmp_path, max_queued=10) as port:
        # no rescue of the crashed one's session (next test): what its session keeps stays there until it is back
        (one, first), (two, second), env = two_gateways_in_a_group(settings, spawn, run_id, port, rescue_after_s=0)

        def figures() -> tuple[float, float | None]:
            """The first gateway's count of dropped messages (from 0), and what the broker holds (once sent)."""
            m = scrape(one.gateway_http_port)
            return (m[("wearwatch_gateway_broker_dropped_messages_total", frozenset())],
                    m.get(("wearwatch_gateway_broker_stored_messages", frozenset())))

        deadline = time.monotonic() + 30
        while figures()[1] is None:  # the broker's figures come every second
            assert time.monotonic() < deadline, first.log_text()[-2000:]
            time.sleep(0.2)
        assert figures()[0] == 0.0

        second.stop(SIGKILL)
        time.sleep(1.0)  # the broker has seen its connection close: what comes for it now is queued, not in flight
        now = int(time.time() * 1000)
        pids = {f"D-{run_id}-{i}" for i in range(12)}
        sent = {(pid, now - 60_000 + 5_000 * k) for pid in pids for k in range(5)}
        publish_heart_rates(one, run_id, sent)

        deadline = time.monotonic() + 60
        while True:
            got, (dropped, _) = readings_on_kafka(one, pids), figures()
            if sum(got.values()) + 10 + dropped >= len(sent) or time.monotonic() > deadline:  # 10: queued
                break
            time.sleep(1.0)
        # each reading once on Kafka (the first gateway's share), or queued for the dead one (10), or dropped
        assert set(got) <= sent and max(got.values()) == 1
        assert sum(got.values()) + 10 + dropped == len(sent), (sum(got.values()), dropped)
        assert dropped > 0
        first.wait_log(f"the MQTT broker dropped {dropped:.0f} messages ({dropped:.0f} since it started)",
                       timeout=10)
        print(f"\n{len(sent)} readings, one of two gateways down: {sum(got.values())} through the other, "
              f"{dropped:.0f} dropped by the broker")

        # the crashed one comes back and takes the 10 its session kept: the broker's count is the whole loss
        back = spawn_gateway(spawn, two, "gateway-2-back", **env)
        wait_http(two.gateway_http_port, "/readyz", 200, back)
        deadline = time.monotonic() + 60
        while sum((got := readings_on_kafka(one, pids)).values()) < len(sent) - dropped and time.monotonic() < deadline:
            time.sleep(1.0)
        assert max(got.values()) == 1 and sum(got.values()) == len(sent) - dropped
        assert figures()[0] == dropped  # and nothing more was lost


# ------------------------------------------------------------------ a crashed gateway's share
def test_a_crashed_gateways_share_is_rescued_by_the_group(settings: Settings, spawn: Any, run_id: str,
                                                         tmp_path: Path) -> None:
    """Two gateways in a share group; one crashes and does not come back (its node lost, or scaled away while
    down). The broker goes on handing its session a share, queued there. After WEARWATCH_MQTT_RESCUE_AFTER_S the
    other takes that session over, forwards what it holds, takes it out of the group and ends it: every reading
    reaches Kafka once without the crashed gateway, and the next ones go to the survivor alone."""
    with private_broker(tmp_path, max_queued=1000) as port:
        (one, first), (two, second), env = two_gateways_in_a_group(settings, spawn, run_id, port, rescue_after_s=4)
        group = env["WEARWATCH_MQTT_SHARE_GROUP"]
        time.sleep(1.0)  # each has the other's word
        second.stop(SIGKILL)
        time.sleep(0.5)  # the broker has seen its connection close and sent its will: what comes for it is queued
        now = int(time.time() * 1000)
        pids = {f"R-{run_id}-{i}" for i in range(12)}

        expected: set[tuple[str, int]] = set()

        def through(readings: set[tuple[str, int]]) -> Counter[tuple[str, int]]:
            """Publish ``readings``; all of this test's readings on Kafka once every one sent is there."""
            publish_heart_rates(one, run_id, readings)
            expected.update(readings)
            deadline = time.monotonic() + 60
            while sum((got := readings_on_kafka(one, pids)).values()) < len(expected) and time.monotonic() < deadline:
                time.sleep(1.0)
            return got

        sent = {(pid, now - 60_000 + 5_000 * k) for pid in pids for k in range(5)}
        assert through(sent) == Counter(dict.fromkeys(sent, 1))  # each once, the crashed one's share too
        first.wait_log(f"rescued the session of gateway {two.mqtt_client_id}, gone without leaving share group "
                       f"{group}", timeout=10)
        m = scrape(one.gateway_http_port)
        rescued = m[("wearwatch_gateway_rescued_messages_total", frozenset())]
        assert m[("wearwatch_gateway_rescued_sessions_total", frozenset({("outcome", "ended")}))] == 1
        assert m[("wearwatch_gateway_rescued_sessions_total", frozenset({("outcome", "taken_back")}))] == 0
        # the broker handed the group's messages out in turn: about half were the crashed one's, queued for it
        assert len(sent) // 4 <= rescued <= len(sent) * 3 // 4, rescued
        print(f"\n{len(sent)} readings, one of two gateways crashed: {rescued:.0f} queued for it, rescued")

        # its session is out of the group and ended: the next readings all go through the survivor
        more = {(pid, now - 30_000 + 5_000 * k) for pid in pids for k in range(5)}
        assert through(more) == Counter(dict.fromkeys(sent | more, 1))
        assert scrape(one.gateway_http_port)[("wearwatch_gateway_rescued_messages_total", frozenset())] == rescued

        # the crashed one comes back: a new session joins the group, nothing is taken twice
        back = spawn_gateway(spawn, two, "gateway-2-back", **env)
        wait_http(two.gateway_http_port, "/readyz", 200, back)
        last = {(pid, now - 5_000 + 5_000 * k) for pid in pids for k in range(2)}
        assert through(last) == Counter(dict.fromkeys(sent | more | last, 1))
        assert sum(by(scrape(two.gateway_http_port), "wearwatch_readings_total", "signal").values()) > 0


# ------------------------------------------------------------------ FHIR tokens
def test_fhir_endpoint_is_closed_by_vendor_tokens(settings: Settings, spawn: Any, run_id: str) -> None:
    acme = issue_token(settings, "acme")
    beta = issue_token(settings, "beta")
    gateway = spawn_gateway(spawn, settings)
    port = settings.gateway_http_port
    wait_http(port, "/readyz", 200, gateway)

    status, body = http_call(port, "GET", "/fhir/metadata")  # no token needed
    assert status == 200 and orjson.loads(body)["resourceType"] == "CapabilityStatement"
    pid = f"TK-{run_id}"
    now = int(time.time() * 1000)

    def obs(k: int) -> dict[str, Any]:
        return observation_for(pid, "heart_rate", 70 + k, now - 120_000 + 1000 * k, device_id=f"{pid}-watch")

    assert http_call(port, "POST", "/fhir/Observation", obs(0))[0] == 401
    assert http_call(port, "POST", "/fhir/Observation", obs(0), token=acme[:-3] + "abc")[0] == 401
    assert http_call(port, "POST", "/fhir/acme/Observation", obs(0), token=beta)[0] == 403
    assert http_call(port, "POST", "/fhir/Observation", obs(1), token=acme)[0] == 201
    assert http_call(port, "POST", "/fhir/acme/Observation", obs(2), token=acme)[0] == 201
    assert http_call(port, "POST", "/fhir/beta/Observation", obs(3), token=beta)[0] == 201

    # a token added while the gateway runs works within seconds, with no restart
    gamma = issue_token(settings, "gamma")
    t0 = time.monotonic()
    while http_call(port, "POST", "/fhir/Observation", obs(4), token=gamma)[0] != 201:
        assert time.monotonic() - t0 < 10, "a new token was not accepted within 10 s"
        time.sleep(0.1)
    added_s = time.monotonic() - t0

    # revoked while the gateway runs: refused within seconds
    token_id = acme.split("_")[1]
    assert f"{token_id}  acme  revoked" in wearwatch(settings, "tokens", "revoke", token_id)
    t0 = time.monotonic()
    late = 0  # posts accepted before the revocation reached the gateway
    while (status := http_call(port, "POST", "/fhir/Observation", obs(5), token=acme)[0]) != 403:
        assert status == 201
        late += 1
        assert time.monotonic() - t0 < 10, "a revoked token was still accepted after 10 s"
        time.sleep(0.1)
    revoked_s = time.monotonic() - t0
    print(f"\nnew token accepted after {added_s:.2f} s, revoked one refused after {revoked_s:.2f} s "
          f"({late} post(s) accepted meanwhile)")
    assert http_call(port, "POST", "/fhir/beta/Observation", obs(6), token=beta)[0] == 201  # others unaffected
    listing = wearwatch(settings, "tokens", "list")
    rows = {line.split()[0]: line.split() for line in listing.splitlines()[1:]}
    assert rows[token_id][1] == "acme" and rows[token_id][3] != "-"
    assert rows[beta.split("_")[1]][3] == "-"
    assert acme not in listing and beta not in listing  # the tokens themselves are stored and shown nowhere

    # the readings carry the vendor of the token that posted them; obs(5) is there once per 201 it got
    posted = consume_all(settings, settings.topic_vitals, idle_s=2.0, timeout_s=60)
    got = sorted((r["value"], r["vendor"]) for rec in posted for r in readings_in(rec) if r["patient_id"] == pid)
    assert [g for g in got if g[0] != 75.0] == [(71.0, "acme"), (72.0, "acme"), (73.0, "beta"), (74.0, "gamma"),
                                                (76.0, "beta")]
    assert [g for g in got if g[0] == 75.0] == [(75.0, "acme")] * late
    fhir = by(scrape(port), "wearwatch_gateway_fhir_requests_total", "status")
    assert fhir["401"] == 2 and fhir["403"] >= 2 and fhir["200"] == 1


def test_cli_refuses_what_it_cannot_do(settings: Settings) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEARWATCH_")}
    env.update(settings.env())
    for args, needle in ((["tokens", "add", "Patient"], "reserved"),
                         (["tokens", "revoke", "nobody-by-that-name"], "no token with id")):
        r = subprocess.run([sys.executable, "-m", "wearwatch.cli", *args], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode != 0 and needle in r.stderr, (r.returncode, r.stdout, r.stderr)
        assert "wwt_" not in r.stdout


# ------------------------------------------------------------------ data keys
def test_enrolment_brings_the_data_key_and_the_gateway_creates_only_a_missing_one(settings: Settings, spawn: Any,
                                                                                 run_id: str) -> None:
    """``wearwatch patients enrol`` writes the patient's data key, so the gateway seals their first reading under it
    without making one on its MQTT thread; a patient enrolled without a key (before enrolment made them) gets one
    from the gateway, counted by ``wearwatch_gateway_datakeys_created_total``."""
    from wearwatch.contract.enrollment import EnrollmentRecord
    from wearwatch.datakeys import read_data_keys
    from wearwatch.enrollment_topic import ensure_enrollment_topic, publish_enrollment

    new, old = f"E-{run_id}", f"O-{run_id}"
    out = wearwatch(settings, "patients", "enrol", new, "--ward", "3B")
    assert f"{new} enrolled in ward 3B" in out
    ensure_enrollment_topic(settings)
    publish_enrollment(settings, [EnrollmentRecord(patient_id=old, ward="3B", since_ms=int(time.time() * 1000))])
    assert [r.patient_id for r in read_data_keys(settings).values()] == [new]
    wearwatch(settings, "patients", "enrol", new, "--ward", "4C")  # a ward change makes no second key
    assert [r.patient_id for r in read_data_keys(settings).values()] == [new]

    gateway = spawn_gateway(spawn, settings)
    port = settings.gateway_http_port
    wait_http(port, "/readyz", 200, gateway)
    now = int(time.time() * 1000)
    publish(settings, [(f"wearwatch/v1/vitals/sim/{run_id}-dev-{pid}",
                        orjson.dumps({"patient_id": pid, "signal": "heart_rate", "value": 70, "unit": "bpm",
                                      "ts": now - 1000})) for pid in (new, old)])
    deadline = time.monotonic() + 90
    while True:
        records = consume_all(settings, settings.topic_vitals, idle_s=1.5, timeout_s=60)
        ours = sorted(r["patient_id"] for rec in records for r in readings_in(rec) if r["patient_id"] in (new, old))
        if ours == sorted([new, old]) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert ours == sorted([new, old])  # both sealed under their keys and opened again
    deadline = time.monotonic() + 60
    while True:  # the gateway may meet other tests' patients too: compare when its keys stayed put
        keys = read_data_keys(settings)
        created = scrape(port)[("wearwatch_gateway_datakeys_created_total", frozenset())]
        if read_data_keys(settings) == keys:
            break
        assert time.monotonic() < deadline, "the gateway's data keys never stayed put"
    per_patient = Counter(r.patient_id for r in keys.values())
    assert per_patient[new] == 1 and per_patient[old] == 1
    assert created == len(keys) - 1 >= 1  # every key but the enrolment's is the gateway's, the old patient's among them
