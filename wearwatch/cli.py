"""The ``wearwatch`` command line: one entry point, one subcommand per job.

Each subcommand lives in the package that owns the job and exposes two
functions, ``add_arguments(parser)`` and ``run(args) -> int``. Modules keep
their heavy imports (faust, river, ...) inside ``run`` so ``wearwatch --help``
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from wearwatch.errors import WearwatchError

__all__ = ["COMMANDS", "main"]

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("ingest.simulator", "publish a simulated patient fleet over MQTT"),
    "gateway": ("ingest.gateway", "bridge MQTT device readings into Kafka"),
    "worker": ("streams.worker", "run the Faust worker (detectors, alerts, InfluxDB)"),
    "console": ("console.server", "serve the fleet alert console for nurses (web page, JSON API, live events)"),
    "users": ("console.users", "manage console accounts, also while the console runs"),
    "replay": ("wearwatch.replay", "run the detectors over a CSV of readings offline"),
    "evaluate": ("wearwatch.evaluation", "score detectors on labelled episodes or NAB results"),
    "nab": ("wearwatch.nab", "run the generic detector over NAB-format CSV files"),
    "report": ("wearwatch.report", "write a static HTML report of a run from InfluxDB"),
    "export": ("wearwatch.export", "export a patient's 1-minute series as a FHIR R4 Bundle of Observations"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (all of them when None)."""
    parser = argparse.ArgumentParser(
        prog="wearwatch",
        description="Streaming anomaly detection for wearable health data.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command is None or name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    from wearwatch.logs import setup_logging

    setup_logging("DEBUG" if args.verbose else None)
    try:
        return int(args._module.run(args) or 0)
    except WearwatchError as exc:
        logging.getLogger("wearwatch").error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
