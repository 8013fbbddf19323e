"""The Faust floor: what one Faust worker process does with ``vitals.raw`` when its agent does no work.

Run by ``bench_throughput.py`` (not by hand) as ``faust_floor.py <web port> {consume|forward}``:
a Faust app with the worker's own settings and consumer (``streams.offsets``: prompt fetches,
safe offsets), one agent on ``vitals.raw`` that takes the same batches as the worker's
``detect`` agent and decodes each record with ``orjson``; with ``forward`` it also sends each
record unchanged to ``<prefix>faust-floor`` (like the raw aiokafka passthrough). It commits on
the worker's interval. No detectors, no patient state, no sinks.

It separates the cost of the framework from the cost of wearwatch's own work: ``consume`` is
what Faust alone can deliver to an agent, a bound the worker can never pass whatever its
detectors cost; ``forward`` is the like-for-like Faust twin of the aiokafka passthrough.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    import faust
    import orjson

    from streams.offsets import install as install_safe_offsets_consumer
    from wearwatch.config import load_settings
    from wearwatch.transport import faust_credentials

    s = load_settings()
    app = faust.App(
        s.app_id,
        broker=s.kafka_url,
        broker_credentials=faust_credentials(s),
        store="memory://",
        datadir=os.path.join(tempfile.gettempdir(), "wearwatch-faust", f"{s.app_id}-data"),
        autodiscover=False,
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=2.0,
        broker_commit_interval=s.worker_commit_interval_s,
        broker_commit_every=2**31,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_batch_size=1_048_576,
        web_host="127.0.0.1",
        web_bind="127.0.0.1",
        web_port=int(sys.argv[1]),
        stream_buffer_maxsize=4096,
    )
    install_safe_offsets_consumer(app)
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
