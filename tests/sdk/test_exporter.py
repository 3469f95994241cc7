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


def test_shutdown_closes_the_store_it_opened_and_refuses_later_exports(tmp_path, monkeypatch):
    """shutdown() writes waiting lifecycle records, then closes the store this exporter opened
    (no delivery shares it); a store it was given stays open, it belongs to the caller."""
    from opentelemetry.sdk.trace.export import SpanExportResult

    from lucidic_otel.config import load_settings
    from lucidic_otel.outbox.store import Store
    from lucidic_otel.sdk.exporter import LucidicSpanExporter
    from lucidic_otel.sessions.lifecycle import END, INIT, LifecycleJournal

    settings = load_settings({"LUCIDIC_STORE_PATH": str(tmp_path / "own.db")})
    journal = LifecycleJournal()
    exporter = LucidicSpanExporter(settings, journal=journal)
    closed = []
    monkeypatch.setattr(Store, "close", lambda self: closed.append(self))
    journal.record(INIT, "s-1", {"session_id": "s-1"})
    journal.record(END, "s-1", {"session_id": "s-1", "is_finished": True})
    exporter.shutdown()
    assert len(journal) == 0  # written before closing
    assert closed == [exporter.store]
    assert exporter.export([]) is SpanExportResult.FAILURE
    exporter.shutdown()  # idempotent
    assert len(closed) == 1

    given = Store(tmp_path / "given.db")
    LucidicSpanExporter(settings, store=given, journal=LifecycleJournal()).shutdown()
    assert closed == [exporter.store]  # the given store was not closed
