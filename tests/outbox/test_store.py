"""The local store and outbox, against real SQLite files.

Concurrency and crash safety are tested with real child processes (two writers at once, and a
writer killed with SIGKILL), because that is where SQLite locking and WAL recovery actually
happen; fork safety with a real ``os.fork``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from support.launcher import clean_env, run_instrumented, write_script

import lucidic_otel.outbox.capacity as capacity_module
import lucidic_otel.outbox.db as db_module
import lucidic_otel.outbox.schema as schema_module
import lucidic_otel.outbox.store as store_module
from lucidic_otel.outbox.store import (
    OutboxItem,
    SpanRecord,
    Store,
    default_store_path,
    store_path_problem,
)

SRC = str(Path(store_module.__file__).resolve().parents[2])
# The store's parts log under their own modules: lucidic_otel.outbox.<part>.
STORE_LOGGER = "lucidic_otel.outbox"


def span(
    n: int,
    session_id: Optional[str] = "s1",
    *,
    name: Optional[str] = None,
    service: str = "api",
    pad: int = 0,
    **fields: Any,
) -> SpanRecord:
    values: Dict[str, Any] = dict(
        trace_id=f"{n // 4 + 1:032x}",
        span_id=f"{n + 1:016x}",
        parent_span_id=f"{n:016x}" if n % 4 else None,
        session_id=session_id,
        name=name or f"span-{n}",
        kind="INTERNAL",
        service=service,
        pid=4242,
        start_ns=1_700_000_000_000_000_000 + n * 1_000_000,
        end_ns=1_700_000_000_000_000_000 + n * 1_000_000 + 500_000,
        attributes={"n": n, "pad": "x" * pad} if pad else {"n": n},
        resource={"service.name": service, "process.pid": 4242},
    )
    values.update(fields)
    return SpanRecord(**values)


def event(session_id: str, key: str, **extra: Any) -> Dict[str, Any]:
    return {"client_event_id": key, "session_id": session_id, "type": "generic", **extra}


def run_child(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def integrity(path: Path) -> str:
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "data" / "store.db")
    yield s
    s.close()


# ------------------------------------------------------------------------------ location


def test_default_store_path_is_xdg_then_home_and_ignores_the_variable() -> None:
    # LUCIDIC_STORE_PATH belongs to config (Settings.store_path): an invalid value it rejected
    # must not be opened here behind its back.
    assert default_store_path({"LUCIDIC_STORE_PATH": "/x/y.db", "XDG_DATA_HOME": "/d"}) == Path(
        "/d/lucidic-otel/store.db"
    )
    assert default_store_path({"XDG_DATA_HOME": "/d", "HOME": "/h"}) == Path(
        "/d/lucidic-otel/store.db"
    )
    # A relative XDG_DATA_HOME is invalid per the XDG spec and ignored.
    assert default_store_path({"XDG_DATA_HOME": "rel", "HOME": "/h"}) == Path(
        "/h/.local/share/lucidic-otel/store.db"
    )
    assert default_store_path({"HOME": "/h", "LUCIDIC_STORE_PATH": "  "}) == Path(
        "/h/.local/share/lucidic-otel/store.db"
    )


def test_nothing_is_opened_until_first_use_and_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "lazy" / "store.db"
    s = Store(path)
    assert not path.parent.exists()
    assert s.write_batch([span(0)])
    assert (path.stat().st_mode & 0o777) == 0o600
    with sqlite3.connect(str(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema_module.SCHEMA_VERSION
    s.close()


# ---------------------------------------------------------------------------- round trips


def test_spans_round_trip_with_every_field(store: Store) -> None:
    llm = span(
        1, "s1", service="worker", kind="CLIENT", status_code="ERROR", status_message="boom",
        events=[{"name": "exception", "time_ns": 5, "attributes": {"exception.type": "E"}}],
        event_id="ev-1", event_type="llm_generation", model="gpt-4o", input_tokens=10,
        output_tokens=20, cost=0.25, attributes={"gen_ai.request.model": "gpt-4o", "t": (1, 2)},
    )
    plain = span(0, "s1")
    sessionless = span(2, None)
    assert store.write_batch([plain, llm, sessionless])

    got = store.session_spans("s1")
    assert [s.span_id for s in got] == [plain.span_id, llm.span_id]  # by start time
    back = got[1]
    assert back.trace_id == llm.trace_id and back.parent_span_id == llm.parent_span_id
    assert back.session_id == "s1" and back.name == llm.name and back.kind == "CLIENT"
    assert back.service == "worker" and back.pid == 4242
    assert (back.start_ns, back.end_ns) == (llm.start_ns, llm.end_ns)
    assert (back.status_code, back.status_message) == ("ERROR", "boom")
    assert back.attributes == {"gen_ai.request.model": "gpt-4o", "t": [1, 2]}
    assert back.events == llm.events
    assert back.resource == {"service.name": "worker", "process.pid": 4242}
    assert (back.event_id, back.event_type, back.model) == ("ev-1", "llm_generation", "gpt-4o")
    assert (back.input_tokens, back.output_tokens, back.cost) == (10, 20, 0.25)
    assert got[0].parent_span_id is None and got[0].events == []

    assert [s.span_id for s in store.session_spans(None)] == [sessionless.span_id]
    assert store.session_spans("unknown") == []
    assert len(store.session_spans("s1", limit=1)) == 1


def test_list_sessions_rollup_newest_first_including_joined_sessions(store: Store) -> None:
    store.record_session_init("old", {"session_name": "Old run", "task": "t", "tags": ["a"]})
    store.write_batch(
        [
            span(0, "old", service="api"),
            span(1, "old", service="worker", event_type="llm_generation", model="m",
                 input_tokens=3, output_tokens=4, cost=0.5),
            span(2, "old", service="worker", model="m", input_tokens=1, output_tokens=1, cost=0.1),
        ]
    )
    store.record_session_end("old", {"is_successful": False, "is_successful_reason": "bad",
                                     "session_eval": 0.2, "session_eval_reason": "meh"})
    # Only seen through spans (joined via baggage), started later.
    store.write_batch([span(10_000, "joined")])
    rows = store.list_sessions()
    assert [r["session_id"] for r in rows] == ["joined", "old"]
    joined, old = rows
    assert joined["initiated"] is False and joined["status"] == "open" and joined["name"] is None
    assert joined["span_count"] == 1
    assert old["initiated"] is True
    assert (old["name"], old["task"], old["tags"]) == ("Old run", "t", ["a"])
    assert old["services"] == ["api", "worker"]
    assert (old["span_count"], old["llm_calls"]) == (3, 2)
    assert (old["input_tokens"], old["output_tokens"]) == (4, 5)
    assert old["cost"] == pytest.approx(0.6)
    assert old["status"] == "failed" and old["is_successful"] is False
    assert (old["is_successful_reason"], old["session_eval"], old["session_eval_reason"]) == (
        "bad", 0.2, "meh")
    assert old["ended_ns"] is not None and old["duration_s"] is not None
    assert (old["pending"], old["delivered"], old["failed"]) == (2, 0, 0)
    assert len(store.list_sessions(limit=1)) == 1


@pytest.mark.parametrize(
    ("body", "status"), [({}, "ended"), ({"is_successful": True}, "ok"),
                         ({"is_successful": False}, "failed")]
)
def test_session_status(store: Store, body: Dict[str, Any], status: str) -> None:
    store.record_session_init("s", {})
    assert store.list_sessions()[0]["status"] == "open"
    store.record_session_end("s", body)
    assert store.list_sessions()[0]["status"] == status


def test_outbox_order_and_delivery_protocol(store: Store) -> None:
    init_seq = store.record_session_init("s1", {"session_name": "n"})
    assert store.write_batch([span(0), span(1)], [event("s1", "e1"), event("s1", "e2")])
    end_seq = store.record_session_end("s1", {"is_successful": True})
    assert init_seq is not None and end_seq is not None and init_seq < end_seq
    assert store.is_initiated("s1")

    # Events wait for their session's init; the end waits for everything before it.
    first = store.claim_pending(10, now=100.0)
    assert [(i.kind, i.key) for i in first] == [("session_init", "s1")]
    assert first[0].attempts == 1 and first[0].body == {"session_name": "n"}
    assert store.claim_pending(10, now=100.0) == []  # leased
    assert store.mark_delivered([init_seq])

    events = store.claim_pending(10, now=101.0)
    assert [(i.kind, i.key) for i in events] == [("event", "e1"), ("event", "e2")]
    assert [i.seq for i in events] == sorted(i.seq for i in events)
    assert events[0].body == event("s1", "e1")
    assert not store.session_events_delivered("s1", end_seq)

    e1, e2 = events
    assert store.mark_delivered([e1.seq])
    assert store.mark_retry(e2.seq, "HTTP 503", next_attempt_at=200.0)
    assert store.claim_pending(10, now=150.0) == []  # e2 not due, end blocked behind it
    retried = store.claim_pending(10, now=200.0)
    assert [(i.key, i.attempts) for i in retried] == [("e2", 2)]
    assert store.mark_failed(e2.seq, "HTTP 400: bad payload")

    # A failed-aside event settles: the end may go now.
    assert store.session_events_delivered("s1", end_seq)
    end = store.claim_pending(10, now=201.0)
    assert [(i.kind, i.seq, i.body) for i in end] == [("session_end", end_seq,
                                                       {"is_successful": True})]
    assert store.mark_delivered([end_seq])

    assert store.outbox_counts() == {"pending": 0, "delivered": 3, "failed": 1}
    failed = store.failed_items()
    assert [(i.key, i.state, i.last_error, i.attempts) for i in failed] == [
        ("e2", "failed", "HTTP 400: bad payload", 2)]
    assert [i.key for i in store.session_events("s1")] == ["e1", "e2"]
    assert all(isinstance(i, OutboxItem) for i in store.session_events("s1"))


def test_lease_expires_so_another_sender_can_take_over(store: Store) -> None:
    store.write_batch([], [event("joined", "e1")])
    assert [i.key for i in store.claim_pending(5, now=10.0, lease_seconds=30)] == ["e1"]
    assert store.claim_pending(5, now=39.0) == []
    again = store.claim_pending(5, now=41.0)
    assert [(i.key, i.attempts) for i in again] == [("e1", 2)]


def test_joined_session_gets_no_lifecycle_items(store: Store) -> None:
    store.write_batch([span(0, "joined")], [event("joined", "e1")])
    assert not store.is_initiated("joined")
    assert store.record_session_end("joined", {"is_successful": True}) is None
    assert [i.kind for i in store.claim_pending(10, now=1.0)] == ["event"]
    assert store.list_sessions()[0]["status"] == "open"


def test_lifecycle_records_are_ordered_relative_to_events(store: Store) -> None:
    store.record_session_init("a", {})
    store.write_batch([span(0, "a")], [event("a", "a1")])
    store.record_session_init("b", {})
    store.write_batch([span(1, "b")], [event("b", "b1"), event("a", "a2")])
    store.record_session_end("a", {})
    store.record_session_end("b", {})
    conn = sqlite3.connect(str(store.path))
    rows = conn.execute("SELECT kind, key FROM outbox ORDER BY seq").fetchall()
    conn.close()
    assert rows == [("session_init", "a"), ("event", "a1"), ("session_init", "b"),
                    ("event", "b1"), ("event", "a2"), ("session_end", "a"), ("session_end", "b")]


def test_values_sqlite_cannot_bind_are_coerced_not_lost(store: Store) -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    circular: List[Any] = []
    circular.append(circular)
    weird = span(0, "s\ud800", name="bad \ud800 name", pid=2**70, input_tokens=2**80,
                 attributes={"obj": Odd(), "set": {1}, "bytes": b"\x00", "c": circular})
    assert store.write_batch([weird], [event("s\ud800", "k\ud800", payload={"x": Odd()})])
    stats = store.stats()
    assert (stats["spans_written"], stats["events_written"], stats["dropped"]) == (1, 1, 0)
    (row,) = store.list_sessions()
    assert row["session_id"] == "s?"
    (back,) = store.session_spans("s?")
    assert back.name == "bad ? name" and back.pid is None
    assert "_unencodable" in back.attributes
    assert store.session_events("s?")[0].body["payload"] == {"x": "odd"}


def test_event_without_session_is_kept_as_failed(store: Store) -> None:
    store.write_batch([], [{"client_event_id": "orphan", "type": "generic"}])
    (item,) = store.failed_items()
    assert item.key == "orphan" and "session_id" in (item.last_error or "")


# ---------------------------------------------------------------------------- concurrency

WRITER = """
import json, sys
from lucidic_otel.outbox.store import Store, SpanRecord
path, tag, batches = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = Store(path)
store.record_session_init(tag, {"session_name": tag})
for b in range(batches):
    spans = [SpanRecord(trace_id=f"{b:032x}", span_id=f"{j:016x}", session_id=tag,
                        name=f"{tag}-{b}-{j}", service=tag, attributes={"pad": "x" * 100})
             for j in range(50)]
    events = [{"client_event_id": f"{tag}-{b}-{j}", "session_id": tag} for j in range(5)]
    store.write_batch(spans, events)
store.record_session_end(tag, {"is_successful": True})
print(json.dumps(store.stats()))
store.close()
"""


def test_two_processes_write_at_once_without_lock_errors(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "store.db"  # both create the file and schema at once
    batches = 60
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(WRITER), str(path), tag, str(batches)],
            env={**os.environ, "PYTHONPATH": SRC},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for tag in ("alpha", "beta")
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "locked" not in err and "lucidic-otel" not in err, err
        stats = json.loads(out)
        assert stats["mode"] == "file"
        assert (stats["errors"], stats["dropped"]) == (0, 0)
        assert stats["spans_written"] == batches * 50
    with Store(path) as s:
        rows = {r["session_id"]: r for r in s.list_sessions()}
        assert {k: rows[k]["span_count"] for k in rows} == {"alpha": 3000, "beta": 3000}
        assert all(rows[k]["status"] == "ok" for k in rows)
        assert len(s.session_spans("alpha")) == 3000
        assert s.outbox_counts()["pending"] == 2 * (batches * 5 + 2)
    assert integrity(path) == "ok"


CRASHER = """
import sys
from lucidic_otel.outbox.store import Store, SpanRecord
store = Store(sys.argv[1])
for b in range(1_000_000):
    spans = [SpanRecord(trace_id=f"{b:032x}", span_id=f"{j:016x}", session_id="crash",
                        name=f"batch-{b}", attributes={"pad": "y" * 300}) for j in range(100)]
    events = [{"client_event_id": f"{b}-{j}", "session_id": "crash", "batch": b}
              for j in range(10)]
    store.write_batch(spans, events)
    if b == 10:
        print("ready", flush=True)
"""


@pytest.mark.parametrize("delay", [0.05, 0.17, 0.31])
def test_kill_9_mid_write_leaves_a_valid_file_with_whole_batches(
    tmp_path: Path, delay: float
) -> None:
    path = tmp_path / "store.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CRASHER), str(path)],
        env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    assert integrity(path) == "ok"
    with Store(path) as s:
        spans = s.session_spans("crash")
        per_batch: Dict[str, int] = {}
        for record in spans:
            per_batch[record.name] = per_batch.get(record.name, 0) + 1
        batches = sorted(int(name.split("-")[1]) for name in per_batch)
        assert batches == list(range(len(batches))) and len(batches) > 10
        assert set(per_batch.values()) == {100}
        events = s.session_events("crash")
        assert len(events) == 10 * len(batches)
        assert {e.body["batch"] for e in events} == set(batches)
        assert s.list_sessions()[0]["span_count"] == len(spans)
        assert s.write_batch([span(0, "after")])  # and it is writable again
        assert s.stats()["mode"] == "file"


FORK_SCRIPT = """
import os, sys
sys.path[:0] = [sys.argv[2], os.path.dirname(sys.argv[2])]  # tests/outbox, tests
from test_store import span
from lucidic_otel.outbox.store import Store

store = Store(sys.argv[1])
assert store.write_batch([span(0, "parent")])
parent_conn = store._db.local.conn
pid = os.fork()
if pid == 0:
    ok = store.write_batch([span(1, "child")])
    fresh = store._db.local.conn is not parent_conn
    os._exit(0 if ok and fresh and store.stats()["errors"] == 0 else 2)
_, status = os.waitpid(pid, 0)
assert os.WEXITSTATUS(status) == 0, status
assert store._db.local.conn is parent_conn  # the child did not disturb the parent's connection
assert store.write_batch([span(2, "parent")])
print(sorted((r["session_id"], r["span_count"]) for r in store.list_sessions()))
"""


def test_fork_child_writes_through_its_own_connection(tmp_path: Path) -> None:
    """Runs in a fresh interpreter: forking pytest itself would inherit other tests' threads
    (and their locks), which is the classic fork-with-threads deadlock, not a store property."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    script = tmp_path / "fork_child.py"
    script.write_text(FORK_SCRIPT)
    path = tmp_path / "store.db"
    out = subprocess.run(
        [sys.executable, str(script), str(path), str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[('child', 1), ('parent', 2)]"
    assert integrity(path) == "ok"


def test_threads_share_a_store(store: Store) -> None:
    errors: List[BaseException] = []

    def work(k: int) -> None:
        try:
            for b in range(20):
                store.write_batch([span(k * 1000 + b * 10 + j, f"t{k}") for j in range(10)])
                store.list_sessions()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert sorted(r["span_count"] for r in store.list_sessions()) == [200] * 4
    assert store.stats()["errors"] == 0


def test_lock_held_too_long_drops_the_batch_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(db_module, "_BUSY_TIMEOUT_S", 0.05)
    monkeypatch.setattr(db_module, "_LOCK_RETRY_DELAYS", (0.01, 0.02))
    s = Store(tmp_path / "store.db")
    assert s.write_batch([span(0)])
    blocker = sqlite3.connect(str(s.path), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with caplog.at_level(logging.WARNING, logger=STORE_LOGGER):
            assert s.write_batch([span(1), span(2)]) is False
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert s.stats()["dropped"] == 2
    assert "they are lost" in caplog.text
    assert s.write_batch([span(3)])  # the lock is free again
    s.close()


def test_short_lock_contention_is_waited_out(tmp_path: Path) -> None:
    s = Store(tmp_path / "store.db")
    s.write_batch([span(0)])
    blocker = sqlite3.connect(str(s.path), isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: blocker.execute("ROLLBACK"))
    release.start()
    try:
        assert s.write_batch([span(1)])
    finally:
        release.join()
        blocker.close()
    assert s.stats()["spans_written"] == 2 and s.stats()["dropped"] == 0
    s.close()


# -------------------------------------------------------------------------------- the cap


def test_size_is_not_measured_on_every_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured: List[int] = []
    real = capacity_module._used_bytes

    def counting(conn: sqlite3.Connection) -> int:
        measured.append(1)
        return real(conn)

    monkeypatch.setattr(capacity_module, "_used_bytes", counting)
    s = Store(tmp_path / "store.db", max_bytes=100 * 1024 * 1024)
    for n in range(200):
        s.write_batch([span(n)])
    assert 1 <= len(measured) <= 200 // capacity_module._CHECK_EVERY_WRITES + 1
    s.close()


def _settle(s: Store, session_id: str) -> None:
    """Deliver every pending item of a session (a stand-in for the sender)."""
    for _ in range(100):
        items = s.claim_pending(1000, now=time.time())
        if not items:
            return
        s.mark_delivered([i.seq for i in items if i.session_id == session_id])


def test_cap_evicts_settled_data_first_then_undelivered_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cap = 400 * 1024
    s = Store(tmp_path / "store.db", max_bytes=cap)
    # Settled data: a finished, fully delivered session, then some sessionless spans.
    s.record_session_init("done", {})
    s.write_batch([span(n, "done", pad=1000) for n in range(200)],
                  [event("done", f"d{n}", pad="z" * 200) for n in range(50)])
    s.record_session_end("done", {"is_successful": True})
    _settle(s, "done")
    assert s.outbox_counts() == {"pending": 0, "delivered": 52, "failed": 0}
    s.write_batch([span(n, None, pad=500) for n in range(200, 250)])
    # An open session of ours whose events are not delivered pushes the store over the cap.
    s.record_session_init("live", {})

    def live_batch(b: int, pad: int = 0) -> None:
        now = time.time_ns()  # like real spans, which end just before they are exported
        s.write_batch(
            [span(1000 + b * 20 + j, "live", pad=500, start_ns=now - 1000, end_ns=now)
             for j in range(20)],
            [event("live", f"l{b}-{j}", pad="q" * pad) for j in range(5)],
        )

    with caplog.at_level(logging.WARNING, logger=STORE_LOGGER):
        for b in range(8):
            live_batch(b)
    assert caplog.records == []  # settled data goes silently
    assert s.stats()["evicted"] > 0 and s.stats()["dropped"] == 0
    done = s.session_spans("done")
    assert len(done) < 200
    assert done == [] or done[0].name != span(0).name  # the oldest went first
    assert len(s.session_spans("live")) == 160
    assert s.outbox_counts()["pending"] == 41

    # Keep writing: every settled row goes before the first undelivered one, then the oldest
    # undelivered data goes, loudly.
    with caplog.at_level(logging.WARNING, logger=STORE_LOGGER):
        b = 8
        while s.stats()["dropped"] == 0 and b < 200:
            live_batch(b, pad=300)
            b += 1
        assert s.stats()["dropped"] > 0
        assert s.session_spans("done") == [] and s.session_spans(None) == []
        assert s.session_events("done") == []
        assert "done" not in {r["session_id"] for r in s.list_sessions()}
        last = b + 19
        for extra in range(b, last + 1):
            live_batch(extra, pad=300)
    drops = [r.getMessage() for r in caplog.records if "dropped the oldest" in r.getMessage()]
    assert len(drops) == 1, caplog.text  # rate-limited
    assert "LUCIDIC_STORE_MAX_MB" in drops[0] and str(s.path) in drops[0]
    kept = s.session_spans("live")
    assert kept and kept[-1].name == span(1000 + last * 20 + 19).name  # the newest survive
    # Oldest first across spans and events alike: the newest events survive too.
    keys = {i.key for i in s.session_events("live")}
    assert "l0-0" not in keys and f"l{last}-4" in keys
    assert s.is_initiated("live")  # the session row survives, so its end can still be sent
    with sqlite3.connect(str(s.path)) as conn:
        pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("page_count", "freelist_count", "page_size"))
    assert (pages - free) * size <= cap * 1.1  # at most one check interval over
    s.close()


def test_local_only_steady_state_keeps_the_newest_sessions_and_stays_bounded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # With no API key nothing is ever delivered: the store is a ring of the newest sessions.
    cap = 512 * 1024
    s = Store(tmp_path / "store.db", max_bytes=cap)
    with caplog.at_level(logging.WARNING, logger=STORE_LOGGER):
        for k in range(150):
            sid = f"run-{k}"
            s.record_session_init(sid, {"session_name": sid})
            now = time.time_ns()
            s.write_batch(
                [span(k * 10 + j, sid, pad=400, start_ns=now - 1000, end_ns=now)
                 for j in range(10)],
                [event(sid, f"{sid}-{j}", pad="e" * 300) for j in range(3)],
            )
            s.record_session_end(sid, {"is_successful": True})
    sessions = {r["session_id"]: r for r in s.list_sessions(limit=1000)}
    assert len(s.session_spans("run-149")) == 10 and len(s.session_events("run-149")) == 3
    assert sessions["run-149"]["status"] == "ok"
    assert "run-0" not in sessions and len(sessions) < 100  # old rows are reclaimed too
    assert [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    with sqlite3.connect(str(s.path)) as conn:
        pages, free = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                       for p in ("page_count", "freelist_count"))
    assert (pages - free) * 4096 <= cap * 1.1
    s.close()


def test_warns_when_undelivered_data_nears_the_cap_before_dropping_any(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = Store(tmp_path / "store.db", max_bytes=1024 * 1024)
    with caplog.at_level(logging.WARNING, logger=STORE_LOGGER):
        for b in range(200):
            s.write_batch([], [event("s", f"e{b}-{j}", pad="p" * 1500) for j in range(4)])
            if s.stats()["dropped"]:
                break
    messages = [r.getMessage() for r in caplog.records]
    near = [i for i, m in enumerate(messages) if "undelivered data is waiting" in m]
    dropped = [i for i, m in enumerate(messages) if "dropped the oldest" in m]
    assert len(near) == 1 and dropped, messages  # warned once, rate-limited
    assert near[0] < dropped[0]  # before anything was lost
    assert "LUCIDIC_STORE_MAX_MB" in messages[near[0]]
    s.close()


# ------------------------------------------------------------------------ degradation


def _assert_degraded_but_working(s: Store, caplog: pytest.LogCaptureFixture) -> str:
    with caplog.at_level(logging.WARNING, logger=STORE_LOGGER):
        assert s.write_batch([span(0, "s1")], [event("s1", "e1")]) is True
        assert s.write_batch([span(1, "s1")]) is True
        assert s.record_session_init("s2", {}) is not None
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith(STORE_LOGGER)]
    assert len(warnings) == 1, warnings  # one clear warning, not one per write
    assert str(s.path) in warnings[0] and "To fix" in warnings[0]
    assert s.stats()["mode"] == "memory"
    # The API keeps working, from memory.
    assert {r["session_id"] for r in s.list_sessions()} == {"s1", "s2"}
    assert [i.key for i in s.claim_pending(10, now=time.time())] == ["e1", "s2"]
    return warnings[0]


def test_corrupt_file_warns_once_and_degrades_to_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store.db"
    garbage = b"this is not a database, just garbage bytes " * 200
    path.write_bytes(garbage)
    s = Store(path)
    message = _assert_degraded_but_working(s, caplog)
    assert "move it aside" in message
    assert path.read_bytes() == garbage  # never touched
    s.close()


def test_parent_that_is_a_file_warns_once_and_degrades_to_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    s = Store(blocker / "lucidic-otel" / "store.db")
    message = _assert_degraded_but_working(s, caplog)
    advice = message.split("To fix: ", 1)[1]
    assert f"'{blocker}' is a file, not a directory" in message
    assert advice.startswith("point LUCIDIC_STORE_PATH at a file in a directory")
    assert "writable" not in advice  # it is writable: that is not what is wrong
    s.close()


@pytest.mark.parametrize("kind", ["directory", "under a file"])
def test_check_path_moves_a_path_that_cannot_hold_a_store_to_memory_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    if kind == "directory":
        path, reason = tmp_path, "it is a directory, and a file path is expected"
    else:
        (tmp_path / "a-file").write_text("a regular file")
        path = tmp_path / "a-file" / "store.db"
        reason = f"'{tmp_path / 'a-file'}' is a file, not a directory"
    s = Store(path)
    with caplog.at_level(logging.WARNING, logger=STORE_LOGGER):
        assert s.check_path() is False
        assert s.in_memory
        assert s.write_batch([span(0, "s1")]) and len(s.session_spans("s1")) == 1
        assert s.check_path() is False
    (warning,) = [r.getMessage() for r in caplog.records if r.name.startswith(STORE_LOGGER)]
    assert warning.startswith(f"lucidic-otel: cannot use the local store {path} ({reason}). "
                              "This process keeps its telemetry in memory instead")
    assert "LUCIDIC_STORE_PATH" in warning.split("To fix: ", 1)[1]
    assert "writable" not in warning
    s.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        [] if kind == "directory" else ["a-file"])


def test_check_path_creates_nothing_and_keeps_a_usable_path(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "store.db"
    s = Store(path)
    assert s.check_path() is True and not s.in_memory
    assert not (tmp_path / "not").exists()  # created at the first write, as before
    assert s.write_batch([span(0, "s1")]) and path.is_file() and not s.in_memory
    assert s.check_path() is True
    s.close()


def test_store_path_problem_for_a_directory_no_one_can_create(tmp_path: Path) -> None:
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        if os.access(readonly, os.W_OK):
            pytest.skip("running with privileges that ignore directory permissions")
        problem = store_path_problem(readonly / "lucidic" / "store.db")
        assert problem is not None
        assert problem.reason == (f"the directory '{readonly / 'lucidic'}' cannot be created: "
                                  f"'{readonly}' is not writable by this user")
        assert problem.remedy.startswith(f"make '{readonly}' writable by this user")
    finally:
        readonly.chmod(0o700)


BAD_STORE_APP = r'''
import sys
print("PROGRAM STARTS", file=sys.stderr, flush=True)
from opentelemetry import trace
with trace.get_tracer("app").start_as_current_span("work"):
    pass
print("PROGRAM ENDS", file=sys.stderr, flush=True)
'''


@pytest.mark.parametrize("kind", ["directory", "under a file"])
def test_a_bad_store_path_is_reported_at_start_up(tmp_path: Path, kind: str) -> None:
    """The first write is at exit for a short program: a warning then comes after all of
    the program's output. The path alone rules the file out, so it is said before."""
    if kind == "directory":
        path = tmp_path / "a-directory"
        path.mkdir()
        reason = "it is a directory, and a file path is expected"
    else:
        (tmp_path / "a-file").write_text("a regular file")
        path = tmp_path / "a-file" / "store.db"
        reason = f"'{tmp_path / 'a-file'}' is a file, not a directory"
    app = write_script(tmp_path, "app.py", BAD_STORE_APP)
    result = run_instrumented([app], env=clean_env(LUCIDIC_STORE_PATH=str(path)), timeout=60)
    assert result.returncode == 0, result.stderr  # telemetry never breaks the program
    lines = [line for line in result.stderr.splitlines() if "Configuration of" not in line]
    assert len(lines) == 3, result.stderr
    warning, started, ended = lines
    assert (started, ended) == ("PROGRAM STARTS", "PROGRAM ENDS")
    assert warning.startswith(f"lucidic-otel: cannot use the local store {path} ({reason}). "
                              "This process keeps its telemetry in memory instead")
    assert "LUCIDIC_STORE_PATH" in warning.split("To fix: ", 1)[1]
    assert "writable" not in warning
    if kind == "directory":
        assert list(path.iterdir()) == []


def test_read_only_directory_warns_once_and_degrades_to_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        probe = readonly / "probe"
        try:
            probe.touch()
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("running with privileges that ignore directory permissions")
        s = Store(readonly / "store.db")
        message = _assert_degraded_but_working(s, caplog)
        assert "writable" in message
        s.close()
    finally:
        readonly.chmod(0o700)


def test_disk_full_during_writes_degrades_to_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = Store(tmp_path / "store.db")
    assert s.write_batch([span(0, "before")])
    conn = s._db.local.conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")  # the "disk" is now full
    with caplog.at_level(logging.WARNING, logger=STORE_LOGGER):
        assert s.write_batch([span(n, "after", pad=2000) for n in range(1, 50)])
    assert "free disk space" in caplog.text
    assert s.stats()["mode"] == "memory" and s.stats()["dropped"] == 0
    assert len(s.session_spans("after")) == 49
    s.close()


def test_file_that_turns_read_only_degrades_to_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Works under any privileges: SQLite refuses writes with SQLITE_READONLY, as it does for
    # a file or mount this user cannot write.
    s = Store(tmp_path / "store.db")
    assert s.write_batch([span(0, "before")])
    s._db.local.conn.execute("PRAGMA query_only=1")
    with caplog.at_level(logging.WARNING, logger=STORE_LOGGER):
        assert s.write_batch([span(1, "after")])
        assert s.write_batch([span(2, "after")])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "writable" in warnings[0], warnings
    assert s.stats()["mode"] == "memory"
    assert len(s.session_spans("after")) == 2
    s.close()


def test_switch_mid_run_carries_what_the_file_still_owes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store.db"
    s = Store(path)
    init = s.record_session_init("s1", {"session_name": "carried"})
    assert s.write_batch([span(0, "s1")], [event("s1", "e1")])
    (in_flight,) = s.claim_pending(1, now=time.time())  # the sender holds the init
    assert in_flight.seq == init
    s._db.local.conn.execute("PRAGMA query_only=1")  # the file turns unwritable mid-run
    with caplog.at_level(logging.WARNING, logger=STORE_LOGGER):
        assert s.write_batch([span(1, "s1")], [event("s1", "e2")])
    assert s.stats()["mode"] == "memory"
    (warning,) = [r.getMessage() for r in caplog.records if r.name.startswith(STORE_LOGGER)]
    assert "2 undelivered items and 1 open sessions were carried over" in warning, warning

    # The init's lease is released (its holder may be unable to mark it), so it comes first
    # again; events written before and after the switch still wait for it ...
    assert [i.seq for i in s.claim_pending(10, now=time.time())] == [init]
    assert s.mark_delivered([init])  # ... and the sender marks it in memory (same seq)
    events = s.claim_pending(10, now=time.time())
    assert [i.key for i in events] == ["e1", "e2"]
    assert s.mark_delivered([i.seq for i in events])
    # The session opened before the switch can still be ended, after its events.
    end = s.record_session_end("s1", {"is_successful": True})
    assert end is not None and end > max(i.seq for i in events)
    (last,) = s.claim_pending(10, now=time.time())
    assert last.kind == "session_end" and s.mark_delivered([last.seq])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=STORE_LOGGER):
        s.close()
    assert "lost" not in caplog.text  # nothing is pending in memory
    # The file still holds what it held, and the carried items delivered from memory were
    # settled there too where the file allowed it (here it does: only the writer's connection
    # was made read-only), so neither the next process nor `upload` sends them again. Nothing
    # written after the switch went to the file.
    with sqlite3.connect(str(path)) as conn:
        rows = conn.execute("SELECT key, state FROM outbox ORDER BY seq").fetchall()
    assert rows == [("s1", "delivered"), ("e1", "delivered")]


def test_switch_keeps_the_backend_id_of_an_open_session_with_nothing_pending(
    tmp_path: Path,
) -> None:
    s = Store(tmp_path / "store.db")
    init = s.record_session_init("s1", {})
    assert init is not None and s.mark_delivered([init])
    assert s.set_session_alias("s1", "backend-1")
    s._db.local.conn.execute("PRAGMA query_only=1")
    assert s.write_batch([], [event("s1", "e1")])
    assert s.stats()["mode"] == "memory"
    assert s.session_aliases(["s1"]) == {"s1": "backend-1"}  # later events keep the backend id
    s.close()


def test_a_newer_versions_file_is_neither_carried_nor_marked(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    s = Store(path)
    assert s.write_batch([], [event("s", "e1")])
    s.close()
    with sqlite3.connect(str(path)) as conn:
        conn.execute("PRAGMA user_version=99")
    before = path.read_bytes()
    s = Store(path)
    assert s.write_batch([], [event("s", "e2")])
    assert s.stats()["mode"] == "memory"
    items = s.claim_pending(10, now=time.time())
    assert [i.key for i in items] == ["e2"]  # nothing of the newer file
    assert s.mark_delivered([i.seq for i in items])
    s.close()
    assert path.read_bytes() == before


def test_close_after_switch_counts_only_what_the_file_lacks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = Store(tmp_path / "store.db")
    assert s.write_batch([], [event("s", "e1")])
    s._db.local.conn.execute("PRAGMA query_only=1")
    assert s.write_batch([], [event("s", "e2"), event("s", "e3")])
    with caplog.at_level(logging.WARNING, logger=STORE_LOGGER):
        s.close()
    assert "2 undelivered outbox items" in caplog.text  # e1 is still in the file


def test_store_from_a_newer_version_is_not_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store.db"
    with sqlite3.connect(str(path)) as conn:
        conn.execute("PRAGMA user_version=99")
    s = Store(path)
    message = _assert_degraded_but_working(s, caplog)
    assert "newer lucidic-otel" in message
    s.close()


def test_close_in_memory_mode_reports_what_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"garbage" * 100)
    s = Store(path)
    with caplog.at_level(logging.WARNING, logger=STORE_LOGGER):
        s.write_batch([], [event("s", "e1"), event("s", "e2")])
        s.close()
    assert "2 undelivered outbox items" in caplog.text


def test_reads_never_raise_and_answer_conservatively(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"garbage" * 100)
    s = Store(path)
    assert s.list_sessions() == []
    assert s.session_spans("x") == [] and s.session_events("x") == []
    assert s.outbox_counts() == {"pending": 0, "delivered": 0, "failed": 0}
    assert s.failed_items() == [] and s.claim_pending(5, now=0) == []
    assert s.session_events_delivered("x", 10) is True  # nothing pending in memory
    assert s.mark_delivered([1]) and s.mark_retry(1, "e", 0) and s.mark_failed(1, "r")
    s.close()
    s.close()  # idempotent


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_fork_during_a_transaction_leaves_the_child_a_usable_store(tmp_path: Path) -> None:
    """SQLite records per process which connection holds a file lock; a child forked while a
    thread of the parent is inside a transaction inherits a lock no one will release, and every
    write of the child was refused ("database is locked"): pool workers lost their spans. The
    fork now waits for the open transaction to end."""
    import threading

    path = tmp_path / "store.db"
    store = Store(path)
    store.record_session_init("s-fork", {"session_id": "s-fork"})
    inside, release = threading.Event(), threading.Event()

    def slow(conn) -> bool:
        conn.execute("INSERT INTO setups (recorded_at, json) VALUES (0, '{}')")
        inside.set()
        release.wait(5)
        return True

    holder = threading.Thread(target=lambda: store._db.transact(slow, write=True))
    holder.start()
    assert inside.wait(5)
    threading.Timer(0.3, release.set).start()  # the transaction ends while the fork waits
    pid = os.fork()
    if pid == 0:  # the child: one write of its own must go through at once
        ok = store.record_session_init("s-child", {"session_id": "s-child"})
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    holder.join(5)
    assert os.waitstatus_to_exitcode(status) == 0
    assert release.is_set()  # the fork happened after the transaction, not inside it
    with Store(path) as check:
        assert {"s-fork", "s-child"} <= {s["session_id"] for s in check.list_sessions()}
    store.close()


def test_an_item_released_unattempted_is_as_before_its_claim(store: Store) -> None:
    store.write_batch([], [event("joined", "e1"), event("joined", "e2")])
    [e1, e2] = store.claim_pending(5, now=10.0, lease_seconds=30)
    assert store.mark_retry(e1.seq, "HTTP 503", next_attempt_at=20.0)  # a real attempt
    assert store.mark_delivered([e2.seq])
    [e1] = store.claim_pending(5, now=20.0, lease_seconds=30)
    assert e1.attempts == 2
    # Given back unsent (the sender paused): the claim's attempt and lease are undone, the
    # last error stays without a reason, and it is due when asked, not later.
    assert store.release_unattempted([e1, e2], next_attempt_at=25.0)
    [after] = [i for i in store.session_events("joined") if i.key == "e1"]
    assert (after.attempts, after.next_attempt_at, after.last_error) == (1, 25.0, "HTTP 503")
    assert store.claim_pending(5, now=24.9) == []
    [again] = store.claim_pending(5, now=25.0, lease_seconds=30)  # before the old lease ended
    assert again.attempts == 2
    assert store.outbox_counts() == {"pending": 1, "delivered": 1, "failed": 0}


def test_releasing_a_stale_claim_leaves_the_new_owners_lease_alone(store: Store) -> None:
    store.write_batch([], [event("joined", "e1")])
    [stale] = store.claim_pending(5, now=10.0, lease_seconds=30)
    [taken] = store.claim_pending(5, now=41.0, lease_seconds=30)  # the lease expired
    assert taken.attempts == 2
    assert store.release_unattempted([stale], next_attempt_at=0.0, why="delivery paused")
    [item] = store.session_events("joined")
    assert (item.attempts, item.last_error) == (2, None)
    assert store.claim_pending(5, now=42.0) == []  # still the other sender's
