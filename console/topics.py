"""The Kafka topics the console reads and writes, created with their retention policies.

=========================  ==========  ==============================  ==============================
topic                      partitions  cleanup                          written by
=========================  ==========  ==============================  ==============================
``alerts.state``           as vitals   compact                          worker (``streams.app``)
``console.users``          1           compact                          ``wearwatch users``
``console.preferences``    1           compact                          console
``console.sessions``       1           compact,delete (session max+1d)  console (logouts)
``audit``                  1           delete (6 years)                 console, ``wearwatch users``
``alerts.commands``        as vitals   delete                           gateway, console
=========================  ==========  ==============================  ==============================

The cleanup policies and retention times are those of :mod:`wearwatch.retention` (configurable).
One partition for the small topics keeps their order total (the audit trail reads newest first
across replicas) and costs nothing at their rates (a few records per nurse action).
"""

from __future__ import annotations

import logging
from typing import Any

from wearwatch.config import Settings
from wearwatch.errors import StackUnavailable
from wearwatch.retention import topic_configs
from wearwatch.transport import kafka_client_config

__all__ = ["console_topics", "ensure_console_topics", "partition_count"]

log = logging.getLogger(__name__)


def console_topics(settings: Settings) -> list[tuple[str, int, dict[str, str]]]:
    """(name, partitions, config) of every topic the console uses.

    >>> from wearwatch.config import load_settings
    >>> [(n, p, c.get("cleanup.policy")) for n, p, c in console_topics(load_settings({}))][:3]
    [('alerts.state', 8, 'compact'), ('console.users', 1, 'compact'), ('console.preferences', 1, 'compact')]
    """
    s = settings
    configs = topic_configs(s)  # cleanup policy and retention of every topic: wearwatch/retention.py
    return [
        (s.topic_alert_state, s.partitions, configs[s.topic_alert_state]),
        (s.topic_console_users, 1, configs[s.topic_console_users]),
        (s.topic_console_preferences, 1, configs[s.topic_console_preferences]),
        (s.topic_console_sessions, 1, configs[s.topic_console_sessions]),
        (s.topic_audit, 1, configs[s.topic_audit]),
        (s.topic_commands, s.partitions, configs[s.topic_commands]),
    ]


def ensure_console_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    """Create the console's topics that do not exist yet (existing ones are left as they are) and
    return the partition count of each, and of ``alerts`` if it exists (waiting until a new topic's
    partitions are known). Raises :class:`~wearwatch.errors.StackUnavailable` if Kafka is unreachable."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin: Any = KafkaAdminClient(**kafka_client_config(settings), client_id="wearwatch-console-admin")
    except KafkaError as exc:
        raise StackUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        for name, partitions, config in console_topics(settings):
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, partitions, settings.replication_factor, topic_configs=config)])
                log.info("created topic %s (%d partitions, %s)", name, partitions, config or "defaults")
            except TopicAlreadyExistsError:
                pass
        return _partitions(admin, [n for n, _, _ in console_topics(settings)], [settings.topic_alerts], timeout_s)
    except KafkaError as exc:
        raise StackUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        admin.close()


def _partitions(admin: Any, names: list[str], optional: list[str], timeout_s: float) -> dict[str, int]:
    import time

    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    out: dict[str, int] = {}
    existing = set(admin.list_topics())
    for name in optional:
        if name in existing:
            names = [*names, name]
    while True:
        try:
            for d in admin.describe_topics([n for n in names if n not in out]):
                if d.get("error_code", 0) == 0 and d.get("partitions"):
                    out[d["name"]] = len(d["partitions"])
        except KafkaError:
            pass
        if len(out) == len(names) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    missing = sorted(set(names) - set(out))
    if missing:
        raise StackUnavailable(f"Kafka topic(s) without partitions after {timeout_s:g} s: {', '.join(missing)}")
    return out


def partition_count(settings: Settings, topic: str) -> int | None:
    """How many partitions ``topic`` has; None if it does not exist (blocking)."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin: Any = KafkaAdminClient(**kafka_client_config(settings), client_id="wearwatch-console-admin")
    except KafkaError as exc:
        raise StackUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    try:
        if topic not in set(admin.list_topics()):
            return None
        return _partitions(admin, [topic], [], 10.0)[topic]
    except KafkaError as exc:
        raise StackUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        admin.close()
