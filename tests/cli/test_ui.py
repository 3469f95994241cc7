"""``lucidic-otel ui``: the real console script, over stores filled by real programs.

The demo fills one store (two services under the real launcher, the real openai client against
the offline fake), a program under ``opentelemetry-instrument`` records while the viewer is
open, and the pages are driven in a real headless Chromium (``-m browser``). Safety is tested
with plain HTTP: the ``Host`` check, the bind rule, 400/404/405/503 answers, and a store that
is byte-for-byte unchanged after browsing while another process keeps writing it.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from lucidic_otel.cli.ui.routes import load_static
from lucidic_otel.outbox.store import SCHEMA_VERSION, Store
from tests.cli.ui_support import (
    CLI,
    Viewer,
    chrome,
    env_for,
    save_screenshot,
    store_fingerprint,
)
from tests.support.launcher import clean_env, run_instrumented, spawn_instrumented, stop

DEMO_TIMEOUT_S = 180
WAIT_S = 30
STATIC_FILES = {"index.html", "session.html", "app.css", "common.js", "sessions.js",
                "session.js"}

# A program that records one session per argument, with an LLM-shaped span and a tool span
# (made by hand, so no model is needed); content capture is whatever the environment says.
RECORDER = """
import os, sys, time
from opentelemetry import trace
import lucidic_otel

tracer = trace.get_tracer("ui-test")

def work(name):
    with tracer.start_as_current_span("chat fake-model") as span:
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.provider.name", "openai")
        span.set_attribute("gen_ai.request.model", "gpt-4o-mini")
        span.set_attribute("gen_ai.usage.input_tokens", 11)
        span.set_attribute("gen_ai.usage.output_tokens", 7)
        span.set_attribute("gen_ai.input.messages", '[{"role":"user","parts":'
                           '[{"type":"text","content":"SECRET PROMPT ' + name + '"}]}]')
        span.set_attribute("gen_ai.output.messages", '[{"role":"assistant","parts":'
                           '[{"type":"text","content":"SECRET ANSWER"}],'
                           '"finish_reason":"stop"}]')
    with tracer.start_as_current_span("execute_tool lookup") as span:
        span.set_attribute("gen_ai.operation.name", "execute_tool")
        span.set_attribute("gen_ai.tool.name", "lookup")
        span.set_attribute("gen_ai.tool.call.arguments", '{"q": "SECRET ARGS"}')
        span.set_attribute("gen_ai.tool.call.result", '{"a": "SECRET RESULT"}')

for name in sys.argv[1:]:
    lucidic_otel.with_lucidic(work, name, session_name=name)
    time.sleep(float(os.environ.get("RECORDER_PAUSE_S", "0")))
print("RECORDED", len(sys.argv) - 1, flush=True)
"""


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui-home")


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory, home: Path) -> Path:
    """A store recorded by ``lucidic-otel demo --store``: three cross-service sessions."""
    store = tmp_path_factory.mktemp("ui-demo") / "store.db"
    proc = subprocess.run([str(CLI), "demo", "--store", str(store)], env=env_for(home),
                          capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"lucidic-otel ui --store {store}" in proc.stdout, proc.stdout  # the final hint
    return store


@pytest.fixture(scope="module")
def viewer(demo_store: Path, home: Path) -> Iterator[Viewer]:
    running = Viewer(demo_store, home)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def demo_sessions(demo_store: Path) -> List[Dict[str, Any]]:
    with Store(demo_store) as store:  # as `lucidic-otel sessions` reads it
        return [s for s in store.list_sessions() if (s["name"] or "").startswith("demo request")]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = chrome()
    try:
        yield driver
    finally:
        driver.quit()


def _record(store: Path, tmp_path: Path, *names: str, **env: str) -> None:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER, encoding="utf-8")
    proc = run_instrumented([script, *names], clean_env(LUCIDIC_STORE_PATH=str(store), **env))
    assert proc.returncode == 0 and "RECORDED" in proc.stdout, proc.stdout + proc.stderr


def _wait(condition: Any, what: str, timeout: float = WAIT_S) -> Any:
    """Poll ``condition`` until it returns something true (bounded); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# ------------------------------------------------------------------ package and plain HTTP


def test_static_files_ship_as_package_data() -> None:
    folder = resources.files("lucidic_otel.cli.ui").joinpath("static")
    assert STATIC_FILES <= {entry.name for entry in folder.iterdir()}
    assert STATIC_FILES <= set(load_static())
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'"lucidic_otel\.cli\.ui"\s*=\s*\[\s*"static/\*', pyproject), (
        "pyproject.toml must list the viewer's static files as package data")


def test_sessions_api_lists_the_demo_sessions(viewer: Viewer, demo_sessions: List[Dict]) -> None:
    status, data = viewer.json("/api/sessions")
    assert status == 200
    assert data["total"] == len(demo_sessions) == 3
    by_name = {s["name"]: s for s in data["sessions"]}
    for session in demo_sessions:
        shown = by_name[session["name"]]
        assert shown["services"] == ["demo-agent", "demo-gateway"]
        for key in ("span_count", "llm_calls", "input_tokens", "output_tokens", "pending"):
            assert shown[key] == session[key], key
    starts = [s["started_ns"] for s in data["sessions"]]
    assert starts == sorted(starts, reverse=True)  # newest first, like `lucidic-otel sessions`
    status, found = viewer.json("/api/sessions?q=REQUEST+2")  # search is case-insensitive
    assert [s["name"] for s in found["sessions"]] == ["demo request 2"]
    status, found = viewer.json("/api/sessions?q=demo-agent&per_page=2")
    assert (found["total"], found["pages"], len(found["sessions"])) == (3, 2, 2)
    status, found = viewer.json("/api/sessions?q=%25")  # LIKE wildcards are literal
    assert found["total"] == 0


def test_host_header_must_be_the_bound_address(viewer: Viewer) -> None:
    port = viewer.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert viewer.get("/api/sessions", host=host)[0] == 200, host
    for host in (f"evil.example:{port}", f"127.0.0.1.nip.io:{port}", "127.0.0.1",
                 f"127.0.0.1:{port + 1}", f"attacker.test:{port}", ""):
        status, _, body = viewer.get("/api/sessions", host=host)
        assert status == 403, host
        assert b"DNS rebinding" in body


def test_non_loopback_host_needs_the_explicit_flag(tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    base = [str(CLI), "ui", "--no-browser", "--store", str(store), "--port", "0"]
    refused = subprocess.run([*base, "--host", "192.0.2.10"], env=env_for(tmp_path),
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2
    assert "--allow-remote" in refused.stderr and "refusing" in refused.stderr
    # With the flag the refusal is gone: it tries to bind (a documentation address, which no
    # interface here has, so nothing is ever exposed) and says why it cannot.
    allowed = subprocess.run([*base, "--host", "192.0.2.10", "--allow-remote"],
                             env=env_for(tmp_path), capture_output=True, text=True,
                             timeout=60, check=False)
    assert allowed.returncode == 1
    assert "cannot listen on 192.0.2.10" in allowed.stderr and "refusing" not in allowed.stderr
    assert "Traceback" not in refused.stderr + allowed.stderr


def test_unknown_session_is_a_404_page_and_json(viewer: Viewer) -> None:
    status, data = viewer.json("/api/sessions/no-such-session")
    assert status == 404 and "no session no-such-session" in data["error"]
    status, headers, body = viewer.get("/sessions/no-such-session")
    assert status == 404 and headers["Content-Type"].startswith("text/html")
    assert b"No such session" in body
    status, data = viewer.json("/api/sessions/no-such/spans/" + "a" * 32 + "/" + "b" * 16)
    assert status == 404
    assert viewer.json("/api/nothing-here")[0] == 404


def test_malformed_parameters_are_a_400(viewer: Viewer) -> None:
    for query in ("page=0", "page=abc", "page=-1", "per_page=0", "per_page=100000",
                  "page=1&page=2", "color=red", "q=" + "x" * 201, "page=%C2%B2"):
        status, data = viewer.json("/api/sessions?" + query)
        assert status == 400, query
        assert data["error"] and "Traceback" not in data["error"], query
    status, _, body = viewer.get("/?page=zero")
    assert status == 400 and b"page" in body
    status, data = viewer.json("/api/sessions/x/spans/not-hex/" + "b" * 16)
    assert status == 400 and "trace id" in data["error"]
    status, headers, _ = viewer.get("/api/sessions", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_session_api_has_every_span_and_the_marks(viewer: Viewer, demo_store: Path,
                                                  demo_sessions: List[Dict]) -> None:
    first = next(s for s in demo_sessions if s["name"] == "demo request 1")
    status, data = viewer.json(f"/api/sessions/{first['session_id']}")
    assert status == 200
    waterfall = data["waterfall"]
    rows = [dict(zip(waterfall["columns"], row, strict=True)) for row in waterfall["rows"]]
    with Store(demo_store) as store:
        stored = store.session_spans(first["session_id"])
    assert sorted(r["span_id"] for r in rows) == sorted(s.span_id for s in stored)
    services = waterfall["services"]
    assert services == ["demo-agent", "demo-gateway"]
    assert [r["name"] for r in rows if r["flags"] & 8] == ["POST /chat"]  # the entry span
    assert [r["name"] for r in rows
            if r["via_service"] is not None and services[r["via_service"]] == "demo-gateway"
            ] == ["POST /run"]
    assert sum(1 for r in rows if r["flags"] & 2) == first["llm_calls"]
    # Depth first: every row's parent row comes before it.
    assert all(r["parent_row"] is None or r["parent_row"] < i for i, r in enumerate(rows))


def test_store_is_unchanged_by_browsing(viewer: Viewer, demo_store: Path,
                                        demo_sessions: List[Dict]) -> None:
    before = store_fingerprint(demo_store)
    paths = ["/", "/api/sessions", "/api/sessions?q=demo&page=1", "/static/app.css"]
    for session in demo_sessions:
        paths += [f"/sessions/{session['session_id']}", f"/api/sessions/{session['session_id']}"]
        _, data = viewer.json(f"/api/sessions/{session['session_id']}")
        traces = data["waterfall"]["traces"]
        for row in data["waterfall"]["rows"]:
            paths.append(f"/api/sessions/{session['session_id']}/spans/"
                         f"{traces[row[1]]}/{row[0]}")
    for path in paths:
        assert viewer.get(path)[0] == 200, path
    assert store_fingerprint(demo_store) == before


def test_unreadable_or_newer_store_is_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    proc = subprocess.run([str(CLI), "ui", "--no-browser", "--store", str(garbage)],
                          env=env_for(tmp_path), capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 1 and "not an SQLite database" in proc.stderr
    newer = tmp_path / "newer.db"
    Store(newer).close()
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    proc = subprocess.run([str(CLI), "ui", "--no-browser", "--store", str(newer)],
                          env=env_for(tmp_path), capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 1 and "newer lucidic-otel" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_store_that_goes_bad_while_serving_is_a_503(tmp_path: Path) -> None:
    store = tmp_path / "later.db"
    running = Viewer(store, tmp_path)  # no store yet: served as empty, filled in later
    try:
        status, data = running.json("/api/sessions")
        assert status == 200 and data["store_exists"] is False and data["total"] == 0
        store.write_bytes(b"garbage " * 1000)
        status, data = running.json("/api/sessions")
        assert status == 503 and "not an SQLite database" in data["error"]
        status, _, body = running.get("/")
        assert status == 200  # the page itself loads and shows the API's error
    finally:
        result = running.stop()
    assert result.returncode == 0 and "lucidic-otel ui: stopped" in result.stdout
    assert "Traceback" not in result.stdout


def test_keeps_answering_while_another_process_writes(tmp_path: Path) -> None:
    store = tmp_path / "busy.db"
    names = [f"busy-{i}" for i in range(40)]
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER, encoding="utf-8")
    writer = spawn_instrumented([script, *names], clean_env(LUCIDIC_STORE_PATH=str(store),
                                                            RECORDER_PAUSE_S="0.05"))
    running = Viewer(store, tmp_path)
    statuses: List[int] = []
    totals: List[int] = []
    try:
        for _ in range(3000):  # bounded (about a minute); ends when the writer is done
            time.sleep(0.02)
            status, data = running.json("/api/sessions?q=busy")
            statuses.append(status)
            totals.append(data.get("total", 0))
            for session in data.get("sessions", [])[:2]:
                statuses.append(running.json(f"/api/sessions/{session['session_id']}")[0])
            if writer.poll() is not None:
                break
        assert writer.wait(60) == 0, writer.output()
        status, final = running.json("/api/sessions?q=busy")
    finally:
        stop(writer)
        running.stop()
    assert set(statuses) == {200} and status == 200
    assert totals == sorted(totals)  # never goes back: every answer is a consistent snapshot
    assert final["total"] == len(names)
    assert len(set(totals)) > 1, "no answer came while the writer was recording"


# --------------------------------------------------------------------------------- browser


@pytest.mark.browser
def test_sessions_page_lists_the_demo_sessions(browser: Any, viewer: Viewer,
                                               demo_sessions: List[Dict],
                                               tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(viewer.url)
    _wait(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready"),
          "the sessions page to render")
    rows = browser.find_elements(By.CSS_SELECTOR, "#sessions tbody tr")
    shown = {row.get_attribute("data-session-id"): row.text for row in rows}
    assert set(shown) == {s["session_id"] for s in demo_sessions}
    for session in demo_sessions:
        text = shown[session["session_id"]]
        assert session["name"] in text and "demo-agent" in text and "demo-gateway" in text
        assert f"{session['input_tokens']}/{session['output_tokens']}" in text
    save_screenshot(browser, tmp_path, "sessions.png")


@pytest.mark.browser
def test_session_page_waterfall_and_llm_detail(browser: Any, viewer: Viewer, demo_store: Path,
                                               demo_sessions: List[Dict],
                                               tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    first = next(s for s in demo_sessions if s["name"] == "demo request 1")
    browser.get(viewer.url)
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "a.session-link"), "session links")
    link = next(a for a in browser.find_elements(By.CSS_SELECTOR, "a.session-link")
                if a.text == "demo request 1")
    link.click()  # navigates like a user, not by URL
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#waterfall .row"), "the waterfall")
    with Store(demo_store) as store:
        spans = store.session_spans(first["session_id"])
    rows = browser.find_elements(By.CSS_SELECTOR, "#waterfall .row")
    assert len(rows) == len(spans) == first["span_count"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#waterfall .row .bar")) == len(spans)
    services = {row.get_attribute("data-service") for row in rows}
    assert services == {"demo-agent", "demo-gateway"}
    legend = {e.get_attribute("data-service")
              for e in browser.find_elements(By.CSS_SELECTOR, "#legend .legend-item")}
    assert legend == services
    assert "via baggage from demo-gateway" in browser.find_element(
        By.CSS_SELECTOR, '#waterfall .row[data-service="demo-agent"][data-kind="SERVER"]').text
    assert browser.find_elements(By.CSS_SELECTOR, "#waterfall .row .mark.entry")

    llm_row = browser.find_element(By.CSS_SELECTOR, "#waterfall .row[data-llm]")
    llm_span = next(s for s in spans if s.span_id == llm_row.get_attribute("data-span-id"))
    llm_row.click()
    _wait(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-detail")
          == llm_span.span_id and browser.find_elements(By.ID, "messages"), "the LLM detail")
    messages = browser.find_element(By.ID, "messages").text
    assert "What should I pack for a weekend in Paris?" in messages
    assert "travel assistant" in messages  # the system message too
    assert "Echo: What should I pack" in browser.find_element(By.ID, "output").text
    assert browser.find_element(By.CSS_SELECTOR, "#llm .tokens-in").text == str(
        llm_span.input_tokens)
    assert browser.find_element(By.CSS_SELECTOR, "#llm .tokens-out").text == str(
        llm_span.output_tokens)
    assert "gpt-4o-mini" in browser.find_element(By.ID, "llm").text
    save_screenshot(browser, tmp_path, "session.png")

    browser.find_element(By.CSS_SELECTOR, "#waterfall .row[data-tool]").click()
    _wait(lambda: browser.find_elements(By.ID, "tool"), "the tool detail")
    tool = browser.find_element(By.ID, "tool").text
    assert '"city": "Paris"' in tool and '"conditions": "sunny"' in tool


@pytest.mark.browser
def test_sessions_page_updates_while_an_app_records(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    store = tmp_path / "live.db"
    _record(store, tmp_path, "before-1")
    running = Viewer(store, tmp_path)
    try:
        browser.get(running.url)
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#sessions tbody tr"),
              "the first session")
        browser.execute_script("window.__sameDocument = 42;")
        _record(store, tmp_path, "live-new-1", "live-new-2")
        _wait(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#sessions tbody tr")) == 3,
              "the new sessions to appear without a reload")
        assert browser.execute_script("return window.__sameDocument") == 42  # no reload
        names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "a.session-link")]
        assert names == ["live-new-2", "live-new-1", "before-1"]  # newest first
    finally:
        running.stop()


@pytest.mark.browser
def test_content_capture_off_shows_no_content(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    store = tmp_path / "private.db"
    _record(store, tmp_path, "private-1", LUCIDIC_CAPTURE_CONTENT="false")
    running = Viewer(store, tmp_path)
    try:
        browser.get(running.url)
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "a.session-link"), "the session")
        browser.find_element(By.CSS_SELECTOR, "a.session-link").click()
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#waterfall .row[data-llm]"),
              "the LLM row")
        browser.find_element(By.CSS_SELECTOR, "#waterfall .row[data-llm]").click()
        _wait(lambda: browser.find_elements(By.ID, "llm"), "the LLM detail")
        assert "11" == browser.find_element(By.CSS_SELECTOR, "#llm .tokens-in").text
        browser.find_element(By.CSS_SELECTOR, "#waterfall .row[data-tool]").click()
        _wait(lambda: browser.find_elements(By.ID, "tool"), "the tool detail")
        assert "SECRET" not in browser.find_element(By.TAG_NAME, "body").text
        raw = json.dumps(running.json("/api/sessions")[1])
        assert "SECRET" not in raw
    finally:
        running.stop()
