"""Every topic the project declares has a cleanup policy and a retention, and the deployments apply them."""

from __future__ import annotations

from pathlib import Path

import yaml

from streams.app import Pipeline
from wearwatch.config import Settings, load_settings
from wearwatch.retention import (
    changelog_topic,
    influx_retention_statement,
    topic_configs,
    topic_partitions,
)

ROOT = Path(__file__).resolve().parents[1]


def declared_topics(s: Settings) -> set[str]:
    """Every ``topic_*`` name of the settings."""
    return {getattr(s, name) for name in dir(type(s)) if name.startswith("topic_") and name != "topic_prefix"}


def test_every_declared_topic_has_a_retention() -> None:
    s = load_settings({}, topic_prefix="t.")
    configs = topic_configs(s)
    assert declared_topics(s) | {changelog_topic(s)} == set(configs)
    for name, config in configs.items():
        policy = config["cleanup.policy"]
        if policy == "compact":  # kept per key; an erased patient's tombstone is compacted in bounded time
            assert config["max.compaction.lag.ms"] == str(24 * 3_600_000), name
        else:
            assert int(config["retention.ms"]) > 0, name
    assert configs["t.vitals.raw"]["retention.ms"] == str(7 * 86_400_000)
    assert configs["t.alerts"]["retention.ms"] == str(2190 * 86_400_000)
    # the long-lived logs, keyed per record: kept 6 years, and an erasure's tombstones compacted within 24 h
    for name in ("t.alerts", "t.audit"):
        assert configs[name]["cleanup.policy"] == "compact,delete", name
        assert configs[name]["max.compaction.lag.ms"] == configs[name]["delete.retention.ms"] == str(24 * 3_600_000)
    assert topic_partitions(s)["t.enrollment"] == 1 and topic_partitions(s)["t.vitals.raw"] == s.partitions


def test_retention_follows_the_settings() -> None:
    s = load_settings({"WEARWATCH_RETENTION_RAW_DAYS": "3", "WEARWATCH_ERASURE_COMPACTION_HOURS": "1",
                       "WEARWATCH_INFLUX_RETENTION_DAYS": "30"})
    configs = topic_configs(s)
    assert configs["vitals.raw"]["retention.ms"] == str(3 * 86_400_000)
    assert configs["enrollment"]["max.compaction.lag.ms"] == "3600000"
    assert "DURATION 720h" in influx_retention_statement(s)


def test_the_workers_changelog_is_the_declared_one() -> None:
    p = Pipeline(load_settings(influx_token="u:p", worker_store="memory", pseudonym_key="k" * 16, app_id="ww-ret"))
    assert p.table.changelog_topic.get_topic_name() == changelog_topic(p.settings)
    assert p.table.extra_topic_configs == topic_configs(p.settings)[changelog_topic(p.settings)]


def test_compose_keeps_influxdb_as_long_as_the_settings_say() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    retention = compose["services"]["influxdb"]["environment"]["DOCKER_INFLUXDB_INIT_RETENTION"]
    assert retention == f"{int(load_settings({}).influx_retention_days * 24)}h"
