"""A Faust monitor without per-record bookkeeping.

Faust's default :class:`faust.sensors.Monitor` times every record in and out of
every stream and every send (weak-key dictionaries, deques): about 5 µs per
record here, for statistics wearwatch does not use (the worker reports its own
metrics to InfluxDB, see ``Pipeline._wire``). Rebalance, commit and assignment
statistics are kept.
"""

from __future__ import annotations

from typing import Any

from faust.sensors import Monitor

__all__ = ["QuietMonitor"]


class QuietMonitor(Monitor):
    """:class:`faust.sensors.Monitor` minus the per-record and per-send hooks."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> Any:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_table_get(self, table: Any, key: Any) -> None:
        return None

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        return None

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> Any:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        return None
