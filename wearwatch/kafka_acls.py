"""The Kafka ACLs of each wearwatch service: what its account may read, write and create.

One definition serves the local stack (``deploy/stack/stackctl.py`` applies it for the unprefixed
topic names at every ``make stack-up``), the stack tests (which apply it for their own topic
prefix and remove it afterwards) and production (``python -m wearwatch.kafka_acls --apply`` with
an administrator's Kafka account in the environment). Every grant names an exact topic
(``LITERAL``), except the worker's internal topics, which Faust names after the app id
(``PREFIXED`` ``<app id>-``: the table's changelog, the assignor's leader topic).

What each service does with Kafka, and so what it is granted:

* **gateway** — produces readings, dead letters and nurse commands (``vitals.raw``, ``vitals.dlq``,
  ``alerts.commands``) and follows ``gateway.tokens`` and ``enrollment`` without a consumer group; creates those
  topics at start if they are missing. Its idempotent producer needs no ``IDEMPOTENT_WRITE`` on
  the cluster: since Kafka 3.0 (KIP-679) ``InitProducerId`` is allowed to a principal with
  ``WRITE`` on any topic (the stack tests produce with exactly these grants).
* **worker** — consumes ``vitals.raw``, ``alerts.commands``, ``alerts`` and ``vitals.1m`` (its sinks)
  in the consumer group named after its app id; produces ``alerts``, ``vitals.1m``, ``vitals.dlq``
  and ``alerts.state``; follows ``enrollment`` (no group); reads, writes and creates its own ``<app id>-…`` topics.
* **console** — follows ``alerts.state``, ``enrollment``, ``console.users``, ``console.preferences``,
  ``console.sessions`` and ``audit`` and scans ``alerts`` (no consumer group); produces
  ``alerts.commands``, ``audit`` and the ``console.*`` topics; creates its topics at start.

Every service follows ``datakeys`` (no group) and may write it: a patient's data key comes with their enrolment
(from an administrator), and one enrolled without is given one by whichever service first seals something of
theirs. An erasure's tombstones there come from an administrator.

Nobody but an administrator writes ``gateway.tokens`` (``wearwatch tokens``) or ``enrollment``
(``wearwatch patients``), or deletes topics.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from wearwatch.config import Settings, load_settings
from wearwatch.errors import StackUnavailable

__all__ = ["ACCOUNTS", "Grant", "apply_grants", "grants_of", "remove_grants", "service_grants"]

#: the Kafka account (SCRAM user) of each service on the local stack
ACCOUNTS: Mapping[str, str] = {
    "gateway": "wearwatch-gateway",
    "worker": "wearwatch-worker",
    "console": "wearwatch-console",
    "admin": "wearwatch-admin",
}


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW rule: ``principal`` may ``operation`` on ``resource`` ``name`` (``pattern``: literal or prefixed)."""

    principal: str  # "User:wearwatch-gateway"
    resource: str  # "topic" | "group"
    name: str
    operation: str  # READ, WRITE, CREATE, DESCRIBE
    pattern: str = "literal"  # or "prefixed"

    def __str__(self) -> str:
        what = f"{self.resource} {self.name}{'*' if self.pattern == 'prefixed' else ''}"
        return f"{self.principal:<26} {self.operation:<9} {what}"


def service_grants(settings: Settings, accounts: Mapping[str, str] = ACCOUNTS) -> list[Grant]:
    """Every grant of the gateway, the worker and the console for the topics of ``settings``
    (its ``WEARWATCH_TOPIC_PREFIX`` and, for the worker's group and internal topics, its ``WEARWATCH_APP_ID``).

    READ and WRITE imply DESCRIBE in Kafka, so DESCRIBE is never listed separately.

    >>> from wearwatch.config import load_settings
    >>> gw = [str(g) for g in service_grants(load_settings({})) if g.principal == "User:wearwatch-gateway"]
    >>> print("\\n".join(gw))
    User:wearwatch-gateway     CREATE    topic alerts.commands
    User:wearwatch-gateway     WRITE     topic alerts.commands
    User:wearwatch-gateway     CREATE    topic datakeys
    User:wearwatch-gateway     READ      topic datakeys
    User:wearwatch-gateway     WRITE     topic datakeys
    User:wearwatch-gateway     CREATE    topic enrollment
    User:wearwatch-gateway     READ      topic enrollment
    User:wearwatch-gateway     CREATE    topic gateway.tokens
    User:wearwatch-gateway     READ      topic gateway.tokens
    User:wearwatch-gateway     CREATE    topic vitals.dlq
    User:wearwatch-gateway     WRITE     topic vitals.dlq
    User:wearwatch-gateway     CREATE    topic vitals.raw
    User:wearwatch-gateway     WRITE     topic vitals.raw
    """
    s = settings
    out: set[Grant] = set()

    def topics(account: str, operation: str, *names: str) -> None:
        out.update(Grant(f"User:{accounts[account]}", "topic", n, operation) for n in names)

    # gateway
    gw_out = (s.topic_vitals, s.topic_dlq, s.topic_commands)
    topics("gateway", "WRITE", *gw_out)
    topics("gateway", "READ", s.topic_tokens, s.topic_enrollment)
    topics("gateway", "CREATE", *gw_out, s.topic_tokens, s.topic_enrollment)
    # worker
    alert_state = f"{s.topic_prefix}alerts.state"
    worker_in = (s.topic_vitals, s.topic_commands, s.topic_alerts, s.topic_minutes)
    worker_out = (s.topic_alerts, s.topic_minutes, s.topic_dlq, alert_state)
    topics("worker", "READ", *worker_in, s.topic_enrollment)
    topics("worker", "WRITE", *worker_out)
    topics("worker", "CREATE", *sorted({*worker_in, *worker_out, s.topic_enrollment}))
    worker = f"User:{accounts['worker']}"
    out.add(Grant(worker, "group", s.app_id, "READ"))
    out.update(Grant(worker, "topic", f"{s.app_id}-", op, "prefixed") for op in ("READ", "WRITE", "CREATE"))
    # console
    console = [f"{s.topic_prefix}{n}" for n in ("console.users", "console.preferences", "console.sessions", "audit")]
    topics("console", "READ", s.topic_alerts, alert_state, s.topic_enrollment, *console)
    topics("console", "WRITE", s.topic_commands, *console)
    topics("console", "CREATE", s.topic_commands, alert_state, s.topic_enrollment, *console)
    # the per-patient data keys (wearwatch/datakeys.py): read by every service that seals or opens patient data,
    # written by those that create a patient's first key
    for account in ("gateway", "worker", "console"):
        for op in ("READ", "WRITE", "CREATE"):
            topics(account, op, s.topic_datakeys)
    return sorted(out)


def grants_of(admin: Any, principals: Iterable[str]) -> set[Grant]:
    """The ALLOW grants on topics and groups that exist for ``principals`` (a kafka-python admin client)."""
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePatternFilter,
        ResourceType,
    )

    found: set[Grant] = set()
    for principal in principals:
        pattern = ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY)
        acls, error = admin.describe_acls(ACLFilter(principal, None, ACLOperation.ANY, ACLPermissionType.ALLOW,
                                                    pattern))
        if error.errno:
            raise StackUnavailable(f"Kafka refused to list the ACLs of {principal}: {error.__name__}")
        for acl in acls:
            rp = acl.resource_pattern
            if rp.resource_type in (ResourceType.TOPIC, ResourceType.GROUP):
                found.add(Grant(acl.principal, rp.resource_type.name.lower(), rp.resource_name, acl.operation.name,
                                rp.pattern_type.name.lower()))
    return found


def _acl(grant: Grant) -> Any:
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    pattern = ResourcePattern(ResourceType[grant.resource.upper()], grant.name,
                              ACLResourcePatternType[grant.pattern.upper()])
    return ACL(grant.principal, "*", ACLOperation[grant.operation], ACLPermissionType.ALLOW, pattern)


def apply_grants(admin: Any, grants: Iterable[Grant], wait_s: float = 10.0) -> int:
    """Create the grants that do not exist yet and wait (up to ``wait_s``) until the broker lists them, i.e.
    enforces them; how many were created. Raises StackUnavailable if Kafka refuses one or never lists it."""
    wanted = set(grants)
    principals = {g.principal for g in wanted}
    missing = sorted(wanted - grants_of(admin, principals))
    if not missing:
        return 0
    result = admin.create_acls([_acl(g) for g in missing])
    if result["failed"]:  # kafka-python lists the errors only, in request order
        errors = sorted({e.__name__ for e in result["failed"]})
        raise StackUnavailable(f"Kafka refused {len(result['failed'])} of {len(missing)} ACLs: {', '.join(errors)}")
    # created = written to the metadata log; listed = applied by the broker's authorizer
    deadline = time.monotonic() + wait_s
    while not wanted <= grants_of(admin, principals):
        if time.monotonic() > deadline:
            raise StackUnavailable(f"Kafka took the ACLs but did not list them within {wait_s:g} s")
        time.sleep(0.1)
    return len(missing)


def remove_grants(admin: Any, grants: Iterable[Grant]) -> int:
    """Delete exactly these grants (each one matched in full); how many ACLs Kafka deleted."""
    from kafka.admin import ACLFilter, ResourcePatternFilter

    filters = []
    for g in grants:
        acl = _acl(g)
        rp = acl.resource_pattern
        filters.append(ACLFilter(acl.principal, acl.host, acl.operation, acl.permission_type,
                                 ResourcePatternFilter(rp.resource_type, rp.resource_name, rp.pattern_type)))
    if not filters:
        return 0
    deleted = 0
    for _filter, matches, error in admin.delete_acls(filters):
        if error.errno:
            raise StackUnavailable(f"Kafka refused to delete ACLs: {error.__name__}")
        deleted += len(matches)
    return deleted


def main(argv: list[str] | None = None) -> int:
    """``python -m wearwatch.kafka_acls [--apply]``: print (or create) the services' ACLs for the current settings."""
    ap = argparse.ArgumentParser(prog="python -m wearwatch.kafka_acls", description=main.__doc__)
    ap.add_argument("--apply", action="store_true",
                    help="create the missing ones, connecting with the WEARWATCH_KAFKA_* settings (an admin account)")
    for service in ("gateway", "worker", "console"):
        ap.add_argument(f"--{service}-user", default=ACCOUNTS[service], help=f"the {service}'s Kafka account")
    args = ap.parse_args(argv)
    settings = load_settings()
    accounts = {**ACCOUNTS, "gateway": args.gateway_user, "worker": args.worker_user, "console": args.console_user}
    grants = service_grants(settings, accounts)
    for g in grants:
        print(g)
    if args.apply:
        from kafka.admin import KafkaAdminClient

        from wearwatch.transport import kafka_client_config

        admin = KafkaAdminClient(**kafka_client_config(settings), client_id="wearwatch-acls")
        try:
            print(f"created {apply_grants(admin, grants)} of {len(grants)} ACLs")
        finally:
            admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
