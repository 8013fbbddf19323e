"""Helpers for the console browser test: headless Chromium, the console service and its accounts.

Chromium and chromedriver are Debian's (``make browser-deps``): nothing is downloaded at test time
(Selenium Manager is never used: the driver path is explicit).
"""

from __future__ import annotations

import http.cookiejar
import os
import shutil
import subprocess
import sys
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
from kafka.partitioner.default import murmur2

from tests.integration.conftest import ROOT
from wearwatch.config import Settings

__all__ = [
    "ARTIFACTS",
    "Browser",
    "add_user",
    "chromium",
    "http_json",
    "patients_on_every_partition",
    "wait_http",
    "wait_until",
]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: screenshots for people to look at (git-ignored)
ARTIFACTS = ROOT / "out" / "test-artifacts" / "console"

Browser = Any  # selenium.webdriver.Chrome (selenium ships no type information mypy can use here)


@contextmanager
def chromium(width: int = 1280, height: int = 800) -> Iterator[Browser]:
    """Headless Chromium with a fresh profile, sound allowed without a gesture (so Web Audio runs headless)."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium/chromedriver missing: run `make browser-deps` (make test-stack does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ww-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required",
                f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        opts.add_argument(arg)
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


def wait_http(url: str, timeout: float = 120.0, alive: Callable[[], bool] | None = None) -> None:
    """Until ``url`` answers 200 (a starting console answers /readyz 503 until it has read its topics)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise AssertionError(f"the process serving {url} exited")
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as e:
            last = f"{e.code} {e.read()[:200]!r}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            last = repr(e)
        time.sleep(0.5)
    raise AssertionError(f"{url} never answered 200 (last: {last})")


def add_user(settings: Settings, username: str, password: str, role: str, wards: list[str]) -> None:
    """``wearwatch users add`` (the admin CLI, which works while the console runs), password on stdin."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEARWATCH_")}
    env.update(settings.env())
    args = [sys.executable, "-m", "wearwatch.cli", "users", "add", username, "--role", role]
    for w in wards:
        args += ["--ward", w]
    args.append("--password-stdin")
    r = subprocess.run(args, input=password.encode(), cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, f"users add {username} failed ({r.returncode}):\n{r.stdout.decode()}\n{r.stderr.decode()}"


def patients_on_every_partition(prefix: str, partitions: int) -> list[str]:
    """Patient ids ``{prefix}{n}``, one per partition of ``vitals.raw`` (Kafka's murmur2 partitioner, as the
    gateway uses): whichever worker holds which partitions, every worker then holds one of them."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < partitions:
        pid = f"{prefix}{n}"
        found.setdefault((murmur2(pid.encode()) & 0x7FFFFFFF) % partitions, pid)
        n += 1
    return [found[p] for p in range(partitions)]
