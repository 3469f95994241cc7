"""The public session API (README: Sessions).

In-process tests use a local ``TracerProvider``. ``init`` and ``with_lucidic`` configure the
*global* SDK when none is set, which a pytest process can do only once, so they run in child
interpreters and report what they saw on stdout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional

import pytest
from opentelemetry import baggage, trace
from opentelemetry.context import Context, attach, detach, get_current
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support.launcher import clean_env

import lucidic_otel
from lucidic_otel.config import ConfigError, get_settings, reset_settings
from lucidic_otel.sdk.processor import PROCESS_SESSION, LucidicSpanProcessor
from lucidic_otel.sessions.context import BAGGAGE_KEY, SESSION_ATTRIBUTE, active_session
from lucidic_otel.sessions.lifecycle import END, INIT, JOURNAL, REGISTRY
from lucidic_otel.sessions.lifecycle import LifecycleRecord as Record

API_WARNINGS = "lucidic_otel"


@pytest.fixture(autouse=True)
def _isolated(lucidic_state: None) -> None:
    """Every test here starts from fresh package state (tests/conftest.py)."""


@pytest.fixture
def strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCIDIC_STRICT", "1")
    reset_settings()


class Pipeline:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(LucidicSpanProcessor(get_settings()))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test_api")

    def sessions(self) -> Dict[str, Optional[str]]:
        return {s.name: (s.attributes or {}).get(SESSION_ATTRIBUTE) for s in self.finished()}

    def finished(self) -> List[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline()


def new_id() -> str:
    return f"t-{uuid.uuid4()}"


def records_for(sid: str) -> List[Record]:
    """Every lifecycle record of ``sid`` written so far (waiting ends included)."""
    REGISTRY.drain()
    return [r for r in JOURNAL.drain() if r[1] == sid]


def api_warnings(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if (r.name == API_WARNINGS or r.name.startswith(API_WARNINGS + "."))
        and r.levelno == logging.WARNING
    ]


def where() -> Optional[str]:
    """The session bound in the current context (what the API set, nothing inferred)."""
    return active_session()


# --- session(): context manager ------------------------------------------------------------


def test_session_as_a_context_manager(pipeline: Pipeline) -> None:
    sid = new_id()
    with lucidic_otel.session(sid) as bound:
        assert bound == sid
        assert where() == sid
        assert baggage.get_baggage(BAGGAGE_KEY) == sid
        assert lucidic_otel.current_session_id() == sid
        with pipeline.tracer.start_as_current_span("inside"):
            pass
    assert where() is None
    assert baggage.get_baggage(BAGGAGE_KEY) is None
    assert lucidic_otel.current_session_id() is None
    with pipeline.tracer.start_as_current_span("outside"):
        pass
    assert pipeline.sessions() == {"inside": sid, "outside": None}


def test_session_exits_cleanly_on_exception() -> None:
    sid = new_id()
    with pytest.raises(KeyError):
        with lucidic_otel.session(sid):
            raise KeyError("boom")
    assert where() is None


def test_nesting_restores_the_outer_session(pipeline: Pipeline) -> None:
    outer, inner = new_id(), new_id()
    with lucidic_otel.session(outer):
        with lucidic_otel.session(inner):
            assert where() == inner
            assert baggage.get_baggage(BAGGAGE_KEY) == inner
            with pipeline.tracer.start_as_current_span("inner"):
                pass
        assert where() == outer
        assert baggage.get_baggage(BAGGAGE_KEY) == outer
        with pipeline.tracer.start_as_current_span("outer"):
            pass
    assert where() is None
    assert pipeline.sessions() == {"inner": inner, "outer": outer}


def test_the_same_scope_object_can_be_reentered() -> None:
    a = lucidic_otel.session(new_id())
    b = lucidic_otel.session(new_id())
    with a:
        with b:
            with a:
                assert where() == a.session_id
            assert where() == b.session_id
        assert where() == a.session_id
    assert where() is None


def test_one_scope_object_entered_by_overlapping_threads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shared = lucidic_otel.session(new_id())
    a_inside, b_inside = threading.Event(), threading.Event()
    a_left = threading.Event()
    after: Dict[str, Optional[str]] = {}

    def first() -> None:
        with shared:
            a_inside.set()
            b_inside.wait(10)  # b enters after a ...
        a_left.set()  # ... and a leaves first
        after["a"] = where()

    def second() -> None:
        a_inside.wait(10)
        with shared:
            b_inside.set()
            a_left.wait(10)
            after["b-inside"] = where()
        after["b"] = where()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    with caplog.at_level(logging.ERROR):
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=15)
    assert not any(t.is_alive() for t in threads)
    assert after == {"a": None, "b-inside": shared.session_id, "b": None}
    assert not [r for r in caplog.records if "detach" in r.getMessage()]


def test_one_scope_object_entered_by_interleaved_tasks(caplog: pytest.LogCaptureFixture) -> None:
    shared = lucidic_otel.session(new_id())

    async def task(hold: int) -> List[Optional[str]]:
        async with shared:
            for _ in range(hold):
                await asyncio.sleep(0)
            inside = where()
        await asyncio.sleep(0)
        return [inside, where()]

    async def main() -> List[List[Optional[str]]]:
        return list(await asyncio.gather(task(1), task(5), task(3)))

    with caplog.at_level(logging.ERROR):
        results = asyncio.run(main())
    assert results == [[shared.session_id, None]] * 3
    assert not [r for r in caplog.records if "detach" in r.getMessage()]


def test_the_span_a_scope_opens_in_joins_it_unless_it_has_a_session(pipeline: Pipeline) -> None:
    """A server span started before the handler's scope becomes part of the scope's session;
    one that already carries a session (from upstream baggage, an outer scope) keeps it, and
    only the enclosing span is reached, never its ancestors."""
    sid, outer = new_id(), new_id()
    with pipeline.tracer.start_as_current_span("grandparent"):
        with pipeline.tracer.start_as_current_span("before"):
            with lucidic_otel.session(sid):
                with pipeline.tracer.start_as_current_span("child"):
                    pass
    with lucidic_otel.session(outer):
        with pipeline.tracer.start_as_current_span("stamped"):
            token = lucidic_otel.set_active_session(sid)
            pipeline.tracer.start_span("inner").end()
            lucidic_otel.clear_active_session(token)
    ended = pipeline.tracer.start_span("ended")
    ended.end()
    with trace.use_span(ended), lucidic_otel.session(sid):
        pass
    assert pipeline.sessions() == {
        "grandparent": None, "before": sid, "child": sid, "stamped": outer, "inner": sid,
        "ended": None,
    }


def test_session_as_an_async_context_manager(pipeline: Pipeline) -> None:
    sid = new_id()

    async def main() -> Optional[str]:
        async with lucidic_otel.session(sid) as bound:
            assert bound == sid
            await asyncio.sleep(0)
            assert where() == sid
            with pipeline.tracer.start_as_current_span("async-inside"):
                await asyncio.sleep(0)
        return where()

    assert asyncio.run(main()) is None
    assert pipeline.sessions() == {"async-inside": sid}


# --- session(): decorator ------------------------------------------------------------------


def test_decorating_a_sync_function(pipeline: Pipeline) -> None:
    sid = new_id()

    @lucidic_otel.session(sid)
    def work(x: int, *, y: int) -> int:
        """Docstring kept."""
        assert where() == sid
        with pipeline.tracer.start_as_current_span("sync"):
            pass
        return x + y

    assert work(1, y=2) == 3
    assert work.__name__ == "work" and work.__doc__ == "Docstring kept."
    assert where() is None
    assert pipeline.sessions() == {"sync": sid}


def test_decorated_function_restores_on_exception() -> None:
    @lucidic_otel.session(new_id())
    def fails() -> None:
        raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        fails()
    assert where() is None


def test_decorator_binds_at_every_call_not_at_decoration() -> None:
    sid = new_id()

    @lucidic_otel.session(sid)
    def probe() -> Optional[str]:
        return where()

    outer = new_id()
    with lucidic_otel.session(outer):
        assert probe() == sid
        assert where() == outer
    assert probe() == sid


def test_decorating_a_coroutine_function(pipeline: Pipeline) -> None:
    sid = new_id()

    @lucidic_otel.session(sid)
    async def work(x: int) -> int:
        await asyncio.sleep(0)
        assert where() == sid
        with pipeline.tracer.start_as_current_span("async"):
            await asyncio.sleep(0)
        return x * 2

    async def main() -> int:
        result = await work(21)
        assert where() is None
        return result

    assert asyncio.iscoroutinefunction(work)
    assert asyncio.run(main()) == 42
    assert pipeline.sessions() == {"async": sid}


def test_decorating_a_generator_function(pipeline: Pipeline) -> None:
    sid = new_id()
    seen_inside: List[Optional[str]] = []

    @lucidic_otel.session(sid)
    def produce(n: int) -> Iterator[int]:
        for i in range(n):
            seen_inside.append(where())
            with pipeline.tracer.start_as_current_span(f"item-{i}"):
                received = yield i
            seen_inside.append(where())
            if received is not None:
                yield received * 10
        return None

    seen_between: List[Optional[str]] = []
    gen = produce(3)
    assert next(gen) == 0
    seen_between.append(where())
    assert gen.send(7) == 70  # send() reaches the inner generator
    seen_between.append(where())
    rest = list(gen)
    seen_between.append(where())
    assert rest == [1, 2]
    assert seen_inside and all(s == sid for s in seen_inside)
    assert seen_between == [None, None, None]
    # The span open across a yield was started inside the session.
    assert pipeline.sessions() == {"item-0": sid, "item-1": sid, "item-2": sid}


def test_generator_return_value_is_kept() -> None:
    @lucidic_otel.session(new_id())
    def gen() -> Iterator[int]:
        yield 1
        return 99

    def delegate() -> Iterator[int]:
        result = yield from gen()
        yield result

    assert list(delegate()) == [1, 99]


def test_decorated_generator_in_another_session_between_yields() -> None:
    sid, caller = new_id(), new_id()

    @lucidic_otel.session(sid)
    def produce() -> Iterator[Optional[str]]:
        yield where()
        yield where()

    with lucidic_otel.session(caller):
        results = []
        for item in produce():
            results.append(item)
            assert where() == caller
    assert results == [sid, sid]


def test_throw_and_close_reach_the_decorated_generator() -> None:
    sid = new_id()
    events: List[Any] = []

    @lucidic_otel.session(sid)
    def produce() -> Iterator[str]:
        try:
            yield "first"
        except ValueError as exc:
            events.append(("caught", str(exc), where()))
            yield "recovered"
        try:
            yield "second"
        finally:
            events.append(("closed", where()))

    gen = produce()
    assert next(gen) == "first"
    assert gen.throw(ValueError("bad")) == "recovered"
    assert where() is None
    assert next(gen) == "second"
    gen.close()
    assert where() is None
    assert events == [("caught", "bad", sid), ("closed", sid)]


def test_decorating_an_async_generator_function(pipeline: Pipeline) -> None:
    sid = new_id()
    seen_inside: List[Optional[str]] = []

    @lucidic_otel.session(sid)
    async def produce(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0)
            seen_inside.append(where())
            with pipeline.tracer.start_as_current_span(f"aitem-{i}"):
                received = yield i
            if received is not None:
                yield received + 100

    async def main() -> List[Any]:
        seen_between: List[Optional[str]] = []
        agen = produce(3)
        first = await agen.__anext__()
        seen_between.append(where())
        sent = await agen.asend(5)
        seen_between.append(where())
        rest = [item async for item in agen]
        seen_between.append(where())
        return [first, sent, rest, seen_between]

    first, sent, rest, seen_between = asyncio.run(main())
    assert (first, sent, rest) == (0, 105, [1, 2])
    assert seen_between == [None, None, None]
    assert seen_inside and all(s == sid for s in seen_inside)
    assert pipeline.sessions() == {"aitem-0": sid, "aitem-1": sid, "aitem-2": sid}


def test_athrow_and_aclose_reach_the_decorated_async_generator() -> None:
    sid = new_id()
    events: List[Any] = []

    @lucidic_otel.session(sid)
    async def produce() -> AsyncIterator[str]:
        try:
            yield "first"
        except ValueError as exc:
            events.append(("caught", str(exc), where()))
            yield "recovered"
        try:
            yield "second"
        finally:
            events.append(("closed", where()))

    async def main() -> None:
        agen = produce()
        assert await agen.__anext__() == "first"
        assert await agen.athrow(ValueError("bad")) == "recovered"
        assert where() is None
        assert await agen.__anext__() == "second"
        await agen.aclose()
        assert where() is None

    asyncio.run(main())
    assert events == [("caught", "bad", sid), ("closed", sid)]


# --- with_session --------------------------------------------------------------------------


def test_with_session_sync_returns_the_result(pipeline: Pipeline) -> None:
    sid = new_id()

    def work(a: int, b: int = 0) -> Any:
        with pipeline.tracer.start_as_current_span("ws"):
            return (a + b, where())

    assert lucidic_otel.with_session(sid, work, 1, b=2) == (3, sid)
    assert where() is None
    assert pipeline.sessions() == {"ws": sid}


def test_with_session_async_returns_an_awaitable() -> None:
    sid = new_id()

    async def work(a: int) -> Any:
        await asyncio.sleep(0)
        return (a, where())

    async def main() -> Any:
        awaitable = lucidic_otel.with_session(sid, work, 4)
        assert asyncio.iscoroutine(awaitable)
        assert where() is None  # nothing bound until it runs
        result = await awaitable
        assert where() is None
        return result

    assert asyncio.run(main()) == (4, sid)


# --- set_active_session / clear_active_session ---------------------------------------------


def test_set_then_clear_with_token_restores_nothing() -> None:
    sid = new_id()
    token = lucidic_otel.set_active_session(sid)
    assert token is not None
    assert where() == sid
    assert baggage.get_baggage(BAGGAGE_KEY) == sid
    lucidic_otel.clear_active_session(token)
    assert where() is None
    assert baggage.get_baggage(BAGGAGE_KEY) is None


def test_clear_with_token_restores_the_previous_session() -> None:
    outer, inner = new_id(), new_id()
    with lucidic_otel.session(outer):
        token = lucidic_otel.set_active_session(inner)
        assert where() == inner
        lucidic_otel.clear_active_session(token)
        assert where() == outer
        assert baggage.get_baggage(BAGGAGE_KEY) == outer


def test_clear_without_token_unbinds(pipeline: Pipeline) -> None:
    outer = new_id()
    PROCESS_SESSION.session_id = "process-default"
    with lucidic_otel.session(outer):
        lucidic_otel.clear_active_session()
        assert where() is None
        assert baggage.get_baggage(BAGGAGE_KEY) is None
        assert lucidic_otel.current_session_id() == "process-default"
        with pipeline.tracer.start_as_current_span("cleared"):
            pass
    assert pipeline.sessions() == {"cleared": "process-default"}


def test_set_active_session_in_a_detached_thread(pipeline: Pipeline) -> None:
    sid = new_id()
    seen: List[Optional[str]] = []

    def consumer() -> None:
        token = lucidic_otel.set_active_session(sid)
        try:
            with pipeline.tracer.start_as_current_span("thread-work"):
                seen.append(where())
        finally:
            lucidic_otel.clear_active_session(token)
        seen.append(where())

    t = threading.Thread(target=consumer)
    t.start()
    t.join(timeout=10)
    assert not t.is_alive()
    assert seen == [sid, None]
    assert where() is None  # the caller's thread was never touched
    assert pipeline.sessions() == {"thread-work": sid}


# --- invalid ids ---------------------------------------------------------------------------


BAD_IDS = ["has space", "x" * 129, "", "semi;colon"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_invalid_id_in_session_warns_and_runs_without_it(
    bad: str, caplog: pytest.LogCaptureFixture, pipeline: Pipeline
) -> None:
    with caplog.at_level(logging.WARNING, logger=API_WARNINGS):
        with lucidic_otel.session(bad) as bound:
            assert bound is None
            assert where() is None
            with pipeline.tracer.start_as_current_span("unscoped"):
                pass
    messages = api_warnings(caplog)
    assert len(messages) == 1
    assert messages[0].startswith("lucidic-otel: session: session_id ")
    assert "running without this session" in messages[0]
    assert pipeline.sessions() == {"unscoped": None}


def test_invalid_id_keeps_the_enclosing_session(caplog: pytest.LogCaptureFixture) -> None:
    outer = new_id()
    with caplog.at_level(logging.WARNING, logger=API_WARNINGS):
        with lucidic_otel.session(outer):
            with lucidic_otel.session("bad id"):
                assert where() == outer

            @lucidic_otel.session("bad id")
            def work() -> Optional[str]:
                return where()

            assert work() == outer
            assert lucidic_otel.with_session("bad id", where) == outer
        assert where() is None
    assert len(api_warnings(caplog)) == 3


def test_non_str_id_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=API_WARNINGS):
        with lucidic_otel.session(12345):  # type: ignore[arg-type]
            assert where() is None
    messages = api_warnings(caplog)
    assert len(messages) == 1 and "must be a str, got int" in messages[0]


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: lucidic_otel.set_active_session("bad id"), "set_active_session"),
        (lambda: lucidic_otel.end_session("bad id"), "end_session"),
        (lambda: lucidic_otel.with_session("bad id", lambda: None), "with_session"),
        (lambda: lucidic_otel.session("bad id").__enter__(), "session"),
    ],
)
def test_invalid_id_warning_names_the_call_and_argument(
    call: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=API_WARNINGS):
        result = call()
    if name == "set_active_session":
        lucidic_otel.clear_active_session(result)
    if name == "end_session":
        assert result is False
    messages = api_warnings(caplog)
    assert len(messages) == 1
    assert messages[0].startswith(f"lucidic-otel: {name}: session_id 'bad id' ")
    assert "[A-Z a-z 0-9 . _ : -]" in messages[0]


def test_invalid_set_active_session_token_still_restores() -> None:
    outer = new_id()
    with lucidic_otel.session(outer):
        token = lucidic_otel.set_active_session("bad id")
        assert where() == outer
        lucidic_otel.clear_active_session(token)
        assert where() == outer


def test_strict_mode_raises_on_invalid_ids(strict: None) -> None:
    with pytest.raises(ConfigError, match="session: session_id 'bad id'"):
        lucidic_otel.session("bad id")
    with pytest.raises(ConfigError, match="set_active_session"):
        lucidic_otel.set_active_session("bad id")
    with pytest.raises(ConfigError, match="end_session"):
        lucidic_otel.end_session("bad id")
    with pytest.raises(ConfigError, match="is_successful"):
        lucidic_otel.end_session(new_id(), is_successful="yes")  # type: ignore[arg-type]
    assert where() is None


def started(sid: str) -> str:
    """``sid`` after a scope of it ran here: a session this process started."""
    with lucidic_otel.session(sid):
        pass
    return sid


# --- end_session ---------------------------------------------------------------------------


def test_end_session_is_idempotent() -> None:
    sid = new_id()
    with lucidic_otel.session(sid):
        pass
    assert lucidic_otel.end_session(sid) is True
    assert lucidic_otel.end_session(sid) is False
    records = records_for(sid)
    assert [r[0] for r in records] == [INIT, END]
    assert records[1] == (END, sid, {"session_id": sid, "is_finished": True})


def test_end_session_records_only_the_given_fields() -> None:
    sid = started(new_id())
    assert lucidic_otel.end_session(
        sid, is_successful=True, session_eval=1, session_eval_reason="perfect"
    )
    assert lucidic_otel.end_session(sid, is_successful=False) is False
    ends = [r for r in records_for(sid) if r[0] == END]
    assert ends == [
        (
            END,
            sid,
            {
                "session_id": sid,
                "is_finished": True,
                "is_successful": True,
                "session_eval": 1.0,
                "session_eval_reason": "perfect",
            },
        )
    ]
    assert isinstance(ends[0][2]["session_eval"], float)


def test_end_session_from_another_thread() -> None:
    sid = new_id()
    results: List[bool] = []
    with lucidic_otel.session(sid):
        threads = [
            threading.Thread(target=lambda: results.append(lucidic_otel.end_session(sid)))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert sorted(results) == [False] * 7 + [True]
    ends = [r for r in records_for(sid) if r[0] == END]
    assert len(ends) == 1


def test_end_session_defaults_to_the_current_session() -> None:
    sid = new_id()
    with lucidic_otel.session(sid):
        assert lucidic_otel.end_session(is_successful_reason="done") is True
    ends = [r for r in records_for(sid) if r[0] == END]
    assert ends == [
        (END, sid, {"session_id": sid, "is_finished": True, "is_successful_reason": "done"})
    ]


def test_end_session_of_the_process_default_clears_it() -> None:
    sid = new_id()
    REGISTRY.open(sid, auto_end=True)  # what init() does
    PROCESS_SESSION.session_id = sid
    assert lucidic_otel.current_session_id() == sid
    assert lucidic_otel.end_session() is True
    assert PROCESS_SESSION.session_id is None
    assert lucidic_otel.current_session_id() is None


def test_end_session_of_a_joined_session_needs_an_explicit_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sid = new_id()
    PROCESS_SESSION.session_id = sid  # joined: LUCIDIC_SESSION_ID alone, or inbound baggage
    with caplog.at_level(logging.WARNING, logger=API_WARNINGS):
        assert lucidic_otel.end_session() is False
    assert "joined from upstream" in caplog.text
    assert [r for r in records_for(sid) if r[0] == END] == []
    assert lucidic_otel.end_session(sid) is True


def test_end_session_without_a_current_session(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=API_WARNINGS):
        assert lucidic_otel.end_session() is False
    messages = api_warnings(caplog)
    assert len(messages) == 1
    assert "no current session" in messages[0] and "session_id" in messages[0]
    REGISTRY.drain()
    assert [r for r in JOURNAL.drain() if r[0] == END] == []


def test_invalid_end_fields_are_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sid = started(new_id())
    with caplog.at_level(logging.WARNING, logger=API_WARNINGS):
        assert (
            lucidic_otel.end_session(
                sid,
                session_eval=2,
                is_successful="yes",  # type: ignore[arg-type]
                session_eval_reason="kept",
            )
            is True
        )
    messages = api_warnings(caplog)
    assert len(messages) == 2
    assert any("session_eval=2" in m and "0.0 to 1.0" in m for m in messages)
    assert any("is_successful='yes'" in m and "a bool" in m for m in messages)
    ends = [r for r in records_for(sid) if r[0] == END]
    assert ends == [
        (END, sid, {"session_id": sid, "is_finished": True, "session_eval_reason": "kept"})
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("session_eval", True),
        ("session_eval", -0.1),
        ("session_eval", "0.5"),
        ("is_successful", 1),
        ("is_successful_reason", 5),
        ("session_eval_reason", ["x"]),
    ],
)
def test_each_invalid_end_field_is_dropped(
    field: str, value: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sid = started(new_id())
    with caplog.at_level(logging.WARNING, logger=API_WARNINGS):
        assert lucidic_otel.end_session(sid, **{field: value}) is True
    assert len(api_warnings(caplog)) == 1
    ends = [r for r in records_for(sid) if r[0] == END]
    assert ends == [(END, sid, {"session_id": sid, "is_finished": True})]


# --- current_session_id --------------------------------------------------------------------


def test_current_session_id_follows_precedence(pipeline: Pipeline) -> None:
    assert lucidic_otel.current_session_id() is None
    PROCESS_SESSION.session_id = "process-default"
    assert lucidic_otel.current_session_id() == "process-default"
    sid = new_id()
    with lucidic_otel.session(sid):
        assert lucidic_otel.current_session_id() == sid
    # A stamped local span makes its session current for work under it.
    with lucidic_otel.session(sid):
        span = pipeline.tracer.start_span("stamped")
    with trace.use_span(span, end_on_exit=True):
        assert where() is None
        assert lucidic_otel.current_session_id() == sid
    # Inbound baggage, as a propagator would leave it.
    token = attach(baggage.set_baggage(BAGGAGE_KEY, "from-upstream"))
    try:
        assert lucidic_otel.current_session_id() == "from-upstream"
    finally:
        detach(token)


# --- inject_env / extract_env --------------------------------------------------------------


def test_inject_and_extract_env_round_trip(pipeline: Pipeline) -> None:
    sid = new_id()
    env: Dict[str, str] = {"PATH": "/bin"}
    with lucidic_otel.session(sid):
        with pipeline.tracer.start_as_current_span("parent") as parent:
            returned = lucidic_otel.inject_env(env)
    assert returned is env
    assert env["PATH"] == "/bin"
    assert f"lucidic.session_id={sid}" in env["BAGGAGE"]
    ctx = parent.get_span_context()
    assert env["TRACEPARENT"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"

    extracted = lucidic_otel.extract_env(env)
    assert isinstance(extracted, Context)
    assert baggage.get_baggage(BAGGAGE_KEY, extracted) == sid
    remote = trace.get_current_span(extracted).get_span_context()
    assert remote.is_remote and remote.trace_id == ctx.trace_id and remote.span_id == ctx.span_id
    # The processor of the "child" resolves the same session from what it extracted.
    assert LucidicSpanProcessor(get_settings()).session_for(extracted) == sid
    child = pipeline.tracer.start_span("child", context=extracted)
    child.end()
    assert (child.attributes or {}).get(SESSION_ATTRIBUTE) == sid
    assert child.parent is not None and child.parent.span_id == ctx.span_id


def test_inject_env_removes_stale_carriers() -> None:
    env = {
        "TRACEPARENT": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "TRACESTATE": "vendor=stale",
        "BAGGAGE": "lucidic.session_id=stale",
        "KEEP": "1",
    }
    lucidic_otel.inject_env(env)
    assert env == {"KEEP": "1"}


def test_inject_env_replaces_a_stale_traceparent(pipeline: Pipeline) -> None:
    stale = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    env = {"TRACEPARENT": stale}
    with pipeline.tracer.start_as_current_span("fresh") as span:
        lucidic_otel.inject_env(env)
    assert env["TRACEPARENT"] != stale
    assert f"{span.get_span_context().trace_id:032x}" in env["TRACEPARENT"]


def test_inject_env_carries_the_process_default() -> None:
    PROCESS_SESSION.session_id = "process-default"
    env: Dict[str, str] = {}
    lucidic_otel.inject_env(env)
    assert env["BAGGAGE"] == "lucidic.session_id=process-default"
    assert "TRACEPARENT" not in env  # no span: no trace to join
    assert get_current().get("BAGGAGE") is None
    assert baggage.get_baggage(BAGGAGE_KEY) is None  # the caller's context is unchanged


def test_inject_env_defaults_to_a_copy_of_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACEPARENT", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    sid = new_id()
    with lucidic_otel.session(sid):
        env = lucidic_otel.inject_env()
    assert env is not os.environ
    assert "TRACEPARENT" not in env
    assert os.environ["TRACEPARENT"].startswith("00-0af7")  # the parent's own env is untouched
    assert env["BAGGAGE"] == f"lucidic.session_id={sid}"
    assert env["PATH"] == os.environ["PATH"]


def test_extract_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAGGAGE", "lucidic.session_id=from-env,other=1")
    ctx = lucidic_otel.extract_env()
    assert baggage.get_baggage(BAGGAGE_KEY, ctx) == "from-env"
    assert baggage.get_baggage("other", ctx) == "1"


def test_propagation_off_carries_no_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCIDIC_PROPAGATE", "false")
    reset_settings()
    sid = new_id()
    env: Dict[str, str] = {}
    with lucidic_otel.session(sid):
        assert where() == sid
        assert baggage.get_baggage(BAGGAGE_KEY) is None
        lucidic_otel.inject_env(env)
    assert "BAGGAGE" not in env


def test_signed_mode_signs_outbound_baggage(monkeypatch: pytest.MonkeyPatch) -> None:
    from lucidic_otel.ids import sign_session_id

    secret = "0123456789abcdef-shared"
    monkeypatch.setenv("LUCIDIC_BAGGAGE_TRUST", "signed")
    monkeypatch.setenv("LUCIDIC_BAGGAGE_SECRET", secret)
    reset_settings()
    sid = new_id()
    env: Dict[str, str] = {}
    with lucidic_otel.session(sid):
        assert lucidic_otel.current_session_id() == sid
        lucidic_otel.inject_env(env)
    signed = sign_session_id(sid, secret.encode())
    assert env["BAGGAGE"] == f"lucidic.session_id={signed}"
    # A downstream process sharing the secret stamps the bare id.
    extracted = lucidic_otel.extract_env(env)
    assert LucidicSpanProcessor(get_settings()).session_for(extracted) == sid


# --- init and with_lucidic, in child interpreters ------------------------------------------


_CHILD_PRELUDE = """
import atexit, json, sys
from lucidic_otel.sessions import lifecycle as sessions

def report(tag, value):
    print(tag, json.dumps(value), flush=True)

# Registered before init, so it runs after lucidic-otel's own exit handler (atexit is LIFO).
atexit.register(lambda: report("ATEXIT", sessions.JOURNAL.drain()))
"""


def run_child(code: str, **env: str) -> Dict[str, Any]:
    """Run ``code`` in a fresh interpreter; returns the ``TAG json`` lines it printed."""
    child_env = clean_env(**{"OTEL_TRACES_EXPORTER": "none", "PYTHONPATH": None, **env})
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD_PRELUDE + textwrap.dedent(code)],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out: Dict[str, Any] = {"stdout": proc.stdout, "stderr": proc.stderr}
    for line in proc.stdout.splitlines():
        tag, _, value = line.partition(" ")
        if tag.isupper() and value:
            out[tag] = json.loads(value)
    return out


def test_init_in_a_plain_interpreter() -> None:
    out = run_child(
        """
        import lucidic_otel
        from lucidic_otel.sdk.processor import PROCESS_SESSION
        from opentelemetry import trace
        sid = lucidic_otel.init("nightly", tags=["a", "b"], task="summarise")
        report("SID", sid)
        report("DEFAULT", PROCESS_SESSION.session_id)
        report("CURRENT", lucidic_otel.current_session_id())
        report("PROVIDER", type(trace.get_tracer_provider()).__name__)
        with trace.get_tracer("child").start_as_current_span("work") as span:
            report("STAMP", span.attributes.get("lucidic.session_id"))
        report("JOURNAL", sessions.JOURNAL.drain())
        """
    )
    sid = out["SID"]
    assert uuid.UUID(sid).version == 4
    assert out["DEFAULT"] == sid and out["CURRENT"] == sid and out["STAMP"] == sid
    assert out["PROVIDER"] == "TracerProvider"
    assert out["JOURNAL"] == [
        [
            INIT,
            sid,
            {"session_id": sid, "session_name": "nightly", "task": "summarise", "tags": ["a", "b"]},
        ]
    ]
    # auto_end (the default) ends the session at exit, before our late atexit handler runs.
    assert out["ATEXIT"] == [[END, sid, {"session_id": sid, "is_finished": True}]]


def test_init_with_an_explicit_id_and_no_auto_end() -> None:
    out = run_child(
        """
        import lucidic_otel
        report("SID", lucidic_otel.init(session_id="given:id-1", auto_end=False))
        report("JOURNAL", sessions.JOURNAL.drain())
        """
    )
    assert out["SID"] == "given:id-1"
    assert out["JOURNAL"] == [
        [INIT, "given:id-1", {"session_id": "given:id-1", "session_name": "Unnamed Session"}]
    ]
    assert out["ATEXIT"] == []


def test_auto_end_follows_the_environment() -> None:
    out = run_child(
        """
        import lucidic_otel
        report("SID", lucidic_otel.init("env-controlled"))
        sessions.JOURNAL.drain()
        """,
        LUCIDIC_AUTO_END="false",
    )
    assert out["ATEXIT"] == []


def test_init_with_an_invalid_id_warns_and_uses_a_new_one() -> None:
    out = run_child(
        """
        import lucidic_otel
        report("SID", lucidic_otel.init(session_id="not valid!", auto_end=False))
        """
    )
    assert uuid.UUID(out["SID"]).version == 4
    assert "init: session_id 'not valid!'" in out["stderr"]
    # It says what happened: a new session was started, not "running without this session".
    assert "starting a new session with a random id instead" in out["stderr"]
    assert "running without" not in out["stderr"]


def test_init_never_replaces_an_existing_provider() -> None:
    out = run_child(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        mine = TracerProvider()
        trace.set_tracer_provider(mine)
        import lucidic_otel
        first = lucidic_otel.init("first")
        second = lucidic_otel.init("second")
        report("SAME", trace.get_tracer_provider() is mine)
        processors = mine._active_span_processor._span_processors
        report("COUNT", sum(1 for p in processors if getattr(p, "lucidic_session_processor", 0)))
        with trace.get_tracer("child").start_as_current_span("work") as span:
            report("STAMP", [span.attributes.get("lucidic.session_id"), second])
        report("IDS", [first, second])
        report("JOURNAL", [r[0] for r in sessions.JOURNAL.drain()])
        """
    )
    assert out["SAME"] is True
    assert out["COUNT"] == 1
    stamp, second = out["STAMP"]
    assert stamp == second
    first, second = out["IDS"]
    assert first != second
    assert out["JOURNAL"] == [INIT, INIT]
    assert sorted(r[1] for r in out["ATEXIT"]) == sorted([first, second])
    assert all(r[0] == END for r in out["ATEXIT"])


def test_with_lucidic_records_init_then_end() -> None:
    out = run_child(
        """
        import asyncio
        import lucidic_otel
        from opentelemetry import trace

        def work(x, *, y):
            with trace.get_tracer("child").start_as_current_span("w") as span:
                return [x + y, lucidic_otel.current_session_id(),
                        span.attributes.get("lucidic.session_id")]

        async def awork(x):
            await asyncio.sleep(0)
            return [x, lucidic_otel.current_session_id()]

        report("SYNC", lucidic_otel.with_lucidic(
            work, 1, y=2, session_name="one-shot", session_id="wl-1", task="t", auto_end=True))
        report("ASYNC", asyncio.run(lucidic_otel.with_lucidic(awork, 7, session_id="wl-2")))
        report("AFTER", lucidic_otel.current_session_id())
        report("JOURNAL", sessions.JOURNAL.drain())
        """
    )
    assert out["SYNC"] == [3, "wl-1", "wl-1"]
    assert out["ASYNC"] == [7, "wl-2"]
    assert out["AFTER"] is None
    assert out["JOURNAL"] == [
        [INIT, "wl-1", {"session_id": "wl-1", "session_name": "one-shot", "task": "t"}],
        [END, "wl-1", {"session_id": "wl-1", "is_finished": True, "is_successful": True}],
        [INIT, "wl-2", {"session_id": "wl-2", "session_name": "Unnamed Session"}],
        [END, "wl-2", {"session_id": "wl-2", "is_finished": True, "is_successful": True}],
    ]
    assert out["ATEXIT"] == []  # with_lucidic ended its sessions; nothing is left to auto-end


def test_with_lucidic_ends_the_session_when_fn_raises() -> None:
    out = run_child(
        """
        import lucidic_otel
        def boom():
            raise ValueError("from fn")
        try:
            lucidic_otel.with_lucidic(boom, session_id="wl-err")
        except ValueError as exc:
            report("RAISED", str(exc))
        report("JOURNAL", [r[0] for r in sessions.JOURNAL.drain()])
        """
    )
    assert out["RAISED"] == "from fn"
    assert out["JOURNAL"] == [INIT, END]


def test_with_lucidic_stamps_spans_on_a_user_provider() -> None:
    out = run_child(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        mine = TracerProvider()
        trace.set_tracer_provider(mine)
        import lucidic_otel

        def work():
            with trace.get_tracer("child").start_as_current_span("w") as span:
                return span.attributes.get("lucidic.session_id")

        report("STAMP", lucidic_otel.with_lucidic(work, session_id="wl-user"))
        report("SAME", trace.get_tracer_provider() is mine)
        """
    )
    assert out["STAMP"] == "wl-user"
    assert out["SAME"] is True


def test_init_with_console_exporter_prints_stamped_spans() -> None:
    out = run_child(
        """
        import lucidic_otel
        from opentelemetry import trace
        lucidic_otel.init(session_id="console-1", auto_end=False)
        with trace.get_tracer("child").start_as_current_span("printed"):
            pass
        lucidic_otel.flush()
        """,
        OTEL_TRACES_EXPORTER="console",
    )
    assert '"lucidic.session_id": "console-1"' in out["stdout"]
    assert '"session.id": "console-1"' in out["stdout"]


# --- messages that say what actually happens (bad arguments never raise) --------------------


def test_with_session_of_none_names_with_session_and_runs_fn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger=API_WARNINGS):
        result = lucidic_otel.with_session(None, lambda: where())  # type: ignore[arg-type]
    assert result is None  # fn ran, in no session
    (message,) = api_warnings(caplog)
    assert message.startswith("lucidic-otel: with_session: session_id 'None' must be a str")
    assert message.endswith("running without this session")


def test_end_session_of_a_session_never_started_here_says_so_and_returns_false(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = new_id(), new_id()
    with caplog.at_level(logging.WARNING, logger=API_WARNINGS):
        assert lucidic_otel.end_session(first) is False
        assert lucidic_otel.end_session(second) is False
    (message,) = api_warnings(caplog)  # said once per process, not per call
    assert f"session '{first}' was not started or joined in this process" in message
    assert "its end is recorded anyway" in message and "returning False" in message
    # What the message says happens: the end is recorded (another worker's session, maybe).
    REGISTRY.drain()
    records = JOURNAL.drain()
    assert [(r[0], r[1]) for r in records] == [(END, first), (END, second)]


def test_end_session_of_a_session_started_here_returns_true_without_a_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sid = started(new_id())
    with caplog.at_level(logging.WARNING, logger=API_WARNINGS):
        assert lucidic_otel.end_session(sid) is True
    assert api_warnings(caplog) == []


def test_inject_env_with_a_non_mapping_warns_and_returns_the_environment(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sid = new_id()
    with caplog.at_level(logging.WARNING, logger=API_WARNINGS), lucidic_otel.session(sid):
        env = lucidic_otel.inject_env(env=5)  # type: ignore[arg-type]
    assert env["PATH"] == os.environ["PATH"]
    assert f"lucidic.session_id={sid}" in env["BAGGAGE"]
    (message,) = api_warnings(caplog)
    assert message.startswith("lucidic-otel: inject_env: env='5' is not valid")
    assert "returning a copy of os.environ with the context instead" in message


def test_with_lucidic_of_a_non_callable_warns_and_starts_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger=API_WARNINGS):
        assert lucidic_otel.with_lucidic(5, session_name="never") is None  # type: ignore[arg-type]
    (message,) = api_warnings(caplog)
    assert message == (
        "lucidic-otel: with_lucidic: fn=5 is not callable; nothing was run and no session started"
    )
    assert JOURNAL.drain() == []


def test_with_session_of_a_non_callable_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=API_WARNINGS):
        assert lucidic_otel.with_session(new_id(), "fn") is None  # type: ignore[arg-type]
    (message,) = api_warnings(caplog)
    assert message == "lucidic-otel: with_session: fn='fn' is not callable; nothing was run"


@pytest.mark.parametrize("token", ["garbage", 5, object()], ids=["str", "int", "object"])
def test_clear_active_session_with_a_foreign_token_unbinds_with_one_message(
    token: object, caplog: pytest.LogCaptureFixture
) -> None:
    lucidic_otel.set_active_session(new_id())
    with caplog.at_level(logging.WARNING):
        lucidic_otel.clear_active_session(token)  # type: ignore[arg-type]
    assert where() is None  # what the caller wanted: no session here any more
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1, messages  # no "Failed to detach context" traceback
    assert messages[0].startswith("lucidic-otel: clear_active_session: token=")
    assert "is not a token returned by set_active_session" in messages[0]
    assert messages[0].endswith("unbinding any session in this context instead")


def test_clear_active_session_with_another_threads_token(caplog: pytest.LogCaptureFixture) -> None:
    tokens: List[object] = []
    thread = threading.Thread(target=lambda: tokens.append(lucidic_otel.set_active_session("t1")))
    thread.start()
    thread.join(10)
    lucidic_otel.set_active_session("here")
    with caplog.at_level(logging.WARNING):
        lucidic_otel.clear_active_session(tokens[0])
    assert where() is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "was made in another thread or task" in messages[0], messages


@pytest.mark.openai
def test_instrument_takes_library_names_and_the_transport_the_client_uses() -> None:
    """``instrument=["openai", "httpx"]`` as the README writes it: "httpx" is the httpx
    family, so the client's HTTP spans are recorded with whichever transport it uses (openai
    3.x: httpx2; 2.x: httpx), next to the LLM span; an unknown name says what is installed."""
    from lucidic_otel.testing.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer() as llm:
        out = run_child(
            f"""
            import lucidic_otel, openai
            from opentelemetry import trace
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                InMemorySpanExporter)
            lucidic_otel.init("chat", instrument=["openai", "httpx", "no-such-lib"])
            seen = InMemorySpanExporter()
            trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(seen))
            client = openai.OpenAI(base_url={llm.base_url!r}, api_key="sk-test")
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{{"role": "user", "content": "hi"}}])
            report("SPANS", sorted(
                (s.name, s.attributes.get("lucidic.session_id") is not None)
                for s in seen.get_finished_spans()))
            """,
        )
    names = [name for name, _ in out["SPANS"]]
    assert any(name.startswith("chat") for name in names), names
    assert "POST" in names, names  # the transport's client span
    assert all(stamped for _, stamped in out["SPANS"]), out["SPANS"]
    assert "instrument='no-such-lib' names no installed instrumentation" in out["stderr"]
    assert "'httpx'" in out["stderr"] and "could not be applied" not in out["stderr"]
