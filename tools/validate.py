"""``wearwatch validate FILE|-``: check device payloads against the contract, offline, before sending them.

The payload is checked by the gateway's own code — :func:`ingest.contract.parse_payload`
for the JSON contract (one reading or an array), :func:`ingest.fhir.parse_fhir` with
``--fhir`` (an Observation or a Bundle) — with the gateway's limits from the settings
(clock skew, reading age, payload size, batch size), as if it arrived now (or at
``--received-at``) on ``wearwatch/v1/vitals/{vendor}/{device}``. Nothing is sent anywhere.

One line per reading, in payload order: ``ok`` with the normalized reading (signal,
value in the canonical unit, time), or ``invalid`` with the dead-letter reason that
``vitals.dlq`` would carry and its explanation. A payload refused as a whole (not
JSON, too large, an empty array) is one ``invalid`` line without an index. ``--json``
prints the same as a JSON document.

Exit code: 0 when every reading is valid, 1 when some are not, 2 for usage errors
(no such file, unreadable input, bad options).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ingest.contract import DeadLetter, Limits, Reading, parse_payload, vitals_topic
from ingest.fhir import fhir_topic, parse_fhir
from wearwatch.config import Settings, load_settings
from wearwatch.contract.ids import DEVICE_ID_PATTERN, VENDOR_PATTERN
from wearwatch.contract.times import TimestampError, format_rfc3339, parse_timestamp
from wearwatch.errors import ConfigError, WearwatchError

__all__ = ["Verdict", "add_arguments", "run", "validate_payload"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the gateway would do with one reading (``index`` None: the payload as a whole)."""

    index: int | None
    reading: Reading | None = None
    dead: DeadLetter | None = None

    @property
    def ok(self) -> bool:
        return self.reading is not None

    def as_dict(self) -> dict[str, Any]:
        if self.reading is not None:
            r = self.reading
            return {"index": self.index, "verdict": "ok", "signal": r.signal, "value": r.value, "unit": r.unit,
                    "ts": format_rfc3339(r.ts_ms), "loinc": r.loinc}
        assert self.dead is not None
        return {"index": self.index, "verdict": "invalid", "reason": self.dead.reason, "detail": self.dead.detail}

    def line(self) -> str:
        where = "payload" if self.index is None else f"#{self.index}"
        if self.reading is not None:
            r = self.reading
            return f"{where:>8}  ok       {r.signal} {r.value:g} {r.unit} at {format_rfc3339(r.ts_ms)}"
        assert self.dead is not None
        return f"{where:>8}  invalid  {self.dead.reason}: {self.dead.detail}"


def validate_payload(payload: bytes, settings: Settings, *, fhir: bool = False, vendor: str = "local",
                     device: str = "validate", now_ms: int | None = None) -> list[Verdict]:
    """The gateway's verdict on each reading of one MQTT payload, in payload order.

    >>> from wearwatch.config import load_settings
    >>> vs = validate_payload(b'[{"patient_id":"p1","signal":"glucose","value":3,"unit":"mmol/L","ts":1767571200000},'
    ...                       b' {"patient_id":"p1","signal":"glucose","value":99,"unit":"bpm","ts":1767571200000}]',
    ...                       load_settings({}), now_ms=1767571201000)
    >>> [(v.index, v.ok, v.dead.reason if v.dead else round(v.reading.value, 1)) for v in vs]
    [(0, True, 54.0), (1, False, 'unit_mismatch')]
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    limits = Limits.from_settings(settings)
    if fhir:
        res = parse_fhir(payload, now, vendor=vendor, device_id=device, topic=fhir_topic(vendor, device),
                         limits=limits)
        return [Verdict(e.index, e.reading, e.dead) for e in res.entries]
    readings, dead = parse_payload(vitals_topic(vendor, device), payload, now, limits)
    if any(d.index is None for d in dead):  # the payload (or its only reading) as a whole
        return [Verdict(None, dead=d) for d in dead]
    if readings and not dead and not payload.lstrip().startswith(b"["):
        return [Verdict(None, reading=readings[0])]
    bad = {d.index: d for d in dead}
    good = iter(readings)
    return [Verdict(i, dead=bad[i]) if i in bad else Verdict(i, reading=next(good))
            for i in range(len(readings) + len(dead))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="FILE|-", help="the payload: a file, or - for standard input")
    parser.add_argument("--fhir", action="store_true",
                        help="the payload is FHIR R4 (an Observation or a Bundle), as on wearwatch/v1/fhir/...")
    parser.add_argument("--vendor", default="local", help="your vendor account (the topic's {vendor}; default local)")
    parser.add_argument("--device", default="validate", help="the device id of the topic (default validate)")
    parser.add_argument("--received-at", metavar="TIME", default=None,
                        help="judge time stamps as if received then (RFC 3339 or epoch ms; default now)")
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")


def run(args: argparse.Namespace) -> int:
    if not re.fullmatch(VENDOR_PATTERN, args.vendor):
        raise ConfigError("--vendor must be 1-64 characters of [A-Za-z0-9_.-]")
    if not re.fullmatch(DEVICE_ID_PATTERN, args.device):
        raise ConfigError("--device must be 1-128 characters of [A-Za-z0-9_.:-]")
    now_ms = None
    if args.received_at is not None:
        raw: Any = args.received_at
        try:
            now_ms = parse_timestamp(int(raw) if raw.lstrip("-").isdigit() else raw)
        except TimestampError as exc:
            raise ConfigError(f"--received-at {exc}") from None
    if args.input == "-":
        payload = sys.stdin.buffer.read()
    else:
        try:
            payload = Path(args.input).read_bytes()
        except OSError as exc:
            raise WearwatchError(f"{args.input}: cannot read ({exc.strerror or exc})") from None
    verdicts = validate_payload(payload, load_settings(), fhir=args.fhir, vendor=args.vendor, device=args.device,
                                now_ms=now_ms)
    n_bad = sum(1 for v in verdicts if not v.ok)
    if args.json:
        doc = {"valid": len(verdicts) - n_bad, "invalid": n_bad, "readings": [v.as_dict() for v in verdicts]}
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        for v in verdicts:
            print(v.line())
        print(f"{len(verdicts) - n_bad} valid, {n_bad} invalid"
              + (" (dead-letter reasons as on vitals.dlq)" if n_bad else ""))
    sys.stdout.flush()
    return 1 if n_bad else 0
