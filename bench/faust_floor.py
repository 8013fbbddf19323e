"""The Faust floor: what one Faust worker process does with ``vitals.raw`` when its agent does no work.

Run by ``bench_throughput.py`` (not by hand) as ``faust_floor.py <web port> {consume|forward}``:
the worker's own Faust app (``streams.app.faust_app``: its settings, consumer and monitor), one
agent on ``vitals.raw`` that takes the same batches as the worker's ``detect`` agent and decodes
each record with ``orjson``; with ``forward`` it also sends each record unchanged to
``<prefix>faust-floor`` (like the raw aiokafka passthrough). It commits on the worker's
interval. No detectors, no patient state, no sinks.

It separates the cost of the framework from the cost of wearwatch's own work: ``consume`` is
what Faust alone can deliver to an agent, a bound the worker can never pass whatever its
detectors cost; ``forward`` is the like-for-like Faust twin of the aiokafka passthrough.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    import faust
    import orjson

    from streams.app import faust_app
    from wearwatch.config import load_settings

    s = load_settings(web_port=int(sys.argv[1]))
    app = faust_app(s)
    source = app.topic(s.topic_vitals, partitions=s.partitions, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    sink = app.topic(f"{s.topic_prefix}faust-floor", partitions=s.partitions, key_type=bytes,
                     value_type=bytes, key_serializer="raw", value_serializer="raw")

    forward = sys.argv[2] == "forward"

    @app.agent(source, name="floor")
    async def floor(stream: Any) -> None:
        async for events in stream.take_events(s.worker_batch_size, within=s.worker_batch_window_s):
            for ev in events:
                orjson.loads(ev.value)
                if forward:
                    await sink.send(key=ev.key, value=ev.value)

    worker = faust.Worker(app, loglevel=logging.WARNING)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
