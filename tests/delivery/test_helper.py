"""The delivery process (``lucidic_otel.delivery.helper``): delivery off the application's GIL.

Real applications under the real launcher deliver to the loopback contract server; the tests
look at the process tree (``/proc``) to prove where the sender runs, that the API key never
appears on a command line, that the agent ends with the application (or, when the application
is killed, once it has delivered what was left), and that ``LUCIDIC_DELIVERY=thread`` and a
failed start fall back to threads in the application.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from support.contract_server import ContractServer, Faults
from support.launcher import delivery_env, run_instrumented, spawn_instrumented, stop, write_script

from lucidic_otel.config import load_settings
from lucidic_otel.delivery import helper as agent_module
from lucidic_otel.delivery import supervisor
from lucidic_otel.delivery.sender import Sender
from lucidic_otel.outbox.store import Store

# The tests read the process tree from /proc; the delivery process itself is POSIX-only.
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the process tree from /proc"
)

API_KEY = "agent-test-key-0123456789"
AGENT = "agent-proc"

APP = """
    import os, sys, threading, time
    import lucidic_otel
    from opentelemetry import trace

    tracer = trace.get_tracer("app")
    sid = lucidic_otel.init(session_name=sys.argv[1])
    for n in range(int(sys.argv[2])):
        with tracer.start_as_current_span(f"chat {n}", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 3,
                "gen_ai.usage.output_tokens": 4}):
            pass
    lucidic_otel.flush()
    time.sleep(0.3)  # the agent (if any) has been started by the first write
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid == os.getpid():
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        children.append((entry, f.read().replace(b"\\0", b" ").decode()))
            except OSError:
                pass
    for pid, cmdline in children:
        try:
            policy = os.sched_getscheduler(int(pid))
        except (AttributeError, OSError):
            policy = -1
        print("CHILD", pid, cmdline, flush=True)
        print("POLICY", pid, policy, flush=True)
    senders = [t.name for t in threading.enumerate() if t.name.startswith("lucidic-sender")]
    print("SENDER_THREADS", len(senders), flush=True)
    print("SID", sid, flush=True)
    if sys.argv[1] == "hang":
        print("READY", flush=True)
        time.sleep(120)
"""


def _env(store: Path, base_url: str, **extra: str) -> Dict[str, str]:
    return delivery_env(store, base_url, API_KEY, AGENT, **extra)


def _lines(output: str, prefix: str) -> List[str]:
    return [line.split(" ", 1)[1] for line in output.splitlines() if line.startswith(prefix + " ")]


def _agents(output: str) -> List[int]:
    return [
        int(line.split()[0])
        for line in _lines(output, "CHILD")
        if "lucidic_otel.delivery.helper" in line
    ]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _pending(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0]


def _started_agent(store: Store, server: ContractServer) -> agent_module.DeliveryAgent:
    """A delivery process for ``store`` started directly (no launcher), already woken."""
    settings = load_settings({
        "LUCIDIC_API_KEY": API_KEY, "LUCIDIC_AGENT_ID": AGENT,
        "LUCIDIC_BASE_URL": server.base_url,
    })
    agent = agent_module.DeliveryAgent(store, settings)
    assert agent.start()
    agent.wake()
    return agent


def test_delivery_runs_in_its_own_process_and_ends_with_the_application(tmp_path: Path) -> None:
    script = write_script(tmp_path, "app.py", APP)
    path = tmp_path / "store.db"
    with ContractServer(api_key=API_KEY, agent_id=AGENT) as server:
        result = run_instrumented([script, "proc", "20"], _env(path, server.base_url), timeout=60)
        assert result.returncode == 0, result.stderr
        (agent_pid,) = _agents(result.stdout)
        # Background work: it runs only on CPU time the application does not want.
        if hasattr(os, "SCHED_IDLE"):
            assert f"{agent_pid} {os.SCHED_IDLE}" in _lines(result.stdout, "POLICY")
        # The application runs no sender thread: the agent does the HTTP.
        assert _lines(result.stdout, "SENDER_THREADS") == ["0"]
        # The key travels over the pipe, never on a command line anyone can read.
        assert all(API_KEY not in line for line in _lines(result.stdout, "CHILD"))
        sid = _lines(result.stdout, "SID")[0]
        assert len(server.delivered_event_ids()) == 20
        assert server.violations == []
        assert len([b for b in server.inits if b["session_id"] == sid]) == 1
        ends = [b for b in server.updates if b["session_id"] == sid and b.get("is_finished")]
        assert len(ends) == 1  # delivered at exit, by the agent, after the events
    assert _wait_gone(agent_pid, 5), "the delivery process outlived the application"
    assert _pending(path) == 0
    assert "Traceback" not in result.stderr, result.stderr


def test_thread_delivery_when_asked_for(tmp_path: Path) -> None:
    script = write_script(tmp_path, "app.py", APP)
    path = tmp_path / "store.db"
    with ContractServer(api_key=API_KEY, agent_id=AGENT) as server:
        env = _env(path, server.base_url, LUCIDIC_DELIVERY="thread")
        result = run_instrumented([script, "threads", "5"], env, timeout=60)
        assert result.returncode == 0, result.stderr
        assert _agents(result.stdout) == []
        assert int(_lines(result.stdout, "SENDER_THREADS")[0]) >= 1
        assert len(server.delivered_event_ids()) == 5
        assert server.violations == []
    assert _pending(path) == 0


def test_a_killed_application_leaves_its_agent_to_deliver_the_rest_and_end(
    tmp_path: Path,
) -> None:
    script = write_script(tmp_path, "app.py", APP)
    path = tmp_path / "store.db"
    slow = Faults(rate=1.0, kinds=("slow",), slow_s=0.4)  # delivery is still going on at the kill
    with ContractServer(api_key=API_KEY, agent_id=AGENT, faults=slow) as server:
        env = _env(path, server.base_url, LUCIDIC_EXIT_DEADLINE="20")
        app = spawn_instrumented([script, "hang", "10"], env)
        try:
            assert app.wait_for_line("READY", 30) is not None, app.output()
            (agent_pid,) = _agents(app.output())
            os.killpg(app.pid, signal.SIGKILL)  # the agent has its own session: not hit
            left = _pending(path)
        finally:
            stop(app, timeout=5)
        assert app.returncode == -signal.SIGKILL
        assert left > 0, "everything was delivered before the kill: nothing to prove"
        # It sees the pipe close, delivers what is left within the exit deadline, and ends.
        assert _wait_gone(agent_pid, 30), "the orphaned delivery process did not end"
        assert len(server.delivered_event_ids()) == 10
        assert server.violations == []
    assert _pending(path) == 0  # (a killed application never records its session's end)


def test_an_agent_that_died_is_replaced_by_threads_at_exit(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with ContractServer(api_key=API_KEY, agent_id=AGENT) as server:
        store = Store(path)
        agent = _started_agent(store, server)
        os.kill(agent._proc.pid, signal.SIGKILL)  # out of memory, say, after the last write
        agent._proc.wait(10)
        store.record_session_init("orphaned", {"session_id": "orphaned"})
        supervisor._senders[str(store.path)] = agent
        try:
            supervisor.deliver_at_exit(10.0)
        finally:
            supervisor._senders.pop(str(store.path), None)
            supervisor._exited = False
        assert [b["session_id"] for b in server.inits] == ["orphaned"]
        assert store.outbox_counts()["pending"] == 0
        store.close()


@pytest.mark.parametrize(
    ("executable", "frozen", "runnable"),
    [("python3.11", False, True), ("pypy3", False, True), ("uwsgi", False, False),
     ("myapp", True, False), ("python3", True, False)],
)
def test_only_a_real_python_runs_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, executable: str, frozen: bool,
    runnable: bool,
) -> None:
    binary = tmp_path / executable
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(binary))
    if frozen:
        monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert (agent_module.runnable_python() == str(binary)) is runnable


def test_agent_environment_drops_the_launchers_auto_instrumentation() -> None:
    auto = os.path.join("/venv", "opentelemetry", "instrumentation", "auto_instrumentation")
    env = agent_module.agent_environment(
        {"PYTHONPATH": os.pathsep.join([auto, "/app/src"]), "HOME": "/home/u"}
    )
    assert env["PYTHONPATH"] == "/app/src"
    assert env["OTEL_SDK_DISABLED"] == "true" and env["HOME"] == "/home/u"
    assert "PYTHONPATH" not in agent_module.agent_environment({"PYTHONPATH": auto})


def test_no_python_to_run_falls_back_to_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "store.db")
    settings = load_settings(
        {"LUCIDIC_API_KEY": "k", "LUCIDIC_AGENT_ID": "a", "LUCIDIC_BASE_URL": "http://127.0.0.1:9"}
    )
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    monkeypatch.setattr(supervisor, "_agent_failures", 0)
    delivery: Optional[object] = None
    try:
        delivery = supervisor._start_delivery(store, settings)
        assert isinstance(delivery, Sender)
    finally:
        supervisor._senders.pop(str(store.path), None)
        if isinstance(delivery, Sender):
            delivery.stop(0.5)
        store.close()


def test_agent_answers_a_drain_with_its_counts(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with ContractServer(api_key=API_KEY, agent_id=AGENT) as server:
        store = Store(path)
        store.record_session_init("direct", {"session_id": "direct"})
        store.write_batch([], [{
            "session_id": "direct", "client_event_id": "00000000-0000-4000-8000-000000000001",
            "type": "generic", "payload": {"details": "x"},
            "occurred_at": "2026-11-25T12:00:00+00:00", "duration": 0.1,
        }])
        agent = _started_agent(store, server)
        reply = agent.finish(10.0)
        assert reply is not None, "no answer from the delivery process"
        assert reply["settled"] is True and reply["delivered"] == 2, reply
        assert reply["halted"] is None and not agent.alive
        assert server.violations == []
        store.close()
