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
from typing import Any

import orjson

from ingest.contract import vitals_topic
from ingest.scenarios import Event, iter_readings
from wearwatch.config import load_settings
from wearwatch.errors import ConfigError
from wearwatch.transport import mqtt_client, mqtt_connect

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)

#: device per signal: the watch measures heart rate and steps, the CGM glucose
DEVICE = {"heart_rate": "watch", "steps": "watch", "glucose": "cgm"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patients", type=int, default=20, help="number of patients (default 20)")
    parser.add_argument("--duration", type=float, default=60.0, help="wall-clock seconds to run (default 60)")
    parser.add_argument("--accel", type=float, default=1.0, help="simulated seconds per wall second (default 1)")
    parser.add_argument("--event", action="append", default=[], metavar="KIND:PATIENT[@MINUTE]",
                        help="inject an event, e.g. hypo:0 or tachy:1@10 (patient index, minute of the run); "
                             "kinds: hypo, hyper, tachy, brady, drift, variability; repeatable")
    parser.add_argument("--vendor", default=None, help="vendor in the topic (default: the MQTT username)")
    parser.add_argument("--prefix", default="sim", help="patient id prefix (default 'sim')")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same readings")


#: short names accepted by ``--event`` for the scenario generator's event kinds
EVENT_ALIASES = {"hypo": "hypoglycemia", "hyper": "hyperglycemia", "tachy": "tachycardia_at_rest",
                 "brady": "bradycardia", "drift": "hr_drift", "variability": "glucose_variability"}
#: how long an injected event lasts by default (minutes, capped to 60 % of the run) and its
#: magnitude (nadir / peak mg/dL, heart rate bpm, drift bpm, variability factor)
EVENT_SHAPE = {"hypoglycemia": (45, 45.0), "hyperglycemia": (60, 300.0), "tachycardia_at_rest": (20, 140.0),
               "bradycardia": (10, 36.0), "hr_drift": (24 * 60, 10.0), "glucose_variability": (24 * 60, 2.0)}


def parse_events(specs: list[str], patients: int, start_ms: int, span_ms: int) -> dict[int, list[Any]]:
    """``KIND:PATIENT[@MINUTE]`` specs as scenario events per patient index.

    The event starts at MINUTE of the run (default: a quarter into it).

    >>> ev = parse_events(["hypo:0", "tachy:1@10"], 3, 0, 3_600_000)
    >>> [(i, e.kind, e.start_ms, e.duration_ms) for i, es in sorted(ev.items()) for e in es]
    [(0, 'hypoglycemia', 900000, 2160000), (1, 'tachycardia_at_rest', 600000, 1200000)]
    """
    out: dict[int, list[Any]] = {}
    for spec in specs:
        kind, _, rest = spec.partition(":")
        index, _, minute = rest.partition("@")
        kind = EVENT_ALIASES.get(kind, kind)
        if kind not in EVENT_SHAPE or not index.isdigit() or int(index) >= patients:
            raise ConfigError(f"--event {spec!r}: expected KIND:PATIENT[@MINUTE], KIND one of "
                                 f"{sorted(EVENT_ALIASES)}, PATIENT < {patients}")
        start = start_ms + (int(minute) * 60_000 if minute.isdigit() else span_ms // 4)
        minutes, magnitude = EVENT_SHAPE[kind]
        duration = min(minutes * 60_000, int(span_ms * 0.6))
        out.setdefault(int(index), []).append(Event(kind, start, duration, magnitude))
    return out


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    vendor = args.vendor or settings.mqtt_username or "sim"
    span_ms = int(args.duration * args.accel * 1000)
    wall0 = time.time()
    sim_end = int(wall0 * 1000)
    sim_start = sim_end - span_ms
    events = parse_events(args.event, args.patients, sim_start, span_ms)
    streams = [
        iter_readings(f"{args.prefix}-{i:04d}", sim_start, sim_end, seed=args.seed * 100_003 + i,
                      events=events.get(i, []), artefacts=True)
        for i in range(args.patients)
    ]
    for i, evs in sorted(events.items()):
        for e in evs:
            log.info("injected %s for patient #%d at +%d min", e.kind, i, (e.start_ms - sim_start) // 60_000)

    client = mqtt_client(settings, f"wearwatch-sim-{args.prefix}-{int(wall0)}")
    client.max_inflight_messages_set(1000)
    mqtt_connect(client, settings)
    sent: Counter[str] = Counter()
    infos = []
    last_report = time.monotonic()
    try:
        for r in heapq.merge(*streams, key=lambda r: r.arrival_ms):
            due = wall0 + (r.arrival_ms - sim_start) / 1000 / args.accel
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            if r.ts_ms > int(time.time() * 1000):
                continue  # generated past the end of the run; never publish the future
            payload = {"patient_id": r.patient_id, "signal": r.signal, "value": r.value, "unit": r.unit,
                       "ts": r.ts_ms}
            topic = vitals_topic(vendor, f"{r.patient_id}-{DEVICE[r.signal]}")
            infos.append(client.publish(topic, orjson.dumps(payload), qos=1))
            sent[r.signal] += 1
            if len(infos) >= 5000:
                for info in infos:
                    info.wait_for_publish(30)
                infos.clear()
            if time.monotonic() - last_report >= 5:
                last_report = time.monotonic()
                done = (r.arrival_ms - sim_start) / max(span_ms, 1)
                print(f"simulate: {sum(sent.values()):,} readings published ({min(done, 1):.0%} of the run)",
                      file=sys.stderr, flush=True)
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()
    total = sum(sent.values())
    kinds = ", ".join(f"{e.kind}→#{i}" for i, evs in sorted(events.items()) for e in evs) or "none"
    print(f"simulate: done — {total:,} readings ({dict(sent)}) for {args.patients} patients over "
          f"{span_ms / 3_600_000:.2f} h simulated; events: {kinds}", flush=True)
    return 0
