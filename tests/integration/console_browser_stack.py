"""Helpers for the console browser test: headless Chromium, waiting on the page, plain HTTP with a cookie.

The console service's own stack helpers (accounts through the users CLI, readiness, patients spread over
every partition, workers sharing the partitions) live in ``tests/integration/test_console_service.py``.

Chromium and chromedriver are Debian's (``make browser-deps``): nothing is downloaded at test time
(Selenium Manager is never used: the driver path is explicit).
"""

from __future__ import annotations

import http.cookiejar
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.conftest import ROOT

__all__ = ["ARTIFACTS", "Browser", "chromium", "http_json", "script_errors", "wait_until"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: screenshots for people to look at (git-ignored)
ARTIFACTS = ROOT / "out" / "test-artifacts" / "console"

Browser = Any  # selenium.webdriver.Chrome (selenium ships no type information mypy can use here)


@contextmanager
def chromium(width: int = 1280, height: int = 800, autoplay: bool = True) -> Iterator[Browser]:
    """Headless Chromium with a fresh profile; ``autoplay``: sound allowed without a user gesture (so Web Audio
    runs headless), else the browser's default policy (sound only after a click or key press on the page)."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium/chromedriver missing: run `make browser-deps` (make test-stack does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ww-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}",
                *(["--autoplay-policy=no-user-gesture-required"] if autoplay else [])):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for script errors
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.25,
               describe: Callable[[], Any] | None = None) -> Any:
    """Poll ``check`` until it returns something truthy (returned); fail naming ``what`` after ``timeout``
    (with ``describe()``, what there was instead)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            seen = describe() if describe is not None else last
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (found: {seen!r})")
        time.sleep(every)


def http_json(method: str, url: str, body: Any = None, cookie: str | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One request; (status, JSON body or None)."""
    data = None if body is None else orjson.dumps(body)
    h = {"Accept": "application/json", **(headers or {})}
    if data is not None:
        h["Content-Type"] = "application/json"
    if cookie:
        h["Cookie"] = cookie
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    try:
        with opener.open(req, timeout=10) as r:
            raw = r.read()
            return r.status, orjson.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return e.code, raw.decode(errors="replace")


def script_errors(b: Browser) -> list[str]:
    """Errors the page's own script raised since the last call (failed requests the page handles are not)."""
    return [e["message"] for e in b.get_log("browser") if e.get("level") == "SEVERE" and e.get("source") != "network"]
