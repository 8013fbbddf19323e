"""``wearwatch worker``: run the Faust worker in this process."""

from __future__ import annotations

import argparse
import logging

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--web-port", type=int, default=None, help="override WEARWATCH_WEB_PORT")


def run(args: argparse.Namespace) -> int:
    import faust

    from streams.app import Pipeline
    from wearwatch.config import load_settings

    overrides = {"web_port": args.web_port} if args.web_port else {}
    settings = load_settings(**overrides)
    pipeline = Pipeline(settings)
    worker = faust.Worker(pipeline.app, loglevel=logging.getLevelName(logging.getLogger().level))
    worker.execute_from_commandline()
    return 0
