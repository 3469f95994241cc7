"""Sessions under the real ``opentelemetry-instrument`` launcher, across real processes.

Every test runs unmodified or lightly modified programs in subprocesses under the launcher and
receives their spans through the stock OTLP/HTTP exporter into a loopback receiver that decodes
them with ``opentelemetry-proto``, so the session attributes are checked as any OTLP backend
would see them.
"""

from __future__ import annotations

import signal
import subprocess

import pytest

from tests.support.launcher import (
    INSTRUMENT,
    PYTHON,
    clean_env,
    otlp_env,
    run_instrumented,
    spawn_instrumented,
    stop,
    wait_ready,
    write_script,
)
from tests.support.otlp_receiver import OTLPTraceReceiver

SESSION = "lucidic.session_id"


@pytest.fixture()
def receiver():
    with OTLPTraceReceiver() as r:
        yield r


def _env(receiver: OTLPTraceReceiver, **extra: str | None) -> dict[str, str]:
    return clean_env(**{**otlp_env(receiver.endpoint), **extra})


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


ZERO_CODE_APP = """
    import sqlite3, threading, urllib.request, http.server
    from opentelemetry import trace

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.handle_request, daemon=True).start()
    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("job"):
        db = sqlite3.connect(":memory:")
        db.cursor().execute("create table t (x)")
        urllib.request.urlopen(f"http://127.0.0.1:{srv.server_port}/", timeout=10).read()
        worker = threading.Thread(target=lambda: tracer.start_span("in-thread").end())
        worker.start(); worker.join()
    tracer.start_span("after").end()
    print("done")
"""


def test_zero_code_session_name_stamps_every_span(tmp_path, receiver):
    app = write_script(tmp_path, "app.py", ZERO_CODE_APP)
    proc = run_instrumented([app], _env(receiver, LUCIDIC_SESSION_NAME="nightly-run"))
    _ok(proc)
    spans = receiver.wait_for(timeout=10, count=5)
    names = {s["name"] for s in spans}
    assert {"job", "in-thread", "after", "create"} <= names
    assert any(s["kind"] == "CLIENT" for s in spans), names  # the urllib span
    ids = {s["attributes"].get(SESSION) for s in spans}
    assert len(ids) == 1 and None not in ids, ids
    (sid,) = ids
    assert all(s["attributes"]["session.id"] == sid for s in spans)


SERVER_APP = """
    import sqlite3
    from flask import Flask
    from opentelemetry import trace

    app = Flask(__name__)
    tracer = trace.get_tracer("agent")

    @app.route("/work")
    def work():
        with tracer.start_as_current_span("agent-step"):
            sqlite3.connect(":memory:").cursor().execute("select 1").fetchall()
        return "done"

    if __name__ == "__main__":
        from werkzeug.serving import make_server
        server = make_server("127.0.0.1", 0, app, threaded=True)
        print("READY", server.server_port, flush=True)
        server.serve_forever()
"""

CLIENT_APP = """
    import sys, urllib.request
    import lucidic_otel
    from opentelemetry import trace

    port = int(sys.argv[1])
    tracer = trace.get_tracer("gateway")
    with lucidic_otel.session("conv-42"):
        with tracer.start_as_current_span("handle") as span:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/work", timeout=10).read()
            print("TRACE", format(span.get_span_context().trace_id, "032x"), body.decode())
"""


def test_two_services_share_session_and_trace(tmp_path, receiver):
    server = spawn_instrumented(
        [write_script(tmp_path, "server.py", SERVER_APP)],
        _env(receiver, OTEL_SERVICE_NAME="agent-svc"),
    )
    try:
        port = wait_ready(server, timeout=30).split()[0]
        client = run_instrumented(
            [write_script(tmp_path, "client.py", CLIENT_APP), port],
            _env(receiver, OTEL_SERVICE_NAME="gateway-svc"),
        )
        _ok(client)
        trace_id = client.stdout.split("TRACE", 1)[1].split()[0]

        theirs = receiver.wait_for(
            lambda s: s["resource"].get("service.name") == "agent-svc", timeout=15, count=3
        )
    finally:
        result = stop(server)
    assert {s["kind"] for s in theirs} >= {"SERVER", "INTERNAL", "CLIENT"}, result.stdout
    for span in theirs:
        assert span["attributes"].get(SESSION) == "conv-42", span
        assert span["trace_id"] == trace_id, span
    assert "lucidic_otel" not in SERVER_APP  # the server never calls the session API


PARENT_APP = """
    import subprocess, sys
    import lucidic_otel
    from opentelemetry import trace

    instrument, python, child = sys.argv[1:4]
    tracer = trace.get_tracer("parent")
    with lucidic_otel.session("batch-7"):
        with tracer.start_as_current_span("spawn") as span:
            print("TRACE", format(span.get_span_context().trace_id, "032x"), flush=True)
            subprocess.run([instrument, python, child], env=lucidic_otel.inject_env(), check=True,
                           timeout=60)
"""

CHILD_APP = """
    from opentelemetry import trace
    tracer = trace.get_tracer("child")
    with tracer.start_as_current_span("child-work"):
        tracer.start_span("child-leaf").end()
"""


def test_subprocess_started_with_inject_env_joins(tmp_path, receiver):
    child = write_script(tmp_path, "child.py", CHILD_APP)
    parent = write_script(tmp_path, "parent.py", PARENT_APP)
    proc = run_instrumented([parent, INSTRUMENT, PYTHON, child], _env(receiver))
    _ok(proc)
    trace_id = proc.stdout.split("TRACE", 1)[1].split()[0]
    kids = receiver.wait_for(lambda s: s["name"].startswith("child-"), timeout=10, count=2)
    assert len(kids) == 2
    for span in kids:
        assert span["attributes"].get(SESSION) == "batch-7"
        assert span["trace_id"] == trace_id


SIGTERM_APP = """
    import time
    import lucidic_otel
    from opentelemetry import trace

    tracer = trace.get_tracer("worker")
    with lucidic_otel.session("term-1"):
        for i in range(100):
            tracer.start_span(f"queued-{i}").end()
    print("READY", flush=True)
    time.sleep(60)
"""


def test_sigterm_exports_queued_spans_and_keeps_status(tmp_path, receiver):
    env = _env(receiver, OTEL_BSP_SCHEDULE_DELAY="600000")  # nothing leaves before the signal
    proc = spawn_instrumented([write_script(tmp_path, "worker.py", SIGTERM_APP)], env)
    wait_ready(proc, timeout=30)
    assert receiver.spans == []
    result = stop(proc, signal.SIGTERM, timeout=20)
    assert result.returncode == -signal.SIGTERM, result.stdout
    spans = receiver.wait_for(timeout=5, count=100)
    assert len(spans) == 100
    assert {s["attributes"].get(SESSION) for s in spans} == {"term-1"}


PROVIDER_APP = """
    import lucidic_otel
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    procs = provider._active_span_processor._span_processors
    print("PROCESSORS", sum(getattr(p, "lucidic_session_processor", False) for p in procs))
    with lucidic_otel.session("race-1"):
        trace.get_tracer("t").start_span("stamped").end()
    lucidic_otel.init(session_name="again")  # must not add the processor a second time
    procs = provider._active_span_processor._span_processors
    print("AFTER_INIT", sum(getattr(p, "lucidic_session_processor", False) for p in procs))
"""


@pytest.mark.parametrize(
    "selection",
    [
        {"OTEL_PYTHON_DISTRO": None, "OTEL_PYTHON_CONFIGURATOR": None},  # first found wins
        {"OTEL_PYTHON_DISTRO": "distro", "OTEL_PYTHON_CONFIGURATOR": "configurator"},
        {"OTEL_PYTHON_DISTRO": "lucidic", "OTEL_PYTHON_CONFIGURATOR": None},
    ],
    ids=["unselected", "opentelemetry-distro-wins", "lucidic-selected"],
)
def test_sessions_stamped_whichever_distro_wins(tmp_path, receiver, selection):
    pytest.importorskip("opentelemetry.distro")
    env = _env(receiver, **selection)
    proc = run_instrumented([write_script(tmp_path, "app.py", PROVIDER_APP)], env)
    _ok(proc)
    assert "PROCESSORS 1" in proc.stdout
    assert "AFTER_INIT 1" in proc.stdout
    (stamped,) = receiver.wait_for("stamped", timeout=10)
    assert stamped["attributes"][SESSION] == "race-1"
    assert stamped["attributes"]["session.id"] == "race-1"


def test_sigterm_switch_off_shows_what_the_handler_prevents(tmp_path, receiver):
    """The control for the test above: without our handler a default SIGTERM loses the queue."""
    env = _env(receiver, OTEL_BSP_SCHEDULE_DELAY="600000", LUCIDIC_FLUSH_ON_SIGTERM="false")
    proc = spawn_instrumented([write_script(tmp_path, "worker.py", SIGTERM_APP)], env)
    wait_ready(proc, timeout=30)
    result = stop(proc, signal.SIGTERM, timeout=20)
    assert result.returncode == -signal.SIGTERM
    with pytest.raises(AssertionError):
        receiver.wait_for(timeout=1)
