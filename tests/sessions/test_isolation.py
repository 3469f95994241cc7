"""Sessions never leak between concurrent units of work.

1,000 asyncio tasks, each in its own session, interleave at every ``await``; thread pools carry
the session only when the threading instrumentation moves the OTel context into the worker.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
from opentelemetry.instrumentation.threading import ThreadingInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import lucidic_otel
from lucidic_otel.config import get_settings
from lucidic_otel.sdk.processor import PROCESS_SESSION, LucidicSpanProcessor
from lucidic_otel.sessions.context import (
    SEMCONV_SESSION_ATTRIBUTE,
    SESSION_ATTRIBUTE,
    active_session,
)

TASKS = 1000
SPANS_PER_TASK = 4  # request, step, the step's llm call, response
EXPECTED = "test.expected_session"


@pytest.fixture(autouse=True)
def _isolated(lucidic_state: None) -> None:
    """Every test here starts from fresh package state (tests/conftest.py)."""


class Pipeline:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(LucidicSpanProcessor(get_settings()))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test_isolation")

    def finished(self) -> List[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


def audit(spans: List[ReadableSpan]) -> Tuple[int, int]:
    """(wrong, missing): spans whose stamp differs from the session they were created in."""
    wrong = missing = 0
    for span in spans:
        attributes = span.attributes or {}
        expected = attributes.get(EXPECTED)
        stamped = attributes.get(SESSION_ATTRIBUTE)
        if stamped is None:
            missing += 1
        elif stamped != expected or attributes.get(SEMCONV_SESSION_ATTRIBUTE) != expected:
            wrong += 1
    return wrong, missing


# --- asyncio -------------------------------------------------------------------------------


def test_thousand_concurrent_tasks_each_in_its_own_session() -> None:
    pipeline = Pipeline()
    tracer = pipeline.tracer
    mismatches: List[str] = []

    async def handle(i: int, start: asyncio.Event) -> None:
        sid = f"s-{i}"
        await start.wait()  # every task is inside the loop before any opens its session
        async with lucidic_otel.session(sid):
            with tracer.start_as_current_span("request", attributes={EXPECTED: sid}):
                await asyncio.sleep(0)
                with tracer.start_as_current_span("step", attributes={EXPECTED: sid}):
                    await asyncio.sleep(0)
                    if active_session() != sid:
                        mismatches.append(f"{sid} saw {active_session()}")
                    with tracer.start_as_current_span("llm", attributes={EXPECTED: sid}):
                        await asyncio.sleep(0)
                await asyncio.sleep(0)
                with tracer.start_as_current_span("response", attributes={EXPECTED: sid}):
                    pass
        if active_session() is not None:
            mismatches.append(f"{sid} leaked {active_session()} after its scope")

    async def main() -> None:
        start = asyncio.Event()
        tasks = [asyncio.ensure_future(handle(i, start)) for i in range(TASKS)]
        await asyncio.sleep(0)
        start.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        assert active_session() is None  # nothing leaked into the parent task either

    asyncio.run(main())

    spans = pipeline.finished()
    assert len(spans) == TASKS * SPANS_PER_TASK
    assert audit(spans) == (0, 0)
    assert mismatches == []
    per_session: Dict[str, int] = {}
    for span in spans:
        sid = (span.attributes or {})[SESSION_ATTRIBUTE]
        per_session[sid] = per_session.get(sid, 0) + 1  # type: ignore[index]
    assert per_session == {f"s-{i}": SPANS_PER_TASK for i in range(TASKS)}


def test_concurrent_tasks_with_decorators_and_with_session() -> None:
    pipeline = Pipeline()
    tracer = pipeline.tracer

    async def step(sid: str) -> None:
        with tracer.start_as_current_span("step", attributes={EXPECTED: sid}):
            await asyncio.sleep(0)

    async def handle(i: int) -> None:
        sid = f"w-{i}"

        @lucidic_otel.session(sid)
        async def decorated() -> None:
            await asyncio.sleep(0)
            await step(sid)

        await decorated()
        await lucidic_otel.with_session(f"{sid}-b", step, f"{sid}-b")  # type: ignore[misc]

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(handle(i) for i in range(200))), timeout=60)

    asyncio.run(main())
    spans = pipeline.finished()
    assert len(spans) == 400
    assert audit(spans) == (0, 0)


def test_tasks_created_inside_a_session_inherit_it() -> None:
    pipeline = Pipeline()
    tracer = pipeline.tracer

    async def child(sid: str, n: int) -> None:
        await asyncio.sleep(0)
        with tracer.start_as_current_span(f"child-{n}", attributes={EXPECTED: sid}):
            await asyncio.sleep(0)

    async def main() -> None:
        async with lucidic_otel.session("parent-s"):
            tasks = [asyncio.ensure_future(child("parent-s", n)) for n in range(20)]
        # The tasks run after the scope closed, and still belong to it.
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)

    asyncio.run(main())
    spans = pipeline.finished()
    assert len(spans) == 20
    assert audit(spans) == (0, 0)


# --- thread pools --------------------------------------------------------------------------


@pytest.fixture
def threading_instrumented() -> Iterator[None]:
    instrumentor = ThreadingInstrumentor()
    instrumentor.instrument()
    try:
        yield
    finally:
        instrumentor.uninstrument()


def _pool_work(pipeline: Pipeline, expected: Optional[str], n: int) -> Optional[str]:
    attributes = {EXPECTED: expected} if expected else {}
    with pipeline.tracer.start_as_current_span(f"pool-{n}", attributes=attributes) as span:
        return span.attributes.get(SESSION_ATTRIBUTE)  # type: ignore[union-attr]


def test_thread_pool_carries_the_session_with_the_threading_instrumentation(
    threading_instrumented: None,
) -> None:
    pipeline = Pipeline()
    PROCESS_SESSION.session_id = "process-default"
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = []
        for i in range(40):
            sid = f"pool-s-{i % 5}"
            with lucidic_otel.session(sid):
                futures.append(pool.submit(_pool_work, pipeline, sid, i))
        results = [f.result(timeout=30) for f in futures]
    assert results == [f"pool-s-{i % 5}" for i in range(40)]
    spans = pipeline.finished()
    assert len(spans) == 40
    assert audit(spans) == (0, 0)


def test_plain_threads_carry_the_session_with_the_threading_instrumentation(
    threading_instrumented: None,
) -> None:
    pipeline = Pipeline()
    results: List[Optional[str]] = []
    with lucidic_otel.session("thread-s"):
        t = threading.Thread(target=lambda: results.append(_pool_work(pipeline, "thread-s", 0)))
        t.start()
    t.join(timeout=30)
    assert not t.is_alive()
    assert results == ["thread-s"]


def test_thread_pool_without_instrumentation_uses_the_process_default() -> None:
    """Documented behaviour: a plain ThreadPoolExecutor does not copy the OTel context.

    Pool workers start with an empty context, so spans created there fall back to the process
    default session (precedence 4), or get no session when there is none. Use the threading
    instrumentation (it is a dependency), ``contextvars.copy_context().run``, or bind the
    session in the worker with ``with_session``.
    """
    pipeline = Pipeline()
    PROCESS_SESSION.session_id = "process-default"
    with ThreadPoolExecutor(max_workers=2) as pool:
        with lucidic_otel.session("request-s"):
            defaulted = [pool.submit(_pool_work, pipeline, None, i) for i in range(4)]
            explicit = pool.submit(
                lucidic_otel.with_session, "request-s", _pool_work, pipeline, "request-s", 9
            )
        assert [f.result(timeout=30) for f in defaulted] == ["process-default"] * 4
        assert explicit.result(timeout=30) == "request-s"

    PROCESS_SESSION.session_id = None
    with ThreadPoolExecutor(max_workers=2) as pool:
        with lucidic_otel.session("request-s"):
            orphan = pool.submit(_pool_work, pipeline, None, 10)
        assert orphan.result(timeout=30) is None
