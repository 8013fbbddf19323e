"""``wearwatch report``: a static, self-contained HTML report of a run, read from InfluxDB.

For operations and post-run review, not for care: patients appear only as the
pseudonyms stored in InfluxDB (``patient`` tag, see :mod:`wearwatch.privacy`);
the report never sees a real patient identifier. It holds

- a summary (time window, patients, alert events by priority, readings),
- the pipeline: each worker's counters at its last report and its throughput,
- an alert timeline (one row per patient; open spans coloured by priority) and the alert events,
- one figure per patient: heart rate, glucose and steps per minute (mean line,
  min–max band) with alert markers.

Plots are matplotlib PNGs inlined as base64, so the file can be mailed or
attached to a ticket as is. Reading (:func:`fetch`, Flux over the v2 API, works
on InfluxDB 1.8 and 2.x) is separate from rendering (:func:`render_html`, pure),
so the rendering is tested without a database.

matplotlib is imported inside the drawing functions, not at module top (the measured
reason is beside :func:`render_html`).

Which patients: ``--patient`` (repeatable) names them; otherwise the
``--patients N`` with the most alert events in the window (ties by pseudonym).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import logging
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wearwatch.config import load_settings
from wearwatch.errors import ConfigError, StackUnavailable
from wearwatch.influxdb import flux_string, flux_time, influx_client

__all__ = [
    "AlertMark",
    "ReportData",
    "SignalPoint",
    "WorkerStats",
    "add_arguments",
    "fetch",
    "parse_duration",
    "render_html",
    "run",
]

log = logging.getLogger(__name__)

SIGNALS = ("heart_rate", "glucose", "steps")
SIGNAL_LABEL = {"heart_rate": "heart rate (bpm)", "glucose": "glucose (mg/dL)", "steps": "steps / min"}
PRIORITY_COLOR = {"high": "#d62728", "medium": "#ff7f0e", "low": "#e6b800"}
PIPELINE_FIELDS = ("readings", "duplicates", "too_late", "dead_letters", "alerts_open", "alerts_resolved",
                   "active_patients", "uptime_s", "lag", "latency_p95_ms")
FIELD_LABEL = {"too_late": "too late", "dead_letters": "dead letters", "alerts_open": "open-state events",
               "alerts_resolved": "resolved events", "active_patients": "active patients", "uptime_s": "uptime (s)",
               "lag": "consumer lag", "latency_p95_ms": "ingest p95 (ms)"}
_PSEUDONYM = re.compile(r"^[0-9a-f]{16}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class SignalPoint:
    """One (possibly re-aggregated) 1-minute aggregate: mean and the min–max band."""

    t_ms: int
    mean: float
    lo: float
    hi: float


@dataclass(frozen=True)
class AlertMark:
    """One alert state change (a point of the ``alerts`` measurement)."""

    t_ms: int
    patient: str
    signal: str
    kind: str
    priority: str
    audience: str
    state: str
    message: str = ""
    latency_ms: int | None = None


@dataclass(frozen=True)
class WorkerStats:
    """A worker's cumulative counters at its last ``pipeline`` report."""

    worker: str
    last_ms: int
    fields: dict[str, float]


@dataclass
class ReportData:
    """Everything the report shows; built by :func:`fetch` or by hand in tests."""

    start_ms: int
    stop_ms: int
    series: dict[str, dict[str, list[SignalPoint]]]  # patient pseudonym -> signal -> points in time order
    alerts: list[AlertMark] = field(default_factory=list)
    workers: list[WorkerStats] = field(default_factory=list)
    throughput: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # worker -> (t_ms, readings/s)
    patients_in_window: int = 0
    generated_ms: int = field(default_factory=lambda: int(time.time() * 1000))


def parse_duration(text: str) -> float:
    """Seconds from ``90s``, ``30m``, ``2h``, ``1.5d``.

    >>> parse_duration("2h"), parse_duration("30m"), parse_duration("1.5d")
    (7200.0, 1800.0, 129600.0)
    """
    m = _DURATION.match(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 30m, 2h or 1d, not {text!r}")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    parser.add_argument("--since", type=parse_duration, default=parse_duration("2h"), metavar="DURATION",
                        help="report the last DURATION, e.g. 30m, 2h, 1d (default 2h)")
    parser.add_argument("--patients", type=int, default=12, metavar="N",
                        help="at most N patients, those with the most alert events first (default 12)")
    parser.add_argument("--patient", action="append", default=[], metavar="PSEUDONYM",
                        help="report this patient (16-hex pseudonym as in InfluxDB); repeatable")
    parser.add_argument("--worker", action="append", default=[], metavar="APP_ID",
                        help="pipeline figures of this worker only (WEARWATCH_APP_ID); repeatable (default all)")


# --------------------------------------------------------------------------- reading (Flux)


def _ms(value: Any) -> int:
    return int(value.timestamp() * 1000)


def _flux_queries(bucket: str, start_ms: int, stop_ms: int, patients: list[str], workers: list[str],
                  every_s: int, rate_every_s: int) -> dict[str, str]:
    """The Flux queries :func:`fetch` runs (Flux 0.65-compatible: InfluxDB 1.8)."""
    rng = f'from(bucket: {flux_string(bucket)}) |> range(start: {flux_time(start_ms)}, stop: {flux_time(stop_ms)})'
    pat = "^(" + "|".join(patients) + ")$" if patients else "^$"  # pseudonyms are validated hex
    wk = " or ".join(f"r.worker == {flux_string(w)}" for w in workers) or "true"
    every = f"{every_s}s"
    fields = " or ".join(f'r._field == "{f}"' for f in PIPELINE_FIELDS)
    return {
        "vitals": f"""
data = {rng}
  |> filter(fn: (r) => r._measurement == "vitals_1m" and r.patient =~ /{pat}/)
avg = data |> filter(fn: (r) => r._field == "mean") |> aggregateWindow(every: {every}, fn: mean, createEmpty: false)
lo = data |> filter(fn: (r) => r._field == "min") |> aggregateWindow(every: {every}, fn: min, createEmpty: false)
hi = data |> filter(fn: (r) => r._field == "max") |> aggregateWindow(every: {every}, fn: max, createEmpty: false)
union(tables: [avg, lo, hi])
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> keep(columns: ["_time", "patient", "signal", "mean", "min", "max"])
""",
        "alerts": f"""
{rng}
  |> filter(fn: (r) => r._measurement == "alerts" and r.patient =~ /{pat}/)
  |> filter(fn: (r) => r._field == "message" or r._field == "latency_ms")
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> keep(columns: ["_time", "patient", "signal", "kind", "priority", "audience", "state", "message", "latency_ms"])
""",
        "workers": f"""
{rng}
  |> filter(fn: (r) => r._measurement == "pipeline" and ({wk}) and ({fields}))
  |> last()
  |> keep(columns: ["_time", "worker", "_field", "_value"])
""",
        "throughput": f"""
{rng}
  |> filter(fn: (r) => r._measurement == "pipeline" and r._field == "readings" and ({wk}))
  |> derivative(unit: 1s, nonNegative: true)
  |> aggregateWindow(every: {rate_every_s}s, fn: mean, createEmpty: false)
""",
    }


def _records(api: Any, query: str) -> list[dict[str, Any]]:
    return [r.values for t in api.query(query) for r in t.records]


def _pick_patients(api: Any, bucket: str, start_ms: int, stop_ms: int, limit: int) -> tuple[list[str], int]:
    """The ``limit`` patients with the most alert events, and how many had data in the window."""
    rng = f'from(bucket: {flux_string(bucket)}) |> range(start: {flux_time(start_ms)}, stop: {flux_time(stop_ms)})'
    seen = {str(r["patient"]) for r in _records(api, f"""
{rng}
  |> filter(fn: (r) => r._measurement == "vitals_1m" and r._field == "count")
  |> group(columns: ["patient"]) |> last() |> keep(columns: ["patient"])""")}
    alerts = {str(r["patient"]): int(r["_value"]) for r in _records(api, f"""
{rng}
  |> filter(fn: (r) => r._measurement == "alerts" and r._field == "state_code")
  |> group(columns: ["patient"]) |> count()""")}
    ranked = sorted(seen | set(alerts), key=lambda p: (-alerts.get(p, 0), p))
    return ranked[:limit], len(ranked)


def fetch(settings: Any, *, since_s: float, limit: int = 12, patients: list[str] | None = None,
          workers: list[str] | None = None, now_ms: int | None = None) -> ReportData:
    """Read a report's data from InfluxDB (``settings``: :class:`wearwatch.config.Settings`)."""
    for p in patients or []:
        if not _PSEUDONYM.match(p):
            raise ConfigError(f"--patient {p!r}: expected a 16-hex-character pseudonym as stored in InfluxDB")
    stop_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    start_ms = stop_ms - int(since_s * 1000)
    every_s = max(60, int(since_s / 720) // 60 * 60)  # ≤ ~720 points per series
    rate_every_s = max(10, int(since_s / 360))
    client = influx_client(settings, timeout_ms=60_000)
    try:
        api = client.query_api()
        bucket = settings.influx_bucket
        try:
            if patients:
                chosen, total = list(dict.fromkeys(patients)), len(set(patients))
            else:
                chosen, total = _pick_patients(api, bucket, start_ms, stop_ms, limit)
            qs = _flux_queries(bucket, start_ms, stop_ms, chosen, list(workers or []), every_s, rate_every_s)
            vitals = _records(api, qs["vitals"]) if chosen else []
            alerts = _records(api, qs["alerts"]) if chosen else []
            wrows = _records(api, qs["workers"])
            trows = _records(api, qs["throughput"])
        except Exception as exc:  # urllib3 / ApiException / socket errors
            status = getattr(exc, "status", None)
            why = f"HTTP {status} {str(getattr(exc, 'body', '') or '')[:300]}" if status else repr(exc)
            raise StackUnavailable(f"InfluxDB query failed at {settings.influx_url}: {why}") from exc
    finally:
        client.close()

    series: dict[str, dict[str, list[SignalPoint]]] = {p: {} for p in chosen}
    for r in vitals:
        if r.get("mean") is None:
            continue
        lo = r["min"] if r.get("min") is not None else r["mean"]
        hi = r["max"] if r.get("max") is not None else r["mean"]
        series.setdefault(str(r["patient"]), {}).setdefault(str(r["signal"]), []).append(
            SignalPoint(_ms(r["_time"]), float(r["mean"]), float(lo), float(hi)))
    for sigs in series.values():
        for pts in sigs.values():
            pts.sort(key=lambda p: p.t_ms)
    marks = sorted(
        (AlertMark(_ms(r["_time"]), str(r["patient"]), str(r.get("signal", "")), str(r.get("kind", "")),
                   str(r.get("priority", "")), str(r.get("audience", "")), str(r.get("state", "")),
                   str(r.get("message") or ""), int(r["latency_ms"]) if r.get("latency_ms") is not None else None)
         for r in alerts),
        key=lambda a: (a.t_ms, a.patient, a.kind),
    )
    # each field's last value (fields such as latency_p95_ms are absent from an idle worker's reports)
    last: dict[str, tuple[int, dict[str, float]]] = {}
    for r in wrows:
        t, vals = last.setdefault(str(r["worker"]), (0, {}))
        vals[str(r["_field"])] = float(r["_value"])
        last[str(r["worker"])] = (max(t, _ms(r["_time"])), vals)
    stats = [WorkerStats(w, t, vals) for w, (t, vals) in sorted(last.items())]
    throughput: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in trows:
        throughput[str(r["worker"])].append((_ms(r["_time"]), float(r["_value"])))
    return ReportData(start_ms, stop_ms, series, marks, stats, dict(throughput), total)


# --------------------------------------------------------------------------- rendering (pure)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _x(ms: int) -> float:
    """Matplotlib's date number (days since 1970) of epoch milliseconds."""
    return ms / 86_400_000


def _fmt_time(ms: int) -> str:
    return _dt(ms).strftime("%Y-%m-%d %H:%M:%S UTC")


def _view_start(data: ReportData) -> int:
    """The window's start, or a minute before the first data point when the data starts later."""
    times = [p.t_ms for sigs in data.series.values() for pts in sigs.values() for p in pts[:1]]
    times += [a.t_ms for a in data.alerts] + [t for pts in data.throughput.values() for t, _ in pts[:1]]
    return max(data.start_ms, min(times, default=data.start_ms) - 60_000)


def _time_axis(ax: Any, data: ReportData) -> None:
    import matplotlib.dates as mdates

    ax.set_xlim(_x(_view_start(data)), _x(data.stop_ms))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))
    ax.grid(True, alpha=0.3)


def _spans(alerts: list[AlertMark], stop_ms: int) -> list[tuple[str, str, str, int, int]]:
    """(patient, kind, priority, from_ms, to_ms) of every open period; still open ones end at ``stop_ms``."""
    out: list[tuple[str, str, str, int, int]] = []
    opened: dict[tuple[str, str, str], tuple[int, str]] = {}
    for a in alerts:
        key = (a.patient, a.kind, a.signal)
        if a.state == "resolved":
            if key in opened:
                t0, prio = opened.pop(key)
                out.append((a.patient, a.kind, prio, t0, a.t_ms))
        elif key not in opened:
            opened[key] = (a.t_ms, a.priority)
    out += [(p, k, prio, t0, stop_ms) for (p, k, _s), (t0, prio) in opened.items()]
    return out


def _patient_figure(data: ReportData, patient: str) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(len(SIGNALS), 1, figsize=(11, 6.2), sharex=True)
    marks = [a for a in data.alerts if a.patient == patient]
    for ax, signal in zip(axes, SIGNALS, strict=True):
        pts = data.series.get(patient, {}).get(signal, [])
        if pts:
            t = [_x(p.t_ms) for p in pts]
            ax.fill_between(t, [p.lo for p in pts], [p.hi for p in pts], color="#1f77b4", alpha=0.2, linewidth=0,
                            step=None)
            ax.plot(t, [p.mean for p in pts], color="#1f77b4", linewidth=1.4)
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
            ax.set_yticks([])
        for a in marks:
            if a.signal != signal:
                continue
            color = PRIORITY_COLOR.get(a.priority, "grey")
            if a.state == "resolved":
                ax.axvline(_x(a.t_ms), color=color, linestyle=":", linewidth=1.2, alpha=0.8)
            else:
                ax.axvline(_x(a.t_ms), color=color, linestyle="--", linewidth=1.4, alpha=0.9)
        ax.set_ylabel(SIGNAL_LABEL[signal], fontsize=9)
        _time_axis(ax, data)
    handles = [Line2D([], [], color="#1f77b4", lw=1.4, label="mean per minute"),
               plt.Rectangle((0, 0), 1, 1, color="#1f77b4", alpha=0.2, label="min–max"),
               *[Line2D([], [], color=c, ls="--", label=f"alert {p}") for p, c in PRIORITY_COLOR.items()],
               Line2D([], [], color="grey", ls=":", label="resolved")]
    axes[0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    axes[0].set_title(f"patient {patient}", fontsize=11, loc="left")
    axes[-1].set_xlabel("time (UTC)")
    return _png(fig)


def _timeline_figure(data: ReportData, patients: list[str]) -> str:
    import matplotlib.pyplot as plt

    rows = {p: i for i, p in enumerate(patients)}
    fig, ax = plt.subplots(figsize=(11, 0.8 + 0.42 * max(len(patients), 1)))
    for p, _kind, prio, t0, t1 in _spans(data.alerts, data.stop_ms):
        if p in rows:
            ax.plot([_x(t0), _x(max(t1, t0 + 30_000))], [rows[p], rows[p]], color=PRIORITY_COLOR.get(prio, "grey"),
                    linewidth=7, alpha=0.55, solid_capstyle="butt")
    for a in data.alerts:
        if a.patient in rows and a.state != "resolved":
            ax.plot(_x(a.t_ms), rows[a.patient], marker="v" if a.audience == "device" else "o", markersize=6,
                    color=PRIORITY_COLOR.get(a.priority, "grey"), markeredgecolor="black", markeredgewidth=0.5)
    ax.set_yticks(range(len(patients)), patients, fontsize=8, family="monospace")
    ax.set_ylim(-0.7, len(patients) - 0.3)
    ax.invert_yaxis()
    _time_axis(ax, data)
    ax.set_xlabel("time (UTC) — bar: alert open; ● clinical event, ▼ device event; red high, orange medium, "
                  "yellow low")
    return _png(fig)


def _throughput_figure(data: ReportData) -> str:
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 2.8))
    times = [t for pts in data.throughput.values() for t, _ in pts]
    for worker, pts in sorted(data.throughput.items()):
        ax.plot([_x(t) for t, _ in pts], [v for _, v in pts], linewidth=1.2, label=worker,
                marker="o" if len(pts) < 60 else None, markersize=3)
    ax.set_ylabel("readings / s")
    ax.grid(True, alpha=0.3)
    # wall-clock time of the worker's reports: its own range (an accelerated simulation spans more event time)
    lo, hi = (min(times), max(times)) if times else (data.start_ms, data.stop_ms)
    pad = max(10_000, (hi - lo) // 20)
    ax.set_xlim(_x(lo - pad), _x(hi + pad))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S" if hi - lo < 600_000 else "%H:%M", tz=UTC))
    ax.set_xlabel("time of the worker's reports (UTC)")
    if 0 < len(data.throughput) <= 12:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    elif data.throughput:
        ax.set_title(f"{len(data.throughput)} workers (select some with --worker for a legend)", fontsize=9,
                     loc="left")
    return _png(fig)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1150px;
color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}th,td{border:1px solid #ddd;padding:.25em .6em;
text-align:left}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td code{white-space:nowrap}
.muted{color:#666;font-size:.9em}figure{margin:1em 0}img{max-width:100%}
.p-high{color:#d62728;font-weight:600}.p-medium{color:#e07000;font-weight:600}.p-low{color:#a08000}
code{font-size:.95em}.wide{overflow-x:auto}
"""


def _num(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() or abs(v) >= 100 else f"{v:,.1f}"


def render_html(data: ReportData, *, max_alert_rows: int = 300) -> str:
    """The whole report as one HTML document (plots inline as base64 PNG)."""
    # matplotlib is imported where a figure is drawn, not at module top: matplotlib.pyplot costs
    # ~380 ms to import on this machine (measured with python -X importtime), which
    # `wearwatch report --help`, argument errors and a query failure never need.
    import matplotlib

    matplotlib.use("Agg")
    e = html.escape
    patients = list(data.series)
    events = [a for a in data.alerts if a.patient in data.series]
    opened = Counter(a.priority for a in events if a.state == "open")
    by_state = Counter(a.state for a in events)
    total_readings = sum(w.fields.get("readings", 0.0) for w in data.workers)
    out: list[str] = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>wearwatch report {e(_fmt_time(data.start_ms))} – {e(_fmt_time(data.stop_ms))}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>wearwatch run report</h1>",
        f'<p class="muted">{e(_fmt_time(data.start_ms))} → {e(_fmt_time(data.stop_ms))} · generated '
        f"{e(_fmt_time(data.generated_ms))} · patients are pseudonyms (HMAC of the patient id, as in InfluxDB); "
        "for operations review, not for care decisions.</p>",
        '<section id="summary"><h2>Summary</h2><table>',
        f'<tr><th>patients shown</th><td class="num">{len(patients)}</td></tr>',
        f'<tr><th>patients with data or alerts in the window</th><td class="num">{data.patients_in_window}</td></tr>',
        f'<tr><th>alert events (shown patients)</th><td class="num">{len(events)}</td></tr>',
        "<tr><th>alerts opened by priority</th><td>"
        + (", ".join(f'<span class="p-{e(p)}">{e(p)}</span> {n}' for p, n in sorted(opened.items())) or "none")
        + "</td></tr>",
        "<tr><th>alert events by state</th><td>"
        + (", ".join(f"{e(s)} {n}" for s, n in sorted(by_state.items())) or "none") + "</td></tr>",
        f'<tr><th>readings processed (workers, cumulative)</th><td class="num">{_num(total_readings)}</td></tr>',
        "</table></section>",
        '<section id="pipeline"><h2>Pipeline</h2>',
    ]
    if data.workers:
        cols = [c for c in PIPELINE_FIELDS if any(c in w.fields for w in data.workers)]
        out.append('<div class="wide"><table><tr><th>worker</th><th>last report (UTC)</th>'
                   + "".join(f"<th>{e(FIELD_LABEL.get(c, c))}</th>" for c in cols) + "</tr>")
        for w in data.workers:
            out.append(f"<tr><td><code>{e(w.worker)}</code></td><td>{e(_dt(w.last_ms).strftime('%H:%M:%S'))}</td>"
                       + "".join(f'<td class="num">{_num(w.fields[c]) if c in w.fields else ""}</td>' for c in cols)
                       + "</tr>")
        out.append("</table></div>")
    else:
        out.append('<p class="muted">no pipeline reports in the window</p>')
    out.append(f'<figure class="plot" id="throughput"><img alt="throughput per worker" '
               f'src="data:image/png;base64,{_throughput_figure(data)}"><figcaption class="muted">readings per second '
               "per worker (derivative of the cumulative counter), in wall-clock time</figcaption></figure></section>")

    out.append('<section id="alerts"><h2>Alert timeline</h2>')
    if patients:
        out.append(f'<figure class="plot" id="alert-timeline"><img alt="alert timeline" '
                   f'src="data:image/png;base64,{_timeline_figure(data, patients)}"></figure>')
    if events:
        out.append("<table><tr><th>time (UTC)</th><th>patient</th><th>kind</th><th>signal</th><th>priority</th>"
                   "<th>audience</th><th>state</th><th>latency</th><th>message</th></tr>")
        for a in events[:max_alert_rows]:
            lat = f"{a.latency_ms / 1000:,.1f} s" if a.latency_ms is not None else ""
            out.append(f"<tr><td>{e(_dt(a.t_ms).strftime('%H:%M:%S'))}</td><td><code>{e(a.patient)}</code></td>"
                       f"<td>{e(a.kind)}</td><td>{e(a.signal)}</td><td class=\"p-{e(a.priority)}\">{e(a.priority)}</td>"
                       f"<td>{e(a.audience)}</td><td>{e(a.state)}</td><td class=\"num\">{lat}</td>"
                       f"<td>{e(a.message)}</td></tr>")
        out.append("</table>")
        if len(events) > max_alert_rows:
            out.append(f'<p class="muted">… and {len(events) - max_alert_rows} more events</p>')
    else:
        out.append('<p class="muted">no alert events for these patients in the window</p>')
    out.append("</section>")

    out.append('<section id="patients"><h2>Patients</h2>')
    for p in patients:
        n = sum(1 for a in events if a.patient == p and a.state == "open")
        out.append(f'<figure class="patient-plot" id="patient-{e(p)}" data-patient="{e(p)}">'
                   f'<img alt="vitals of patient {e(p)}" src="data:image/png;base64,{_patient_figure(data, p)}">'
                   f'<figcaption class="muted">patient <code>{e(p)}</code>: {n} alert(s) opened in the window; '
                   "dashed line = alert opened or updated, dotted = resolved</figcaption></figure>")
    if not patients:
        out.append('<p class="muted">no patient data in the window</p>')
    out.append("</section></body></html>")
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    settings.require("influx_token")
    if args.patients < 1:
        raise ConfigError("--patients must be at least 1")
    data = fetch(settings, since_s=args.since, limit=args.patients, patients=args.patient, workers=args.worker)
    if not data.series:
        log.warning("no patient data in the last %.0f s: the report shows the pipeline only", args.since)
    text = render_html(data)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    log.info("report: %d patients, %d alert events, %d workers", len(data.series), len(data.alerts), len(data.workers))
    print(f"report: wrote {out} ({len(text) / 1024:,.0f} KiB, {len(data.series)} patients, "
          f"{len(data.alerts)} alert events)")
    return 0
