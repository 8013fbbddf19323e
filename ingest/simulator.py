"""``wearwatch simulate``: a fleet of simulated patients publishing over MQTT.

Each patient wears a watch (heart rate every 5 s, steps every minute) and a CGM
(glucose every 5 minutes); readings come from :mod:`ingest.scenarios`, with
optional injected events. Simulated time runs ``--accel`` times faster than the
wall clock and *ends now*: it starts ``duration × accel`` in the past, so no
reading is ever in the future (the gateway rejects those).
"""

from __future__ import annotations

import argparse
import heapq
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson

from ingest.contract import vitals_topic
from wearwatch.config import load_settings

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)

#: device per signal: the watch measures heart rate and steps, the CGM glucose
DEVICE = {"heart_rate": "watch", "steps": "watch", "glucose": "cgm"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patients", type=int, default=20, help="number of patients (default 20)")
    parser.add_argument("--duration", type=float, default=60.0, help="wall-clock seconds to run (default 60)")
    parser.add_argument("--accel", type=float, default=1.0, help="simulated seconds per wall second (default 1)")
    parser.add_argument("--event", action="append", default=[], metavar="KIND:PATIENT",
                        help="inject an event, e.g. hypo:0 or tachy:1 (patient index); repeatable")
    parser.add_argument("--vendor", default=None, help="vendor in the topic (default: the MQTT username)")
    parser.add_argument("--prefix", default="sim", help="patient id prefix (default 'sim')")
    parser.add_argument("--seed", type=int, default=0)


def merged_readings(streams: list[Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """Merge per-patient time-ordered streams into one time-ordered stream."""
    return heapq.merge(*streams, key=lambda r: r["ts_ms"])


def run(args: argparse.Namespace) -> int:
    from ingest import scenarios
    from wearwatch.transport import mqtt_client, mqtt_connect

    settings = load_settings()
    vendor = args.vendor or settings.mqtt_username or "sim"
    span_ms = int(args.duration * args.accel * 1000)
    wall0 = time.time()
    sim_end = int(wall0 * 1000)
    sim_start = sim_end - span_ms
    events = scenarios.parse_event_specs(args.event)
    plan = scenarios.fleet(args.patients, sim_start, sim_end, events=events, seed=args.seed, prefix=args.prefix)
    for ep in plan.episodes:
        log.info("injected %s for patient #%d from %s", ep.kind, ep.patient_index,
                 time.strftime("%H:%M:%S", time.gmtime(ep.start_ms / 1000)))

    client = mqtt_client(settings, f"wearwatch-sim-{args.prefix}-{int(wall0)}")
    client.max_inflight_messages_set(1000)
    mqtt_connect(client, settings)
    sent: Counter[str] = Counter()
    infos = []
    last_report = time.monotonic()
    try:
        for r in merged_readings(plan.streams):
            due = wall0 + (r["ts_ms"] - sim_start) / 1000 / args.accel
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            payload = {"patient_id": r["patient_id"], "signal": r["signal"], "value": r["value"],
                       "unit": r["unit"], "ts": r["ts_ms"]}
            if "seq" in r:
                payload["seq"] = r["seq"]
            topic = vitals_topic(vendor, f"{r['patient_id']}-{DEVICE[r['signal']]}")
            infos.append(client.publish(topic, orjson.dumps(payload), qos=1))
            sent[r["signal"]] += 1
            if len(infos) >= 5000:
                for info in infos:
                    info.wait_for_publish(30)
                infos.clear()
            if time.monotonic() - last_report >= 5:
                last_report = time.monotonic()
                done = (r["ts_ms"] - sim_start) / max(span_ms, 1)
                print(f"simulate: {sum(sent.values()):,} readings published ({done:.0%} of the run)",
                      file=sys.stderr, flush=True)
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()
    total = sum(sent.values())
    kinds = ", ".join(f"{e.kind}→#{e.patient_index}" for e in plan.episodes) or "none"
    print(f"simulate: done — {total:,} readings ({dict(sent)}) for {args.patients} patients over "
          f"{span_ms / 3_600_000:.2f} h simulated; events: {kinds}", flush=True)
    return 0
