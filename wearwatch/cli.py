"""The ``wearwatch`` command line: one entry point, one subcommand per job.

Each subcommand lives in the package that owns the job and exposes two
functions, ``add_arguments(parser)`` and ``run(args) -> int``.

The registry names each command's module as a string and imports only the one
that runs (``importlib``): ``wearwatch --help`` and ``wearwatch --version`` import
none. Importing every command's module (faust, river, scipy, kafka,
influxdb-client, fhir.resources, ...) takes about ten times as long: measured on
this machine, ``wearwatch --help`` 1.0-1.1 s against 9.5-11.8 s for all modules
with the machine loaded (load average 11), and 0.14 s when quiet (0.46 s when
``--help`` still imported them all). The registry also keeps the bottom layer
(``wearwatch``) free of import statements pointing up at the tools and services.

Errors: a :class:`~wearwatch.errors.WearwatchError` (bad input, bad settings, a
service that is not there) ends the command with one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from wearwatch.errors import WearwatchError
from wearwatch.logs import setup_logging

__all__ = ["COMMANDS", "build_parser", "main", "package_version"]

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("ingest.simulator", "publish a simulated patient fleet over MQTT"),
    "gateway": ("ingest.gateway", "bridge MQTT device readings into Kafka"),
    "tokens": ("ingest.tokens", "issue, list and revoke vendor API tokens for the gateway's FHIR endpoint"),
    "worker": ("streams.worker", "run the Faust worker (detectors, alerts, InfluxDB)"),
    "console": ("console.server", "serve the fleet alert console for nurses (web page, JSON API, live events)"),
    "users": ("console.users", "manage console accounts, also while the console runs"),
    "replay": ("tools.replay", "run the detectors over a CSV of readings offline"),
    "evaluate": ("tools.evaluation", "score detectors on labelled episodes or NAB results"),
    "nab": ("tools.nab", "run the generic detector over NAB-format CSV files"),
    "report": ("tools.report", "write a static HTML report of a run from InfluxDB"),
    "export": ("tools.export", "export a patient's 1-minute series as a FHIR R4 Bundle of Observations"),
    "validate": ("tools.validate", "check device payloads against the contract offline, with dead-letter reasons"),
    "dlq": ("tools.dlq", "show a vendor's dead letters from Kafka vitals.dlq, with reasons"),
    "contract": ("tools.contract", "write or check the AsyncAPI document of the MQTT and Kafka contract"),
    "patients": ("tools.patients", "enrol, discharge and list patients live (the enrollment topic); import a CSV"),
    "retention": ("tools.retention", "show how long each topic and InfluxDB keep data; --apply sets it"),
    "rules": ("tools.rules", "print the clinical rule table (opens, sustain, clears, hold-off, message)"),
}


def package_version() -> str:
    """The installed distribution's version (its metadata), ``0+unknown`` when run from a bare checkout."""
    try:
        return version("wearwatch")
    except PackageNotFoundError:
        return "0+unknown"


def build_parser(command: str | None = None, *, load_all: bool = False) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (every module with ``load_all``)."""
    parser = argparse.ArgumentParser(
        prog="wearwatch",
        description="Streaming anomaly detection for wearable health data.",
    )
    parser.add_argument("--version", action="version", version=f"wearwatch {package_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if load_all or name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        setup_logging("DEBUG" if args.verbose else None)
        return int(args._module.run(args) or 0)
    except WearwatchError as exc:
        print(f"wearwatch {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
