"""The ``lucidic`` exporter under the launcher: lifecycle records reach the store promptly."""

from __future__ import annotations

from tests.support.launcher import clean_env, run_instrumented, write_script

QUIET_SERVICE = """
    import os, time, lucidic_otel
    from opentelemetry import trace
    from lucidic_otel.outbox.store import Store

    with lucidic_otel.session("quiet-1"):
        trace.get_tracer("t").start_span("work").end()
    lucidic_otel.end_session("quiet-1")
    store = Store(os.environ["LUCIDIC_STORE_PATH"])
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:  # bounded: the end must land without another span
        status = [s["status"] for s in store.list_sessions()]
        if status == ["ended"]:
            break
        time.sleep(0.05)
    print("STATUS", status)
"""


def test_session_end_is_stored_without_waiting_for_another_export(tmp_path):
    proc = run_instrumented(
        [write_script(tmp_path, "app.py", QUIET_SERVICE)],
        clean_env(LUCIDIC_STORE_PATH=str(tmp_path / "store.db")),
    )
    assert proc.returncode == 0, proc.stderr
    assert "STATUS ['ended']" in proc.stdout, proc.stdout + proc.stderr
