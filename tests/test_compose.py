"""docker-compose.yml cannot run here (no Docker engine): check it against the code instead."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from wearwatch.cli import COMMANDS
from wearwatch.config import env_names, load_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def test_services_present(compose: dict[str, Any]) -> None:
    assert {"kafka", "mosquitto", "influxdb", "grafana", "gateway", "worker", "console", "simulator"} <= set(
        compose["services"])
    for name in ("gateway", "worker", "console", "simulator"):
        svc = compose["services"][name]
        assert svc["build"] == "."
        assert svc["command"][0] in COMMANDS


def test_project_services_use_only_known_settings(compose: dict[str, Any]) -> None:
    known = set(env_names())
    for name in ("gateway", "worker", "console", "simulator"):
        env = _env(compose["services"][name])
        unknown = {k for k in env if k.startswith("WEARWATCH_")} - known
        assert unknown == set(), f"{name} sets variables the code never reads: {unknown}"
        # the values parse as settings (secrets substituted by placeholders)
        concrete = {k: ("x" * 40 if "${" in v else v) for k, v in env.items()}
        s = load_settings(concrete)
        assert s.kafka_bootstrap == "kafka:9092"
        assert s.mqtt_host == "mosquitto"
        assert s.influx_url == "http://influxdb:8086"


def test_wiring_matches_the_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    kafka = _env(services["kafka"])
    assert "PLAINTEXT://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    influx = _env(services["influxdb"])
    worker = _env(services["worker"])
    assert worker["WEARWATCH_INFLUX_ORG"] == influx["DOCKER_INFLUXDB_INIT_ORG"]
    assert worker["WEARWATCH_INFLUX_BUCKET"] == influx["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert worker["WEARWATCH_INFLUX_TOKEN"] == influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/influxdb.yaml").read_text())
    src = ds["datasources"][0]
    assert src["url"] == worker["WEARWATCH_INFLUX_URL"]
    assert src["jsonData"]["organization"] == worker["WEARWATCH_INFLUX_ORG"]
    assert src["jsonData"]["defaultBucket"] == worker["WEARWATCH_INFLUX_BUCKET"]
    assert src["jsonData"]["version"] == "Flux"
    for mount in services["mosquitto"]["volumes"] + services["grafana"]["volumes"]:
        host = mount.split(":")[0]
        if host.startswith("./"):
            assert (ROOT / host).exists(), f"compose mounts {host}, which the repository lacks"


def test_no_secret_is_written_in_the_file(compose: dict[str, Any]) -> None:
    secretish = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$")
    found = []
    for name, svc in compose["services"].items():
        for k, v in _env(svc).items():
            if secretish.search(k) and not v.startswith("${"):
                found.append(f"{name}.{k}")
    assert found == []


def test_console_service_has_what_it_requires(compose: dict[str, Any]) -> None:
    svc = compose["services"]["console"]
    env = _env(svc)
    assert svc["build"] == "." and svc["command"] == ["console"]
    s = load_settings({k: ("x" * 40 if "${" in v else v) for k, v in env.items()})
    s.require("console_secret", "influx_token", "pseudonym_key")
    assert s.console_host == "0.0.0.0" and f"127.0.0.1:{s.console_port}:{s.console_port}" in svc["ports"]
