"""The offline tools: the top layer, above the runtime services.

``wearwatch replay``, ``evaluate``, ``nab``, ``report``, ``export``, ``validate``,
``dlq`` and ``contract`` (and the ``make demo`` driver) live here. They may use
every other package (the detectors, the gateway's contract, the alert sinks),
and no runtime package imports them: the gateway and the worker run without
this package, and a tool cannot drift into the production path.
"""

from __future__ import annotations

__all__: list[str] = []
