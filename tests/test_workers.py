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
from lucidic_otel.context import BAGGAGE_KEY, SESSION_ATTRIBUTE, active_session
from lucidic_otel.processor import PROCESS_SESSION, LucidicSpanProcessor
from lucidic_otel.store import Store
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
    messages = [r.getMessage() for r in caplog.records if r.name == "lucidic_otel"]
    assert len(messages) == 1 and "carry_context" in messages[0], messages


def test_carry_context_survives_a_broken_carrier(pipeline: Pipeline) -> None:
    """A carrier damaged in transit (hand-built, truncated) must not stop the work."""
    wrapped = lucidic_otel.carry_context(child_work)
    wrapped.carrier = {"traceparent": "00-zz", "baggage": "%%%"}  # type: ignore[attr-defined]
    assert wrapped("damaged") is None
