"""How long wearwatch keeps what it holds: every Kafka topic's cleanup policy and retention, and InfluxDB's.

Health data is kept as long as its purpose needs and no longer (GDPR art. 5(1)(e)); the alert record
and the audit trail as long as record-keeping requires (HIPAA keeps documentation 6 years). One
table, :func:`topic_configs`, states it for every topic the project declares; it is applied

* when a topic is created, by whichever service creates it first (``wearwatch.transport.ensure_topics``,
  the console's topics, the enrollment topic, the worker's changelog),
* to existing topics by ``make stack-up`` (``deploy/stack/stackctl.py``) and by
  ``wearwatch retention --apply`` (production, with an administrator's Kafka account),

and InfluxDB's retention policy by :func:`influx_retention_statement` (``make stack-up``) or
``DOCKER_INFLUXDB_INIT_RETENTION`` (docker-compose).

=====================================  ==============  =========================================
topic                                  cleanup         kept
=====================================  ==============  =========================================
``vitals.raw``, ``vitals.1m``          delete          ``WEARWATCH_RETENTION_RAW_DAYS`` (7)
``vitals.dlq``                         delete          ``WEARWATCH_RETENTION_DEAD_LETTERS_DAYS`` (7)
``alerts.commands``                    delete          ``WEARWATCH_RETENTION_COMMANDS_DAYS`` (30)
``alerts``                             compact,delete  ``WEARWATCH_RETENTION_ALERTS_DAYS`` (2190); one key
                                                       per record, so an erasure's tombstones remove the
                                                       patient's records within
                                                       ``WEARWATCH_ERASURE_COMPACTION_HOURS``
``audit``                              compact,delete  ``WEARWATCH_RETENTION_AUDIT_DAYS`` (2190); likewise
``console.sessions``                   compact,delete  the longest session + 1 day
``alerts.state``, ``enrollment``,      compact         each key's latest record; a tombstone removes
``gateway.tokens``, ``console.users``,                 it within ``WEARWATCH_ERASURE_COMPACTION_HOURS``
``console.preferences``, the changelog                 (24)
``datakeys``                           compact         each key id's record, for ever; an erasure's
                                                       tombstones destroy the patient's data keys (and
                                                       with them what the transit logs hold of them)
                                                       within ``WEARWATCH_ERASURE_COMPACTION_HOURS``
=====================================  ==============  =========================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import TopicAlreadyExistsError

from wearwatch.config import Settings
from wearwatch.partitioning import alert_record_key, audit_record_key

__all__ = [
    "apply_topic_configs",
    "changelog_topic",
    "compacted_config",
    "described_configs",
    "influx_retention_statement",
    "per_record_logs",
    "topic_configs",
    "topic_partitions",
]

log = logging.getLogger(__name__)

_DAY_MS = 86_400_000
#: the worker's patient-state table (``streams.app``): Faust names its changelog ``<app id>-<table>-changelog``
STATE_TABLE = "patient-state"


def _days(days: float) -> str:
    return str(int(days * _DAY_MS))


def changelog_topic(settings: Settings) -> str:
    """The worker's patient-state changelog topic."""
    return f"{settings.app_id}-{STATE_TABLE}-changelog"


def compacted_config(settings: Settings) -> dict[str, str]:
    """A compacted topic: each key's latest record kept for ever, a tombstone (and the records it replaces)
    compacted away within ``erasure_compaction_hours`` (``max.compaction.lag.ms`` also rolls the active
    segment, so a quiet topic is compacted too) and then removed after ``delete.retention.ms``."""
    lag_ms = str(int(settings.erasure_compaction_hours * 3_600_000))
    return {"cleanup.policy": "compact", "max.compaction.lag.ms": lag_ms, "delete.retention.ms": lag_ms}


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Topic name → its configuration (cleanup policy and retention), for every topic wearwatch declares.

    >>> from wearwatch.config import load_settings
    >>> cfg = topic_configs(load_settings({}))
    >>> cfg["vitals.raw"], cfg["audit"]["retention.ms"], cfg["enrollment"]["cleanup.policy"]
    ({'cleanup.policy': 'delete', 'retention.ms': '604800000'}, '189216000000', 'compact')
    """
    s = settings

    def delete(days: float) -> dict[str, str]:
        return {"cleanup.policy": "delete", "retention.ms": _days(days)}

    compact = compacted_config(s)

    def erasable(days: float) -> dict[str, str]:
        # a log keyed per record: kept ``days`` (delete) and compacted (a tombstone removes its record in time)
        return {**compact, "cleanup.policy": "compact,delete", "retention.ms": _days(days)}

    sessions_ms = str(int(s.console_session_max_s * 1000) + _DAY_MS)
    return {
        s.topic_vitals: delete(s.retention_raw_days),
        s.topic_minutes: delete(s.retention_raw_days),
        s.topic_dlq: delete(s.retention_dead_letters_days),
        s.topic_commands: delete(s.retention_commands_days),
        # one key per record and a tombstone per record of an erased patient (tools/patients.py)
        s.topic_alerts: erasable(s.retention_alerts_days),
        s.topic_audit: erasable(s.retention_audit_days),
        s.topic_console_sessions: {"cleanup.policy": "compact,delete", "retention.ms": sessions_ms},
        s.topic_alert_state: dict(compact),
        s.topic_enrollment: {**compact, "retention.ms": "-1"},
        s.topic_tokens: dict(compact),
        # per-patient data keys (wearwatch/datakeys.py): kept until the patient is erased
        s.topic_datakeys: {**compact, "retention.ms": "-1"},
        s.topic_console_users: dict(compact),
        s.topic_console_preferences: dict(compact),
        changelog_topic(s): dict(compact),
    }


def per_record_logs(settings: Settings) -> dict[str, Callable[[dict[str, Any]], bytes]]:
    """The long-lived logs keyed per record (compacted so that an erasure can remove a record): topic -> the key of
    a record from its JSON. An earlier version keyed them by patient or actor (``wearwatch.log_rekey``)."""
    return {settings.topic_alerts: alert_record_key, settings.topic_audit: audit_record_key}


def topic_partitions(settings: Settings) -> dict[str, int]:
    """How many partitions each topic is created with: the patient-keyed ones as ``vitals.raw``, the
    small ones (roster, tokens, console accounts, audit) one, for a total order."""
    s = settings
    keyed = (s.topic_vitals, s.topic_minutes, s.topic_dlq, s.topic_commands, s.topic_alerts, s.topic_alert_state,
             changelog_topic(s))
    return {name: (s.partitions if name in keyed else 1) for name in topic_configs(s)}


def influx_retention_statement(settings: Settings, database: str | None = None) -> str:
    """The InfluxQL that sets the database's default retention policy (InfluxDB 1.8: bucket = database).

    >>> from wearwatch.config import load_settings
    >>> influx_retention_statement(load_settings({}))
    'ALTER RETENTION POLICY "autogen" ON "wearwatch" DURATION 8760h SHARD DURATION 168h DEFAULT'
    """
    db = database or settings.influx_bucket.split("/")[0]
    hours = int(settings.influx_retention_days * 24)
    return f'ALTER RETENTION POLICY "autogen" ON "{db}" DURATION {hours}h SHARD DURATION 168h DEFAULT'


def apply_topic_configs(admin: Any, settings: Settings, create: bool = True,
                        rekey: Callable[[str], int] | None = None) -> tuple[int, int]:
    """Create the declared topics that do not exist (with ``create``) and set the declared configuration on
    those that do (incrementally: other settings stay). Returns (created, altered).

    An existing ``alerts`` or ``audit`` topic that is not compacted yet (written by an earlier version, keyed by
    patient or actor) is switched to ``compact,delete`` only after ``rekey(topic)`` wrote its records again under
    their own keys (:mod:`wearwatch.log_rekey`); without ``rekey`` its cleanup policy is left as it is (a warning
    says so), because compacting it as it is would keep one record per patient or actor."""
    wanted = topic_configs(settings)
    parts = topic_partitions(settings)
    existing = set(admin.list_topics())
    created = altered = 0
    for name, config in wanted.items():
        if name in existing or not create:
            continue
        try:
            admin.create_topics([NewTopic(name, parts[name], settings.replication_factor, topic_configs=config)])
            created += 1
        except TopicAlreadyExistsError:
            existing.add(name)
    present = sorted(n for n in wanted if n in existing)
    if present:
        current = described_configs(admin, present)
        for name in per_record_logs(settings):
            policy = current.get(name, {}).get("cleanup.policy")
            if name not in current or policy is None or "compact" in policy:
                continue
            if rekey is None:
                wanted[name] = {k: v for k, v in wanted[name].items() if k != "cleanup.policy"}
                log.warning("%s is not compacted yet: its cleanup policy stays %s until its records are re-keyed "
                            "(wearwatch retention --apply)", name, policy)
            else:
                log.info("%s: %d record(s) re-keyed before compaction", name, rekey(name))
        todo = [ConfigResource(ConfigResourceType.TOPIC, n, configs=dict(wanted[n])) for n in present
                if any(current.get(n, {}).get(k) != v for k, v in wanted[n].items())]
        if todo:
            admin.alter_configs(todo, raise_on_unknown=False)
            altered = len(todo)
    return created, altered


def described_configs(admin: Any, topics: list[str]) -> dict[str, dict[str, str]]:
    """The configuration Kafka reports for each topic (every key, defaults included)."""
    out: dict[str, dict[str, str]] = {}
    result = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in topics],
                                    config_filter="all")
    for _rtype, per_name in result.items():
        for name, entries in per_name.items():
            out[name] = {k: str(v.get("value") if isinstance(v, dict) else v) for k, v in entries.items()}
    return out
