"""Unit tests of the Kafka security settings: the services' ACL grants (``wearwatch.kafka_acls``) and the
TLS/SASL options ``wearwatch.transport`` gives each client library. The stack tests
(tests/integration/test_secure_stack.py) check the same against the real broker."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from streams.credentials import faust_credentials
from wearwatch.config import Settings, load_settings
from wearwatch.errors import ConfigError
from wearwatch.kafka_acls import ACCOUNTS, Grant, service_grants
from wearwatch.transport import aiokafka_client_config, kafka_client_config

PREFIX, APP = "t1.", "ww-app-1"


def grants(account: str) -> set[tuple[str, str, str, str]]:
    """(operation, resource, name, pattern) of one service's grants for PREFIX and APP."""
    s = load_settings({}, topic_prefix=PREFIX, app_id=APP)
    principal = f"User:{ACCOUNTS[account]}"
    return {(g.operation, g.resource, g.name, g.pattern) for g in service_grants(s) if g.principal == principal}


def topics(account: str, operation: str) -> set[str]:
    return {name.removeprefix(PREFIX) for op, res, name, pattern in grants(account)
            if op == operation and res == "topic" and pattern == "literal"}


def test_every_grant_is_exact_except_the_workers_own_topics() -> None:
    s = load_settings({}, topic_prefix=PREFIX, app_id=APP)
    all_grants = service_grants(s)
    assert len(all_grants) == len(set(all_grants))
    prefixed = [g for g in all_grants if g.pattern != "literal"]
    assert prefixed == [Grant(f"User:{ACCOUNTS['worker']}", "topic", f"{APP}-", op, "prefixed")
                        for op in ("CREATE", "READ", "WRITE")]
    for g in all_grants:
        if g.pattern == "literal" and g.resource == "topic":
            assert g.name.startswith(PREFIX), g
    worker = f"User:{ACCOUNTS['worker']}"
    assert [g for g in all_grants if g.resource == "group"] == [Grant(worker, "group", APP, "READ")]
    assert {g.principal for g in all_grants} == {f"User:{ACCOUNTS[a]}" for a in ("gateway", "worker", "console")}
    assert {g.operation for g in all_grants} == {"READ", "WRITE", "CREATE"}  # never ALL, ALTER, DELETE


def test_the_gateway_produces_readings_and_reads_tokens_and_the_roster_only() -> None:
    assert topics("gateway", "WRITE") == {"vitals.raw", "vitals.dlq", "alerts.commands", "datakeys"}
    # followed without a consumer group
    assert topics("gateway", "READ") == {"gateway.tokens", "enrollment", "datakeys"}
    assert topics("gateway", "CREATE") == {"vitals.raw", "vitals.dlq", "alerts.commands", "gateway.tokens",
                                           "enrollment", "datakeys"}
    assert not [g for g in grants("gateway") if g[1] != "topic"]


def test_the_worker_reads_its_inputs_and_writes_its_outputs() -> None:
    assert topics("worker", "READ") == {"vitals.raw", "alerts.commands", "alerts", "vitals.1m", "enrollment",
                                        "datakeys"}
    assert topics("worker", "WRITE") == {"alerts", "vitals.1m", "vitals.dlq", "alerts.state", "datakeys"}
    assert "vitals.raw" not in topics("worker", "WRITE") and "gateway.tokens" not in topics("worker", "READ")


def test_the_console_reads_alert_state_and_writes_commands_and_its_own_topics() -> None:
    console = {"console.users", "console.preferences", "console.sessions", "audit"}
    assert topics("console", "READ") == {"alerts", "alerts.state", "enrollment", "datakeys", *console}
    assert topics("console", "WRITE") == {"alerts.commands", "datakeys", *console}
    assert not topics("console", "READ") & {"vitals.raw", "vitals.1m", "gateway.tokens"}
    assert not [g for g in grants("console") if g[1] != "topic"]


def test_production_names_have_no_prefix() -> None:
    """Without WEARWATCH_TOPIC_PREFIX (production, the stack's own ACLs) the grants name the plain topics."""
    s = load_settings({})
    literal = {g.name for g in service_grants(s) if g.resource == "topic" and g.pattern == "literal"}
    assert literal == {"vitals.raw", "vitals.dlq", "vitals.1m", "alerts", "alerts.commands", "alerts.state",
                       "gateway.tokens", "console.users", "console.preferences", "console.sessions", "audit",
                       "enrollment", "datakeys"}
    assert {g.name for g in service_grants(s) if g.pattern == "prefixed"} == {"wearwatch-worker-"}


# ------------------------------------------------------------------ client options
@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ca")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=unit test CA", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt")],
                   check=True, capture_output=True, timeout=60)
    return d / "ca.crt"


def sasl_ssl(ca_file: Path, **extra: str) -> Settings:
    env = {"WEARWATCH_KAFKA_BOOTSTRAP": "127.0.0.1:9094", "WEARWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "WEARWATCH_KAFKA_SASL_USERNAME": "wearwatch-gateway", "WEARWATCH_KAFKA_SASL_PASSWORD": "secret",
           "WEARWATCH_KAFKA_CA_FILE": str(ca_file)}
    return load_settings({**env, **extra})


def assert_verifies_with(context: ssl.SSLContext) -> None:
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [dict(x[0] for x in c["subject"]) for c in context.get_ca_certs()] == [{"commonName": "unit test CA"}]


def test_kafka_python_options(ca_file: Path) -> None:
    assert kafka_client_config(sasl_ssl(ca_file)) == {
        "bootstrap_servers": ["127.0.0.1:9094"], "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "wearwatch-gateway", "sasl_plain_password": "secret", "ssl_cafile": str(ca_file)}


def test_aiokafka_options(ca_file: Path) -> None:
    cfg = aiokafka_client_config(sasl_ssl(ca_file))
    context = cfg.pop("ssl_context")
    assert cfg == {"bootstrap_servers": ["127.0.0.1:9094"], "security_protocol": "SASL_SSL",
                   "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "wearwatch-gateway",
                   "sasl_plain_password": "secret"}
    assert_verifies_with(context)


def test_faust_credentials(ca_file: Path) -> None:
    from faust.auth import SASLCredentials
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    creds = faust_credentials(sasl_ssl(ca_file))
    assert isinstance(creds, SASLCredentials)
    auth = credentials_to_aiokafka_auth(creds)  # what Faust hands its aiokafka clients
    assert {k: v for k, v in auth.items() if k != "ssl_context"} == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "wearwatch-gateway", "sasl_plain_password": "secret"}
    assert_verifies_with(auth["ssl_context"])
    assert faust_credentials(load_settings({})) is None


@pytest.mark.parametrize("missing", ["WEARWATCH_KAFKA_SASL_USERNAME", "WEARWATCH_KAFKA_SASL_PASSWORD"])
def test_sasl_without_an_account_is_a_configuration_error(ca_file: Path, missing: str) -> None:
    s = sasl_ssl(ca_file, **{missing: ""})
    for build in (kafka_client_config, aiokafka_client_config, faust_credentials):
        with pytest.raises(ConfigError, match=missing):
            build(s)
