"""The user's own tools and steps (``lucidic_otel.steps``) as GenAI tool spans and events.

Each test checks both ends: the finished span as any OTLP backend sees it (an in-memory
exporter on a local SDK provider, passed as ``tracer_provider=``: the global provider can be set
once per process), and the Lucidic event that ``span_to_event`` makes of it. One test runs a
program under the real launcher and reads the local store back with the CLI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import inspect
import json
import subprocess
from typing import Any, Dict, List

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from lucidic_otel import api
from lucidic_otel.config import get_settings, reset_settings
from lucidic_otel.convert.events import span_to_event
from lucidic_otel.ids import event_id
from lucidic_otel.sdk.processor import LucidicSpanProcessor
from lucidic_otel.sessions.context import SESSION_ATTRIBUTE
from lucidic_otel.steps import MAX_ITEMS, MAX_VALUE_CHARS, Step, step, tool
from tests.support.launcher import BIN, clean_env, run_instrumented, write_script

ARGS = "gen_ai.tool.call.arguments"
RESULT = "gen_ai.tool.call.result"


@pytest.fixture(autouse=True)
def _isolated(lucidic_state: None) -> None:
    """Fresh settings, no process session, an empty context (tests/conftest.py)."""


class Pipeline:
    """A local SDK provider with the session processor and an in-memory exporter."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(LucidicSpanProcessor(get_settings()))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self) -> List[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def one(self) -> ReadableSpan:
        (span,) = self.spans()
        return span


@pytest.fixture
def pipe() -> Pipeline:
    return Pipeline()


@pytest.fixture
def content_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCIDIC_CAPTURE_CONTENT", "false")
    reset_settings()
    assert get_settings().capture_content is False


def event(span: ReadableSpan, capture: bool = True) -> Dict[str, Any]:
    body = span_to_event(span, "sess-1", None, capture_content=capture)
    assert body is not None, f"span {span.name} made no event"
    return body


def attrs(span: ReadableSpan) -> Dict[str, Any]:
    return dict(span.attributes or {})


def assert_tool_span(span: ReadableSpan, name: str) -> None:
    assert span.name == f"execute_tool {name}"
    assert span.kind is SpanKind.INTERNAL
    a = attrs(span)
    assert a["gen_ai.operation.name"] == "execute_tool"
    assert a["gen_ai.tool.name"] == name
    assert a["gen_ai.tool.type"] == "function"


def assert_failed(span: ReadableSpan, kind: str) -> None:
    assert span.status.status_code is StatusCode.ERROR
    assert attrs(span)["error.type"] == kind
    exceptions = [e for e in span.events if e.name == "exception"]
    assert len(exceptions) == 1
    assert exceptions[0].attributes["exception.type"].endswith(kind)


# ----------------------------------------------------------------------- four function kinds


def test_sync_function(pipe: Pipeline) -> None:
    @tool(tracer_provider=pipe.provider)
    def get_weather(city: str, unit: str = "C", **extra: Any) -> Dict[str, Any]:
        """Docs survive."""
        return {"city": city, "temp": 21, "unit": unit}

    assert get_weather("Paris", lang="fr") == {"city": "Paris", "temp": 21, "unit": "C"}
    assert get_weather.__name__ == "get_weather" and get_weather.__doc__ == "Docs survive."
    span = pipe.one()
    assert_tool_span(span, "get_weather")
    assert json.loads(attrs(span)[ARGS]) == {"city": "Paris", "unit": "C", "lang": "fr"}
    assert json.loads(attrs(span)[RESULT]) == {"city": "Paris", "temp": 21, "unit": "C"}
    assert span.status.status_code is StatusCode.UNSET

    body = event(span)
    assert body["type"] == "function_call"
    assert body["payload"]["function_name"] == "get_weather"
    assert body["payload"]["arguments"] == {"city": "Paris", "unit": "C", "lang": "fr"}
    assert body["payload"]["return_value"] == {"city": "Paris", "temp": 21, "unit": "C"}
    assert "error" not in body["payload"]


def test_async_function(pipe: Pipeline) -> None:
    @tool("lookup", tracer_provider=pipe.provider)
    async def fetch(key: str) -> List[str]:
        await asyncio.sleep(0)
        return [key, key.upper()]

    assert inspect.iscoroutinefunction(fetch)
    assert asyncio.run(fetch("k")) == ["k", "K"]
    span = pipe.one()
    assert_tool_span(span, "lookup")
    body = event(span)
    assert body["payload"]["function_name"] == "lookup"
    assert body["payload"]["arguments"] == {"key": "k"}
    assert body["payload"]["return_value"] == ["k", "K"]


def test_generator_yields_every_item_and_the_span_covers_the_iteration(pipe: Pipeline) -> None:
    @tool(tracer_provider=pipe.provider)
    def search(query: str, n: int):
        for i in range(n):
            got = yield f"{query}-{i}"
            if got is not None:
                yield f"echo {got}"
        return "finished"

    assert inspect.isgeneratorfunction(search)
    gen = search("q", 3)
    assert pipe.spans() == []  # nothing ran yet: no span before the first item
    assert next(gen) == "q-0"
    assert gen.send("hi") == "echo hi"  # the full protocol reaches the user's generator
    rest = []
    with pytest.raises(StopIteration) as stop:
        while True:
            rest.append(next(gen))
    assert rest == ["q-1", "q-2"]
    assert stop.value.value == "finished"  # the return value is kept

    span = pipe.one()
    assert_tool_span(span, "search")
    assert json.loads(attrs(span)[RESULT]) == ["q-0", "echo hi", "q-1", "q-2"]
    body = event(span)
    assert body["payload"]["arguments"] == {"query": "q", "n": 3}
    assert body["payload"]["return_value"] == ["q-0", "echo hi", "q-1", "q-2"]


def test_generator_closed_early_ends_the_span_without_failing(pipe: Pipeline) -> None:
    closed = []

    @tool(tracer_provider=pipe.provider)
    def numbers():
        try:
            yield from range(1000)
        finally:
            closed.append(True)

    for item in numbers():
        if item == 2:
            break
    # CPython closes the abandoned generator at once (refcount): GeneratorExit inside it.
    assert closed == [True]
    span = pipe.one()
    assert span.end_time is not None
    assert span.status.status_code is StatusCode.UNSET
    assert json.loads(attrs(span)[RESULT]) == [0, 1, 2]


def test_generator_throw_reaches_the_users_generator(pipe: Pipeline) -> None:
    @tool(tracer_provider=pipe.provider)
    def resilient():
        try:
            yield 1
        except KeyError:
            yield "recovered"

    gen = resilient()
    assert next(gen) == 1
    assert gen.throw(KeyError("x")) == "recovered"
    gen.close()
    assert json.loads(attrs(pipe.one())[RESULT]) == [1, "recovered"]


def test_generator_items_are_bounded(pipe: Pipeline) -> None:
    @tool(tracer_provider=pipe.provider)
    def many():
        yield from range(MAX_ITEMS + 50)

    assert sum(1 for _ in many()) == MAX_ITEMS + 50
    result = json.loads(attrs(pipe.one())[RESULT])
    assert result[:MAX_ITEMS] == list(range(MAX_ITEMS))
    assert result[MAX_ITEMS:] == ["[50 more items]"]


def test_async_generator(pipe: Pipeline) -> None:
    @tool(tracer_provider=pipe.provider)
    async def stream(n: int):
        for i in range(n):
            await asyncio.sleep(0)
            yield {"chunk": i}

    assert inspect.isasyncgenfunction(stream)

    async def consume() -> List[Any]:
        return [item async for item in stream(3)]

    assert asyncio.run(consume()) == [{"chunk": 0}, {"chunk": 1}, {"chunk": 2}]
    span = pipe.one()
    assert_tool_span(span, "stream")
    body = event(span)
    assert body["payload"]["arguments"] == {"n": 3}
    assert body["payload"]["return_value"] == [{"chunk": 0}, {"chunk": 1}, {"chunk": 2}]


def test_async_generator_asend_athrow_and_aclose(pipe: Pipeline) -> None:
    cleaned = []

    @tool(tracer_provider=pipe.provider)
    async def chat():
        try:
            reply = yield "hello"
            try:
                yield f"you said {reply}"
            except ValueError:
                yield "handled"
            yield "never consumed"
        finally:
            cleaned.append(True)

    async def drive() -> List[Any]:
        agen = chat()
        seen = [await agen.__anext__(), await agen.asend("hi"),
                await agen.athrow(ValueError("x"))]
        await agen.aclose()
        return seen

    assert asyncio.run(drive()) == ["hello", "you said hi", "handled"]
    assert cleaned == [True]
    span = pipe.one()
    assert span.status.status_code is StatusCode.UNSET  # closed by the consumer: not a failure
    assert json.loads(attrs(span)[RESULT]) == ["hello", "you said hi", "handled"]


# --------------------------------------------------------------------------------- errors


def test_exception_is_reraised_unchanged_and_recorded(pipe: Pipeline) -> None:
    boom = ValueError("no such city")

    @tool(tracer_provider=pipe.provider)
    def get_weather(city: str) -> None:
        raise boom

    with pytest.raises(ValueError) as caught:
        get_weather("Atlantis")
    assert caught.value is boom
    assert caught.traceback[-1].name == "get_weather"  # the user's frame is where it was raised
    span = pipe.one()
    assert_failed(span, "ValueError")
    assert span.status.description == "ValueError: no such city"
    assert RESULT not in attrs(span)

    body = event(span)
    assert body["type"] == "function_call"
    assert body["payload"]["function_name"] == "get_weather"
    assert body["payload"]["arguments"] == {"city": "Atlantis"}
    assert body["payload"]["error"] == "ValueError: no such city"
    assert body["payload"]["misc"]["error_type"] == "ValueError"


def test_async_and_generator_failures(pipe: Pipeline) -> None:
    @tool(tracer_provider=pipe.provider)
    async def fails() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("async boom")

    @tool(tracer_provider=pipe.provider)
    def fails_midway():
        yield 1
        raise LookupError("gen boom")

    @tool(tracer_provider=pipe.provider)
    async def afails_midway():
        yield 1
        raise OSError("agen boom")

    with pytest.raises(RuntimeError, match="async boom"):
        asyncio.run(fails())
    items: List[Any] = []
    with pytest.raises(LookupError, match="gen boom"):
        for item in fails_midway():
            items.append(item)
    assert items == [1]

    async def consume() -> None:
        async for _ in afails_midway():
            pass

    with pytest.raises(OSError, match="agen boom"):
        asyncio.run(consume())
    spans = {s.name: s for s in pipe.spans()}
    assert_failed(spans["execute_tool fails"], "RuntimeError")
    assert_failed(spans["execute_tool fails_midway"], "LookupError")
    assert_failed(spans["execute_tool afails_midway"], "OSError")
    # What was yielded before the failure is still the result.
    assert json.loads(attrs(spans["execute_tool fails_midway"])[RESULT]) == [1]
    assert event(spans["execute_tool fails_midway"])["payload"]["error"] == "LookupError: gen boom"


def test_keyboard_interrupt_ends_the_span_as_failed(pipe: Pipeline) -> None:
    @tool(tracer_provider=pipe.provider)
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    span = pipe.one()
    assert span.end_time is not None
    assert_failed(span, "KeyboardInterrupt")
    assert event(span)["payload"]["error"] == "KeyboardInterrupt"


def test_cancelled_task_ends_the_span(pipe: Pipeline) -> None:
    started = asyncio.Event()

    @tool(tracer_provider=pipe.provider)
    async def slow() -> None:
        started.set()
        await asyncio.sleep(60)

    async def main() -> None:
        task = asyncio.create_task(slow())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    span = pipe.one()
    assert span.end_time is not None
    assert_failed(span, "CancelledError")


def test_system_exit_zero_is_not_a_failure(pipe: Pipeline) -> None:
    @tool(tracer_provider=pipe.provider)
    def done() -> None:
        raise SystemExit(0)

    with pytest.raises(SystemExit):
        done()
    assert pipe.one().status.status_code is StatusCode.UNSET


# ------------------------------------------------------------------------------- content


def test_content_off_records_no_arguments_or_results(pipe: Pipeline, content_off: None) -> None:
    @tool(tracer_provider=pipe.provider)
    def secret(password: str) -> str:
        return "token-" + password

    @tool(tracer_provider=pipe.provider)
    def secret_stream(password: str):
        yield password

    @tool(tracer_provider=pipe.provider)
    async def asecret(password: str) -> str:
        return password

    @tool(tracer_provider=pipe.provider)
    def secret_failure(password: str) -> None:
        raise ValueError("bad input")

    assert secret("hunter2") == "token-hunter2"
    assert list(secret_stream("hunter2")) == ["hunter2"]
    assert asyncio.run(asecret("hunter2")) == "hunter2"
    with pytest.raises(ValueError):
        secret_failure("hunter2")
    with step("manual", arguments={"password": "hunter2"},
              tracer_provider=pipe.provider) as s:
        s.set_arguments({"password": "hunter2"})
        s.set_result("hunter2")

    spans = pipe.spans()
    assert len(spans) == 5
    for span in spans:
        a = attrs(span)
        assert ARGS not in a and RESULT not in a, span.name
        assert "hunter2" not in json.dumps(a, default=str), span.name
        for e in span.events:
            assert "hunter2" not in json.dumps(dict(e.attributes or {}), default=str)
        body = event(span, capture=get_settings().capture_content)
        assert body["payload"]["arguments"] is None and body["payload"]["return_value"] is None
        assert "hunter2" not in json.dumps(body, default=str)
        assert body["payload"]["function_name"] == a["gen_ai.tool.name"]


def test_content_setting_is_read_per_call_not_at_decoration(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    @tool(tracer_provider=pipe.provider)
    def echo(x: int) -> int:
        return x

    echo(1)
    monkeypatch.setenv("LUCIDIC_CAPTURE_CONTENT", "false")
    reset_settings()
    echo(2)
    first, second = pipe.spans()
    assert json.loads(attrs(first)[ARGS]) == {"x": 1}
    assert ARGS not in attrs(second) and RESULT not in attrs(second)


# ------------------------------------------------------------------- arguments and values


class Repo:
    @tool("repo_get")
    def get(self, key: str) -> str:
        return key

    @classmethod
    @tool("repo_make")
    def make(cls, size: int) -> int:
        return size


def test_self_and_cls_are_not_arguments(pipe: Pipeline) -> None:
    # The class above decorates at import with the global (proxy) provider; re-decorate the
    # same functions on the test provider to see the spans.
    get = tool("repo_get", tracer_provider=pipe.provider)(Repo.get.__wrapped__)
    make = tool("repo_make", tracer_provider=pipe.provider)(Repo.make.__func__.__wrapped__)
    assert get(Repo(), "k") == "k"
    assert make(Repo, 3) == 3
    assert Repo().get("k") == "k" and Repo.make(2) == 2  # and without an SDK: plain calls
    by_name = {s.name: s for s in pipe.spans()}
    assert json.loads(attrs(by_name["execute_tool repo_get"])[ARGS]) == {"key": "k"}
    assert json.loads(attrs(by_name["execute_tool repo_make"])[ARGS]) == {"size": 3}


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


class Loud:
    def __repr__(self) -> str:
        return "L" * (MAX_VALUE_CHARS * 3)


def test_odd_arguments_never_break_the_call(pipe: Pipeline) -> None:
    circular: List[Any] = [1]
    circular.append(circular)
    lazy = (i for i in range(3))

    @tool(tracer_provider=pipe.provider)
    def odd(*values: Any, **named: Any) -> Any:
        # The generator argument reaches the function unconsumed (the official SDK's bug).
        return list(named["lazy"])

    result = odd(Color.RED, Point(1, 2), BadRepr(), circular, {1, 2}, b"\xffbytes",
                 float("nan"), {(1, 2): "tuple key"}, lazy=lazy, loud=Loud())
    assert result == [0, 1, 2]
    recorded = json.loads(attrs(pipe.one())[ARGS])
    values = recorded["values"]
    assert values[0] == "red"
    assert values[1] == {"x": 1, "y": 2}
    assert values[2] == "<BadRepr object>"
    assert values[3] == [1, "[circular reference]"]
    assert sorted(values[4]) == [1, 2]
    assert values[5].endswith("bytes")
    assert values[6] == "nan"
    assert values[7] == {"[1, 2]": "tuple key"}
    assert recorded["lazy"].startswith("<generator object")
    assert recorded["loud"].startswith("LLL") and "more chars]" in recorded["loud"]
    assert len(attrs(pipe.one())[ARGS]) < 2 * MAX_VALUE_CHARS


def test_pydantic_models_are_dumped(pipe: Pipeline) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Query(pydantic.BaseModel):
        text: str
        limit: int = 5

    @tool(tracer_provider=pipe.provider)
    def run(q: Query) -> Query:
        return q

    run(Query(text="hi"))
    span = pipe.one()
    assert json.loads(attrs(span)[ARGS]) == {"q": {"text": "hi", "limit": 5}}
    assert json.loads(attrs(span)[RESULT]) == {"text": "hi", "limit": 5}


def test_large_results_are_bounded_and_stay_json(pipe: Pipeline) -> None:
    @tool(tracer_provider=pipe.provider)
    def dump() -> Dict[str, Any]:
        return {"rows": [{"id": i, "text": "x" * 100} for i in range(10_000)], "big": "y" * 10**6}

    rows = dump()["rows"]
    assert len(rows) == 10_000
    text = attrs(pipe.one())[RESULT]
    assert len(text) < 2 * MAX_VALUE_CHARS
    shown = json.loads(text)  # still valid JSON: cut by a budget, not by slicing the text
    assert "more items]" in shown["rows"][-1]


def test_a_call_that_does_not_fit_the_signature_still_raises_its_own_error(
    pipe: Pipeline,
) -> None:
    @tool(tracer_provider=pipe.provider)
    def one(a: int) -> int:
        return a

    with pytest.raises(TypeError):
        one(1, 2)  # type: ignore[call-arg]
    span = pipe.one()
    assert json.loads(attrs(span)[ARGS]) == {"args": [1, 2], "kwargs": {}}
    assert_failed(span, "TypeError")


def test_no_sdk_configured_is_a_plain_call() -> None:
    @tool
    def plain(x: int) -> int:
        return x + 1

    @step("block")
    def block() -> str:
        return "ok"

    # Whatever the global provider is in this process (the proxy's no-op unless another test
    # set an SDK), the functions and the block behave exactly as without the decorators.
    assert plain(1) == 2 and block() == "ok"
    with step("nothing") as s:
        s.set_result("ignored")


# ----------------------------------------------------------------------------- the step API


def test_step_context_manager(pipe: Pipeline) -> None:
    with step("plan", arguments={"goal": "book a flight"}, description="Plans the trip",
              call_id="call_123", tracer_provider=pipe.provider) as s:
        assert isinstance(s, Step) and s.span.is_recording()
        s.set_result({"steps": ["search", "book"]})
    span = pipe.one()
    assert_tool_span(span, "plan")
    a = attrs(span)
    assert a["gen_ai.tool.description"] == "Plans the trip"
    assert a["gen_ai.tool.call.id"] == "call_123"
    body = event(span)
    assert body["payload"]["function_name"] == "plan"
    assert body["payload"]["arguments"] == {"goal": "book a flight"}
    assert body["payload"]["return_value"] == {"steps": ["search", "book"]}
    assert body["payload"]["misc"]["tool_call_id"] == "call_123"
    s.set_result("after the block")  # ignored, and does not raise


def test_step_records_the_exception_leaving_the_block(pipe: Pipeline) -> None:
    err = ConnectionError("down")
    with pytest.raises(ConnectionError) as caught:
        with step("fetch", tracer_provider=pipe.provider):
            raise err
    assert caught.value is err
    span = pipe.one()
    assert_failed(span, "ConnectionError")
    assert event(span)["payload"]["error"] == "ConnectionError: down"


def test_async_step(pipe: Pipeline) -> None:
    async def main() -> None:
        async with step("think", tracer_provider=pipe.provider) as s:
            await asyncio.sleep(0)
            s.set_arguments({"topic": "x"})
            s.set_result("thought")

    asyncio.run(main())
    body = event(pipe.one())
    assert body["payload"]["arguments"] == {"topic": "x"}
    assert body["payload"]["return_value"] == "thought"


def test_step_and_tool_decorate_with_or_without_parentheses(pipe: Pipeline) -> None:
    provider = pipe.provider

    @step(name="renamed", tracer_provider=provider)
    def a() -> int:
        return 1

    @step(tracer_provider=provider)
    def b() -> int:
        return 2

    @tool(name="override", tracer_provider=provider)
    def c() -> int:
        return 3

    assert (a(), b(), c()) == (1, 2, 3)
    assert [s.name for s in pipe.spans()] == [
        "execute_tool renamed", "execute_tool b", "execute_tool override"]

    @tool
    def bare() -> int:
        return 4

    @step
    def bare_step() -> int:
        return 5

    assert bare() == 4 and bare_step() == 5 and bare.__name__ == "bare"
    with pytest.raises(TypeError):
        tool(42)  # type: ignore[call-overload]


def test_one_step_object_as_a_decorator_gives_each_call_its_own_span(pipe: Pipeline) -> None:
    traced = step("work", tracer_provider=pipe.provider)

    @traced
    def work(i: int) -> int:
        return i

    assert [work(i) for i in range(3)] == [0, 1, 2]
    spans = pipe.spans()
    assert len({s.context.span_id for s in spans}) == 3
    assert [json.loads(attrs(s)[RESULT]) for s in spans] == [0, 1, 2]


# -------------------------------------------------------------------------------- nesting


def test_a_tool_inside_a_step_inside_a_session(pipe: Pipeline) -> None:
    @tool(tracer_provider=pipe.provider)
    def search(q: str):
        with pipe.provider.get_tracer("llm").start_as_current_span("inner-call"):
            pass
        yield q

    @tool(tracer_provider=pipe.provider)
    async def fetch(url: str) -> str:
        return url

    outer = pipe.provider.get_tracer("app")
    with api.session("sess-nest"):
        with step("plan", tracer_provider=pipe.provider):
            results = list(search("flights"))
            # A span the consumer makes between items is not a child of the generator's tool.
            asyncio.run(fetch("http://x"))
        with outer.start_as_current_span("after"):
            pass
    assert results == ["flights"]

    by_name = {s.name: s for s in pipe.spans()}
    plan = by_name["execute_tool plan"]
    search_span = by_name["execute_tool search"]
    inner = by_name["inner-call"]
    fetch_span = by_name["execute_tool fetch"]
    assert plan.parent is None
    assert search_span.parent.span_id == plan.context.span_id
    assert fetch_span.parent.span_id == plan.context.span_id
    assert inner.parent.span_id == search_span.context.span_id  # the tool's own work
    assert by_name["after"].parent is None
    for span in (plan, search_span, inner, fetch_span, by_name["after"]):
        assert attrs(span)[SESSION_ATTRIBUTE] == "sess-nest", span.name
        assert span.context.trace_id == plan.context.trace_id or span is by_name["after"]

    trace_id = plan.context.trace_id
    parent_event = event_id(trace_id, plan.context.span_id)
    body = span_to_event(search_span, "sess-nest", parent_event)
    assert body is not None and body["type"] == "function_call"
    assert body["client_event_id"] == event_id(trace_id, search_span.context.span_id)
    assert body["client_parent_event_id"] == parent_event
    assert body["session_id"] == "sess-nest"


# ----------------------------------------------------------------------- conversion gaps


def test_scalar_results_keep_their_json_type(pipe: Pipeline) -> None:
    @tool(tracer_provider=pipe.provider)
    def count() -> int:
        return 42

    @tool(tracer_provider=pipe.provider)
    def nothing() -> None:
        return None

    count()
    nothing()
    first, second = pipe.spans()
    assert attrs(first)[RESULT] == "42" and attrs(second)[RESULT] == "null"
    assert event(first)["payload"]["return_value"] == 42
    assert event(second)["payload"]["return_value"] is None


# --------------------------------------------------------------------- under the launcher

APP = """
    import asyncio
    import lucidic_otel
    from lucidic_otel.steps import step, tool

    @tool
    def get_weather(city: str) -> dict:
        return {"city": city, "sky": "clear"}

    @tool
    async def book(flight: str) -> str:
        raise RuntimeError("sold out")

    @tool
    def options(n: int):
        for i in range(n):
            yield f"option-{i}"

    with lucidic_otel.session("trip-1"):
        with step("plan", arguments={"goal": "a trip"}) as s:
            weather = get_weather("Paris")
            picked = list(options(2))
            try:
                asyncio.run(book(picked[0]))
            except RuntimeError:
                pass
            s.set_result({"weather": weather, "picked": picked})
    print("done", picked)
"""


def _show(store: str, sid: str) -> Dict[str, Any]:
    proc = subprocess.run([str(BIN / "lucidic-otel"), "show", sid, "--json", "--store", store],
                          env=clean_env(), capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def _by_function(events: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for item in events:
        body = item["body"]
        if body.get("type") == "function_call":
            out[body["payload"]["function_name"]] = body
    return out


def test_tool_events_in_a_session_under_the_launcher(tmp_path: Any) -> None:
    store = str(tmp_path / "store.db")
    app = write_script(tmp_path, "app.py", APP)
    proc = run_instrumented([app], clean_env(LUCIDIC_STORE_PATH=store), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "done ['option-0', 'option-1']" in proc.stdout

    shown = _show(store, "trip-1")
    events = _by_function(shown["events"])
    assert set(events) == {"plan", "get_weather", "options", "book"}, shown["events"]
    for body in events.values():
        assert body["session_id"] == "trip-1"
    assert events["plan"]["payload"]["arguments"] == {"goal": "a trip"}
    assert events["plan"]["payload"]["return_value"] == {
        "weather": {"city": "Paris", "sky": "clear"}, "picked": ["option-0", "option-1"]}
    assert events["get_weather"]["payload"]["arguments"] == {"city": "Paris"}
    assert events["get_weather"]["payload"]["return_value"] == {"city": "Paris", "sky": "clear"}
    assert events["options"]["payload"]["return_value"] == ["option-0", "option-1"]
    assert events["book"]["payload"]["error"] == "RuntimeError: sold out"

    spans = {s["name"]: s for s in shown["spans"]}
    plan = spans["execute_tool plan"]
    for name in ("get_weather", "options", "book"):
        child = spans[f"execute_tool {name}"]
        assert child["parent_span_id"] == plan["span_id"], name
        assert child["session_id"] == "trip-1"
        assert child["event_type"] == "function_call"
    assert events["get_weather"]["client_event_id"] == spans["execute_tool get_weather"][
        "event_id"]

