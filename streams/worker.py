"""``wearwatch worker``: run the Faust worker in this process."""

from __future__ import annotations

import argparse
import logging

import faust

from streams.app import Pipeline
from streams.monitor import fix_malloc_thresholds
from wearwatch.config import load_settings
from wearwatch.transport import ensure_topics

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--web-port", type=int, default=None, help="override WEARWATCH_WEB_PORT")


def run(args: argparse.Namespace) -> int:
    overrides = {"web_port": args.web_port} if args.web_port else {}
    settings = load_settings(**overrides)
    fix_malloc_thresholds(settings.worker_malloc_threshold_kb * 1024)
    # Faust declares only its internal topics (changelogs); the data topics must exist
    # before the consumer subscribes, or it ignores them until the next rebalance.
    ensure_topics(settings, [settings.topic_vitals, settings.topic_commands, settings.topic_alerts,
                             settings.topic_minutes, settings.topic_dlq])
    pipeline = Pipeline(settings)
    # the data keys before any record is taken: a sealed record met before would find no key store to ask
    pipeline.datakeys.start()
    if not pipeline.datakeys.wait_ready(60.0):
        logging.getLogger(__name__).warning("%s not read to its end yet; going on (a reading with a key not "
                                            "seen yet waits for it)", settings.topic_datakeys)
    worker = faust.Worker(pipeline.app, loglevel=logging.getLevelName(logging.getLogger().level))
    worker.execute_from_commandline()
    return 0
