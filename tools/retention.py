"""``wearwatch retention [--apply]``: how long each topic and InfluxDB keep data, and setting it on a cluster.

Prints every topic's cleanup policy and retention (:mod:`wearwatch.retention`, from the
``WEARWATCH_RETENTION_*`` settings) and InfluxDB's retention policy. With ``--apply`` it creates
the topics that do not exist yet and sets the declared configuration on those that do (with an
administrator's Kafka account: altering topic configurations needs ``ALTER_CONFIGS``);
``make stack-up`` does the same for the local stack.
"""

from __future__ import annotations

import argparse
import logging

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from wearwatch.config import load_settings
from wearwatch.errors import StackUnavailable
from wearwatch.log_rekey import rekey_log
from wearwatch.retention import apply_topic_configs, influx_retention_statement, per_record_logs, topic_configs
from wearwatch.transport import kafka_client_config

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--apply", action="store_true",
                        help="create missing topics and set the declared retention on existing ones")


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    for name, config in topic_configs(settings).items():
        print(f"{name:<40} {' '.join(f'{k}={v}' for k, v in sorted(config.items()))}")
    print(f"{'InfluxDB ' + settings.influx_bucket:<40} {influx_retention_statement(settings)}")
    if not args.apply:
        return 0
    try:
        admin = KafkaAdminClient(**kafka_client_config(settings), client_id="wearwatch-admin")
    except KafkaError as exc:
        raise StackUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    try:
        keys = per_record_logs(settings)
        # alerts and audit written by an earlier version are re-keyed before compaction (wearwatch/log_rekey.py)
        created, altered = apply_topic_configs(
            admin, settings, rekey=lambda topic: rekey_log(kafka_client_config(settings), topic, keys[topic]))
    except KafkaError as exc:
        raise StackUnavailable(f"Kafka refused the topic configuration: {type(exc).__name__}") from exc
    finally:
        admin.close()
    print(f"created {created} topic(s), set the retention of {altered}")
    log.info("retention applied: %d topic(s) created, %d altered", created, altered)
    return 0
