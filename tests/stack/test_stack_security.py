"""What ``make stack-up`` provisions for TLS and SASL, checked on the running stack: the CA and server
certificate (files, modes, names, validity, and that both brokers present that very certificate), the
Kafka accounts and the ACLs for the production topic names.

The behaviour over those ports (logins, refusals, the pipeline end to end) is
tests/integration/test_secure_stack.py.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wearwatch.config import load_settings
from wearwatch.kafka_acls import ACCOUNTS, grants_of, service_grants

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def tls_dir() -> Path:
    ca = os.environ.get("STACK_CA_FILE")
    if not ca:
        pytest.fail("STACK_CA_FILE is not set: run `make stack-up` and run through `make test-stack`")
    return Path(ca).parent


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_certificate_files_and_modes(tls_dir: Path) -> None:
    assert _mode(tls_dir) == 0o700
    for key in ("ca.key", "server.key", "kafka.p12"):
        assert _mode(tls_dir / key) == 0o600, key
    stack = tls_dir.parent
    for secret in ("credentials.env", "credentials.json", "kafka/server.properties"):
        assert _mode(stack / secret) == 0o600, secret
    # the server certificate is the CA's, for both names clients use, and not about to expire
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(tls_dir / "ca.crt"), str(tls_dir / "server.crt")],
                            capture_output=True, text=True, timeout=30)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(tls_dir / "server.crt"), "-noout", "-ext", "subjectAltName",
                           "-checkend", str(30 * 86400)], capture_output=True, text=True, timeout=30)
    assert text.returncode == 0, text.stdout  # valid for 30 more days at least
    assert "DNS:localhost" in text.stdout and "IP Address:127.0.0.1" in text.stdout


def _presented(port: int, cafile: Path) -> bytes:
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_both_brokers_present_the_stacks_certificate(tls_dir: Path) -> None:
    ours = ssl.PEM_cert_to_DER_cert((tls_dir / "server.crt").read_text())
    kafka_port = int(os.environ["STACK_KAFKA_SASL_BOOTSTRAP"].rpartition(":")[2])
    assert _presented(kafka_port, tls_dir / "ca.crt") == ours
    assert _presented(int(os.environ["STACK_MQTT_TLS_PORT"]), tls_dir / "ca.crt") == ours


@pytest.fixture(scope="module")
def admin() -> Iterator[Any]:
    from kafka import KafkaAdminClient

    client = KafkaAdminClient(bootstrap_servers=os.environ.get("WEARWATCH_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                              client_id="stack-security")  # the loopback PLAINTEXT listener: a super user
    yield client
    client.close()


def test_kafka_accounts_and_production_acls(admin: Any, tls_dir: Path) -> None:
    from kafka.admin import ScramMechanism

    users = admin.describe_user_scram_credentials(list(ACCOUNTS.values()))
    for user in ACCOUNTS.values():
        assert [ci["mechanism"] for ci in users[user]["credential_infos"]] == [ScramMechanism.SCRAM_SHA_512], user
    creds = json.loads((tls_dir.parent / "credentials.json").read_text())["kafka"]
    assert set(ACCOUNTS) <= set(creds)
    # the stack's own grants: exactly the services' ACLs for the topic names without prefix (tests add and
    # remove their own, with their prefix, meanwhile: only unprefixed names are compared)
    wanted = set(service_grants(load_settings({})))
    production_names = {g.name for g in wanted}
    present = {g for g in grants_of(admin, {g.principal for g in wanted}) if g.name in production_names}
    assert present == wanted
