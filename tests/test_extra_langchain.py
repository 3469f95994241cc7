"""The ``[langchain]`` extra: real LangChain calls and a real LangChain agent, offline.

``langchain-openai``'s ``ChatOpenAI`` and a ``langchain.agents.create_agent`` agent with one tool
run under ``opentelemetry-instrument`` with ``opentelemetry-instrumentation-genai-langchain``
(spans from LangChain's callbacks: ``chat``, ``invoke_agent``, ``execute_tool``) and
``-genai-openai`` (the client's own ``chat`` spans below them). A loopback server replays:

* ``tests/data/langchain/*``: exchanges recorded from ``ChatOpenAI`` itself, matched exactly
  (but for ``max_tokens``, which current ``langchain-openai`` sends as ``max_completion_tokens``);
* for the agent, the recorded two-step tool-calling exchange of ``tests/data/openai``
  (``chat_tool_calls`` then ``chat_tool_calls_result``), matched on the model and the messages
  (roles, text, tool calls and their ids, tool results): LangChain spells the rest of the body
  (tool schema, defaults) its own way, and the recorded answer does not depend on it.

Each call or run is its own session. Every model call must be one ``llm_generation`` event,
each tool call a ``function_call`` event, and the agent an event of its own that both hang
from (``client_parent_event_id``, as the sender resolves it at delivery), so the run is a tree.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import pytest

from tests.support.launcher import clean_env, run_instrumented, write_script
from tests.support.replay import ReplayServer, load_recordings
from tests.support.stored import session_trees

pytest.importorskip("langchain")
pytest.importorskip("langchain_openai")
pytest.importorskip("opentelemetry.instrumentation.genai.langchain")

RECORDINGS = {
    **load_recordings("langchain"),
    **load_recordings("openai", ["chat_tool_calls", "chat_tool_calls_result"]),
}
AGENT_STEPS = ("chat_tool_calls", "chat_tool_calls_result")
SESSION_PREFIX = "langchain-"
RUNS = ("basic", "reasoning", "agent")
# Published prices, USD per 1M tokens (input, output), as docs/pricing.md lists them
# (gpt-5-mini, gpt-4o-mini) and the provider's list price for gpt-3.5-turbo.
PUBLISHED = {"gpt-3.5-turbo": (0.50, 1.50), "gpt-5-mini": (0.25, 2.00),
             "gpt-4o-mini": (0.15, 0.60)}

APP = """
    import sys
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    import lucidic_otel

    base_url, prefix = sys.argv[1], sys.argv[2]

    def model(name, **params):
        return ChatOpenAI(model=name, base_url=base_url, api_key="test", max_retries=0,
                          **params)

    def basic():
        llm = model("gpt-3.5-turbo", temperature=0.1, max_tokens=100, top_p=0.9,
                    frequency_penalty=0.5, presence_penalty=0.5, seed=100, n=1,
                    stop=["\\n", "Human:", "AI:"])
        print(llm.invoke([SystemMessage("You are a helpful assistant!"),
                          HumanMessage("What is the capital of France?")]).content)

    def reasoning():
        print(model("gpt-5-mini").invoke([
            SystemMessage("You are a careful mathematical reasoner."),
            HumanMessage("A snail climbs a 12 meter well. Each day it climbs up 3 meters, and "
                         "each night it slides back 2 meters. On which day does it first reach "
                         "the top? Think through it step by step.")]).content[:40])

    @tool
    def get_current_weather(location: str) -> str:
        \"\"\"Get the current weather in a given location\"\"\"
        return {"Seattle, WA": "50 degrees and raining",
                "San Francisco, CA": "70 degrees and sunny"}[location]

    def agent():
        weather = create_agent(model("gpt-4o-mini"), tools=[get_current_weather],
                               system_prompt="You're a helpful assistant.",
                               name="weather_agent")
        result = weather.invoke({"messages": [
            {"role": "user", "content": "What's the weather in Seattle and San Francisco today?"}]})
        print(result["messages"][-1].content)

    for run in (basic, reasoning, agent):
        lucidic_otel.with_lucidic(run, session_name=run.__name__,
                                  session_id=prefix + run.__name__)
"""


def _conversation(body: Any) -> Any:
    """model and messages: role, text (empty = none), tool call id, tool calls (parsed)."""
    messages = []
    for message in body.get("messages") or []:
        calls = [(c.get("id"), c["function"]["name"], json.loads(c["function"]["arguments"]))
                 for c in message.get("tool_calls") or []]
        messages.append((message.get("role"), message.get("content") or None,
                         message.get("tool_call_id"), calls))
    return body.get("model"), messages


def same_request(sent: Any, recorded: Any) -> bool:
    if sent == recorded:
        return True
    if isinstance(sent, dict) and "max_completion_tokens" in sent and "max_tokens" not in sent:
        # langchain-openai >= 0.3.x sends the limit under its newer name; same request.
        sent = {("max_tokens" if k == "max_completion_tokens" else k): v for k, v in sent.items()}
        if sent == recorded:
            return True
    # Only the agent's requests (they offer tools) are matched on the conversation.
    if not (isinstance(sent, dict) and isinstance(recorded, dict) and "tools" in sent):
        return False
    return _conversation(sent) == _conversation(recorded)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{run: (its events, its spans, {event id: resolved parent event id})}."""
    tmp = tmp_path_factory.mktemp("langchain")
    store_path = tmp / "store.db"
    with ReplayServer(RECORDINGS, same_body=same_request, once=True) as server:
        proc = run_instrumented(
            [write_script(tmp, "app.py", APP), server.base_url + "/v1", SESSION_PREFIX],
            clean_env(LUCIDIC_STORE_PATH=str(store_path), OPENAI_API_KEY=None,
                      OPENAI_BASE_URL=None, LANGSMITH_TRACING=None, LANGCHAIN_TRACING_V2=None,
                      LANGSMITH_API_KEY=None, LANGCHAIN_API_KEY=None),
            timeout=180,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert server.unmatched == [], server.unmatched
    assert sorted(server.served) == sorted(RECORDINGS)
    return session_trees(store_path, SESSION_PREFIX, RUNS)


def _response(name: str) -> Dict[str, Any]:
    return json.loads(RECORDINGS[name]["response"]["body"])


def _of_type(events: List[Dict[str, Any]], kind: str) -> List[Dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def _parent(run, event: Dict[str, Any]) -> Optional[str]:
    _, _, parents = run
    return parents[event["client_event_id"]] or event.get("client_parent_event_id")


def _check_llm(event: Dict[str, Any], recording: str) -> None:
    """One model call against its recording: model, messages, output, tokens, cost."""
    payload = event["payload"]
    request = RECORDINGS[recording]["request"]["body"]
    response = _response(recording)
    usage = response["usage"]
    assert payload["request"]["provider"] == "openai"
    # The dated model that answered, as the official SDK sends it; the requested one in misc.
    assert payload["request"]["model"] == response["model"]
    assert payload["misc"]["response_model"] == response["model"]
    assert payload["misc"].get("request_model", response["model"]) == request["model"]
    assert [(m["role"], m.get("content") or None, m.get("tool_call_id"))
            for m in payload["request"]["messages"]] == [
        (m["role"], m.get("content") or None, m.get("tool_call_id"))
        for m in request["messages"]]
    message = response["choices"][0]["message"]
    if message.get("content"):
        assert payload["response"]["output"] == message["content"]
    assert [(c["id"], c["name"], c["arguments"]) for c in payload["response"]["tool_calls"]] == [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in message.get("tool_calls") or []]
    assert (payload["usage"]["input_tokens"], payload["usage"]["output_tokens"]) == (
        usage["prompt_tokens"], usage["completion_tokens"])
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
    assert payload["misc"].get("reasoning_output_tokens", 0) == reasoning
    rate_in, rate_out = PUBLISHED[request["model"]]
    assert payload["usage"]["cost"] == pytest.approx(
        (usage["prompt_tokens"] * rate_in + usage["completion_tokens"] * rate_out) / 1e6,
        rel=1e-9)


def test_the_instrumentation_really_ran(runs):
    _, spans, _ = runs["agent"]
    names = [s.name for s in spans]
    # Without LangChain's own spans the tests below prove nothing about the extra.
    assert [n for n in names if n.startswith("invoke_agent ")], names
    assert len([n for n in names if n.startswith("execute_tool ")]) == 2, names


@pytest.mark.parametrize("run,recording", [("basic", "chat_openai_basic"),
                                           ("reasoning", "chat_openai_reasoning_tokens")])
def test_a_chat_model_call_is_one_llm_event(runs, run, recording):
    events, _, _ = runs[run]
    llm = _of_type(events, "llm_generation")
    assert len(llm) == 1, [(e["type"], e["metadata"]["span_name"]) for e in events]
    assert len(events) == 1, [(e["type"], e["metadata"]["span_name"]) for e in events]
    _check_llm(llm[0], recording)


def test_the_request_parameters_are_kept(runs):
    events, _, _ = runs["basic"]
    params = _of_type(events, "llm_generation")[0]["payload"]["request"]["params"]
    assert params["temperature"] == 0.1
    assert params["max_tokens"] == 100
    assert params["top_p"] == 0.9


def test_each_agent_model_call_is_one_llm_event(runs):
    events, _, _ = runs["agent"]
    llm = _of_type(events, "llm_generation")
    assert len(llm) == 2, [(e["type"], e["metadata"]["span_name"]) for e in events]
    for event, recording in zip(llm, AGENT_STEPS, strict=True):
        _check_llm(event, recording)
    tool_results = [m for m in llm[1]["payload"]["request"]["messages"] if m["role"] == "tool"]
    assert [(m.get("tool_call_id"), m["content"]) for m in tool_results] == [
        (m["tool_call_id"], m["content"])
        for m in RECORDINGS["chat_tool_calls_result"]["request"]["body"]["messages"]
        if m["role"] == "tool"]


def test_each_tool_call_is_a_function_call_event(runs):
    events, _, _ = runs["agent"]
    tools = _of_type(events, "function_call")
    calls = _response("chat_tool_calls")["choices"][0]["message"]["tool_calls"]
    assert sorted((t["payload"]["function_name"], json.dumps(t["payload"]["arguments"]),
                   t["payload"]["return_value"], t["payload"].get("misc", {}).get("tool_call_id"))
                  for t in tools) == sorted(
        ("get_current_weather", json.dumps(json.loads(c["function"]["arguments"])),
         {"Seattle, WA": "50 degrees and raining",
          "San Francisco, CA": "70 degrees and sunny"}[json.loads(
              c["function"]["arguments"])["location"]], c["id"])
        for c in calls)



def test_the_agent_is_an_event(runs):
    events, spans, _ = runs["agent"]
    by_span = {e["metadata"]["span_id"]: e for e in events}
    agent_span = next(s for s in spans if s.name.startswith("invoke_agent "))
    agent = by_span.get(agent_span.span_id)
    assert agent is not None, "invoke_agent span is not an event"
    assert agent["type"] == "generic"
    assert "weather_agent" in agent["payload"]["details"]


def test_the_agent_run_is_a_tree(runs):
    events, spans, _ = runs["agent"]
    agent_span = next(s for s in spans if s.name.startswith("invoke_agent "))
    agent = [e for e in events if e["metadata"]["span_id"] == agent_span.span_id]
    assert agent, "invoke_agent span is not an event"
    inside = _of_type(events, "llm_generation") + _of_type(events, "function_call")
    assert len(inside) == 4
    assert [_parent(runs["agent"], e) for e in inside] == [agent[0]["client_event_id"]] * 4
