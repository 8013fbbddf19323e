"""Gateway under load: CPU, memory and Kafka acknowledgement latency at fixed MQTT reading rates.

Run: ``.venv/bin/python bench/bench_gateway.py [--rates 2000 10000] [--seconds 30] [--per-message 1] [--gateways 1]``

One ``wearwatch gateway`` subprocess on the local stack (``--gateways N``: N of them in one share group,
``WEARWATCH_MQTT_SHARE_GROUP``, their figures summed); a publisher process sends readings as vendor
``sim`` over MQTT (QoS 1, ``--per-message`` readings per message, 1,000 devices) at each rate in turn.
Per rate, after ``--warmup`` seconds: the readings/s the gateway counted (``wearwatch_readings_total``
from its own ``/metrics``; on a shared stack this includes other runs' traffic, which every gateway
sees), its CPU (``/proc``, 100 % = one core), RSS now and at peak, the p50/p99 of its Kafka
acknowledgements (``wearwatch_gateway_kafka_ack_seconds`` over the window) and the most MQTT messages
it held unacknowledged, and the broker's own figures over the window: how many messages it holds more
(queued for gateways that take less than is sent) and how many it dropped (a client's queue full). These
figures size the gateway's resource requests and replicas (deploy/k8s/gateway.yaml).
"broker acked/s" is what the publisher really got through: above a few thousand messages/s one Python
publisher falls behind on a busy machine (use ``--per-message`` to send more readings per message).

Like bench_latency.py, run it when nobody else uses the stack: every gateway subscribed at the time
receives these messages too.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import multiprocessing as mp
import re
import time
from collections.abc import Iterable
from typing import Any

import orjson
from _common import bench_settings, ensure, free_port, loadavg, log, proc_stat, scrape, spawn, table

from wearwatch.config import Settings
from wearwatch.transport import end_mqtt_session


def readings(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("wearwatch_readings_total{"))


def buckets(m: dict[str, float]) -> list[tuple[float, float]]:
    out = []
    for k, v in m.items():
        hit = re.match(r'wearwatch_gateway_kafka_ack_seconds_bucket\{le="([^"]+)"\}', k)
        if hit:
            out.append((float(hit.group(1)), v))
    return sorted(out)


def merged(parts: Iterable[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Several gateways' histograms (the same buckets) as one."""
    total: dict[float, float] = {}
    for part in parts:
        for le, n in part:
            total[le] = total.get(le, 0.0) + n
    return sorted(total.items())


#: the broker's figures a gateway reports (``ingest.gateway.BROKER_STORED_TOPIC``, ``BROKER_DROPPED_TOPIC``)
STORED, DROPPED = "wearwatch_gateway_broker_stored_messages", "wearwatch_gateway_broker_dropped_messages_total"


def quantile(q: float, before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over the window between two scrapes (linear inside a bucket), in ms."""
    cum = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = cum[-1][1]
    if total <= 0:
        return float("nan")
    rank, prev_le, prev_n = q * total, 0.0, 0.0
    for le, n in cum:
        if n >= rank:
            if le == float("inf"):
                return prev_le * 1000
            return (prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1e-9)) * 1000
        prev_le, prev_n = le, n
    return float("nan")


def publisher(settings: Settings, rate: float, per_message: int, seconds: float, run: str, out: Any) -> None:
    """Child process: publish ``rate`` readings/s for ``seconds``; put (readings handed to paho, readings the
    broker acknowledged) on ``out``. Publishing falls behind the rate when this process runs out of CPU."""
    import os

    from wearwatch.transport import mqtt_client, mqtt_connect

    client = mqtt_client(settings, f"ww-bench-pub-{run}-{int(rate)}", username="sim",
                         password=os.environ["STACK_MQTT_PASSWORD_SIM"])
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    acked = [0]

    def on_publish(c: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        acked[0] += 1

    client.on_publish = on_publish
    mqtt_connect(client, settings)
    devices = 1000
    sent, k, t0 = 0, 0, time.monotonic()
    try:
        while (now := time.monotonic()) - t0 < seconds:
            due = int((now - t0) * rate)
            while sent < due:
                d = k % devices
                ts = int(time.time() * 1000)
                rows = [{"patient_id": f"bp-{run}-{d}", "signal": "heart_rate", "value": 60 + (k + j) % 40,
                         "unit": "bpm", "ts": ts - j, "seq": k * per_message + j} for j in range(per_message)]
                client.publish(f"wearwatch/v1/vitals/sim/{run}-d{d}", orjson.dumps(rows if per_message > 1
                                                                                     else rows[0]), qos=1)
                sent += per_message
                k += 1
            time.sleep(0.005)
    finally:
        client.disconnect()
        client.loop_stop()
    out.put((sent, acked[0] * per_message))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[2000.0, 10000.0], help="readings per second")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured seconds per rate")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--per-message", type=int, default=1, help="readings per MQTT message")
    ap.add_argument("--gateways", type=int, default=1,
                    help="gateways sharing the messages (one WEARWATCH_MQTT_SHARE_GROUP); figures are their sums")
    args = ap.parse_args()

    settings = bench_settings("gw")
    run = settings.app_id.rsplit("-", 1)[-1]
    ensure(settings, [settings.topic_vitals, settings.topic_dlq, settings.topic_commands])
    log(f"load average before: {loadavg()}; starting {args.gateways} gateway(s) (prefix {settings.topic_prefix})")
    # every gateway its own client id and port; more than one share the messages as one group
    each = [settings] + [settings.model_copy(update={"mqtt_client_id": f"{settings.mqtt_client_id}-{i}",
                                                     "gateway_http_port": free_port()})
                         for i in range(1, args.gateways)]
    share = {"WEARWATCH_MQTT_SHARE_GROUP": f"ww-bench-{run}"} if args.gateways > 1 else {}
    gws = [spawn(f"gateway-{i}", s, "gateway", extra_env=share) for i, s in enumerate(each)]
    ports = [s.gateway_http_port for s in each]
    try:
        for gw, port in zip(gws, ports, strict=True):
            deadline = time.monotonic() + 60
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("GET", "/readyz")
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or not gw.alive():
                    raise SystemExit(f"gateway never ready:\n{gw.tail()}")
                time.sleep(0.2)
        idles = [proc_stat(gw.pid) for gw in gws]
        idle_rss, idle_hwm = sum(st.rss_mb for st in idles), sum(st.hwm_mb for st in idles)
        log(f"gateway(s) ready: RSS {idle_rss:.1f} MB idle")
        rows: list[list[Any]] = [["idle", float("nan"), float("nan"), float("nan"), 0.0, idle_rss, idle_hwm,
                                  float("nan"), float("nan"), 0, float("nan"), float("nan")]]
        ctx = mp.get_context("spawn")
        for rate in args.rates:
            q: Any = ctx.Queue()
            child = ctx.Process(target=publisher, args=(settings, rate, args.per_message,
                                                        args.warmup + args.seconds + 1, run, q), daemon=True)
            child.start()
            time.sleep(args.warmup)
            m0, c0, t0 = [scrape(p) for p in ports], sum(proc_stat(gw.pid).cpu_s for gw in gws), time.monotonic()
            inflight = 0.0
            while time.monotonic() - t0 < args.seconds:
                time.sleep(1.0)
                inflight = max(inflight, sum(scrape(p).get("wearwatch_gateway_inflight_messages", 0.0)
                                             for p in ports))
            m1, sts, t1 = [scrape(p) for p in ports], [proc_stat(gw.pid) for gw in gws], time.monotonic()
            sent, delivered = q.get(timeout=60)
            child.join(30)
            got = sum(readings(b) - readings(a) for a, b in zip(m0, m1, strict=True)) / (t1 - t0)
            cpu = 100 * (sum(st.cpu_s for st in sts) - c0) / (t1 - t0)
            b0, b1 = merged(buckets(m) for m in m0), merged(buckets(m) for m in m1)
            span = args.warmup + args.seconds + 1
            rss, hwm = sum(st.rss_mb for st in sts), sum(st.hwm_mb for st in sts)
            # the broker's own figures (every sys_interval, 10 s on the stack): what it held more at the end, and
            # what it dropped (its clients' queues full) during the run
            held = m1[0].get(STORED, float("nan")) - m0[0].get(STORED, float("nan"))
            dropped = m1[0].get(DROPPED, float("nan")) - m0[0].get(DROPPED, float("nan"))
            rows.append([f"{rate:,.0f}/s", sent / span, delivered / span, got, cpu, rss, hwm,
                         quantile(0.5, b0, b1), quantile(0.99, b0, b1), int(inflight), held, dropped])
            log(f"rate {rate:,.0f}/s: gateway(s) counted {got:,.0f} readings/s, CPU {cpu:.0f} %, RSS {rss:.1f} MB")
    finally:
        for gw in gws:
            gw.stop()
        for s in each[1:]:  # the first one's session goes with the run's clean-up
            with contextlib.suppress(Exception):
                end_mqtt_session(s, s.mqtt_client_id)
    print()
    print(f"{args.gateways} gateway(s) under load ({args.per_message} reading(s) per MQTT message, {args.seconds:.0f} "
          f"s per rate; CPU and RSS are their sums; load average after: {loadavg()})")
    print(table(["rate", "published/s", "broker acked/s", "gateway counted/s", "CPU %", "RSS MB", "peak RSS MB",
                 "ack p50 ms", "ack p99 ms", "max in flight", "broker held +", "broker dropped"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
