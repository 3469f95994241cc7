"""Real servers under the launcher, stopped with SIGTERM while requests are in flight.

uvicorn (plain and ``--workers 2``) and gunicorn (sync workers, with and without
``--preload``) each run a small app (ASGI or WSGI middleware from the OpenTelemetry contrib
packages, plus spans of its own, a span event and a tool span that becomes a Lucidic event).
Exports are held back (``OTEL_BSP_SCHEDULE_DELAY`` of ten minutes), so everything in the store
afterwards was saved by the shutdown path, and the store is checked to be empty when the signal
is sent. Each server also runs without the launcher first: that baseline exit status is what
the instrumented run must reproduce.

The spans are accounted for by a witness processor in the app (see tests/support/scenarios.py):
every span the app ended must be in the store under the session its request carried in
baggage, and every request that had started must have been answered.

Isolation under load: a threaded Flask server under the launcher takes 200 concurrent
requests, each sent inside its own session by an instrumented client, so the session reaches
the server only as baggage; not one span may be missing or in another session.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from lucidic_otel.outbox.store import Store
from tests.support.launcher import clean_env, spawn_instrumented, stop, write_script
from tests.support.scenarios import (
    SERVER_KINDS,
    ServerRun,
    expected_status,
    missing_modules,
    run_isolation,
    run_server,
)


def _require(kind: str) -> None:
    missing = missing_modules(SERVER_KINDS[kind].requires)
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (test dependencies)")


def _check_requests(run: ServerRun) -> None:
    """Every request the app had started was finished and answered (a graceful stop)."""
    assert run.begun, run.output
    for i in run.begun:
        assert run.responses.get(int(i)) == f"ok {i}", (run.responses, run.output)


@pytest.mark.parametrize("kind", list(SERVER_KINDS))
def test_sigterm_with_requests_in_flight_loses_nothing(tmp_path: Path, kind: str) -> None:
    _require(kind)
    baseline = run_server(kind, tmp_path / "baseline", instrumented=False)
    run = run_server(kind, tmp_path / "instrumented")

    # The exit status is the server's own: measured without us, reproduced with us.
    assert baseline.returncode == expected_status(kind), baseline.output
    assert run.returncode == baseline.returncode, run.output
    _check_requests(baseline)
    _check_requests(run)

    # Nothing had been exported when the signal came; afterwards every span is stored.
    assert run.stored_before_signal == 0
    outcome = run.outcome
    assert outcome.ok, outcome.problems()
    assert outcome.created >= 4 * len(run.begun), outcome.problems()

    with Store(tmp_path / "instrumented" / "store.db") as store:
        sessions = {s["session_id"] for s in store.list_sessions(limit=1000)}
        assert sessions == {f"srv-{i}" for i in run.begun}
        assert store.session_spans(None) == []
        for i in run.begun:
            spans = store.session_spans(f"srv-{i}")
            names = [s.name for s in spans]
            assert {"work-start", "lookup", "work-done"} <= set(names), names
            assert [s.kind for s in spans].count("SERVER") == 1, names
            (start,) = [s for s in spans if s.name == "work-start"]
            assert [e["name"] for e in start.events] == ["begin"]
            events = store.session_events(f"srv-{i}")
            assert [e.body["type"] for e in events] == ["function_call"], events


def test_uvicorn_control_without_the_sigterm_handler_loses_the_queue(tmp_path: Path) -> None:
    """The control: with ``LUCIDIC_FLUSH_ON_SIGTERM=false`` uvicorn's re-raised SIGTERM kills
    the process before ``atexit``, so the held-back spans are gone. This is what the handler
    in the test above prevents."""
    _require("uvicorn")
    run = run_server(
        "uvicorn", tmp_path, requests=2, extra_env={"LUCIDIC_FLUSH_ON_SIGTERM": "false"}
    )
    assert run.returncode == expected_status("uvicorn"), run.output
    _check_requests(run)
    assert run.outcome.created > 0
    assert run.outcome.exported == 0, run.outcome.problems()


ISOLATION_REQUESTS = 200


def test_200_concurrent_sessions_through_baggage_are_isolated(tmp_path: Path) -> None:
    """A threaded Flask server under the launcher, 200 requests at once, each sent inside its
    own ``lucidic_otel.session(f"req-{i}")`` by an instrumented client, so the session reaches
    the server only as baggage; each request calls a loopback LLM with the real openai client.
    Every span of both processes is in the right session: none missing, none misattributed."""
    pytest.importorskip("openai")
    run = run_isolation(tmp_path, ISOLATION_REQUESTS)
    assert run.returncode == 0, run.stderr
    assert "FAILURES 0 []" in run.stdout, run.stdout
    outcome = run.outcome
    assert outcome.ok, outcome.problems()
    assert outcome.details["llm_calls"] == ISOLATION_REQUESTS
    # client span + urllib span + server span + handler span + LLM span + HTTP client span
    assert outcome.created == 6 * ISOLATION_REQUESTS, outcome.problems()
    with Store(tmp_path / "store.db") as store:
        sessions = store.list_sessions(limit=1000)
        assert sorted(s["session_id"] for s in sessions) == sorted(
            f"req-{i}" for i in range(ISOLATION_REQUESTS)
        )
        assert {s["span_count"] for s in sessions} == {6}
        assert {s["llm_calls"] for s in sessions} == {1}
        assert store.session_spans(None) == []


FLUSHING_APP = """
    import lucidic_otel
    from opentelemetry import trace

    tracer = trace.get_tracer("app")
    with lucidic_otel.session("flushing-1"):
        for i in range(20):
            tracer.start_span(f"queued-{i}").end()
    print("FLUSHING", flush=True)
    lucidic_otel.flush()  # the store is locked by the test: this export waits on the main thread
    print("FLUSHED", flush=True)
    import time
    time.sleep(60)
"""


def test_sigterm_while_the_main_thread_is_exporting(tmp_path: Path) -> None:
    """SIGTERM lands while the main thread is inside an export (holding the batch processor's
    export lock). The handler must not wait for a flush that needs that lock: it lets the
    export finish, flushes on a helper, and then ends the process with SIGTERM's status.

    The situation is made deterministic by holding the store's write lock from the test, so
    the main thread's export waits on SQLite until the test lets go.
    """
    store_path = tmp_path / "store.db"
    with Store(store_path) as store:
        store.list_sessions()  # create the schema, so that only the lock is in the way
    lock = sqlite3.connect(str(store_path), isolation_level=None, timeout=5)
    lock.execute("BEGIN IMMEDIATE")
    proc = spawn_instrumented(
        [write_script(tmp_path, "app.py", FLUSHING_APP)],
        clean_env(
            LUCIDIC_STORE_PATH=str(store_path),
            LUCIDIC_EXIT_DEADLINE="2",
            OTEL_BSP_SCHEDULE_DELAY="600000",
        ),
    )
    try:
        assert proc.wait_for_line("FLUSHING", 30) is not None, proc.output()
        time.sleep(0.3)  # the export is now waiting for the write lock
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.7)
        lock.execute("ROLLBACK")
        started = time.monotonic()
        proc.wait(20)
        waited = time.monotonic() - started
    finally:
        lock.close()
        result = stop(proc)
    assert result.returncode == -signal.SIGTERM, result.stdout
    assert waited < 5, f"the exit waited {waited:.1f} s: the handler blocked on the export lock"
    with Store(store_path) as store:
        assert len(store.session_spans("flushing-1")) == 20
