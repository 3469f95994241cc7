"""Helpers for the viewer's tests: the real ``lucidic-otel ui`` console script in a subprocess,
plain HTTP requests with any ``Host`` header, and a real headless Chromium through Selenium.

Every wait is bounded; every process started here is stopped (and killed if it must be) by
the caller's ``finally``/fixture, through :func:`tests.support.launcher.stop`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import pytest

from tests.support.launcher import CapturedProcess, spawn, stop

CLI = Path(sys.executable).parent / "lucidic-otel"
URL = re.compile(r"at (http://127\.0\.0\.1:(\d+)/\S*)")
START_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 10.0
INSTALL_BROWSER = (
    "the browser tests need Chromium and its WebDriver: on Debian/Ubuntu "
    "`apt-get install chromium chromium-driver` (what .ci/run installs), and selenium "
    "(`pip install -e '.[test]'`); deselect them with `-m 'not browser'`"
)


def env_for(home: Path, **extra: str) -> Dict[str, str]:
    """The environment without OTel/Lucidic settings and with a private home, so nothing a
    test does can read or touch the user's default store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LUCIDIC_"))}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"), PYTHONUNBUFFERED="1")
    env.pop("DISPLAY", None)  # never open a real browser window from a test
    env.pop("WAYLAND_DISPLAY", None)
    env.pop("BROWSER", None)
    env.update(extra)
    return env


class Viewer:
    """A running ``lucidic-otel ui --no-browser --port 0`` and the URL it printed."""

    def __init__(self, store: Path, home: Path, *args: str) -> None:
        self.process: CapturedProcess = spawn(
            [str(CLI), "ui", "--no-browser", "--port", "0", "--store", str(store), *args],
            env_for(home),
        )
        line = self.process.wait_for_line("lucidic-otel ui: serving", START_TIMEOUT_S)
        if line is None:
            output = stop(self.process).stdout
            raise AssertionError(f"the viewer did not start; output:\n{output}")
        match = URL.search(line)
        assert match, line
        self.url = match.group(1)
        self.port = int(match.group(2))
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self) -> subprocess.CompletedProcess[str]:
        import signal

        return stop(self.process, signal.SIGINT)

    def get(self, path: str, host: Optional[str] = None,
            method: str = "GET") -> Tuple[int, Dict[str, str], bytes]:
        """``(status, headers, body)`` of a request sent with exactly this ``Host`` header."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT_S)
        try:
            conn.putrequest(method, path, skip_host=True)
            conn.putheader("Host", host if host is not None else f"127.0.0.1:{self.port}")
            conn.endheaders()
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def json(self, path: str) -> Tuple[int, Any]:
        status, headers, body = self.get(path)
        assert headers["Content-Type"].startswith("application/json"), (path, headers)
        return status, json.loads(body)


def store_fingerprint(store: Path) -> Dict[str, Tuple[str, int]]:
    """Content hash and mtime of the store and of a non-empty WAL: a reader changes neither.

    SQLite's read-only access to a WAL database opens (so may create) the ``-wal`` and
    ``-shm`` side files its read protocol needs; an empty ``-wal`` holds no data, so it is
    left out (every write would add frames to it, which this would then show).
    """
    found = {}
    for suffix in ("", "-wal"):
        path = Path(str(store) + suffix)
        if path.exists() and (suffix == "" or path.stat().st_size > 0):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[path.name] = (digest, path.stat().st_mtime_ns)
    return found


def chrome() -> Any:
    """A headless Chromium driven by Selenium; fails (never skips) with what to install."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        pytest.fail(f"{INSTALL_BROWSER} ({exc})", pytrace=False)
    driver_path = shutil.which("chromedriver")
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(n)), None)
    if driver_path is None or browser is None:
        missing = "chromedriver" if driver_path is None else "chromium"
        pytest.fail(f"{missing} not found on PATH: {INSTALL_BROWSER}", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1440,900",
                     "--no-first-run", "--disable-extensions", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    try:
        return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except Exception as exc:  # noqa: BLE001 - say what failed, in one line
        pytest.fail(f"cannot start headless Chromium ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); {INSTALL_BROWSER}",
                    pytrace=False)


def save_screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    """A PNG of the page, in the test's directory and, when ``UI_SCREENSHOTS_DIR`` names a
    directory (``docs/screenshots`` for the README), there too."""
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), name
    target = os.environ.get("UI_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / name)
    return path
