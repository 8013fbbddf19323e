"""The alert console in a real headless Chromium against the real stack.

A hypoglycaemia published over MQTT must appear on the worker's ``/console``
page; clicking *Acknowledge* must go through Kafka ``alerts.commands`` to the
patient's lifecycle and come back as exactly one ``acknowledged`` event on Kafka
``alerts`` with the name the nurse typed. The browser is Debian's ``chromium``
driven by Selenium through Debian's ``chromium-driver`` (``make browser-deps``):
nothing is downloaded at test time.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from alerts.models import AlertEvent
from ingest.contract import vitals_topic
from tests.integration.conftest import ROOT, consume_all
from tests.integration.test_pipeline import MIN, publish
from wearwatch.config import Settings

pytestmark = pytest.mark.stack

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = ROOT / "out" / "console"


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's) through Debian's chromedriver; a fresh profile per test."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium/chromedriver missing: run `make browser-deps` (make test-stack does)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ww-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1440,900"):
        opts.add_argument(arg)
    # explicit driver path: Selenium Manager (which would try to download a driver) is never used
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def http_json(url: str, body: bytes | None = None, content_type: str = "application/json") -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def wait_http(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.5)


def test_console_shows_injected_alert_and_acknowledges_via_kafka(
    settings: Settings, spawn: Any, run_id: str, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    gateway = spawn("gateway", settings, "gateway", "--stats-every", "2")
    worker = spawn("worker", settings, "worker")
    gateway.wait_log("gateway up")
    base = f"http://127.0.0.1:{settings.web_port}"
    wait_http(f"{base}/api/alerts")

    # the API validates before it touches anything
    assert http_json(f"{base}/api/alerts/nope/ack", b'{"by": "kim"}')[0] == 400
    assert http_json(f"{base}/api/alerts/al-{'0' * 20}/ack", b'{"by": "kim"}') == (
        404, {"error": "alert_not_found", "detail": "no open alert with this id on this worker "
                                                     "(resolved, or its patient is on another worker)"})
    status, err = http_json(f"{base}/api/alerts/al-{'0' * 20}/ack", b'{"by": ""}')
    assert status == 400 and err["error"] == "invalid_field"
    assert http_json(f"{base}/api/alerts/al-{'0' * 20}/ack", b'{"by": "kim"}', "text/plain")[0] == 415
    assert http_json(f"{base}/api/patients/bad%20id/series")[0] == 400

    pid = f"C-{run_id}"
    now = int(time.time() * 1000)
    start = now - 20 * MIN
    rows = [{"patient_id": pid, "signal": "glucose", "value": g, "unit": "mg/dL", "ts": start + i * 5 * MIN}
            for i, g in enumerate([120, 95, 70, 52])]
    publish(settings, [(vitals_topic("sim", f"{pid}-cgm"), orjson.dumps(rows))])

    browser.get(f"{base}/console")
    assert "Alert console" in browser.title or browser.find_element(By.TAG_NAME, "h1").text == "Alert console"
    row_css = 'tr.alert[data-kind="glucose_urgent_low"]'
    WebDriverWait(browser, 60, poll_frequency=0.5).until(lambda d: d.find_elements(By.CSS_SELECTOR, row_css))
    row = browser.find_element(By.CSS_SELECTOR, row_css)
    alert_id = row.get_attribute("data-alert-id")
    assert alert_id and row.get_attribute("data-state") == "open"
    assert pid in row.text and "HIGH" in row.text.upper()
    # most urgent first: the high-priority alert heads the list
    first = browser.find_element(By.CSS_SELECTOR, "tr.alert")
    assert first.get_attribute("data-alert-id") == alert_id

    # the detail panel: explanation and the patient's last 2 h from InfluxDB (minutes close after idle_close_s)
    row.click()
    WebDriverWait(browser, 60, poll_frequency=1.0).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#detail .chart svg path"))
    detail = browser.find_element(By.ID, "detail").text
    assert "Threshold" in detail and "55 mg/dL" in detail and alert_id in detail

    name = browser.find_element(By.ID, "nurse-name")
    name.clear()
    name.send_keys("nurse.ana")
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "console-open.png"))
    browser.find_element(By.CSS_SELECTOR, f'tr.alert[data-alert-id="{alert_id}"] button.ack').click()

    acked_css = f'tr.alert[data-alert-id="{alert_id}"][data-state="acknowledged"]'
    WebDriverWait(browser, 60, poll_frequency=0.5).until(lambda d: d.find_elements(By.CSS_SELECTOR, acked_css))
    acked_row = browser.find_element(By.CSS_SELECTOR, acked_css)
    assert "acknowledged" in acked_row.text and "nurse.ana" in acked_row.text
    assert not acked_row.find_elements(By.CSS_SELECTOR, "button.ack")
    browser.save_screenshot(str(SHOTS / "console-acknowledged.png"))

    # a second click (another nurse, stale page) does not make a second acknowledgement
    status, body = http_json(f"{base}/api/alerts/{alert_id}/ack", b'{"by": "nurse.bo"}')
    assert (status, body["status"]) == (200, "already_acknowledged")

    events = [AlertEvent.from_json(r.value) for r in consume_all(settings, settings.topic_alerts, idle_s=2.0)]
    acked = [e for e in events if e.alert_id == alert_id and e.state == "acknowledged"]
    assert len(acked) == 1
    assert acked[0].acked_by == "nurse.ana" and acked[0].patient_id == pid
    commands = consume_all(settings, settings.topic_commands, expect=1, idle_s=1.0)
    assert len(commands) == 1 and commands[0].key == pid.encode()
    # nurse-facing page, but no patient id in the worker's log at INFO
    assert pid not in worker.log_text()
