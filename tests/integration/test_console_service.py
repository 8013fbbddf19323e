"""The console service on the real stack: gateway, TWO workers, the console, real accounts.

One scenario (so the stack starts once) checks, in order: accounts made with ``wearwatch users``;
alerts of patients on both workers in one ``/api/alerts``; ward isolation (list, detail, actions,
event stream); the event stream delivering new alerts; acknowledge, snooze and note round trips
through Kafka and the worker; CSRF and session refusals; preferences (units); logout; an account
disabled while the console runs; a restart of the console showing the same open alerts (and the
old session cookie still valid: sessions are signed, not kept in memory); and the exact audit trail.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka.partitioner.default import murmur2

from alerts.models import AlertEvent
from ingest.contract import vitals_topic
from tests.integration.conftest import ROOT, Proc, consume_all, free_port
from tests.integration.test_pipeline import MIN, publish
from wearwatch.config import Settings
from wearwatch.privacy import pseudonym

pytestmark = pytest.mark.stack

PASSWORDS = {"kim": "kim-password-1234", "ana": "ana-password-1234", "root": "root-password-1234"}


def partition(pid: str, partitions: int) -> int:
    return (murmur2(pid.encode()) & 0x7FFFFFFF) % partitions


def pick_patients(prefix: str, partitions: int) -> list[str]:
    """One patient per partition (so both workers hold some)."""
    chosen: dict[int, str] = {}
    i = 0
    while len(chosen) < partitions:
        pid = f"{prefix}-{i}"
        chosen.setdefault(partition(pid, partitions), pid)
        i += 1
    return [chosen[p] for p in sorted(chosen)]


class Client:
    """A browser-like JSON client: keeps the session cookie (and its refreshes), sends the CSRF token."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookie: str | None = None
        self.csrf: str | None = None

    def request(self, method: str, path: str, body: Any = None, *, csrf: bool = True,
                cookie: bool = True) -> tuple[int, Any, dict[str, str]]:
        headers: dict[str, str] = {}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        if cookie and self.cookie:
            headers["Cookie"] = f"ww_session={self.cookie}"
        if csrf and self.csrf:
            headers["X-CSRF-Token"] = self.csrf
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, raw, hdrs = r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            status, raw, hdrs = e.code, e.read(), e.headers
        for c in hdrs.get_all("Set-Cookie") or []:
            if c.startswith("ww_session="):
                value = c.split(";")[0].split("=", 1)[1].strip('"')
                self.cookie = value or None
        doc = orjson.loads(raw) if raw and hdrs.get_content_type() == "application/json" else raw
        return status, doc, dict(hdrs)

    def login(self, user: str, password: str | None = None) -> tuple[int, Any]:
        status, body, _ = self.request("POST", "/api/login",
                                       {"username": user, "password": password or PASSWORDS[user]})
        if status == 200:
            self.csrf = body["csrf_token"]
        return status, body

    def get(self, path: str) -> tuple[int, Any]:
        status, body, _ = self.request("GET", path)
        return status, body

    def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, doc, _ = self.request("POST", path, body, **kw)
        return status, doc


class EventStream:
    """Reads ``/api/events`` in a thread; ``events`` holds (event, data, received_s)."""

    def __init__(self, port: int, cookie: str) -> None:
        self.events: list[tuple[str, Any, float]] = []
        self.closed = threading.Event()
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.request("GET", "/api/events", headers={"Cookie": f"ww_session={cookie}"})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.content_type = self.resp.getheader("Content-Type")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        event, data = "message", ""
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    break
                text = line.decode().rstrip("\n")
                if text.startswith("event: "):
                    event = text[7:]
                elif text.startswith("data: "):
                    data += text[6:]
                elif text == "":
                    if data:
                        self.events.append((event, json.loads(data), time.monotonic()))
                    event, data = "message", ""
        except (OSError, ValueError, http.client.HTTPException):
            pass
        finally:
            self.closed.set()

    def close(self) -> None:
        self.conn.close()


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 90.0, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def wait_ready(base: str, console: Proc, timeout: float = 120.0) -> None:
    def ready() -> bool:
        assert console.alive(), f"console exited:\n{console.log_text()[-3000:]}"
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    wait_for("the console to be ready", ready, timeout)


def last_assignment(worker: Proc) -> int:
    found = re.findall(r"worker assigned (\d+) partitions", worker.log_text())
    return int(found[-1]) if found else 0


def shared(workers: list[Proc]) -> bool:
    counts = [last_assignment(w) for w in workers]
    if min(counts) == 0:
        return False
    time.sleep(2.0)  # stable: no further rebalance
    return [last_assignment(w) for w in workers] == counts


def influx_minutes(settings: Settings, patient_id: str) -> int:
    """How many glucose minutes of the patient InfluxDB has."""
    from influxdb_client import InfluxDBClient

    with InfluxDBClient(url=settings.influx_url, token=settings.influx_token or "", org=settings.influx_org) as c:
        tables = c.query_api().query(
            f'from(bucket: "{settings.influx_bucket}") |> range(start: -2h) |> filter(fn: (r) => '
            f'r._measurement == "vitals_1m" and r.patient == "{pseudonym(settings.pseudonym_key or "", patient_id)}"'
            ' and r.signal == "glucose" and r._field == "mean")')
        return sum(len(t.records) for t in tables)


def users_cli(settings: Settings, *args: str, password: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEARWATCH_")}
    env.update(settings.env())
    out = subprocess.run([sys.executable, "-m", "wearwatch.cli", "users", "--actor", "cli:test", *args],
                         input=(password + "\n") if password else None, capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_console_service_end_to_end(settings: Settings, spawn: Any, run_id: str, tmp_path: Path) -> None:
    ward_a = pick_patients(f"A{run_id}", settings.partitions)  # ward 3B: one per partition
    ward_b = pick_patients(f"B{run_id}", settings.partitions)[:2]  # ward ICU
    enrollment = tmp_path / "enrollment.csv"
    enrollment.write_text("patient_id,ward,overrides_json\n" + "".join(f"{p},3B,\n" for p in ward_a)
                          + "".join(f"{p},ICU,\n" for p in ward_b))
    port = free_port()
    s = settings.model_copy(update={"enrollment_file": str(enrollment), "console_port": port,
                                    "console_secret": f"secret-{run_id}-" + "x" * 32})
    base = f"http://127.0.0.1:{port}"

    # accounts, through the CLI (before anything runs: the console reads them at start)
    users_cli(s, "add", "kim", "--role", "nurse", "--ward", "3B", "--password-stdin", password=PASSWORDS["kim"])
    users_cli(s, "add", "ana", "--role", "nurse", "--ward", "ICU", "--password-stdin", password=PASSWORDS["ana"])
    users_cli(s, "add", "root", "--role", "admin", "--ward", "IT", "--password-stdin", password=PASSWORDS["root"])
    listing = users_cli(s, "list")
    assert "3 account(s)" in listing and "kim" in listing and "charge" not in listing

    gateway = spawn("gateway", s, "gateway", "--stats-every", "5")
    workers = [spawn("worker", s.model_copy(update={"web_port": free_port()}), "worker") for _ in range(2)]
    console = spawn("console", s, "console")
    gateway.wait_log("gateway up")
    wait_ready(base, console)
    # both workers hold partitions before anything is published (a lone worker would get all of them)
    wait_for("both workers to share the partitions", lambda: shared(workers), timeout=120, every=1.0)

    kim, ana, root = Client(base), Client(base), Client(base)
    assert kim.login("kim")[0] == 200 and ana.login("ana")[0] == 200
    status, body = root.login("root")
    assert status == 200 and body["user"] == {"username": "root", "role": "admin", "wards": ["IT"],
                                              "units": "mg/dL", "silence_minutes": 2}
    assert kim.cookie is not None and ana.cookie is not None
    stream = EventStream(port, kim.cookie)
    assert stream.status == 200 and stream.content_type == "text/event-stream"
    wait_for("the snapshot", lambda: stream.events)
    assert stream.events[0][0] == "snapshot" and stream.events[0][1]["alerts"] == []

    # an urgent low for every patient, published over MQTT like a CGM would
    now = int(time.time() * 1000)
    start = now - 20 * MIN
    messages = []
    for pid in ward_a + ward_b:
        rows = [{"patient_id": pid, "signal": "glucose", "value": g, "unit": "mg/dL", "ts": start + i * 5 * MIN}
                for i, g in enumerate([120, 95, 70, 52])]
        messages.append((vitals_topic("sim", f"{pid}-cgm"), orjson.dumps(rows)))
    publish(s, messages)

    # on a shared stack every gateway gets every device message: other runs' patients may show up as unassigned
    ours = set(ward_a + ward_b)

    def urgent(client: Client, patients: set[str] = ours) -> list[dict[str, Any]]:
        status, body = client.get("/api/alerts")
        assert status == 200
        return [r for r in body["alerts"] if r["kind"] == "glucose_urgent_low" and r["patient_id"] in patients]

    def open_alerts(client: Client) -> list[tuple[str, str, str | None]]:
        status, body = client.get("/api/alerts")
        assert status == 200
        return sorted((r["alert_id"], r["state"], r["acked_by"]) for r in body["alerts"] if r["patient_id"] in ours)

    everything = wait_for("every urgent low in the admin's list",
                          lambda: (lambda rows: rows if len(rows) == 6 else None)(urgent(root)))
    # every partition had an alert, so both workers' patients are in the one list
    assert {partition(r["patient_id"], s.partitions) for r in everything} == set(range(s.partitions))
    mine = urgent(kim)
    assert sorted(r["patient_id"] for r in mine) == sorted(ward_a)
    assert {r["ward"] for r in mine} == {"3B"} and {r["priority"] for r in mine} == {"high"}
    assert sorted(r["patient_id"] for r in urgent(ana)) == sorted(ward_b)
    row = mine[0]
    assert row["state"] == "open" and row["explanation"]["threshold"] == 55.0 and row["unit"] == "mg/dL"
    assert "52 mg/dL, below 55 mg/dL" in row["message"] and row["snooze_max_minutes"] == 5

    # the event stream delivered the new alerts of kim's wards, and nothing of ICU
    wait_for("kim's stream to have every 3B patient", lambda: {
        d["patient_id"] for e, d, _ in stream.events if e == "patient" and d["alerts"]} >= set(ward_a))
    streamed = {d["patient_id"] for e, d, _ in stream.events if e == "patient"}
    assert streamed <= set(ward_a)

    # ward isolation for actions and details: 404, as for an unknown alert
    icu = urgent(ana)[0]
    assert kim.get(f"/api/patients/{icu['patient_id']}")[0] == 404
    assert kim.post(f"/api/alerts/{icu['alert_id']}/ack")[0] == 404
    assert kim.post(f"/api/alerts/{icu['alert_id']}/snooze", {"minutes": 5})[0] == 404
    assert kim.post(f"/api/alerts/{icu['alert_id']}/notes", {"text": "not mine"})[0] == 404
    # CSRF and session
    status, err = kim.post(f"/api/alerts/{row['alert_id']}/ack", csrf=False)
    assert (status, err["error"]) == (403, "csrf")
    assert kim.post(f"/api/alerts/{row['alert_id']}/ack", cookie=False, csrf=False)[0] == 401
    assert root.post(f"/api/alerts/{row['alert_id']}/ack")[0] == 403  # admins do not act on alerts

    # acknowledge, snooze, note: through Kafka alerts.commands and the worker that owns the patient
    acked, snoozed, noted = mine[0], mine[1], mine[2]
    assert kim.post(f"/api/alerts/{acked['alert_id']}/ack") == (202, {"status": "accepted"})
    assert kim.post(f"/api/alerts/{snoozed['alert_id']}/snooze", {"minutes": 5}) == (202, {"status": "accepted"})
    assert kim.post(f"/api/alerts/{noted['alert_id']}/notes", {"text": "called, eating a snack"})[0] == 202

    def row_of(aid: str) -> dict[str, Any] | None:
        return next((r for r in urgent(kim) if r["alert_id"] == aid), None)

    r = wait_for("the acknowledgement", lambda: (lambda x: x if x and x["state"] == "acknowledged" else None)(
        row_of(acked["alert_id"])))
    assert r["acked_by"] == "kim"
    r = wait_for("the snooze", lambda: (lambda x: x if x and x["snoozed_until_ms"] else None)(
        row_of(snoozed["alert_id"])))
    assert r["snoozed_by"] == "kim" and r["snoozed_until_ms"] <= int(time.time() * 1000) + 5 * MIN + 5000
    r = wait_for("the note", lambda: (lambda x: x if x and x["notes"] else None)(row_of(noted["alert_id"])))
    assert [(n["by"], n["text"]) for n in r["notes"]] == [("kim", "called, eating a snack")]
    status, err = kim.post(f"/api/alerts/{acked['alert_id']}/ack")
    assert (status, err["error"]) == (409, "already_acknowledged")
    # the stream saw the acknowledgement too
    wait_for("the acknowledgement on the stream", lambda: any(
        e == "patient" and any(a["alert_id"] == acked["alert_id"] and a["state"] == "acknowledged"
                               for a in d["alerts"]) for e, d, _ in stream.events))

    # the patient's detail: 24 h series from InfluxDB (minutes close after idle_close_s) and history from Kafka
    pid = noted["patient_id"]
    wait_for("the patient's glucose minutes in InfluxDB", lambda: influx_minutes(s, pid) >= 3, timeout=90, every=2)
    status, detail = kim.get(f"/api/patients/{pid}")
    assert status == 200 and detail["units"] == "mg/dL"
    # the page refreshing the open detail is not another view; a "refresh" of a patient never opened is one
    assert kim.get(f"/api/patients/{pid}?refresh=1")[0] == 200
    assert kim.get(f"/api/patients/{pid}?refresh=1")[0] == 200
    assert kim.get(f"/api/patients/{acked['patient_id']}?refresh=1")[0] == 200
    assert detail["ward"] == "3B" and set(detail["series"]) == {"heart_rate", "glucose", "steps"}
    assert [p["mean"] for p in detail["series"]["glucose"]][:3] == [120.0, 95.0, 70.0]
    history = [e for e in detail["alerts"] if e["alert_id"] == noted["alert_id"]]
    assert [e["cause"] for e in history] == ["note", "onset"]  # newest first
    assert history[0]["notes"] == [{"by": "kim", "ts_ms": history[0]["notes"][0]["ts_ms"],
                                    "text": "called, eating a snack"}]
    assert ("glucose_urgent_low", "open") in [(m["kind"], m["state"]) for m in detail["markers"]]
    assert len(detail["markers"]) == sum(1 for e in detail["alerts"] if e["cause"] != "note")

    # preferences: mmol/L for kim's account
    status, me = kim.request("PUT", "/api/me/preferences", {"units": "mmol/L"})[:2]
    assert status == 200 and me["units"] == "mmol/L"
    row_mmol = row_of(acked["alert_id"])
    assert row_mmol is not None and row_mmol["unit"] == "mmol/L" and row_mmol["explanation"]["threshold"] == 3.1
    assert "2.9 mmol/L, below 3.1 mmol/L" in row_mmol["message"]

    # a quiet stream carries named keep-alive events (every 15 s without others) the page can see
    keepalive = wait_for("a keep-alive on kim's stream", lambda: next(
        (d for e, d, _ in stream.events if e == "keepalive"), None), timeout=40)
    assert set(keepalive) == {"server_ms"} and abs(keepalive["server_ms"] - time.time() * 1000) < 60_000

    # a failed login, then kim logs out: her cookie is dead, her stream ends
    assert Client(base).login("kim", "wrong-password-0000")[0] == 401
    old_cookie = kim.cookie
    status, _, _ = kim.request("POST", "/api/logout")
    assert kim.cookie is None  # the answer clears it
    assert status == 204
    kim.cookie = old_cookie
    assert kim.get("/api/alerts")[0] == 401
    assert stream.closed.wait(20), "the event stream did not end at logout"
    assert stream.events[-1][0] == "session_end" and stream.events[-1][1] == {"reason": "logout"}

    # disabling ana while the console runs locks her out within seconds
    t0 = time.monotonic()
    users_cli(s, "disable", "ana")
    wait_for("ana's session to end", lambda: ana.get("/api/alerts")[0] == 401, timeout=10, every=0.2)
    assert time.monotonic() - t0 < 10
    assert ana.login("ana")[0] == 401

    # a restarted console shows the same open alerts, and root's session (signed, not in memory) still works
    before = open_alerts(root)
    console.stop()
    console2 = spawn("console", s, "console")
    wait_ready(base, console2)
    after = open_alerts(root)
    assert after == before and len(after) >= 6

    # Kafka alerts: exactly one acknowledgement, by kim's account
    # (every gateway on the shared stack reads every vendor's topics, and other tests' nurse apps acknowledge their
    # own patients over MQTT: keep our patients' events)
    events = [e for rec in consume_all(s, s.topic_alerts, idle_s=2.0)
              if (e := AlertEvent.from_json(rec.value)).patient_id in ours]
    acks = [e for e in events if e.state == "acknowledged" and e.cause == "acknowledged"]
    assert [(e.alert_id, e.acked_by) for e in acks] == [(acked["alert_id"], "kim")]
    notes = [e for e in events if e.cause == "note"]
    assert [(e.alert_id, e.notes[-1].by, e.notes[-1].text) for e in notes] == [
        (noted["alert_id"], "kim", "called, eating a snack")]

    # the audit trail: exactly the scenario's actions, in order
    status, audit = root.get(f"/api/audit?since_ms={now - 3600_000}&limit=1000")
    assert status == 200
    trail = [(r["actor"], r["action"]) for r in reversed(audit["records"])]
    assert trail == [
        ("cli:test", "user_add"), ("cli:test", "user_add"), ("cli:test", "user_add"),
        ("kim", "login"), ("ana", "login"), ("root", "login"),
        ("kim", "ack"), ("kim", "snooze"), ("kim", "note"),
        ("kim", "patient_view"), ("kim", "patient_view"),
        ("kim", "preferences"), ("kim", "login_failed"), ("kim", "logout"), ("cli:test", "user_disable"),
        ("ana", "login_failed"),
    ]
    by_action = {r["action"]: r for r in audit["records"]}
    assert by_action["ack"]["alert_id"] == acked["alert_id"] and by_action["ack"]["patient_id"] == acked["patient_id"]
    assert by_action["ack"]["address"] == "127.0.0.1"
    assert by_action["user_disable"]["detail"]["username"] == "ana"
    assert by_action["snooze"]["detail"]["minutes"] == 5
    # the audit filters: by user and by patient
    status, only = root.get(f"/api/audit?user=ana&since_ms={now - 3600_000}")
    assert [r["action"] for r in only["records"]] == ["login_failed", "login"]
    status, only = root.get(f"/api/audit?patient={pid}&since_ms={now - 3600_000}")
    assert {r["action"] for r in only["records"]} == {"note", "patient_view"}

    # nurse-facing identifiers, but none in the console's log
    for p in ward_a + ward_b:
        assert p not in console.log_text() and p not in console2.log_text()

    # a worker fail-over: one worker dies; the other takes its partitions over, and the console keeps every open
    # alert as it was and shows the new ones of patients whose partitions moved
    workers[0].stop(signal.SIGKILL)
    later = pick_patients(f"C{run_id}", s.partitions)
    t = int(time.time() * 1000)
    publish(s, [(vitals_topic("sim", f"{pid}-cgm"), orjson.dumps(
        [{"patient_id": pid, "signal": "glucose", "value": g, "unit": "mg/dL", "ts": t - (3 - i) * 5 * MIN}
         for i, g in enumerate([120, 95, 70, 52])])) for pid in later])
    rows = wait_for("the new patients' alerts after the fail-over", lambda: (lambda rs: rs if {
        r["patient_id"] for r in rs} == set(later) else None)(urgent(root, set(later))), timeout=120, every=1.0)
    assert {r["ward"] for r in rows} == {"unassigned"}  # not enrolled
    assert open_alerts(root) == after  # every open alert of before the fail-over, as it was
    assert workers[1].alive()
