"""Helpers for the console browser test: headless Chromium, waiting on the page, plain HTTP with a cookie.

The console service's own stack helpers (accounts through the users CLI, readiness, patients spread over
every partition, workers sharing the partitions) live in ``tests/integration/test_console_service.py``.

Chromium and chromedriver are Debian's (``make browser-deps``): nothing is downloaded at test time
(Selenium Manager is never used: the driver path is explicit).
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import shutil
import socket
import tempfile
import threading
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

__all__ = ["ARTIFACTS", "Browser", "StallingProxy", "chromium", "http_json", "script_errors", "wait_until"]

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


class StallingProxy:
    """A TCP proxy between the browser and the console that can stall the open event streams: their connections
    stay open but no byte of the console reaches the browser any more (a network path that died without a
    reset). Every other connection, and streams opened later, pass untouched. ``streams`` counts the
    ``/api/events`` requests seen."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.streams = 0
        self._stalled: set[int] = set()
        self._events_conns: set[int] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stall_streams(self) -> int:
        """Stall every event stream open now; how many."""
        with self._lock:
            self._stalled |= self._events_conns
            return len(self._events_conns)

    def close(self) -> None:
        self._closed = True
        self.listener.close()

    def _accept(self) -> None:
        n = 0
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            n += 1
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._to_console, args=(n, client, upstream), daemon=True).start()
            threading.Thread(target=self._to_browser, args=(n, upstream, client), daemon=True).start()

    def _to_console(self, n: int, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if b"GET /api/events " in data:
                    with self._lock:
                        self._events_conns.add(n)
                        self.streams += 1
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._events_conns.discard(n)
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _to_browser(self, n: int, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while n in self._stalled:  # hold the bytes: nothing more reaches the browser on this connection
                    time.sleep(0.05)
                    if n not in self._events_conns:  # the browser gave up on this stream
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
