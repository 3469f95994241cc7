"""The real ``openai`` client under the launcher becomes Lucidic events in the local store.

Runs with whichever OpenAI extra is installed (``[openai]`` or ``[openai-v2]``; CI runs both):
sync, async, streaming and a tool-call round trip against the loopback OpenAI-compatible
server, and checks the events carry messages, output, structured tool calls, tokens and cost.
"""

from __future__ import annotations

import json

import pytest

from lucidic_otel.demo.fake_openai import FakeOpenAIServer
from lucidic_otel.store import Store
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
