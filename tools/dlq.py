"""``wearwatch dlq --vendor V [--since 1h] [--follow]``: a vendor's dead letters from Kafka ``vitals.dlq``.

Reads ``vitals.dlq`` from the time ``--since`` (a duration back from now, or an RFC
3339 time; offsets found by time stamp) to its current end, and with ``--follow``
keeps reading new ones until interrupted (Ctrl-C). It joins no consumer group and
commits nothing: it disturbs no one.

A dead letter belongs to a vendor when its MQTT topic is that vendor's
(``wearwatch/v1/vitals/{vendor}/…`` or ``wearwatch/v1/fhir/{vendor}/…``), when it
came in over the gateway's FHIR HTTP endpoint with that vendor's token (key ``http:{vendor}:…``), or when the
worker refused a reading of that vendor (``too_late``; the reading names its vendor).
Nurse-command dead letters belong to no vendor.

One line per dead letter: when the gateway received it, the reason, the device,
the index inside an array payload, and the explanation. The payload itself, which
holds patient identifiers and values, is printed only with ``--show-payload``.
The run ends with a summary: how many dead letters of the vendor by reason, out of
how many records read.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from ingest.contract import DeadLetter
from tools.export import parse_when
from wearwatch.config import Settings, load_settings
from wearwatch.contract.ids import VENDOR_PATTERN
from wearwatch.contract.times import format_rfc3339
from wearwatch.datakeys import DataKeys, KeySource, open_layers
from wearwatch.errors import ConfigError, StackUnavailable
from wearwatch.transport import kafka_client_config

__all__ = ["DlqEntry", "add_arguments", "read_dead_letters", "run", "vendor_of"]

_DEVICE_TOPIC = re.compile(r"^wearwatch/v1/(?:vitals|fhir)/([^/]+)/([^/]+)$")


@dataclass(frozen=True, slots=True)
class DlqEntry:
    """One dead letter with where it came from (``device`` None when not known)."""

    vendor: str | None
    device: str | None
    letter: DeadLetter
    kafka_ms: int


def vendor_of(letter: DeadLetter, key: bytes | None) -> tuple[str | None, str | None]:
    """``(vendor, device)`` of a dead letter, or ``(None, None)`` (e.g. nurse commands).

    >>> dl = DeadLetter(reason="bad_ts", detail="x", mqtt_topic="wearwatch/v1/vitals/acme/w-1", payload="{}",
    ...                 received_ms=1)
    >>> vendor_of(dl, None)
    ('acme', 'w-1')
    >>> vendor_of(dl.model_copy(update={"mqtt_topic": None}), b"http:acme:POST Bundle")
    ('acme', None)
    """
    if letter.mqtt_topic:
        m = _DEVICE_TOPIC.match(letter.mqtt_topic)
        return (m.group(1), m.group(2)) if m else (None, None)
    if key is not None and key.startswith(b"http:"):
        # FHIR over HTTP: "http:{vendor}:POST {kind}", the vendor of the request's bearer token
        vendor = key.decode("utf-8", "replace").split(":", 2)[1] if key.count(b":") >= 2 else ""
        return (vendor or None), None
    if letter.source == "worker" and letter.payload_encoding == "utf-8":
        try:
            doc = orjson.loads(letter.payload)
        except orjson.JSONDecodeError:
            return None, None
        if isinstance(doc, dict) and isinstance(doc.get("vendor"), str):
            device = doc.get("device_id")
            return doc["vendor"], device if isinstance(device, str) else None
    return None, None


def read_dead_letters(
    settings: Settings,
    since_ms: int,
    on_entry: Callable[[DlqEntry], None],
    *,
    follow: bool = False,
    stop: threading.Event | None = None,
    poll_ms: int = 500,
    keys: KeySource | None = None,
) -> Counter[str]:
    """Read ``vitals.dlq`` from ``since_ms``; ``on_entry`` gets every dead letter (all vendors).

    Without ``follow`` it stops at the end the topic had when it started; with it, it
    reads on until ``stop`` is set. A dead letter sealed under patients' data keys is opened with ``keys``
    (default: the ``datakeys`` topic, followed while it reads). Returns counts: ``records`` read,
    ``unreadable``, ``erased`` (sealed under a key that is gone: a patient was erased).
    """
    topic = settings.topic_dlq
    counts: Counter[str] = Counter()
    own_keys = None
    if keys is None:
        keys = own_keys = DataKeys(settings, name="dlq-datakeys")
        own_keys.start()
        if not own_keys.wait_ready(30.0):
            raise StackUnavailable(f"could not read {settings.topic_datakeys}")
    try:
        consumer = KafkaConsumer(**kafka_client_config(settings), group_id=None, enable_auto_commit=False,
                                 client_id="wearwatch-dlq")
    except KafkaError as exc:
        raise StackUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise StackUnavailable(f"topic {topic} does not exist at {settings.kafka_bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        starts = consumer.offsets_for_times({tp: since_ms for tp in tps})
        ends = consumer.end_offsets(tps)
        for tp in tps:
            found = starts.get(tp)
            consumer.seek(tp, found.offset if found is not None else ends[tp])
        while True:
            if stop is not None and stop.is_set():
                break
            if not follow and all(consumer.position(tp) >= ends[tp] for tp in tps):
                break
            for _tp, records in consumer.poll(timeout_ms=poll_ms).items():
                for rec in records:
                    counts["records"] += 1
                    try:
                        value = open_layers(rec.value, "vitals.dlq", keys.cipher_of)
                        if value is None:
                            counts["erased"] += 1
                            continue
                        letter = DeadLetter.model_validate_json(value)
                    except ValueError:  # EnvelopeError too
                        counts["unreadable"] += 1
                        continue
                    vendor, device = vendor_of(letter, rec.key)
                    on_entry(DlqEntry(vendor, device, letter, int(rec.timestamp)))
    except KafkaError as exc:
        raise StackUnavailable(f"reading {topic}: {exc}") from exc
    finally:
        consumer.close()
        if own_keys is not None:
            own_keys.stop()
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vendor", required=True, help="the vendor account whose dead letters to show")
    parser.add_argument("--since", default="1h", help="from: a duration back from now (30m, 6h, 7d) or RFC 3339 "
                                                      "(default 1h)")
    parser.add_argument("--follow", action="store_true", help="keep showing new dead letters until Ctrl-C")
    parser.add_argument("--show-payload", action="store_true",
                        help="print each payload too (it holds patient identifiers and values)")
    parser.add_argument("--json", action="store_true", help="one JSON object per dead letter")


def _line(e: DlqEntry, show_payload: bool, as_json: bool) -> str:
    dl = e.letter
    if as_json:
        doc: dict[str, Any] = {"received": format_rfc3339(dl.received_ms), "reason": dl.reason, "detail": dl.detail,
                               "source": dl.source, "device": e.device, "index": dl.index}
        if show_payload:
            doc.update(payload=dl.payload, payload_encoding=dl.payload_encoding)
        return orjson.dumps(doc).decode()
    where = f" #{dl.index}" if dl.index is not None else ""
    text = (f"{format_rfc3339(dl.received_ms)}  {dl.reason:<22} {dl.source:<7} {e.device or '-'}{where}  "
            f"{dl.detail[:200]}")
    if show_payload:
        text += f"\n    payload ({dl.payload_encoding}): {dl.payload[:2000]}"
    return text


def run(args: argparse.Namespace) -> int:
    if not re.fullmatch(VENDOR_PATTERN, args.vendor):
        raise ConfigError("--vendor must be 1-64 characters of [A-Za-z0-9_.-]")
    settings = load_settings()
    since_ms = parse_when(args.since, int(time.time() * 1000))
    reasons: Counter[str] = Counter()
    print(f"dead letters of vendor {args.vendor} on {settings.topic_dlq} since {format_rfc3339(since_ms)}"
          + (" (following; Ctrl-C ends)" if args.follow else ""), file=sys.stderr, flush=True)

    def show(e: DlqEntry) -> None:
        if e.vendor != args.vendor:
            return
        reasons[e.letter.reason] += 1
        print(_line(e, args.show_payload, args.json), flush=True)

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:  # Ctrl-C (or a supervisor's SIGTERM) ends --follow after the current poll, and the summary still prints
        counts = read_dead_letters(settings, since_ms, show, follow=args.follow, stop=stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    total = sum(reasons.values())
    by = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    print(f"{total} dead letter{'s' if total != 1 else ''} of vendor {args.vendor}"
          + (f": {by}" if by else "") + f" ({counts['records']} records read"
          + (f", {counts['unreadable']} unreadable" if counts["unreadable"] else "")
          + (f", {counts['erased']} of erased patients" if counts["erased"] else "") + ")",
          file=sys.stderr, flush=True)
    return 0
