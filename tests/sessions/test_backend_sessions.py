"""Sessions as the backend expects them (issue 13, point 4), against the contract server.

Real programs run under the launcher and deliver to :class:`ContractServer` with
``require_session_name=True`` (a backend that rejects an ``initsession`` without a name):

- every way of opening a session without a name still sends ``session_name`` (the official
  SDK's default, ``"Unnamed Session"``);
- ``with_lucidic`` ends its session with the outcome of ``fn`` (raised or not), unless the caller
  gave one;
- ``LUCIDIC_SESSION_IDLE_END`` ends scope-bound sessions that went quiet, and only those.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

import pytest

from lucidic_otel.config import load_settings
from lucidic_otel.sessions.idle import IdleTracker
from lucidic_otel.sessions.lifecycle import LifecycleJournal, SessionRegistry
from tests.support.contract_server import ContractServer
from tests.support.launcher import delivery_env, run_instrumented, write_script

API_KEY = "sessions-key-0123456789"
AGENT = "sessions-agent"


def _run(tmp_path: Path, source: str, server: ContractServer, **env: str) -> Dict[str, Any]:
    script = write_script(tmp_path, "app.py", source)
    run_env = delivery_env(tmp_path / "store.db", server.base_url, API_KEY, AGENT,
                           LUCIDIC_DELIVERY="thread", **env)
    proc = run_instrumented([script], run_env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    out: Dict[str, Any] = {"stderr": proc.stderr}
    for line in proc.stdout.splitlines():
        tag, _, value = line.partition(" ")
        if tag.isupper() and value:
            out[tag] = json.loads(value)
    return out


def _updates(server: ContractServer, sid: str) -> List[Dict[str, Any]]:
    return [{k: v for k, v in u.items() if k != "current_time"}
            for u in server.updates if u["session_id"] == sid]


# --- 1. session_name is always sent ---------------------------------------------------------


def test_the_strict_server_rejects_an_initsession_without_a_name() -> None:
    """The control: what the package sent before this change is a 400 here."""
    with ContractServer(api_key=API_KEY, agent_id=AGENT, require_session_name=True) as server:
        request = urllib.request.Request(
            f"{server.base_url}/initsession",
            data=json.dumps({"agent_id": AGENT, "session_id": "nameless",
                             "current_time": "2026-01-01T00:00:00+00:00"}).encode(),
            headers={"Authorization": f"Api-Key {API_KEY}", "x-agent-id": AGENT,
                     "Content-Type": "application/json", "User-Agent": "lucidic-otel/0.1.0"},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == 400
        assert any("session_name" in v for v in server.violations), server.violations
        assert server.inits == []


UNNAMED = """
    import asyncio
    import lucidic_otel
    from opentelemetry import trace

    tracer = trace.get_tracer("app")
    with lucidic_otel.session("unnamed-scope"):
        tracer.start_span("in-scope").end()
    token = lucidic_otel.set_active_session("unnamed-active")
    tracer.start_span("in-active").end()
    lucidic_otel.clear_active_session(token)
    lucidic_otel.with_session("unnamed-with", lambda: tracer.start_span("in-with").end())
    for sid in ("unnamed-scope", "unnamed-active", "unnamed-with"):
        lucidic_otel.end_session(sid)
    lucidic_otel.with_lucidic(lambda: tracer.start_span("in-one-shot").end(),
                              session_id="unnamed-one-shot")
    with lucidic_otel.session("named-later"):
        pass
    lucidic_otel.init("the real name", session_id="named-later", auto_end=False)
    lucidic_otel.init(session_id="unnamed-init")  # ended at exit (auto_end)
    tracer.start_span("in-init").end()
"""


def test_sessions_opened_without_a_name_send_the_default_name(tmp_path: Path) -> None:
    with ContractServer(api_key=API_KEY, agent_id=AGENT, require_session_name=True) as server:
        _run(tmp_path, UNNAMED, server)
        assert server.violations == []
        names: Dict[str, List[str]] = {}
        for body in server.inits:
            names.setdefault(body["session_id"], []).append(body["session_name"])
    for sid in ("unnamed-scope", "unnamed-active", "unnamed-with", "unnamed-one-shot",
                "unnamed-init"):
        assert names.get(sid) == ["Unnamed Session"], (sid, names)
    # A name given while the nameless start still waits replaces it: one initsession, named.
    assert names["named-later"] == ["the real name"]
    ended = {u["session_id"] for u in server.updates if u.get("is_finished")}
    assert {"unnamed-scope", "unnamed-active", "unnamed-with", "unnamed-one-shot",
            "unnamed-init"} <= ended


# --- 2. with_lucidic records the outcome ----------------------------------------------------


OUTCOMES = """
    import asyncio, json
    import lucidic_otel
    from opentelemetry import trace

    tracer = trace.get_tracer("app")

    def ok(x):
        tracer.start_span("ok").end()
        return x * 2

    def boom():
        raise ValueError("boom")

    async def aok():
        await asyncio.sleep(0)
        return "async ok"

    async def aboom():
        await asyncio.sleep(0)
        raise KeyError("missing")

    def long_failure():
        raise RuntimeError("x" * 5000)

    class Custom(Exception):
        pass

    print("OK", json.dumps(lucidic_otel.with_lucidic(ok, 21, session_id="wl-ok")))
    print("AOK", json.dumps(asyncio.run(lucidic_otel.with_lucidic(aok, session_id="wl-aok"))))
    err = ValueError("never seen")
    try:
        lucidic_otel.with_lucidic(boom, session_id="wl-boom")
    except ValueError as exc:
        err = exc
    print("RAISED", json.dumps([type(err).__name__, str(err), err.__traceback__ is not None]))
    try:
        asyncio.run(lucidic_otel.with_lucidic(aboom, session_id="wl-aboom"))
    except KeyError as exc:
        print("ARAISED", json.dumps(str(exc)))
    try:
        lucidic_otel.with_lucidic(long_failure, session_id="wl-long")
    except RuntimeError:
        pass
    try:
        lucidic_otel.with_lucidic(boom, session_id="wl-explicit", is_successful=True,
                                  is_successful_reason="failing is the expected result")
    except ValueError:
        pass
    try:
        lucidic_otel.with_lucidic(boom, session_id="wl-reason",
                                  is_successful_reason="my own words")
    except ValueError:
        pass
    lucidic_otel.with_lucidic(ok, 1, session_id="wl-said-no", is_successful=False)
"""


def test_with_lucidic_records_the_outcome(tmp_path: Path) -> None:
    with ContractServer(api_key=API_KEY, agent_id=AGENT, require_session_name=True) as server:
        out = _run(tmp_path, OUTCOMES, server)
        assert server.violations == []
        assert out["OK"] == 42 and out["AOK"] == "async ok"
        assert out["RAISED"] == ["ValueError", "boom", True]  # the exception, unchanged
        assert out["ARAISED"] == "'missing'"
        done = {"session_id": None, "is_finished": True}

        def end(sid: str, **fields: Any) -> List[Dict[str, Any]]:
            return [{**done, "session_id": sid, **fields}]

        assert _updates(server, "wl-ok") == end("wl-ok", is_successful=True)
        assert _updates(server, "wl-aok") == end("wl-aok", is_successful=True)
        assert _updates(server, "wl-boom") == end(
            "wl-boom", is_successful=False, is_successful_reason="ValueError: boom")
        assert _updates(server, "wl-aboom") == end(
            "wl-aboom", is_successful=False, is_successful_reason="KeyError: 'missing'")
        (long,) = _updates(server, "wl-long")
        assert long["is_successful"] is False
        assert long["is_successful_reason"].startswith("RuntimeError: xxx")
        assert len(long["is_successful_reason"]) == 500
        assert _updates(server, "wl-explicit") == end(
            "wl-explicit", is_successful=True,
            is_successful_reason="failing is the expected result")
        assert _updates(server, "wl-reason") == end(
            "wl-reason", is_successful=False, is_successful_reason="my own words")
        assert _updates(server, "wl-said-no") == end("wl-said-no", is_successful=False)


# --- 3. idle end --------------------------------------------------------------------------


IDLE = """
    import json, threading, time
    import lucidic_otel
    from opentelemetry import trace
    from lucidic_otel.sessions import idle
    from lucidic_otel.sessions.lifecycle import REGISTRY

    tracer = trace.get_tracer("app")
    lucidic_otel.init(session_id="idle-init", auto_end=False)   # nothing ends it: not idle-ended
    with lucidic_otel.session("idle-scope"):
        tracer.start_span("a").end()
    token = lucidic_otel.set_active_session("idle-active")
    tracer.start_span("b").end()
    lucidic_otel.clear_active_session(token)
    lucidic_otel.with_lucidic(lambda: tracer.start_span("c").end(), session_id="idle-one-shot")

    def busy():   # a span every 0.3 s for 2.5 s: never idle for 1 s
        with lucidic_otel.session("idle-busy"):
            for _ in range(9):
                tracer.start_span("tick").end()
                time.sleep(0.3)
    worker = threading.Thread(target=busy)
    worker.start(); worker.join()
    print("BUSY_OPEN", json.dumps(not REGISTRY._sessions["idle-busy"].ended))
    print("SCOPE_ENDED", json.dumps(REGISTRY._sessions["idle-scope"].ended))
    time.sleep(3.0)
    print("TRACKED", json.dumps(sorted(idle.SEEN)))
    sweepers = [t for t in threading.enumerate() if t.name == "lucidic-session-idle"]
    print("SWEEPERS", json.dumps(len(sweepers)))
    decorated = lucidic_otel.session("idle-scope")(lambda: tracer.start_span("again").end())
    decorated()   # the binding re-opens the idle-ended session
    print("REOPENED", json.dumps(not REGISTRY._sessions["idle-scope"].ended))
    time.sleep(2.5)
    lucidic_otel.end_session("idle-active", is_successful=True)  # the outcome still goes out
    lucidic_otel.flush()
"""


def test_idle_sessions_are_ended_and_only_those(tmp_path: Path) -> None:
    with ContractServer(api_key=API_KEY, agent_id=AGENT, require_session_name=True) as server:
        out = _run(tmp_path, IDLE, server, LUCIDIC_SESSION_IDLE_END="1")
        assert server.violations == []
        assert out["BUSY_OPEN"] is True
        assert out["TRACKED"] == []
        assert out["SWEEPERS"] == 0  # stopped by itself: nothing was left to watch
        assert out["REOPENED"] is True
        finished = {"is_finished": True}
        assert [u for u in _updates(server, "idle-scope")] == [
            {"session_id": "idle-scope", **finished}] * 2   # ended, re-opened, ended again
        assert [u["session_id"] for u in server.inits].count("idle-scope") == 2
        assert _updates(server, "idle-active") == [
            {"session_id": "idle-active", **finished},
            {"session_id": "idle-active", **finished, "is_successful": True},
        ]
        assert _updates(server, "idle-busy") == [{"session_id": "idle-busy", **finished}]
        assert _updates(server, "idle-one-shot") == [
            {"session_id": "idle-one-shot", **finished, "is_successful": True}]
        assert _updates(server, "idle-init") == []


def test_without_the_variable_nothing_is_ended(tmp_path: Path) -> None:
    source = """
        import threading, time
        import lucidic_otel
        from opentelemetry import trace
        from lucidic_otel.sessions import idle
        with lucidic_otel.session("quiet"):
            trace.get_tracer("app").start_span("a").end()
        time.sleep(1.5)
        assert not idle.SEEN
        assert not [t for t in threading.enumerate() if t.name == "lucidic-session-idle"]
    """
    with ContractServer(api_key=API_KEY, agent_id=AGENT, require_session_name=True) as server:
        _run(tmp_path, source, server)
        assert server.violations == []
        assert [b["session_id"] for b in server.inits] == ["quiet"]
        assert server.updates == []


@pytest.mark.parametrize("value", ["0", "86401", "soon", "-5", "nan"])
def test_a_bad_idle_time_is_one_message_and_off(value: str) -> None:
    settings = load_settings({"LUCIDIC_SESSION_IDLE_END": value})
    assert settings.session_idle_end is None
    (problem,) = settings.problems
    assert problem.startswith(f"LUCIDIC_SESSION_IDLE_END={value!r} is not valid")
    assert "1 to 86400" in problem


def test_the_idle_time_is_read_in_seconds() -> None:
    assert load_settings({"LUCIDIC_SESSION_IDLE_END": "90"}).session_idle_end == 90.0
    assert load_settings({}).session_idle_end is None


def test_the_sweep_ends_only_quiet_scope_sessions_and_forgets_them() -> None:
    """In-process, with a clock of our own: what is due, what is not, what is bounded."""
    registry = SessionRegistry(LifecycleJournal())
    ended: List[List[str]] = []
    seen: Dict[str, float] = {}
    tracker = IdleTracker(lambda ids: ended.append(ids), seen=seen, limit=lambda: 10.0)
    tracker.stop()  # no thread: the test sweeps by hand
    registry._idle = tracker
    registry.open("quiet", idle_end=True)
    registry.open("owned", auto_end=True, idle_end=True)
    registry.open("owned")   # an owner that ends it itself: idle end off for good
    registry.open("owned", idle_end=True)
    tracker.stop()
    assert set(seen) == {"quiet", "owned"}
    t0 = max(seen.values())
    assert tracker.sweep(10.0, now=t0 + 5) == 0
    assert tracker.sweep(10.0, now=t0 + 11) == 2
    assert sorted(ended[0]) == ["owned", "quiet"] and seen == {}
    assert registry.end_idle(ended[0]) == 1   # "owned" is not idle-endable
    assert registry.idle_ended("quiet") and not registry.idle_ended("owned")
    assert registry.end("quiet", {}) is False           # no second end without an outcome
    assert registry.end("quiet", {"is_successful": False}) is True   # the outcome, once
    assert registry.end("quiet", {"is_successful": False}) is False


def test_a_name_given_later_replaces_a_waiting_default_name() -> None:
    journal = LifecycleJournal()
    registry = SessionRegistry(journal)
    registry.open("s1")
    registry.open("other")
    registry.open("s1", name="real", task="t")
    assert journal.drain() == [
        ("session_init", "s1", {"session_id": "s1", "session_name": "real", "task": "t"}),
        ("session_init", "other", {"session_id": "other", "session_name": "Unnamed Session"}),
    ]
    registry.open("s2")
    journal.drain()  # stored already: the name goes in a second initsession, as before
    registry.open("s2", name="late")
    assert journal.drain() == [
        ("session_init", "s2", {"session_id": "s2", "session_name": "late"})]


def test_a_forked_child_forgets_the_parents_idle_sessions(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import os, threading
        from lucidic_otel.config import set_overrides
        set_overrides(LUCIDIC_SESSION_IDLE_END="5")
        from lucidic_otel.sessions import idle
        from lucidic_otel.sessions.lifecycle import REGISTRY
        REGISTRY.open("parent", idle_end=True)
        assert idle.SEEN and any(t.name == "lucidic-session-idle" for t in threading.enumerate())
        pid = os.fork()
        if pid == 0:
            ok = not idle.SEEN and REGISTRY._idle._thread is None
            REGISTRY.open("child", idle_end=True)   # tracking works again in the child
            ok = ok and set(idle.SEEN) == {"child"} and REGISTRY._idle._thread.is_alive()
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert set(idle.SEEN) == {"parent"}
        print("FORK OK")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and "FORK OK" in proc.stdout, proc.stdout + proc.stderr
