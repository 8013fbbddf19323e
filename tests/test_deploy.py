"""The Kubernetes manifests (deploy/k8s/) and compose healthchecks against the code: every probe
points at a route the process really serves, on the port its settings give, and the manifests hang
together (selectors, ports, resources, the workers' disruption budget). No cluster is needed.
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
import yaml

from ingest.gateway import Gateway
from ingest.http_server import ROUTES
from streams.web import ops_blueprint
from wearwatch.cli import COMMANDS
from wearwatch.config import env_names, load_settings
from wearwatch.metrics import HEALTH_PATH, METRICS_PATH, READY_PATH

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
#: which setting gives each component's HTTP port (and address)
PORT_SETTING = {"gateway": ("gateway_http_port", "gateway_http_host"), "worker": ("web_port", "web_host"),
                "console": ("console_port", "console_host")}


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    out: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        out.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    listed = set(kustomization["resources"])
    assert {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"} == listed  # nothing left out
    return out


def _kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Deployments and StatefulSets by name: what runs wearwatch's pods."""
    return {**_kind(docs, "Deployment"), **_kind(docs, "StatefulSet")}


def _component(dep: dict[str, Any]) -> str:
    return str(dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"])


def container_env(docs: list[dict[str, Any]], container: dict[str, Any], pod: str = "pod-0") -> dict[str, str]:
    """The container's environment as the kubelet builds it in pod ``pod``: ConfigMaps, then ``env`` (the pod's
    name where a field of it is asked for, secrets as placeholders)."""
    maps = _kind(docs, "ConfigMap")
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        env.update({k: str(v) for k, v in maps[src["configMapRef"]["name"]]["data"].items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "fieldRef" in var["valueFrom"]:
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[var["name"]] = pod
        else:
            env[var["name"]] = "secret-placeholder-0123456789abcdef"
    return env


def _probes(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in container}


def _port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(found)


def test_deployments_and_their_pods(docs: list[dict[str, Any]]) -> None:
    deps = _workloads(docs)
    assert {_component(d) for d in deps.values()} == {"gateway", "worker", "console"}
    for dep in deps.values():
        spec = dep["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        (c,) = spec["template"]["spec"]["containers"]
        assert c["args"] == [_component(dep)]
        probes = _probes(c)
        assert {"livenessProbe", "readinessProbe"} <= probes.keys()
        assert probes["livenessProbe"]["path"] == HEALTH_PATH and probes["readinessProbe"]["path"] == READY_PATH
        res = c["resources"]
        assert {"cpu", "memory"} <= res["requests"].keys() and "memory" in res["limits"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        assert c["image"].startswith("wearwatch:")
    # the gateways: a stable MQTT client id per pod (its persistent session), one share group for all of them
    gateway = _kind(docs, "StatefulSet")["wearwatch-gateway"]
    assert gateway["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert gateway["spec"]["serviceName"] in _kind(docs, "Service")
    (c,) = gateway["spec"]["template"]["spec"]["containers"]
    ids = {load_settings(container_env(docs, c, f"wearwatch-gateway-{i}")).mqtt_client_id for i in range(3)}
    assert ids == {"wearwatch-gateway-0", "wearwatch-gateway-1", "wearwatch-gateway-2"}
    assert load_settings(container_env(docs, c)).mqtt_share_group == "wearwatch-gateways"
    # what a stopping gateway does before it exits fits in its grace period: leave the group, flush Kafka
    assert gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= Gateway.LEAVE_TIMEOUT_S + 30


def _cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_the_gateways_scale_with_their_load(docs: list[dict[str, Any]]) -> None:
    """The autoscaler owns the gateways' count, never below two (one may be down: disruption budget, restarts),
    adds them fast (the broker's queues fill while they are short) and removes them one at a time, no faster
    than one can leave its share group."""
    (hpa,) = _kind(docs, "HorizontalPodAutoscaler").values()
    gateway = _kind(docs, "StatefulSet")["wearwatch-gateway"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "StatefulSet", "wearwatch-gateway")
    assert "replicas" not in gateway["spec"]  # `kubectl apply` would reset what the autoscaler set
    budget = _kind(docs, "PodDisruptionBudget")["wearwatch-gateway"]["spec"]["maxUnavailable"]
    assert hpa["spec"]["minReplicas"] >= budget + 1 and hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "AverageValue"
    # scaled before a gateway is short of its core, on a figure its pod requests CPU for
    (c,) = gateway["spec"]["template"]["spec"]["containers"]
    assert _cpu_cores(c["resources"]["requests"]["cpu"]) <= _cpu_cores(metric["resource"]["target"]["averageValue"])
    assert _cpu_cores(metric["resource"]["target"]["averageValue"]) <= 0.7
    up, down = hpa["spec"]["behavior"]["scaleUp"], hpa["spec"]["behavior"]["scaleDown"]
    assert up["stabilizationWindowSeconds"] == 0
    assert down["selectPolicy"] == "Min" and down["stabilizationWindowSeconds"] >= 300
    for policy in down["policies"]:
        assert policy == {"type": "Pods", "value": 1, "periodSeconds": policy["periodSeconds"]}
        assert policy["periodSeconds"] >= Gateway.LEAVE_TIMEOUT_S + 30


def test_the_workers_disruption_budget_and_the_services(docs: list[dict[str, Any]]) -> None:
    deps = _workloads(docs)
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deps.items()}
    # one pod at a time: the workers (their partitions move to the others) and the gateways (one keeps taking the
    # devices' messages)
    budgets = _kind(docs, "PodDisruptionBudget")
    assert set(budgets) == {"wearwatch-worker", "wearwatch-gateway"}
    for name, pdb in budgets.items():
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert [n for n, lbl in pods.items() if sel.items() <= lbl.items()] == [name]
        assert pdb["spec"]["maxUnavailable"] == 1
    for svc in _kind(docs, "Service").values():
        sel = svc["spec"]["selector"]
        (target,) = [n for n, lbl in pods.items() if sel.items() <= lbl.items()]
        (c,) = deps[target]["spec"]["template"]["spec"]["containers"]
        for p in svc["spec"]["ports"]:
            assert _port(c, p["targetPort"]) == p["port"]
    # the worker's web port (patient data, no login) is reachable only from wearwatch's pods and Prometheus
    (policy,) = _kind(docs, "NetworkPolicy").values()
    sel = policy["spec"]["podSelector"]["matchLabels"]
    assert [n for n, lbl in pods.items() if sel.items() <= lbl.items()] == ["wearwatch-worker"]
    (rule,) = policy["spec"]["ingress"]
    (c,) = deps["wearwatch-worker"]["spec"]["template"]["spec"]["containers"]
    assert [_port(c, p["port"]) for p in rule["ports"]] == [6066]
    # the headless services Prometheus discovers (deploy/prometheus/prometheus.yml) list pods ready or not
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    services = _kind(docs, "Service")
    for job in prom["scrape_configs"]:
        for sd in job["dns_sd_configs"]:
            for name in sd["names"]:
                svc_name, ns = name.split(".")[:2]
                svc = services[svc_name]
                assert ns == svc["metadata"]["namespace"]
                assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
                assert sd["port"] == svc["spec"]["ports"][0]["port"]
                assert job["job_name"] == svc_name  # the alert rules' job names


def _deployment(docs: list[dict[str, Any]], component: str) -> tuple[dict[str, Any], dict[str, str]]:
    (dep,) = [d for d in _workloads(docs).values() if _component(d) == component]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c, container_env(docs, c, f"{dep['metadata']['name']}-0")


@pytest.mark.parametrize("component", ["gateway", "worker"])
def test_settings_in_the_manifests_are_read_by_the_code(docs: list[dict[str, Any]], component: str) -> None:
    c, env = _deployment(docs, component)
    unknown = {k for k in env if k.startswith("WEARWATCH_")} - set(env_names())
    assert unknown == set()
    s = load_settings(env)  # they parse
    port_name, host_name = PORT_SETTING[component]
    assert getattr(s, host_name) == "0.0.0.0"  # reachable by the kubelet's probes
    for probe in _probes(c).values():
        assert _port(c, probe["port"]) == getattr(s, port_name)
    assert s.log_format == "json" and s.replication_factor == 3


@pytest.fixture
def gateway_from_manifest(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], int]]:
    """The gateway's HTTP server built from the manifest's settings (bound to 127.0.0.1, a free port)."""
    c, env = _deployment(docs, "gateway")
    env.update(WEARWATCH_GATEWAY_HTTP_HOST="127.0.0.1", WEARWATCH_GATEWAY_HTTP_PORT="0")
    gw = Gateway(load_settings(env))
    gw._start_http()
    address = gw.http_address
    assert address is not None and gw._http is not None
    try:
        yield c, address[1]
    finally:
        gw._http.shutdown()
        gw._http.server_close()


def test_gateway_probes_hit_routes_it_serves(gateway_from_manifest: tuple[dict[str, Any], int]) -> None:
    c, port = gateway_from_manifest
    served = {path for method, path in ROUTES if method == "GET"}
    for kind, probe in _probes(c).items():
        assert probe["path"] in served
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", probe["path"])
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        # liveness: alive now; readiness: a real answer (503 here: no MQTT, no Kafka), never "no such route"
        assert resp.status == (200 if kind == "livenessProbe" else 503), (kind, resp.status, body)


def test_compose_healthcheck_is_the_gateway_readiness(docs: list[dict[str, Any]]) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gw = compose["services"]["gateway"]
    test = " ".join(gw["healthcheck"]["test"])
    (url,) = re.findall(r"http://[^'\" ]+", test)
    parts = urlsplit(url)
    s = load_settings({k: v for k, v in gw["environment"].items() if k.startswith("WEARWATCH_GATEWAY_HTTP")})
    assert parts.port == s.gateway_http_port and parts.path == READY_PATH
    assert ("GET", parts.path) in ROUTES
    assert any(p.endswith(f":{s.gateway_http_port}") for p in gw["ports"])


def test_compose_healthcheck_is_the_worker_readiness() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    wk = compose["services"]["worker"]
    test = " ".join(wk["healthcheck"]["test"])
    (url,) = re.findall(r"http://[^'\" ]+", test)
    parts = urlsplit(url)
    s = load_settings({k: v for k, v in wk["environment"].items() if k in ("WEARWATCH_WEB_HOST", "WEARWATCH_WEB_PORT")})
    assert parts.port == s.web_port and parts.path == READY_PATH
    served = {route.uri for route in ops_blueprint(cast(Any, None)).routes}
    assert served == {HEALTH_PATH, READY_PATH, METRICS_PATH}
    assert any(p.endswith(f":{s.web_port}") for p in wk["ports"])


@pytest.mark.parametrize("component", ["worker", "console"])
def test_worker_and_console_probes_hit_routes_they_serve(docs: list[dict[str, Any]], component: str) -> None:
    c, env = _deployment(docs, component)
    assert component in COMMANDS
    port_name, _ = PORT_SETTING[component]
    s = load_settings({k: v for k, v in env.items() if k in set(env_names())})
    for probe in _probes(c).values():
        assert _port(c, probe["port"]) == getattr(s, port_name)
    package = {"worker": "streams", "console": "console"}[component]
    sources = "\n".join(p.read_text() for p in (ROOT / package).glob("*.py")) if (ROOT / package).is_dir() else ""
    for path, const in ((HEALTH_PATH, "HEALTH_PATH"), (READY_PATH, "READY_PATH")):
        assert f'"{path}"' in sources or const in sources, f"{component} registers no {path} route"
