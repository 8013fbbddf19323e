"""The Faust floor: what one Faust worker process does with ``vitals.raw`` when its agent does no work.

Run by ``bench_throughput.py`` (not by hand) as ``faust_floor.py <web port> {consume|forward}``:
the worker's own Faust app (``streams.app.faust_app``: its settings, consumer and monitor), one
agent on ``vitals.raw`` that takes the same batches as the worker's ``detect`` agent and decodes
each record with ``orjson`` (a sealed record, as the gateway writes them, opened first under the
patients' data keys, followed from ``datakeys`` as the worker does: ``_common.decode_raw``); with
``forward`` it also sends each record unchanged to ``<prefix>faust-floor`` (like the raw aiokafka
passthrough). It commits on the worker's
interval. No detectors, no patient state, no sinks.

It separates the cost of the framework from the cost of wearwatch's own work: ``consume`` is
what Faust alone can deliver to an agent, a bound the worker can never pass whatever its
detectors cost; ``forward`` is the like-for-like Faust twin of the aiokafka passthrough.

A record the agent cannot decode ends the process (exit code 3) instead of only the agent: Faust
would log the crash, keep running and commit what it had fetched, so the bench would see the
backlog consumed at once and time nothing.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    import faust
    import orjson
    from _common import decode_raw

    from streams.app import faust_app
    from wearwatch.config import load_settings
    from wearwatch.datakeys import DataKeys

    s = load_settings(web_port=int(sys.argv[1]))
    forward = sys.argv[2] == "forward"
    keys = DataKeys(s, name="floor-datakeys", recreate_erased=False)
    keys.start()  # before any record is taken, as the worker does
    if not keys.wait_ready(60.0):
        sys.exit(f"could not read {s.topic_datakeys} to its end")
    app = faust_app(s)
    source = app.topic(s.topic_vitals, partitions=s.partitions, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    sink = app.topic(f"{s.topic_prefix}faust-floor", partitions=s.partitions, key_type=bytes,
                     value_type=bytes, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="floor")
    async def floor(stream: Any) -> None:
        async for events in stream.take_events(s.worker_batch_size, within=s.worker_batch_window_s):
            for ev in events:
                try:
                    decode_raw(ev.value, keys.cipher_of)
                except (orjson.JSONDecodeError, ValueError) as exc:
                    logging.getLogger("faust_floor").error("a record it cannot decode (%s): exiting",
                                                           type(exc).__name__)
                    logging.shutdown()
                    os._exit(3)
                if forward:
                    await sink.send(key=ev.key, value=ev.value)

    worker = faust.Worker(app, loglevel=logging.WARNING)
    worker.execute_from_commandline()
    keys.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
