"""The real ``openai`` client under the launcher becomes Lucidic events in the local store.

Runs with whichever OpenAI extra is installed (``[openai]`` or ``[openai-v2]``; CI runs both):
sync, async, streaming and a tool-call round trip against the loopback OpenAI-compatible
server, and checks the events carry messages, output, structured tool calls, tokens and cost.
"""

from __future__ import annotations

import json

import pytest

from lucidic_otel.outbox.store import Store
from lucidic_otel.testing.fake_openai import FakeOpenAIServer
from tests.support.launcher import clean_env, run_instrumented, write_script

pytestmark = pytest.mark.openai
openai = pytest.importorskip("openai")

APP = """
    import asyncio, json, sys
    import openai
    import lucidic_otel

    base_url = sys.argv[1]
    client = openai.OpenAI(base_url=base_url, api_key="test", max_retries=0)
    aclient = openai.AsyncOpenAI(base_url=base_url, api_key="test", max_retries=0)
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]

    def run():
        client.chat.completions.create(
            model="gpt-4o-mini", temperature=0.2, max_tokens=50,
            messages=[{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "hello sync"}])
        asyncio.run(aclient.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello async"}]))
        stream = client.chat.completions.create(
            model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "hello stream"}])
        for _ in stream:
            pass
        stream.close()
        messages = [{"role": "user", "content": "weather in Paris"}]
        first = client.chat.completions.create(model="gpt-4o-mini", messages=messages,
                                               tools=tools)
        call = first.choices[0].message.tool_calls[0]
        messages.append(first.choices[0].message.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.id,
                         "content": json.dumps({"temp_c": 21})})
        client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=tools)

    lucidic_otel.with_lucidic(run, session_name="openai-run", session_id="openai-run-1")
"""


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openai")
    store_path = tmp / "store.db"
    with FakeOpenAIServer() as server:
        proc = run_instrumented(
            [write_script(tmp, "app.py", APP), server.base_url],
            clean_env(LUCIDIC_STORE_PATH=str(store_path)),
            timeout=90,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    store = Store(store_path)
    try:
        items = store.session_events("openai-run-1")
    finally:
        store.close()
    return [i.body for i in items if i.kind == "event"]


def _llm(events):
    return [e for e in events if e["type"] == "llm_generation"]


def test_every_call_is_an_llm_event_with_tokens_and_cost(events):
    llm = _llm(events)
    assert len(llm) == 5, [e["payload"]["request"]["messages"] for e in llm]
    for event in llm:
        payload = event["payload"]
        assert payload["request"]["provider"] == "openai"
        assert payload["request"]["model"] == "gpt-4o-mini"
        assert event["session_id"] == "openai-run-1"
        usage = payload["usage"]
        assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
        assert usage["cost"] > 0


def test_messages_params_and_output_are_structured(events):
    by_first_message = {
        e["payload"]["request"]["messages"][-1]["content"]: e
        for e in _llm(events)
        if e["payload"]["request"]["messages"][-1].get("content")
    }
    sync = by_first_message["hello sync"]
    assert [m["role"] for m in sync["payload"]["request"]["messages"]] == ["system", "user"]
    assert sync["payload"]["request"]["params"]["temperature"] == 0.2
    assert sync["payload"]["request"]["params"]["max_tokens"] == 50
    assert sync["payload"]["response"]["output"] == "Echo: hello sync"
    assert by_first_message["hello async"]["payload"]["response"]["output"] == "Echo: hello async"
    assert by_first_message["hello stream"]["payload"]["response"]["output"] == "Echo: hello stream"


def test_tool_calls_are_structured_not_flattened(events):
    asking = [e for e in _llm(events) if e["payload"]["response"].get("tool_calls")]
    assert len(asking) == 1
    (call,) = asking[0]["payload"]["response"]["tool_calls"]
    assert call["name"] == "get_weather"
    assert call["id"]
    arguments = call["arguments"]
    assert (arguments if isinstance(arguments, dict) else json.loads(arguments)) == {
        "city": "Paris"
    }
    follow_up = [
        e for e in _llm(events) if e["payload"]["request"]["messages"][-1]["role"] == "tool"
    ]
    assert len(follow_up) == 1
    assert follow_up[0]["payload"]["request"]["messages"][-1]["tool_call_id"] == call["id"]


# A framework's LLM layer over the client's: LangChain is not a dependency of the test
# environments, so the framework layer is emulated honestly: a real GenAI span made through
# the OpenTelemetry API, the way LangChain's and the OpenAI Agents SDK's instrumentations
# record a model call (operation ``chat``, provider, model, messages in, and the response id,
# usage and output read back from the client's response), around a real ``openai`` call.
LAYERED_APP = """
    import json, sys
    import openai
    from opentelemetry import trace
    import lucidic_otel

    base_url = sys.argv[1]
    client = openai.OpenAI(base_url=base_url, api_key="test", max_retries=0)
    framework = trace.get_tracer("emulated.langchain")
    usages = []

    def chat_model(question):
        messages = [{"role": "user", "content": question}]
        with framework.start_as_current_span("ChatOpenAI", attributes={
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.input.messages": json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": question}]}]),
        }) as span:
            response = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
            span.set_attribute("gen_ai.response.id", response.id)
            span.set_attribute("gen_ai.response.model", response.model)
            span.set_attribute("gen_ai.usage.input_tokens", response.usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", response.usage.completion_tokens)
            span.set_attribute("gen_ai.output.messages", json.dumps([{"role": "assistant",
                "parts": [{"type": "text", "content": response.choices[0].message.content}],
                "finish_reason": "stop"}]))
        usages.append([response.usage.prompt_tokens, response.usage.completion_tokens])

    def run():
        with framework.start_as_current_span("invoke_agent planner", attributes={
                "gen_ai.operation.name": "invoke_agent"}):
            chat_model("first question")
            chat_model("second question")
        with framework.start_as_current_span("batch step"):
            for text in ("same model one", "same model two"):
                response = client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
                usages.append([response.usage.prompt_tokens, response.usage.completion_tokens])

    lucidic_otel.with_lucidic(run, session_name="layered", session_id="openai-layered-1")
    print("USAGES " + json.dumps(usages))
"""


@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openai-layered")
    store_path = tmp / "store.db"
    with FakeOpenAIServer() as server:
        proc = run_instrumented(
            [write_script(tmp, "app.py", LAYERED_APP), server.base_url],
            clean_env(LUCIDIC_STORE_PATH=str(store_path)),
            timeout=90,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("USAGES ")]
    store = Store(store_path)
    try:
        events = [i.body for i in store.session_events("openai-layered-1")]
        spans = store.session_spans("openai-layered-1")
        (session,) = [s for s in store.list_sessions()
                      if s["session_id"] == "openai-layered-1"]
    finally:
        store.close()
    return events, spans, session, json.loads(line[len("USAGES "):])


def test_a_framework_layer_over_the_client_is_one_event_per_call(layered):
    events, spans, session, usages = layered
    llm = _llm(events)
    assert len(llm) == 4, [e["metadata"]["span_name"] for e in llm]
    by_id = {s.span_id: s for s in spans}
    framework_spans = [s for s in spans if s.name == "ChatOpenAI"]
    assert len(framework_spans) == 2
    for framework_span in framework_spans:
        # The framework span keeps its place (under the agent, over the client's span) and
        # does not claim the call; the client instrumentation's span, below it, holds it.
        assert by_id[framework_span.parent_span_id].name == "invoke_agent planner"
        assert not framework_span.is_llm_call
        (held,) = [e for e in llm
                   if e["metadata"].get("parent_span_id") == framework_span.span_id]
        assert held["metadata"]["scope_name"] != "emulated.langchain"
        question = framework_span.attributes["gen_ai.input.messages"]
        assert held["payload"]["request"]["messages"][-1]["content"] in question
        assert held["payload"]["response"]["output"].startswith("Echo: ")
        assert len(held["payload"]["misc"]["layers"]) == 2
    assert session["llm_calls"] == 4
    assert session["input_tokens"] == sum(u[0] for u in usages)
    assert session["output_tokens"] == sum(u[1] for u in usages)
    for event, (prompt, completion) in zip(
        sorted(llm, key=lambda e: e["occurred_at"]), usages, strict=True
    ):
        usage = event["payload"]["usage"]
        assert (usage["input_tokens"], usage["output_tokens"]) == (prompt, completion)
        assert usage["cost"] > 0


def test_two_calls_with_the_same_model_in_one_span_stay_two_events(layered):
    events, spans, _, _ = layered
    (step,) = [s for s in spans if s.name == "batch step"]
    under_step = [e for e in _llm(events) if e["metadata"].get("parent_span_id") == step.span_id]
    assert len(under_step) == 2
    assert {e["payload"]["misc"]["response_id"] for e in under_step} != {None}
    assert len({e["payload"]["misc"]["response_id"] for e in under_step}) == 2
