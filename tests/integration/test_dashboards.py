"""Grafana dashboards and ``wearwatch report`` against a short simulated run on the real stack.

Every panel target, annotation and templating variable query of every dashboard
in ``deploy/grafana/dashboards/`` is run through influxdb-client's Flux API with
Grafana's variables substituted (time range -3h..now(), window 1m, and the
``patient`` / ``worker`` variables set to this run's pseudonyms and worker, so a
query only passes on this run's data); each must run without error and return
at least one row. The static consistency checks (ids, datasource uid) need no
services and run with the unit tests.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from wearwatch.config import Settings
from wearwatch.privacy import pseudonym

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "influxdb.yaml"
N_PATIENTS = 5
_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}")


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def all_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Panels including those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for p in dash.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, Flux) of every variable, annotation and panel target."""
    title = dash["title"]
    out = [(f"{title} / variable {v['name']}", v["query"] if isinstance(v["query"], str) else v["query"]["query"])
           for v in dash.get("templating", {}).get("list", []) if v.get("type") == "query"]
    out += [(f"{title} / annotation {a['name']}", a["target"]["query"])
            for a in dash.get("annotations", {}).get("list", []) if "target" in a]
    out += [(f"{title} / panel {p['id']} {p['title']!r} target {t['refId']}", t["query"])
            for p in all_panels(dash) for t in p.get("targets", [])]
    return out


def test_dashboards_are_consistent() -> None:
    dashes = load_dashboards()
    assert set(dashes) == {"fleet-overview.json", "patient-detail.json", "pipeline-ops.json"}
    ds_uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    assert ds_uid == "wearwatch-influx"
    assert len({d["uid"] for d in dashes.values()}) == len(dashes), "dashboard uids must be unique"
    for name, d in dashes.items():
        assert 36 <= d["schemaVersion"] <= 41, name
        panels = all_panels(d)
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids {ids}"
        assert len({p["title"] for p in panels}) == len(panels), f"{name}: duplicate panel titles"
        defined = {v["name"] for v in d["templating"]["list"]}
        for p in panels:
            if p["type"] == "row":
                continue
            assert p["datasource"]["uid"] == ds_uid, f"{name}: panel {p['title']!r} datasource"
            assert p["targets"], f"{name}: panel {p['title']!r} has no query"
            for t in p["targets"]:
                assert t.get("datasource", p["datasource"])["uid"] == ds_uid, f"{name}: {p['title']!r} target"
        for v in d["templating"]["list"]:
            assert v["datasource"]["uid"] == ds_uid, f"{name}: variable {v['name']}"
        for a in d["annotations"]["list"]:
            if "target" in a:
                assert a["datasource"]["uid"] == ds_uid, f"{name}: annotation {a['name']}"
        for label, q in dashboard_queries(d):
            used = set(_VAR.findall(q))
            assert used <= defined, f"{label}: undefined variable(s) {used - defined}"
            assert "v.timeRangeStart" in q, f"{label}: not bounded by the dashboard's time range"


def substitute(query: str, subs: dict[str, str]) -> str:
    for k in sorted(subs, key=len, reverse=True):
        query = query.replace(k, subs[k])
    assert "${" not in query and "v.timeRange" not in query and "v.windowPeriod" not in query, query
    return query


class Flux:
    """Flux queries with a retry on connection errors (other tests restart InfluxDB briefly)."""

    def __init__(self, settings: Settings) -> None:
        from influxdb_client import InfluxDBClient

        self.client = InfluxDBClient(url=settings.influx_url, token=settings.influx_token or "",
                                     org=settings.influx_org, timeout=30_000)
        self.api = self.client.query_api()

    def rows(self, query: str, attempts: int = 5) -> list[dict[str, Any]]:
        from influxdb_client.rest import ApiException

        for i in range(attempts):
            try:
                return [r.values for t in self.api.query(query) for r in t.records]
            except ApiException as exc:
                if exc.status is not None and exc.status < 500:
                    raise
                if i == attempts - 1:
                    raise
            except OSError:  # urllib3 connection errors are OSErrors
                if i == attempts - 1:
                    raise
            time.sleep(2)
        raise AssertionError("unreachable")


def wait_for(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.stack
def test_every_dashboard_query_and_the_report_on_a_simulated_run(
    settings: Settings, spawn: Any, run_id: str, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    gateway = spawn("gateway", settings, "gateway")
    worker = spawn("worker", settings, "worker")
    gateway.wait_log("gateway up")
    sim = spawn("simulate", settings, "simulate", "--patients", str(N_PATIENTS), "--duration", "20", "--accel", "60",
                "--event", "hypo:0", "--seed", "1",
                WEARWATCH_MQTT_USERNAME="sim", WEARWATCH_MQTT_PASSWORD=os.environ["STACK_MQTT_PASSWORD_SIM"])
    assert sim.popen.wait(60) == 0, sim.log_text()[-3000:]
    assert worker.alive(), worker.log_text()[-3000:]

    key = settings.pseudonym_key or ""
    patients = [pseudonym(key, f"sim-{i:04d}") for i in range(N_PATIENTS)]
    regex = "(" + "|".join(patients) + ")"
    flux = Flux(settings)
    bucket = settings.influx_bucket

    def landed() -> bool:
        vit = flux.rows(f'from(bucket: "{bucket}") |> range(start: -3h) |> filter(fn: (r) => '
                        f'r._measurement == "vitals_1m" and r._field == "count" and r.patient =~ /^{regex}$/) '
                        '|> group(columns: ["patient"]) |> count()')
        alerts = flux.rows(f'from(bucket: "{bucket}") |> range(start: -3h) |> filter(fn: (r) => '
                           f'r._measurement == "alerts" and r._field == "state_code" and r.patient == "{patients[0]}")'
                           ' |> group() |> count()')
        pipe = flux.rows(f'from(bucket: "{bucket}") |> range(start: -3h) |> filter(fn: (r) => '
                         f'r._measurement == "pipeline" and r._field == "readings" and r.worker == "{settings.app_id}")'
                         ' |> filter(fn: (r) => r._value > 0) |> count()')
        return (len(vit) == N_PATIENTS and bool(alerts) and alerts[0]["_value"] > 0
                and bool(pipe) and pipe[0]["_value"] >= 3)

    wait_for("vitals_1m of every patient, alerts of the hypo patient and pipeline reports in InfluxDB", landed, 40)
    time.sleep(2)  # a few more pipeline reports and the last minutes

    subs = {
        "v.timeRangeStart": "-3h", "v.timeRangeStop": "now()", "v.windowPeriod": "1m",
        "${patient:regex}": regex, "${patient}": patients[0], "${worker:regex}": re.escape(settings.app_id),
    }
    ran, failures = 0, []
    for name, dash in load_dashboards().items():
        for label, query in dashboard_queries(dash):
            try:
                rows = flux.rows(substitute(query, subs))
            except Exception as exc:
                failures.append(f"{name}: {label}: {type(exc).__name__}: {str(getattr(exc, 'body', exc))[:300]}")
                continue
            ran += 1
            if not rows:
                failures.append(f"{name}: {label}: no rows")
            elif "/ variable patient" in label:
                missing = set(patients) - {r["_value"] for r in rows}
                if missing:
                    failures.append(f"{name}: {label}: this run's patients {sorted(missing)} not offered")
            elif "/ variable worker" in label and settings.app_id not in {r["_value"] for r in rows}:
                failures.append(f"{name}: {label}: this run's worker not offered")
    assert not failures, "\n".join(failures)
    assert ran >= 20

    out = tmp_path / "report.html"
    args = ["report", "--out", str(out), "--since", "1h", "--worker", settings.app_id]
    for p in patients:
        args += ["--patient", p]
    report = spawn("report", settings, *args)
    assert report.popen.wait(60) == 0, report.log_text()[-3000:]
    doc = out.read_text()
    plotted = re.findall(r'<figure class="patient-plot" id="patient-([0-9a-f]{16})"', doc)
    assert sorted(plotted) == sorted(patients)
    assert doc.count("data:image/png;base64,") == N_PATIENTS + 2  # + throughput and alert timeline
    assert "glucose" in doc and settings.app_id in doc
    assert "sim-0000" not in doc, "the report must not contain real patient ids"
    (ROOT / "out").mkdir(exist_ok=True)
    (ROOT / "out" / "test-report.html").write_text(doc)  # for a look after the run
    assert time.monotonic() - t0 < 120
