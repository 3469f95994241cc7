"""Work handed to other processes: multiprocessing (fork, forkserver, spawn) and pools.

Under the launcher, a program opens a session and submits work to ``Process`` children, a
``Pool`` and a ``ProcessPoolExecutor``. It never calls ``flush``. Exports are held back
(``OTEL_BSP_SCHEDULE_DELAY`` of ten minutes), so the children's spans reach the store only
through their own exit paths: ``os._exit`` (patched in forked children), the SIGTERM handler
(``Pool.terminate``) or ``atexit`` (spawn).

* fork children inherit the context, so even plain work is stamped;
* forkserver and spawn children inherit nothing: plain work is stored unstamped (the
  documented limit), and ``lucidic_otel.carry_context(fn)`` stamps it and continues the
  parent's trace;
* the control: with ``LUCIDIC_FLUSH_ON_FORK_EXIT=false`` fork children lose their spans.

The in-process tests pin ``carry_context`` itself: picklable, restores the context around the
call only, ignores the inbound-baggage trust policy (the carrier is the application's own),
never raises.
"""

from __future__ import annotations

import logging
import pickle
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
from opentelemetry import baggage, trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import lucidic_otel
from lucidic_otel.config import get_settings, reset_settings
from lucidic_otel.outbox.store import Store
from lucidic_otel.sdk.processor import PROCESS_SESSION, LucidicSpanProcessor
from lucidic_otel.sessions.context import BAGGAGE_KEY, SESSION_ATTRIBUTE, active_session
from tests.support.contract_server import ContractServer
from tests.support.launcher import clean_env, run_instrumented, write_script
from tests.support.scenarios import run_workers

TASKS = 4
CHILD_SPANS = 2 * (2 + TASKS + TASKS)  # (child + leaf) x (processes + pool + executor)


# --- under the launcher -------------------------------------------------------------------


def _names(store: Store, session_id: Optional[str]) -> List[str]:
    return sorted(s.name for s in store.session_spans(session_id))


@pytest.mark.parametrize(
    ("method", "modes"),
    [("fork", ("plain", "carry")), ("forkserver", ("plain", "carry")), ("spawn", ("carry",))],
)
def test_children_are_stamped_and_lose_nothing(tmp_path: Path, method: str, modes) -> None:
    run = run_workers(method, tmp_path, modes=modes, tasks=TASKS)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("EXITCODES [0, 0]") == len(modes), run.stdout
    assert "APP DONE" in run.stdout
    outcome = run.outcome
    assert outcome.ok, outcome.problems()
    assert outcome.created == len(modes) * (CHILD_SPANS + 1), outcome.problems()

    with Store(tmp_path / "store.db") as store:
        carried = _names(store, f"mp-{method}-carry")
        assert len(carried) == CHILD_SPANS + 1, carried
        assert {n.split("-")[1] for n in carried if n != "submit"} == {
            "process",
            "pool",
            "executor",
        }
        submit = [s for s in store.session_spans(f"mp-{method}-carry") if s.name == "submit"]
        children = [s for s in store.session_spans(f"mp-{method}-carry") if s.name != "submit"]
        assert {c.trace_id for c in children} == {submit[0].trace_id}  # one trace
        assert len({c.pid for c in children}) >= 3  # really other processes
        if "plain" in modes:
            plain = _names(store, f"mp-{method}-plain")
            unstamped = _names(store, None)
            if method == "fork":  # inherited
                assert len(plain) == CHILD_SPANS + 1 and unstamped == [], unstamped
            else:  # nothing inherited: stored, but without the session
                assert plain == ["submit"] and len(unstamped) == CHILD_SPANS, unstamped


def test_control_fork_children_lose_spans_without_the_exit_flush(tmp_path: Path) -> None:
    """What the patched ``os._exit`` prevents: fork children exit without ``atexit``."""
    run = run_workers(
        "fork",
        tmp_path,
        modes=("plain",),
        tasks=TASKS,
        extra_env={"LUCIDIC_FLUSH_ON_FORK_EXIT": "false"},
    )
    assert run.returncode == 0, run.stderr
    lost = run.outcome.details.get("lost", [])
    assert run.outcome.lost > 0, run.outcome.problems()
    assert {"child-process-0", "child-process-1"} <= set(lost), lost  # type: ignore[arg-type]


# --- pools in plain python, delivery from workers, and programs workers start ----------------

POOL_APP = """
    import multiprocessing as mp, os, sys
    import lucidic_otel
    from opentelemetry import trace

    def work(i):
        with trace.get_tracer("pool").start_as_current_span(f"task-{i}", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 3,
                "gen_ai.usage.output_tokens": 4}) as span:
            return os.getpid(), span.is_recording(), lucidic_otel.current_session_id()

    if __name__ == "__main__":
        sid = lucidic_otel.init(session_name="pool job")
        with mp.get_context(sys.argv[1]).Pool(2) as pool:
            results = pool.map(lucidic_otel.carry_context(work), range(6))
        assert all(recording and got == sid for _, recording, got in results), results
        print("SID", sid, "WORKERS", len({pid for pid, _, _ in results} - {os.getpid()}))
"""


def _pool_run(tmp_path: Path, method: str, launched: bool, **env: str):
    script = write_script(tmp_path, "pool_app.py", POOL_APP)
    run_env = clean_env(LUCIDIC_STORE_PATH=str(tmp_path / "store.db"), **env)
    if launched:
        return run_instrumented([script, method], run_env, timeout=120)
    return subprocess.run([sys.executable, str(script), method], env=run_env, timeout=120,
                          capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    ("method", "launched"),
    [("spawn", False), ("forkserver", False), ("spawn", True)],
    ids=["spawn-plain-python", "forkserver-plain-python", "spawn-launcher"],
)
def test_carried_work_in_a_pool_is_recorded_in_the_parents_session_only(
    tmp_path: Path, method: str, launched: bool
) -> None:
    """``init()`` in a plain ``python``: the spawn/forkserver workers have no telemetry until
    the carried context sets it up as the parent had it; every span is recorded, in the
    parent's session, and no worker adds a session of its own."""
    run = _pool_run(tmp_path, method, launched)
    assert run.returncode == 0, run.stderr
    sid, workers = run.stdout.split()[1], int(run.stdout.split()[3])
    assert workers >= 1, run.stdout
    assert "lucidic-otel" not in run.stderr, run.stderr  # nothing to warn about
    with Store(tmp_path / "store.db") as store:
        sessions = store.list_sessions(limit=10)
        assert [s["session_id"] for s in sessions] == [sid]
        spans = store.session_spans(sid)
    assert sorted(s.name for s in spans) == [f"task-{i}" for i in range(6)]
    assert len({s.pid for s in spans}) == workers  # recorded by the workers themselves


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_leave_what_the_parent_delivers_without_a_false_alarm(
    tmp_path: Path, method: str
) -> None:
    """Thread delivery: a worker's exit finds records still pending in the shared store; the
    parent delivers them all at its exit, so only a real leftover may be warned about."""
    with ContractServer(api_key="pool-key-0123456789", agent_id="pool-agent") as server:
        run = _pool_run(tmp_path, method, True, LUCIDIC_DELIVERY="thread",
                        LUCIDIC_API_KEY=server.api_key, LUCIDIC_AGENT_ID=server.agent_id,
                        LUCIDIC_BASE_URL=server.base_url)
        assert run.returncode == 0, run.stderr
        assert len(server.delivered_event_ids()) == 6
        assert server.violations == []
    assert "not delivered" not in run.stderr, run.stderr
    with Store(tmp_path / "store.db") as store:
        assert store.outbox_counts().get("pending", 0) == 0


WORKER_STARTS_PROGRAMS = """
    import multiprocessing as mp, os, signal, subprocess, sys, time

    def blocked(pid):
        with open(f"/proc/{pid}/status") as f:
            mask = int(next(l for l in f if l.startswith("SigBlk:")).split()[1], 16)
        return bool(mask & (1 << (signal.SIGTERM - 1)))

    def start_and_terminate(_):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        time.sleep(0.3)
        sub_blocked = blocked(child.pid)
        child.terminate()
        sub_status = child.wait(timeout=10)
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        time.sleep(0.3)
        fork_blocked = blocked(pid)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        return blocked(os.getpid()), sub_blocked, sub_status, fork_blocked, os.WTERMSIG(status)

    if __name__ == "__main__":
        with mp.get_context("fork").Pool(1) as pool:
            print("RESULT", *pool.map(start_and_terminate, [0])[0])
"""


def test_programs_a_pool_worker_starts_can_be_terminated(tmp_path: Path) -> None:
    """A pool worker's SIGTERM is blocked (our thread takes it); a program it starts, by
    ``subprocess`` or ``fork``, must get SIGTERM back, or ``terminate()`` would never end it."""
    script = write_script(tmp_path, "starter.py", WORKER_STARTS_PROGRAMS)
    run = run_instrumented([script], clean_env(LUCIDIC_STORE_PATH=str(tmp_path / "s.db")),
                           timeout=120)
    assert run.returncode == 0, run.stderr
    worker, sub_blocked, sub_status, fork_blocked, fork_signal = run.stdout.split()[1:]
    assert worker == "True"  # the premise: the worker itself blocks SIGTERM
    assert (sub_blocked, sub_status) == ("False", str(-signal.SIGTERM))
    # A fork inside a pool worker looks like a multiprocessing child from its stack, so it
    # may take SIGTERM on a thread of its own (blocked mask) or get it back; either way the
    # signal ends it, which is what matters.
    assert fork_blocked in ("True", "False")
    assert fork_signal == str(int(signal.SIGTERM))


# --- carry_context in-process --------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated(lucidic_state: None) -> None:
    """Every test here starts from fresh package state (tests/conftest.py)."""


class Pipeline:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.processor = LucidicSpanProcessor(get_settings())
        self.provider.add_span_processor(self.processor)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test_workers")

    def span(self, name: str):
        (span,) = [s for s in self.exporter.get_finished_spans() if s.name == name]
        return span


TRACER: List[trace.Tracer] = []


def child_work(name: str) -> Optional[str]:
    """A module-level function, so that it pickles by reference like real worker code."""
    TRACER[0].start_span(name).end()
    return active_session()


def _run_in_fresh_thread(fn, *args):
    """Call ``fn`` on a thread that starts from an empty context (like a new process)."""
    result: list = []

    def target() -> None:
        token = attach(Context())
        try:
            result.append(fn(*args))
        finally:
            detach(token)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(10)
    return result[0]


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    p = Pipeline()
    TRACER[:] = [p.tracer]
    yield p
    TRACER.clear()


def test_carry_context_pickles_and_restores_session_and_trace(pipeline: Pipeline) -> None:
    with lucidic_otel.session("carried-1"):
        with pipeline.tracer.start_as_current_span("parent") as parent:
            wrapped = pickle.loads(pickle.dumps(lucidic_otel.carry_context(child_work)))
    assert _run_in_fresh_thread(child_work, "bare") is None  # the control
    assert _run_in_fresh_thread(wrapped, "carried") == "carried-1"

    span = pipeline.span("carried")
    assert span.attributes[SESSION_ATTRIBUTE] == "carried-1"
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
    assert SESSION_ATTRIBUTE not in (pipeline.span("bare").attributes or {})


def test_carry_context_binds_only_around_the_call(pipeline: Pipeline) -> None:
    with lucidic_otel.session("carried-2"):
        wrapped = lucidic_otel.carry_context(child_work)
    with lucidic_otel.session("local-2"):
        assert wrapped("inner") == "carried-2"
        assert active_session() == "local-2"
        pipeline.tracer.start_span("after").end()
    assert pipeline.span("inner").attributes[SESSION_ATTRIBUTE] == "carried-2"
    assert pipeline.span("after").attributes[SESSION_ATTRIBUTE] == "local-2"


def test_carry_context_is_not_subject_to_the_inbound_trust_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At an edge with ``LUCIDIC_BAGGAGE_TRUST=ignore`` the application's own carrier must
    still work: it travels by pickle, not through a caller's headers."""
    monkeypatch.setenv("LUCIDIC_BAGGAGE_TRUST", "ignore")
    reset_settings()
    p = Pipeline()
    TRACER[:] = [p.tracer]
    try:
        with lucidic_otel.session("edge-1"):
            wrapped = pickle.loads(pickle.dumps(lucidic_otel.carry_context(child_work)))
        assert _run_in_fresh_thread(wrapped, "edge") == "edge-1"
        assert p.span("edge").attributes[SESSION_ATTRIBUTE] == "edge-1"
    finally:
        TRACER.clear()


def test_carry_context_carries_the_process_default(pipeline: Pipeline) -> None:
    PROCESS_SESSION.session_id = "process-1"  # init(): spawn children would not know it
    wrapped = pickle.loads(pickle.dumps(lucidic_otel.carry_context(child_work)))
    PROCESS_SESSION.session_id = None
    assert _run_in_fresh_thread(wrapped, "default") == "process-1"


def test_carry_context_outside_a_session_carries_only_the_trace(pipeline: Pipeline) -> None:
    with pipeline.tracer.start_as_current_span("root") as root:
        wrapped = pickle.loads(pickle.dumps(lucidic_otel.carry_context(child_work)))
    assert _run_in_fresh_thread(wrapped, "no-session") is None
    span = pipeline.span("no-session")
    assert SESSION_ATTRIBUTE not in (span.attributes or {})
    assert span.context.trace_id == root.get_span_context().trace_id


def test_carry_context_detaches_when_the_work_raises(pipeline: Pipeline) -> None:
    def boom() -> None:
        raise KeyError("app error")

    with lucidic_otel.session("raises-1"):
        wrapped = lucidic_otel.carry_context(boom)
    with pytest.raises(KeyError, match="app error"):
        wrapped()
    assert active_session() is None
    assert baggage.get_baggage(BAGGAGE_KEY) is None


def test_carry_context_rejects_a_non_callable_without_raising(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="lucidic_otel"):
        assert lucidic_otel.carry_context(42) == 42  # type: ignore[arg-type]
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("lucidic_otel")]
    assert len(messages) == 1 and "carry_context" in messages[0], messages


def test_carry_context_survives_a_broken_carrier(pipeline: Pipeline) -> None:
    """A carrier damaged in transit (hand-built, truncated) must not stop the work."""
    wrapped = lucidic_otel.carry_context(child_work)
    wrapped.carrier = {"traceparent": "00-zz", "baggage": "%%%"}  # type: ignore[attr-defined]
    assert wrapped("damaged") is None
