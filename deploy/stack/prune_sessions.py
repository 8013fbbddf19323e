"""End the persistent MQTT sessions that test, bench and demo runs left on the local broker.

A gateway keeps a persistent session, so the broker queues every reading for it while it
is away (up to ``max_queued_messages``). Test, bench and demo gateways use one-off client
ids and end their session when they finish; a run that is killed first leaves its session
behind, and Mosquitto keeps queueing for it. On this project's development stack 188 such
sessions had grown the broker's database to 217 MB, which Mosquitto rewrites every 30 s
(``autosave_interval``), stalling delivery for up to a second each time.

This reads the local broker's log (``.stack/mosquitto/mosquitto.log``) for clients that
connected with a persistent session under a throwaway prefix and are not connected now,
and ends each session (connect with a clean start, disconnect). Production client ids
(e.g. the default ``wearwatch-gateway``) are never touched.

Run: ``make stack-prune`` (``make bench`` does it first).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

#: client-id prefixes of one-off sessions: tests, benches, the demo, the smoke checks
THROWAWAY = ("ww-gw-", "wearwatch-demo-gw-", "smoke-")

_CONNECT = re.compile(r"New client connected from \S+ as (\S+) \(p\d, c([01]),")
_GONE = re.compile(r"Client (\S+) (?:disconnected|closed its connection|has exceeded timeout)")


def stale_sessions(log_text: str) -> list[str]:
    """Throwaway client ids whose last connection was persistent and has ended.

    >>> log = '''New client connected from 127.0.0.1:1 as ww-gw-ab12 (p5, c0, k30, u'gateway').
    ... Client ww-gw-ab12 disconnected.
    ... New client connected from 127.0.0.1:2 as ww-gw-cd34 (p5, c0, k30, u'gateway').
    ... New client connected from 127.0.0.1:3 as wearwatch-gateway (p5, c0, k30, u'gateway').
    ... Client wearwatch-gateway disconnected.
    ... New client connected from 127.0.0.1:4 as ww-gw-ef56 (p5, c0, k30, u'gateway').
    ... Client ww-gw-ef56 disconnected.
    ... New client connected from 127.0.0.1:5 as ww-gw-ef56 (p5, c1, k30, u'gateway').
    ... Client ww-gw-ef56 disconnected.'''
    >>> stale_sessions(log)  # cd34 is still connected; ef56 was ended (clean start)
    ['ww-gw-ab12']
    """
    persistent: dict[str, bool] = {}  # client id -> its last connection asked for a persistent session
    connected: set[str] = set()
    for line in log_text.splitlines():
        m = _CONNECT.search(line)
        if m:
            persistent[m.group(1)] = m.group(2) == "0"
            connected.add(m.group(1))
            continue
        m = _GONE.search(line)
        if m:
            connected.discard(m.group(1))
    return sorted(cid for cid, keep in persistent.items()
                  if keep and cid not in connected and cid.startswith(THROWAWAY))


def main() -> int:
    from wearwatch.config import load_settings
    from wearwatch.transport import end_mqtt_session

    log_path = Path(__file__).resolve().parents[2] / ".stack" / "mosquitto" / "mosquitto.log"
    if not log_path.is_file():
        print(f"no broker log at {log_path}: nothing to prune")
        return 0
    stale = stale_sessions(log_path.read_text(errors="replace"))
    settings = load_settings()
    ended = failed = 0
    for i, cid in enumerate(stale, 1):
        try:
            end_mqtt_session(settings, cid)
            ended += 1
        except Exception as exc:  # keep going: one refused session should not stop the rest
            failed += 1
            print(f"  {cid}: {exc!r}", file=sys.stderr)
        if i % 25 == 0:
            print(f"  {i}/{len(stale)} sessions ended", flush=True)
    print(f"stale MQTT sessions of test/bench/demo runs: {len(stale)} found, {ended} ended, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
