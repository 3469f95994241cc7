"""The sender against a strict loopback backend: delivery, order, faults, exit and restarts.

Records are made by the real exporter from real SDK spans, so the bodies are the ones the
program would send. The contract server checks every request and the order across requests;
each test asserts its violation list is empty. The restart, two-service, joined-session and
backend-down cases run real processes under the real ``opentelemetry-instrument`` launcher.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from support.contract_server import ContractServer, Faults
from support.launcher import (
    delivery_env,
    run_instrumented,
    spawn_instrumented,
    stop,
    write_script,
)

from lucidic_otel.cli import upload
from lucidic_otel.config import Settings, load_settings
from lucidic_otel.delivery import dispatcher as dispatcher_module
from lucidic_otel.delivery import sender as sender_module
from lucidic_otel.delivery import supervisor
from lucidic_otel.delivery.sender import Sender
from lucidic_otel.delivery.transport import Connections, Reply, SharedTLS, Transport
from lucidic_otel.outbox.store import Store
from lucidic_otel.sdk.exporter import LucidicSpanExporter
from lucidic_otel.sessions.context import SESSION_ATTRIBUTE
from lucidic_otel.sessions.lifecycle import END, INIT, LifecycleJournal

API_KEY = "test-key"
AGENT = "agent-1"
# Short timeouts and backoff so that fault scenarios finish in seconds.
FAST: Dict[str, Any] = dict(
    timeout_s=0.5, connect_timeout_s=0.5, backoff_base_s=0.02, backoff_cap_s=0.3, idle_poll_s=0.5
)
SENDER_LOGGER = "lucidic_otel.delivery"  # the sender, its policy, its workers...


def delivery_settings(server: ContractServer, **env: str) -> Settings:
    """In-process tests drive the thread sender; the delivery process has
    tests/delivery/test_helper.py (it runs the same Sender) and every launcher test here."""
    return load_settings(
        {
            "LUCIDIC_API_KEY": API_KEY,
            "LUCIDIC_AGENT_ID": AGENT,
            "LUCIDIC_BASE_URL": server.base_url,
            "LUCIDIC_DELIVERY": "thread",
            **env,
        }
    )


def llm_attributes(sid: str, n: int = 0, content: Optional[str] = None) -> Dict[str, Any]:
    attributes: Dict[str, Any] = {
        SESSION_ATTRIBUTE: sid,
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 10 + n,
        "gen_ai.usage.output_tokens": 5,
    }
    if content is not None:
        messages = [
            {"role": "user", "parts": [{"type": "text", "content": f"{i}: {content}"}]}
            for i in range(8)
        ]
        attributes["gen_ai.input.messages"] = json.dumps(messages)
    return attributes


def tool_attributes(sid: str) -> Dict[str, Any]:
    return {
        SESSION_ATTRIBUTE: sid,
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "search",
    }


class Recorder:
    """Records sessions through the real exporter into a store; it never delivers itself."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.journal = LifecycleJournal()
        self.exporter = LucidicSpanExporter(Settings(), store=store, journal=self.journal)
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def session(
        self,
        sid: str,
        pairs: int,
        *,
        init: bool = True,
        end: bool = True,
        content: Optional[str] = None,
    ) -> Set[str]:
        """``pairs`` tool spans each wrapping an LLM span; returns the session's event ids."""
        if init:
            self.journal.record(INIT, sid, {"session_id": sid, "session_name": f"name {sid}"})
        with self.tracer.start_as_current_span("agent", attributes={SESSION_ATTRIBUTE: sid}):
            for n in range(pairs):
                with self.tracer.start_as_current_span("tool", attributes=tool_attributes(sid)):
                    attributes = llm_attributes(sid, n, content)
                    with self.tracer.start_as_current_span("chat", attributes=attributes):
                        pass
        if end:
            self.journal.record(END, sid, {"session_id": sid, "is_finished": True})
        self.exporter.force_flush()
        return {item.key for item in self.store.session_events(sid) if item.key}


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store.db") as opened:
        yield opened


@pytest.fixture()
def recorder(store: Store) -> Recorder:
    return Recorder(store)


def drained(store: Store, server: ContractServer, deadline: float = 30.0, **kwargs: Any) -> Sender:
    sender = Sender(store, delivery_settings(server), **{**FAST, **kwargs})
    try:
        assert sender.drain(deadline), (sender.stats, store.outbox_counts())
    finally:
        sender.stop()
    return sender


def lifecycle(server: ContractServer, sid: str) -> tuple:
    inits = [b for b in server.inits if b["session_id"] == sid]
    ends = [b for b in server.updates if b["session_id"] == sid and b.get("is_finished")]
    return len(inits), len(ends)


# --------------------------------------------------------------------------- delivery


def test_every_event_is_delivered_under_30_percent_injected_failures(
    store: Store, recorder: Recorder
) -> None:
    expected = set()
    for n in range(3):
        expected |= recorder.session(f"s{n}", 25)
    faults = Faults(rate=0.3, slow_s=0.8, retry_after="0.1")
    with ContractServer(faults=faults, seed=11) as server:
        sender = drained(store, server, deadline=60)
    assert server.violations == []
    assert server.delivered_event_ids() == expected  # each one, and no id that is not ours
    for eid, bodies in server.events.items():
        assert {b["client_event_id"] for b in bodies} == {eid}
    assert store.outbox_counts() == {"pending": 0, "delivered": len(expected) + 6, "failed": 0}
    injected = {k for k in server.counts() if k.startswith("fault_")}
    assert len(injected) >= 6, server.counts()  # the faults really happened
    assert sender.stats.retried > 0
    for n in range(3):  # at least once: a reply lost after the server acted means a re-send
        assert lifecycle(server, f"s{n}")[1] >= 1


def test_healthy_delivery_reuses_keep_alive_connections(store: Store, recorder: Recorder) -> None:
    expected = recorder.session("keep", 50)
    with ContractServer() as server:
        drained(store, server, workers=4)
        assert server.delivered_event_ids() == expected
        assert server.connections <= 4
    assert server.violations == []
    assert server.duplicates() == 0


def test_session_end_waits_for_every_event_of_the_session(store: Store, recorder: Recorder) -> None:
    expected = recorder.session("ordered", 10)
    # Retry-After 0.2 s, not the fault's default 1 s: each failing round pauses the sender
    # for it, and 20 failed requests took 5-11 s of the 15 s wait under load at 1 s.
    events_fail = Faults(
        rate=1.0, kinds=("500", "503", "reset"), only=("events",), retry_after="0.2"
    )
    with ContractServer(faults=events_fail) as server:
        sender = Sender(store, delivery_settings(server), **FAST).start()
        try:
            assert server.wait_for(lambda: server.counts().get("requests_events", 0) >= 20, 15)
            assert server.updates == []  # every event failed so far: no end yet
            server.set_faults(Faults())
            assert sender.drain(20)
        finally:
            sender.stop()
    assert server.violations == []  # includes: no is_finished while a seen event was missing
    assert server.delivered_event_ids() == expected
    last_event = max(s.at for s in server.seen if s.endpoint == "events" and s.status == 200)
    end = [s.at for s in server.seen if s.endpoint == "updatesession"]
    assert len(end) == 1 and end[0] >= last_event


class HeldReplies:
    """Worker transports (the real ones) whose first ``count`` event replies are held until
    released one at a time: requests the backend answered before a drain began, whose results
    reach the sender after it began (a loaded machine, where workers are descheduled between
    a reply and its report)."""

    def __init__(self, count: int) -> None:
        self._cond = threading.Condition()
        self._left = count  # event replies still to hold
        self.held = 0  # replies waiting now
        self._holds = 0  # replies held so far: each waits for its own release, in order
        self._released = 0
        self._tls = SharedTLS()

    def transport(self) -> Transport:
        return _Holding(Connections(FAST["timeout_s"], FAST["connect_timeout_s"], self._tls), self)

    def hold(self) -> None:
        with self._cond:
            if self._left <= 0:
                return
            self._left -= 1
            ticket = self._holds
            self._holds += 1
            self.held += 1
            self._cond.notify_all()
            while self._released <= ticket:
                self._cond.wait()
            self.held -= 1

    def wait_held(self, count: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.held >= count, timeout)

    def release(self, count: int = 1) -> None:
        with self._cond:
            self._released += count
            self._cond.notify_all()


class _Holding:
    def __init__(self, inner: Connections, gate: HeldReplies) -> None:
        self._inner = inner
        self._gate = gate

    def request(self, method: str, url: str, body: bytes, headers: Any) -> Reply:
        reply = self._inner.request(method, url, body, headers)  # the backend answers now
        if url.endswith("/events"):
            self._gate.hold()  # ... the sender hears of it later
        return reply

    def close(self) -> None:
        self._inner.close()


def wait_until(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_drain_does_not_give_up_on_failures_of_requests_sent_before_it_began(
    store: Store, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three 503s answered while the backend was failing, reported after it recovered and a
    drain began, in separate rounds: the drain's "the backend is down" give-up must count only
    requests sent since it began. (Counting these, it gave up at once with every event
    pending: how this file's end-waits test failed once under the full suite's load.)"""
    expected = recorder.session("stale", 4)
    monkeypatch.setattr(dispatcher_module, "MIN_ACTIVE_WORKERS", 3)  # three requests at once
    gate = HeldReplies(3)
    failing = Faults(rate=1.0, kinds=("503",), only=("events",), retry_after="2")
    with ContractServer(faults=failing) as server:
        sender = Sender(
            store, delivery_settings(server), **{**FAST, "workers": 3}, transport=gate.transport
        ).start()
        outcome: List[bool] = []
        drainer = threading.Thread(target=lambda: outcome.append(sender.drain(30)))
        try:
            assert gate.wait_held(3, 30), server.counts()  # three 503s, not yet reported
            server.set_faults(Faults())  # the backend recovered ...
            drainer.start()  # ... and then a drain began (exit, upload)
            assert wait_until(lambda: sender._mail.drain_requests >= 1)
            for n in range(1, 4):  # each stale 503 reported in its own round
                gate.release()
                assert wait_until(lambda n=n: sender.stats.retried >= n), sender.stats
            drainer.join(40)
            assert outcome == [True], (sender.stats, store.outbox_counts())
        finally:
            gate.release(3)
            if drainer.is_alive():
                drainer.join(40)
            sender.stop()
    assert server.counts().get("fault_503") == 3
    assert server.violations == []
    assert server.delivered_event_ids() == expected
    assert lifecycle(server, "stale") == (1, 1)
    assert store.outbox_counts()["pending"] == 0


def test_parent_event_is_the_nearest_ancestor_event_at_delivery_time(
    store: Store, recorder: Recorder
) -> None:
    sid = "tree"
    recorder.journal.record(INIT, sid, {"session_id": sid})
    tracer = recorder.tracer
    with tracer.start_as_current_span("agent", attributes={SESSION_ATTRIBUTE: sid}):
        with tracer.start_as_current_span("chat top", attributes=llm_attributes(sid)) as top:
            pass
        with tracer.start_as_current_span("tool", attributes=tool_attributes(sid)) as tool:
            with tracer.start_as_current_span("http", attributes={SESSION_ATTRIBUTE: sid}):
                with tracer.start_as_current_span("chat", attributes=llm_attributes(sid)) as llm:
                    pass
    recorder.exporter.force_flush()
    ids = {
        name: next(
            item.key
            for item in store.session_events(sid)
            if item.body["metadata"]["span_id"] == f"{span.get_span_context().span_id:016x}"
        )
        for name, span in (("top", top), ("tool", tool), ("llm", llm))
    }
    with ContractServer() as server:
        drained(store, server)
    parents = {eid: bodies[-1]["client_parent_event_id"] for eid, bodies in server.events.items()}
    assert parents[ids["llm"]] == ids["tool"]  # through the non-event "http" span
    assert parents[ids["tool"]] is None and parents[ids["top"]] is None
    assert server.violations == []


# --------------------------------------------------------------------------- stop conditions


@pytest.mark.parametrize(
    ("status", "hint"),
    [(401, "LUCIDIC_API_KEY"), (403, "LUCIDIC_API_KEY"), (402, "credits"), (301, "BASE_URL")],
)
def test_refusal_stops_delivery_keeps_everything_and_logs_one_line(
    store: Store, recorder: Recorder, caplog: pytest.LogCaptureFixture, status: int, hint: str
) -> None:
    expected = recorder.session("a", 5) | recorder.session("b", 5)
    with ContractServer(faults=Faults(status=status)) as server:
        sender = Sender(store, delivery_settings(server), **FAST)
        with caplog.at_level(logging.WARNING, logger=SENDER_LOGGER):
            started = time.monotonic()
            assert sender.drain(10) is False
            assert time.monotonic() - started < 5
            requests = len(server.seen)
            sender.wake()
            time.sleep(0.3)
            assert len(server.seen) == requests  # stopped for good in this process
            sender.stop()
    lines = [r for r in caplog.records if r.name.startswith(SENDER_LOGGER)]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    message = lines[0].getMessage()
    assert lines[0].levelno == logging.ERROR
    assert f"HTTP {status}" in message and hint in message and "lucidic-otel upload" in message
    assert sender.halted is not None
    assert store.outbox_counts() == {"pending": len(expected) + 4, "delivered": 0, "failed": 0}
    assert server.violations == []


def test_a_rejected_record_is_kept_aside_with_its_status_and_body(
    store: Store, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    expected = recorder.session("bad", 5)
    with ContractServer() as server:
        server.inject("400", endpoint="events")
        with caplog.at_level(logging.WARNING, logger=SENDER_LOGGER):
            sender = drained(store, server)
    failed = store.failed_items()
    assert len(failed) == 1 and failed[0].kind == "event"
    assert "HTTP 400" in (failed[0].last_error or "") and "injected 400" in failed[0].last_error
    assert server.delivered_event_ids() == expected - {failed[0].key}
    assert lifecycle(server, "bad") == (1, 1)  # a rejected event does not hold the end back
    assert sender.stats.failed == 1 and sender.stats.rejected[0]["key"] == failed[0].key
    assert any("rejected" in r.getMessage() for r in caplog.records)
    assert server.violations == []


def test_retry_after_is_honoured(store: Store, recorder: Recorder) -> None:
    recorder.session("slowly", 3)
    with ContractServer(faults=Faults(retry_after="0.6")) as server:
        server.inject("429", endpoint="events")
        drained(store, server, workers=1)
    times = [s.at for s in server.seen]
    limited = next(i for i, s in enumerate(server.seen) if s.status == 429)
    assert times[limited + 1] - times[limited] >= 0.55
    assert server.violations == []


# --------------------------------------------------------------------------- large payloads


def test_blob_flow_with_the_threshold_from_the_environment(
    store: Store, recorder: Recorder
) -> None:
    big = recorder.session("big", 4, content="lorem ipsum " * 300)
    small = recorder.session("small", 4)
    with ContractServer(blob_threshold=1024) as server:
        server.inject("500", "reset", endpoint="blob")  # a failed upload is a failed delivery
        settings = delivery_settings(server, LUCIDIC_BLOB_THRESHOLD="1024")
        assert settings.blob_threshold == 1024
        sender = Sender(store, settings, **FAST)
        try:
            assert sender.drain(30)
        finally:
            sender.stop()
    assert server.violations == []
    assert server.missing_blobs() == set()
    assert server.delivered_event_ids() == big | small
    recorded = {item.key: item.body["payload"] for item in store.session_events("big")}
    blobbed = {eid for eid, bodies in server.events.items() if bodies[-1]["needs_blob"]}
    assert {eid for eid in blobbed if eid in recorded} == {
        eid
        for eid, payload in recorded.items()
        if len(json.dumps(payload, separators=(",", ":")).encode()) > 1024
    }
    assert blobbed and blobbed <= big
    for eid in blobbed:
        assert server.blobs[eid] == recorded[eid]  # the full payload, intact
    assert sender.stats.blobs == len(blobbed)
    assert server.counts()["fault_500"] == 1 and server.counts()["fault_reset"] == 1


def test_a_2xx_without_blob_url_is_retried_then_kept_aside(
    store: Store, recorder: Recorder
) -> None:
    recorder.session("no-url", 1, content="y" * 3000)
    garbage = Faults(rate=1.0, kinds=("garbage", "empty"), only=("events",))
    with ContractServer(faults=garbage) as server:
        settings = delivery_settings(server, LUCIDIC_BLOB_THRESHOLD="1024")
        sender = Sender(store, settings, **FAST)
        try:
            assert sender.drain(30)
        finally:
            sender.stop()
    failed = {item.key: item.last_error for item in store.failed_items()}
    assert len(failed) == 1  # the large LLM event; the small tool event went through
    assert all("without a usable blob_url" in (reason or "") for reason in failed.values())
    assert lifecycle(server, "no-url") == (1, 1)


def test_413_sends_the_event_again_through_the_blob_flow(store: Store, recorder: Recorder) -> None:
    expected = recorder.session("large", 3, content="x" * 400)
    with ContractServer(faults=Faults(max_body_bytes=2500)) as server:
        sender = drained(store, server)
    assert server.violations == []
    assert server.delivered_event_ids() == expected
    assert server.missing_blobs() == set()
    assert sender.stats.blobs >= 3 and store.failed_items() == []


# --------------------------------------------------------------------------- sessions


def test_session_id_from_initsession_is_adopted_and_kept_across_restarts(
    store: Store, recorder: Recorder
) -> None:
    first = recorder.session("mine", 3, end=False)
    with ContractServer(rename_sessions=True) as server:
        drained(store, server)
        assert store.session_aliases(["mine"]) == {"mine": "srv-mine"}
        second = recorder.session("mine", 2, init=False)
        drained(store, server)  # a new sender: the alias comes from the store
    assert server.violations == []
    assert server.delivered_event_ids() == first | second
    assert {b["session_id"] for bodies in server.events.values() for b in bodies} == {"srv-mine"}
    assert [b["session_id"] for b in server.updates] == ["srv-mine"]


def test_a_joined_session_gets_no_initsession_or_updatesession(
    store: Store, recorder: Recorder
) -> None:
    expected = recorder.session("from-upstream", 4, init=False, end=True)
    with ContractServer(joined_sessions=["from-upstream"]) as server:
        drained(store, server)
    assert server.violations == []
    assert server.delivered_event_ids() == expected
    assert server.inits == [] and server.updates == []


# --------------------------------------------------------------------------- processes


def test_leases_of_live_senders_are_respected_and_expired_ones_taken_over(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "live.db") as live, Store(tmp_path / "dead.db") as dead:
        Recorder(live).session("live", 2)
        Recorder(dead).session("dead", 2)
        assert len(live.claim_pending(10, time.time(), lease_seconds=60)) == 1  # the init
        assert len(dead.claim_pending(10, time.time() - 120, lease_seconds=60)) == 1
        with ContractServer() as server:
            sender = Sender(live, delivery_settings(server), **FAST)
            assert sender.drain(0.5) is False  # another sender holds the init: hands off
            sender.stop()
            assert server.seen == []
            drained(dead, server)  # the dead sender's lease expired: taken over
            assert lifecycle(server, "dead") == (1, 1)
            assert server.violations == []


def test_the_exporter_only_wakes_the_sender_and_exit_delivers_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "lazy.db"
    slow = Faults(rate=1.0, kinds=("slow",), slow_s=1.0)
    with ContractServer(faults=slow) as server:
        settings = delivery_settings(server, LUCIDIC_STORE_PATH=str(path))
        journal = LifecycleJournal()
        exporter = LucidicSpanExporter(settings, journal=journal)
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        assert str(path) not in supervisor._senders  # started lazily, on the first write
        try:
            journal.record(INIT, "lazy", {"session_id": "lazy"})
            started = time.perf_counter()
            for n in range(20):
                with tracer.start_as_current_span("chat", attributes=llm_attributes("lazy", n)):
                    pass
            elapsed = time.perf_counter() - started
            assert elapsed < 1.0, elapsed  # 20 synchronous exports never waited for the network
            sender = supervisor._senders[str(path)]
            assert sender._dispatcher is not None and sender._dispatcher.is_alive()
            server.set_faults(Faults())
            journal.record(END, "lazy", {"session_id": "lazy", "is_finished": True})
            sender_module.deliver_at_exit(15.0)  # writes the end still in memory, delivers
            assert exporter.store.outbox_counts()["pending"] == 0
            assert lifecycle(server, "lazy") == (1, 1)
            assert len(server.delivered_event_ids()) == 20
            assert server.violations == []
        finally:
            supervisor._senders.pop(str(path), None)
            provider.shutdown()


def test_without_credentials_nothing_is_started(tmp_path: Path) -> None:
    path = tmp_path / "local.db"
    exporter = LucidicSpanExporter(load_settings({"LUCIDIC_STORE_PATH": str(path)}))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        with provider.get_tracer("t").start_as_current_span("chat", attributes=llm_attributes("x")):
            pass
        assert exporter.store.outbox_counts()["pending"] == 1  # kept locally ...
        assert str(path) not in supervisor._senders  # ... and no sender, no thread
        assert exporter.store.delivery_enabled is False
    finally:
        provider.shutdown()


FORK = """
    # Imported before any TracerProvider exists: the SDK's at-fork hook (resource detection
    # through a thread pool) must run after this module re-creates its lock in the child, or a
    # fork can hang in the SDK. That is an SDK ordering hazard, so the test runs in a fresh
    # interpreter where the order is known, instead of inside pytest.
    import concurrent.futures.thread  # noqa: F401
    import os, sys
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from lucidic_otel.delivery import sender as sender_module
    from lucidic_otel.config import Settings, load_settings
    from lucidic_otel.sessions.context import SESSION_ATTRIBUTE
    from lucidic_otel.sdk.exporter import LucidicSpanExporter
    from lucidic_otel.sessions.lifecycle import END, INIT, LifecycleJournal
    from lucidic_otel.outbox.store import Store

    store = Store(sys.argv[1])
    settings = load_settings({"LUCIDIC_API_KEY": "test-key", "LUCIDIC_AGENT_ID": "agent-1",
                              "LUCIDIC_BASE_URL": sys.argv[2]})

    def record(sid):
        journal = LifecycleJournal()
        exporter = LucidicSpanExporter(Settings(), store=store, journal=journal)
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        journal.record(INIT, sid, {"session_id": sid})
        for n in range(2):
            with provider.get_tracer("t").start_as_current_span("chat", attributes={
                    SESSION_ATTRIBUTE: sid, "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai", "gen_ai.request.model": "m"}):
                pass
        journal.record(END, sid, {"session_id": sid, "is_finished": True})
        exporter.force_flush()

    parent = sender_module.process_sender(store, settings)
    record("parent-1")
    assert parent.drain(10), "parent-1"
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child = sender_module.process_sender(store, settings)
            fresh = child is not parent and child._pid == os.getpid()
            record("child")
            code = 0 if fresh and child.drain(10) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    record("parent-2")  # the parent's sender, threads and connections are undisturbed
    assert parent.drain(10), "parent-2"
    print("FORK OK", flush=True)
"""


def test_a_forked_child_starts_its_own_sender(tmp_path: Path) -> None:
    script = write_script(tmp_path, "fork.py", FORK)
    with ContractServer() as server:
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "fork.db"), server.base_url],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert "FORK OK" in result.stdout, result.stdout + result.stderr
    for sid in ("parent-1", "child", "parent-2"):
        assert lifecycle(server, sid) == (1, 1)
    assert len(server.delivered_event_ids()) == 6
    assert server.violations == []


# --------------------------------------------------------------------------- upload


def _upload_env(monkeypatch: pytest.MonkeyPatch, key: Optional[str] = API_KEY) -> None:
    for name in list(os.environ):
        if name.startswith("LUCIDIC_"):
            monkeypatch.delenv(name)
    if key is not None:
        monkeypatch.setenv("LUCIDIC_API_KEY", key)
        monkeypatch.setenv("LUCIDIC_AGENT_ID", AGENT)


def test_upload_needs_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _upload_env(monkeypatch, key=None)
    args = argparse.Namespace(store=str(tmp_path / "x.db"), deadline=5.0, json=False)
    assert upload.run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "LUCIDIC_API_KEY" in err[0] and "LUCIDIC_AGENT_ID" in err[0]


def test_upload_reports_rejections_and_exits_1(
    store: Store, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    recorder.session("up", 3)
    with ContractServer() as server:
        _upload_env(monkeypatch)
        monkeypatch.setenv("LUCIDIC_BASE_URL", server.base_url)
        server.inject("400", endpoint="events")
        args = argparse.Namespace(store=str(store.path), deadline=20.0, json=True)
        assert upload.run(args) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["failed"] == 1 and summary["remaining"] == 0
    assert "HTTP 400" in summary["failures"][0]["reason"]
    assert summary["delivered"] == summary["pending_before"] - 1
    assert server.violations == []


# --------------------------------------------------------------------------- real processes

APP = """
    import os, sqlite3, subprocess, sys, time
    import lucidic_otel
    from opentelemetry import trace

    tracer = trace.get_tracer("app")

    def llm(n):
        with tracer.start_as_current_span(f"chat {n}", attributes={
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 3 + n,
            "gen_ai.usage.output_tokens": 4}):
            pass

    def init_delivered(sid):
        path = os.environ["LUCIDIC_STORE_PATH"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with sqlite3.connect(path) as conn:
                row = conn.execute("SELECT state FROM outbox WHERE kind = 'session_init'"
                                   " AND session_id = ?", (sid,)).fetchone()
            if row and row[0] == "delivered":
                return
            time.sleep(0.05)
        sys.exit("initsession was not delivered")

    mode = sys.argv[1]
    if mode == "child":  # joined through BAGGAGE: stamps, never starts or ends the session
        for n in range(3):
            llm(n)
    else:
        sid = lucidic_otel.init(session_name=mode)
        for n in range(5):
            llm(n)
        if mode == "hang":
            lucidic_otel.flush()
            print("READY", sid, flush=True)
            time.sleep(120)
        if mode == "serve":  # works until SIGTERM
            lucidic_otel.flush()
            print("READY", sid, flush=True)
            for n in range(100_000):
                llm(n)
                time.sleep(0.005)
        if mode == "parent":
            lucidic_otel.flush()
            init_delivered(sid)
            env = lucidic_otel.inject_env(dict(os.environ, OTEL_SERVICE_NAME="svc-b",
                                               LUCIDIC_STORE_PATH=os.environ["STORE_B"]))
            subprocess.run([os.environ["INSTRUMENT"], sys.executable, __file__, "child"],
                           env=env, check=True, timeout=60)
            llm(5)
        print("SID", sid, flush=True)
"""


def _app_env(store_path: Path, base_url: str, **extra: str) -> Dict[str, str]:
    return delivery_env(store_path, base_url, API_KEY, AGENT, **extra)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _sid(output: str, prefix: str = "SID") -> str:
    for line in output.splitlines():
        if line.startswith(prefix + " "):
            return line.split()[1]
    raise AssertionError(f"no {prefix} line in:\n{output}")


def _event_ids(path: Path) -> Set[str]:
    with sqlite3.connect(path) as conn:
        return {key for (key,) in conn.execute("SELECT key FROM outbox WHERE kind = 'event'")}


def _kinds(path: Path) -> List[str]:
    with sqlite3.connect(path) as conn:
        return sorted({kind for (kind,) in conn.execute("SELECT kind FROM outbox")})


def test_backend_down_for_the_whole_run_then_upload_delivers_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    script = write_script(tmp_path, "app.py", APP)
    path = tmp_path / "down.db"
    port = _free_port()
    env = _app_env(path, f"http://127.0.0.1:{port}/api", LUCIDIC_EXIT_DEADLINE="2")
    proc = spawn_instrumented([script, "down"], env)
    try:
        line = proc.wait_for_line("SID", 60)  # the program's last line: its exit begins
        exiting = time.monotonic()
        assert line is not None, proc.output()
        returncode = proc.wait(60)
        took = time.monotonic() - exiting
    finally:
        stop(proc, timeout=5)
    assert proc.join_output(10)
    output = proc.output()
    assert returncode == 0, output
    # The exit deadline bounds the wait for a dead backend: 2 s, plus the helper's reply and
    # stop margins (2.5 s), plus interpreter teardown (about 1 s idle, 3.5 s at load 5).
    # Not the whole run: start-up under the launcher alone took 9-10 s of it under that load.
    assert took < 12, took
    sid = _sid(line)
    with Store(path) as store:
        assert store.outbox_counts()["delivered"] == 0
        pending = store.outbox_counts()["pending"]
    assert pending == 7  # init, 5 events, end: all kept
    assert "lucidic-otel upload" in output  # said once at exit where the data is
    with ContractServer(port=port) as server:
        _upload_env(monkeypatch)
        monkeypatch.setenv("LUCIDIC_BASE_URL", server.base_url)
        args = argparse.Namespace(store=str(path), deadline=30.0, json=False)
        assert upload.run(args) == 0
    captured = capsys.readouterr()  # the result on stdout; no "delivered 0/7" before it
    assert "delivered 0/" not in captured.err, captured.err
    out = captured.out
    assert "sent 7 of 7 pending records" in out and "everything pending was delivered" in out
    assert server.violations == []
    assert server.delivered_event_ids() == _event_ids(path)
    assert lifecycle(server, sid) == (1, 1)


def test_a_restarted_process_delivers_what_a_killed_one_left(tmp_path: Path) -> None:
    script = write_script(tmp_path, "app.py", APP)
    path = tmp_path / "shared.db"
    port = _free_port()
    killed = spawn_instrumented([script, "hang"], _app_env(path, f"http://127.0.0.1:{port}/api"))
    try:
        line = killed.wait_for_line("READY", 30)
        assert line is not None, killed.output()
        killed_sid = line.split()[1]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # stored, and no item in a worker's hands
            with sqlite3.connect(path) as conn:
                leased = conn.execute(
                    "SELECT count(*) FROM outbox WHERE lease_until > ?", (time.time(),)
                ).fetchone()[0]
                stored = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
            if stored == 6 and leased == 0:
                break
            time.sleep(0.02)
        os.killpg(killed.pid, signal.SIGKILL)
    finally:
        stop(killed, timeout=5)
    assert killed.returncode == -signal.SIGKILL
    left = _event_ids(path)
    assert len(left) == 5
    with ContractServer(port=port) as server:
        env = _app_env(path, server.base_url, LUCIDIC_EXIT_DEADLINE="45")
        result = run_instrumented([script, "restarted"], env, timeout=90)
        assert result.returncode == 0, result.stderr
    restarted_sid = _sid(result.stdout)
    assert server.violations == []
    assert left <= server.delivered_event_ids()
    assert server.delivered_event_ids() == _event_ids(path)
    assert lifecycle(server, killed_sid) == (1, 0)  # killed: its session was never ended
    assert lifecycle(server, restarted_sid) == (1, 1)
    with Store(path) as store:
        assert store.outbox_counts()["pending"] == 0


def test_sigterm_delivers_everything_and_ends_the_session_before_dying(tmp_path: Path) -> None:
    script = write_script(tmp_path, "app.py", APP)
    path = tmp_path / "term.db"
    with ContractServer() as server:
        proc = spawn_instrumented([script, "serve"], _app_env(path, server.base_url))
        try:
            line = proc.wait_for_line("READY", 30)
            assert line is not None, proc.output()
            sid = line.split()[1]
            time.sleep(0.5)  # spans keep coming, some still queued in the span processor
        finally:
            result = stop(proc, signal.SIGTERM, timeout=20)
        assert result.returncode == -signal.SIGTERM, result.stdout  # the signal is kept
    assert server.violations == []
    assert server.delivered_event_ids() == _event_ids(path)
    assert len(_event_ids(path)) > 10
    assert lifecycle(server, sid) == (1, 1)
    with Store(path) as store:
        assert store.outbox_counts()["pending"] == 0


def test_two_services_deliver_one_session_and_only_the_first_starts_and_ends_it(
    tmp_path: Path,
) -> None:
    script = write_script(tmp_path, "app.py", APP)
    path_a, path_b = tmp_path / "a.db", tmp_path / "b.db"
    with ContractServer() as server:
        env = _app_env(
            path_a,
            server.base_url,
            OTEL_SERVICE_NAME="svc-a",
            STORE_B=str(path_b),
            INSTRUMENT=str(Path(os.sys.executable).parent / "opentelemetry-instrument"),
        )
        result = run_instrumented([script, "parent"], env, timeout=90)
        assert result.returncode == 0, result.stdout + result.stderr
    sid = _sid(result.stdout)
    assert server.violations == []
    by_service: Dict[str, Set[str]] = {}
    for eid, bodies in server.events.items():
        assert {b["session_id"] for b in bodies} == {sid}
        by_service.setdefault(bodies[0]["metadata"]["service_name"], set()).add(eid)
    assert by_service == {"svc-a": _event_ids(path_a), "svc-b": _event_ids(path_b)}
    assert len(by_service["svc-a"]) == 6 and len(by_service["svc-b"]) == 3
    assert lifecycle(server, sid) == (1, 1)
    assert len(server.inits) == 1 and len(server.updates) == 1
    assert _kinds(path_b) == ["event"]  # the joined service recorded no start or end at all
    for path in (path_a, path_b):
        with Store(path) as store:
            assert store.outbox_counts()["pending"] == 0


def test_contract_server_runs_as_a_subprocess(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    server = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parents[1] / "support" / "contract_server.py"),
            "--report",
            str(report),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[1])
        with Store(tmp_path / "s.db") as store:
            expected = Recorder(store).session("sub", 2)
            settings = load_settings(
                {
                    "LUCIDIC_API_KEY": API_KEY,
                    "LUCIDIC_AGENT_ID": AGENT,
                    "LUCIDIC_BASE_URL": f"http://127.0.0.1:{port}/api",
                }
            )
            sender = Sender(store, settings, **FAST)
            assert sender.drain(10)
            sender.stop()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
    data = json.loads(report.read_text())
    assert data["violations"] == [] and set(data["event_ids"]) == expected
    assert threading.active_count() >= 1


# --------------------------------------------------------------------------- parents first


def nested_run(recorder: Recorder, sid: str, runs: int) -> None:
    """``runs`` parent tool spans, each over an LLM span and a child tool span over another
    LLM span (children end, and are recorded, before their parents)."""
    recorder.journal.record(INIT, sid, {"session_id": sid, "session_name": sid})
    tracer = recorder.tracer
    with tracer.start_as_current_span("agent", attributes={SESSION_ATTRIBUTE: sid}):
        for n in range(runs):
            with tracer.start_as_current_span("tool", attributes=tool_attributes(sid)):
                with tracer.start_as_current_span("chat", attributes=llm_attributes(sid, n)):
                    pass
                with tracer.start_as_current_span("tool", attributes=tool_attributes(sid)):
                    with tracer.start_as_current_span("chat", attributes=llm_attributes(sid)):
                        pass
    recorder.journal.record(END, sid, {"session_id": sid, "is_finished": True})
    recorder.exporter.force_flush()


def assert_parents_first(server: ContractServer) -> None:
    first: Dict[str, float] = {}
    for seen in server.seen:
        if seen.endpoint == "events" and seen.status == 200 and seen.key not in first:
            first[seen.key] = seen.at
    parents = {
        eid: bodies[0].get("client_parent_event_id") for eid, bodies in server.events.items()
    }
    children = {eid: parent for eid, parent in parents.items() if parent}
    assert children, parents
    for eid, parent in children.items():
        assert first[parent] <= first[eid], (eid, parent)


@pytest.mark.parametrize("workers", [1, 8])
def test_parent_events_reach_the_backend_before_their_children(
    store: Store, recorder: Recorder, workers: int
) -> None:
    nested_run(recorder, "nested", 30)
    assert len(store.session_events("nested")) == 120
    with ContractServer(parents_first=True) as server:
        drained(store, server, workers=workers)
    assert len(server.events) == 120
    assert server.violations == []
    assert_parents_first(server)


def test_parents_first_under_injected_failures(store: Store, recorder: Recorder) -> None:
    nested_run(recorder, "faulty", 20)
    faults = Faults(rate=0.3, kinds=("500", "reset", "reset-after"), only=("events",))
    with ContractServer(faults=faults, seed=5, parents_first=True) as server:
        drained(store, server, deadline=60.0)
    assert len(server.events) == 80
    assert server.violations == []
    assert_parents_first(server)


def test_a_child_waits_for_a_parent_in_back_off_only_briefly(
    store: Store, recorder: Recorder
) -> None:
    nested_run(recorder, "held", 1)
    items = store.session_events("held")
    parent = items[-1]  # the outer tool span ends last
    now = time.time()
    init = store.claim_pending(10, now, 0.0)  # the events wait for their session's init
    assert [i.kind for i in init] == ["session_init"]
    assert store.mark_delivered([init[0].seq])
    store.mark_retry(parent.seq, "503", now + 100)
    claimed = store.claim_pending(10, now, 0.0)
    # The parent's direct children are held (not leased), the grandchild's parent with them.
    assert claimed == []
    later = now + 10  # the children are older than the hold bound: claimed without it
    assert {i.seq for i in store.claim_pending(10, later, 0.0)} == {i.seq for i in items[:-1]}
