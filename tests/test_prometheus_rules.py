"""The Prometheus alert rules (deploy/prometheus/) are valid, fire as their unit tests say
(``promtool test rules``), and name only metrics the code really exports.

promtool comes from Debian's prometheus package (``make prom-deps`` unpacks it into the virtualenv).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ingest.gateway import Gateway
from wearwatch.config import load_settings
from wearwatch.metrics import Telemetry, WorkerMetrics, exposition

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "wearwatch-rules.yml"
RULE_TESTS = PROM / "wearwatch-rules.test.yml"
#: series Prometheus makes itself, not the code
PROMETHEUS_OWN = {"up"}


def _promtool() -> str:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    tool = shutil.which("promtool", path=path)
    if tool is None:
        pytest.fail("promtool not found: run `make prom-deps` (unpacks it from Debian's prometheus package)")
    return tool


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *args], cwd=PROM, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules_and_the_scrape_config() -> None:
    r = _run("check", "rules", RULES.name)
    assert r.returncode == 0, r.stdout + r.stderr
    n = len(yaml.safe_load(RULES.read_text())["groups"][0]["rules"])
    assert f"SUCCESS: {n} rules found" in r.stdout
    r = _run("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    r = _run("test", "rules", RULE_TESTS.name)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    tested = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in case["alert_rule_test"]}
    rules = {rule["alert"] for rule in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]}
    assert tested == rules  # every rule has a case that makes it fire (and one that does not, where it can)


def test_promtool_unit_tests_can_fail() -> None:
    """A wrong expectation fails: the unit tests are not vacuous."""
    doc = yaml.safe_load(RULE_TESTS.read_text())
    case = doc["tests"][0]["alert_rule_test"][1]
    assert case["alertname"] == "WearwatchGatewayNotReady"
    case["exp_alerts"][0]["exp_labels"]["instance"] = "gw-2:8081"  # the healthy one
    broken = PROM / ".broken-rules.test.yml"
    try:
        broken.write_text(yaml.safe_dump(doc))
        r = _run("test", "rules", broken.name)
    finally:
        broken.unlink(missing_ok=True)
    assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr


def _exported() -> set[str]:
    """Every series name a gateway and a worker export (histograms with their _bucket/_sum/_count)."""
    gw = Gateway(load_settings({}))
    worker = Telemetry("worker")
    WorkerMetrics(worker.registry)
    names: set[str] = set()
    for registry in (gw.telemetry.registry, worker.registry):
        text = exposition(registry, None)[0].decode()
        names |= {m.group(1) for m in re.finditer(r"^# TYPE (\w+) ", text, re.M)}
        names |= {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line and line[0] != "#"}
    # the worker's histogram has no sample until it observes one: its series names are still these
    names |= {f"wearwatch_processing_seconds{s}" for s in ("_bucket", "_sum", "_count")}
    return names


def _named(expr: str) -> set[str]:
    return set(re.findall(r"\b(wearwatch_\w+|up)\b(?=\s*[{\[)\s]|$)", expr))


def test_rules_and_their_tests_name_only_exported_metrics() -> None:
    exported = _exported()
    in_rules: set[str] = set()
    for rule in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]:
        in_rules |= _named(rule["expr"])
    in_tests = {s["series"].split("{")[0] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
                for s in case["input_series"]}
    assert in_rules - PROMETHEUS_OWN, "no metric found in the rules: the name pattern is broken"
    assert (in_rules | in_tests) - PROMETHEUS_OWN - exported == set()
    assert {"wearwatch_gateway_kafka_ack_seconds_bucket", "wearwatch_readings_total", "wearwatch_dead_letters_total",
            "wearwatch_consumer_lag", "wearwatch_ready"} <= in_rules
    # the components the rules name are the ones the processes call themselves
    components = set(re.findall(r'component="(\w+)"', RULES.read_text()))
    assert components == {"gateway", "worker"}
    assert Gateway(load_settings({})).telemetry.component == "gateway"
