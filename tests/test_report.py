"""``wearwatch report``: the HTML builder on a small in-memory run (no InfluxDB)."""

from __future__ import annotations

import argparse
import base64
import re

import pytest

from tools.report import AlertMark, ReportData, SignalPoint, WorkerStats, _spans, parse_duration, render_html

T0 = 1_795_000_000_000  # ms, a whole minute
MIN = 60_000


def dataset() -> ReportData:
    series = {
        "aaaaaaaaaaaaaaaa": {
            "heart_rate": [SignalPoint(T0 + i * MIN, 70.0 + i, 65.0 + i, 80.0 + i) for i in range(30)],
            "glucose": [SignalPoint(T0 + i * 5 * MIN, g, g, g) for i, g in enumerate([110.0, 95, 80, 62, 50, 90])],
            "steps": [SignalPoint(T0 + i * MIN, 0.0, 0.0, 0.0) for i in range(30)],
        },
        "bbbbbbbbbbbbbbbb": {"heart_rate": [SignalPoint(T0 + i * MIN, 140.0, 130.0, 150.0) for i in range(30)]},
    }
    alerts = [
        AlertMark(T0 + 20 * MIN, "aaaaaaaaaaaaaaaa", "glucose", "glucose_urgent_low", "high", "clinical", "open",
                  "Urgent low glucose: 50 mg/dL, below 55", 1200),
        AlertMark(T0 + 28 * MIN, "aaaaaaaaaaaaaaaa", "glucose", "glucose_urgent_low", "high", "clinical",
                  "resolved", "Urgent low resolved <ok>", 900),
        AlertMark(T0 + 10 * MIN, "bbbbbbbbbbbbbbbb", "heart_rate", "tachycardia_at_rest", "medium", "clinical",
                  "open", "High heart rate at rest", None),
    ]
    workers = [WorkerStats("ww-test", T0 + 29 * MIN, {"readings": 1234.0, "duplicates": 2.0, "too_late": 0.0,
                                                      "dead_letters": 1.0, "active_patients": 2.0, "uptime_s": 55.5})]
    throughput = {"ww-test": [(T0 + i * MIN, 10.0 + i) for i in range(30)]}
    return ReportData(T0, T0 + 30 * MIN, series, alerts, workers, throughput, patients_in_window=2,
                      generated_ms=T0 + 31 * MIN)


def test_report_has_sections_plots_and_one_figure_per_patient() -> None:
    doc = render_html(dataset())
    assert doc.startswith("<!DOCTYPE html>") and doc.rstrip().endswith("</html>")
    for section in ("summary", "pipeline", "alerts", "patients"):
        assert f'<section id="{section}">' in doc
    figures = re.findall(r'<figure class="patient-plot" id="patient-([0-9a-f]{16})"', doc)
    assert figures == ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"]
    assert 'id="alert-timeline"' in doc and 'id="throughput"' in doc
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', doc)
    assert len(images) == 4  # throughput, timeline, 2 patients
    for b64 in images:
        assert base64.b64decode(b64).startswith(b"\x89PNG\r\n\x1a\n")
    # self-contained: no external resources
    assert not re.search(r'(src|href)="(https?:)?//', doc)


def test_report_tables_and_escaping() -> None:
    doc = render_html(dataset())
    assert "glucose_urgent_low" in doc and "tachycardia_at_rest" in doc
    assert "Urgent low resolved &lt;ok&gt;" in doc and "<ok>" not in doc
    assert "<code>ww-test</code>" in doc and "1,234" in doc
    assert '<span class="p-high">high</span> 1' in doc and '<span class="p-medium">medium</span> 1' in doc
    assert "1.2 s" in doc  # latency of the first event


def test_report_without_data_still_renders() -> None:
    doc = render_html(ReportData(T0, T0 + MIN, {}, generated_ms=T0))
    assert "no patient data in the window" in doc and "no pipeline reports in the window" in doc
    assert "patient-plot" not in doc


def test_open_spans_end_at_resolution_or_window_end() -> None:
    data = dataset()
    assert sorted(_spans(data.alerts, data.stop_ms)) == [
        ("aaaaaaaaaaaaaaaa", "glucose_urgent_low", "high", T0 + 20 * MIN, T0 + 28 * MIN),
        ("bbbbbbbbbbbbbbbb", "tachycardia_at_rest", "medium", T0 + 10 * MIN, T0 + 30 * MIN),
    ]


def test_parse_duration_rejects_garbage() -> None:
    assert parse_duration("45s") == 45.0
    for bad in ("2", "h", "-1h", "0m", "2w"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)
