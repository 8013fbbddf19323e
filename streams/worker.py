"""``wearwatch worker``: run the Faust worker in this process."""

from __future__ import annotations

import argparse
import logging

import faust

from streams.app import Pipeline
from wearwatch.config import load_settings
from wearwatch.transport import ensure_topics

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--web-port", type=int, default=None, help="override WEARWATCH_WEB_PORT")


def run(args: argparse.Namespace) -> int:
    overrides = {"web_port": args.web_port} if args.web_port else {}
    settings = load_settings(**overrides)
    # Faust declares only its internal topics (changelogs); the data topics must exist
    # before the consumer subscribes, or it ignores them until the next rebalance.
    ensure_topics(settings, [settings.topic_vitals, settings.topic_commands, settings.topic_alerts,
                             settings.topic_minutes, settings.topic_dlq])
    pipeline = Pipeline(settings)
    worker = faust.Worker(pipeline.app, loglevel=logging.getLevelName(logging.getLogger().level))
    worker.execute_from_commandline()
    return 0
