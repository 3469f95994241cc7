"""The ``[openai-agents]`` extra: a real OpenAI Agents SDK run, offline, under the launcher.

Two recorded two-step ``Runner`` runs over the Responses API (``tests/data/openai_agents``: the
model asks for a tool, the tool runs, the model answers; in the second run the tool raises) are
replayed by a loopback server to the real ``openai-agents`` library, run by
``opentelemetry-instrument`` with ``opentelemetry-instrumentation-genai-openai-agents`` (the
``invoke_workflow > invoke_agent > execute_tool`` spans) and ``-genai-openai`` (the ``chat``
spans of the model calls). Each run is its own session.

What Lucidic must show is the run as a tree: the model calls as ``llm_generation`` events, the
tool as a ``function_call`` event, and the agent as an event of its own that both hang from
(``client_parent_event_id``), under the workflow. Parents are read the way the sender resolves
them at delivery (the nearest stored ancestor span that is an event). The agents library's own
exporter to OpenAI's tracing backend is removed in the app, so nothing leaves the machine.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import pytest

from tests.support.launcher import clean_env, run_instrumented, write_script
from tests.support.replay import ReplayServer, load_recordings
from tests.support.stored import session_trees

agents = pytest.importorskip("agents")
pytest.importorskip("opentelemetry.instrumentation.genai.openai_agents")
pytest.importorskip("opentelemetry.instrumentation.genai.openai")

RECORDINGS = load_recordings("openai_agents")
RUNS = {"tool_call": "what is the weather in Barcelona?", "failing_tool": "run tool"}
SESSION_PREFIX = "agents-"
# The agents SDK sends a fresh prompt_cache_key per run (the recording holds the one it sent).
VOLATILE = ("prompt_cache_key",)


def same_request(sent: Any, recorded: Any) -> bool:
    """Equal bodies but for the per-run cache key, with tools compared by type and name: the
    JSON schema the library derives from a tool function differs between versions (the
    failing-tool exchange, written by its cassette's authors, has no ``title`` or
    ``description``), and the recorded answer does not depend on it."""
    if not isinstance(sent, dict) or not isinstance(recorded, dict):
        return sent == recorded

    def key(body: Dict[str, Any]) -> Dict[str, Any]:
        body = {k: v for k, v in body.items() if k not in VOLATILE}
        body["tools"] = [(t.get("type"), t.get("name")) for t in body.get("tools") or []]
        return body

    return key(sent) == key(recorded)

APP = """
    import sys
    import openai
    from agents import Agent, Runner, function_tool, set_default_openai_client
    from agents.tracing import get_trace_provider, set_trace_processors
    import lucidic_otel

    base_url, prefix = sys.argv[1], sys.argv[2]
    set_default_openai_client(
        openai.AsyncOpenAI(base_url=base_url, api_key="test", max_retries=0),
        use_for_tracing=False)
    # Keep only the OpenTelemetry processor: the library's default one would upload the run
    # to OpenAI's tracing backend.
    processors = get_trace_provider()._multi_processor._processors
    set_trace_processors([p for p in processors
                          if type(p).__module__.startswith("opentelemetry.")])

    @function_tool
    def _get_weather(city: str) -> str:
        \"\"\"Return a canned forecast for the requested city.\"\"\"
        return f"The forecast for {city} is sunny."

    def tool_error(context, error):
        # The message the library sent when the exchange was recorded (0.24 sends a generic
        # one), so the second request is the recorded one.
        return f"An error occurred while running the tool: {error}"

    @function_tool(failure_error_function=tool_error)
    def _failing_tool() -> str:
        raise RuntimeError("database connection failed")

    runs = {
        "tool_call": (Agent(name="weather_agent", model="gpt-4o-mini", tools=[_get_weather]),
                      "what is the weather in Barcelona?"),
        "failing_tool": (Agent(name="failing_agent", model="gpt-4o-mini",
                               tools=[_failing_tool]), "run tool"),
    }
    for name, (agent, question) in runs.items():
        result = lucidic_otel.with_lucidic(Runner.run_sync, agent, question,
                                           session_name=name, session_id=prefix + name)
        print(name, "->", result.final_output)
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{run: (its events, its spans, {(trace, span): resolved parent event id})}."""
    tmp = tmp_path_factory.mktemp("agents")
    store_path = tmp / "store.db"
    with ReplayServer(RECORDINGS, same_body=same_request, once=True) as server:
        proc = run_instrumented(
            [write_script(tmp, "app.py", APP), server.base_url + "/v1", SESSION_PREFIX],
            clean_env(LUCIDIC_STORE_PATH=str(store_path), OPENAI_API_KEY=None,
                      OPENAI_BASE_URL=None, OPENAI_AGENTS_DISABLE_TRACING=None),
            timeout=180,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert server.unmatched == [], server.unmatched
    assert sorted(server.served) == sorted(RECORDINGS)
    assert "tool_call -> The weather in Barcelona is sunny. Enjoy your day!" in proc.stdout
    return session_trees(store_path, SESSION_PREFIX, RUNS)


def _response(name: str) -> Dict[str, Any]:
    return json.loads(RECORDINGS[name]["response"]["body"])


def _parent(run, event: Dict[str, Any]) -> Optional[str]:
    """The parent event id the sender would deliver: resolved from the stored spans, else the
    one recorded in the event."""
    _, _, parents = run
    return parents[event["client_event_id"]] or event.get("client_parent_event_id")


def _of_type(events: List[Dict[str, Any]], kind: str) -> List[Dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


@pytest.mark.parametrize("run", sorted(RUNS))
def test_the_instrumentations_really_ran(runs, run):
    _, spans, _ = runs[run]
    names = [s.name for s in spans]
    # Without these spans the tests below prove nothing about the extra.
    assert "invoke_workflow Agent workflow" in names, names
    assert [n for n in names if n.startswith("invoke_agent ")], names
    assert [n for n in names if n.startswith("execute_tool ")], names
    assert len([n for n in names if n.startswith("chat ")]) == 2, names


@pytest.mark.parametrize("run", sorted(RUNS))
def test_each_model_call_is_one_llm_event(runs, run):
    events, _, _ = runs[run]
    llm = _of_type(events, "llm_generation")
    assert len(llm) == 2, [(e["type"], e["metadata"]["span_name"]) for e in events]
    first, second = _response(run + "_1"), _response(run + "_2")
    for event, response in zip(llm, (first, second), strict=True):
        payload = event["payload"]
        assert payload["request"]["provider"] == "openai"
        # The dated model that answered, as the official SDK sends it; the requested one in misc.
        assert payload["request"]["model"] == response["model"]
        assert payload["misc"]["response_model"] == response["model"]
        assert payload["misc"].get("request_model", response["model"]) == "gpt-4o-mini"
        assert (payload["usage"]["input_tokens"], payload["usage"]["output_tokens"]) == (
            response["usage"]["input_tokens"], response["usage"]["output_tokens"])
        assert payload["usage"]["cost"] > 0
        assert payload["request"]["messages"][0] == {"role": "user", "content": RUNS[run]}
    (call,) = [item for item in first["output"] if item["type"] == "function_call"]
    assert [(c["id"], c["name"], c["arguments"]) for c in llm[0]["payload"]["response"][
        "tool_calls"]] == [(call["call_id"], call["name"], json.loads(call["arguments"]))]
    answer = second["output"][0]["content"][0]["text"]
    assert llm[1]["payload"]["response"]["output"] == answer
    # The second call carries the tool's result back to the model.
    tool_results = [m for m in llm[1]["payload"]["request"]["messages"] if m["role"] == "tool"]
    expected = [item for item in RECORDINGS[run + "_2"]["request"]["body"]["input"]
                if item.get("type") == "function_call_output"]
    assert [(m.get("tool_call_id"), m["content"]) for m in tool_results] == [
        (item["call_id"], item["output"]) for item in expected]


def test_the_tool_is_a_function_call_event(runs):
    events, _, _ = runs["tool_call"]
    (tool,) = _of_type(events, "function_call")
    payload = tool["payload"]
    assert payload["function_name"] == "_get_weather"
    assert payload["arguments"] == {"city": "Barcelona"}
    assert payload["return_value"] == "The forecast for Barcelona is sunny."
    assert "error" not in payload


def test_a_failing_tool_is_a_function_call_event_with_the_error(runs):
    events, _, _ = runs["failing_tool"]
    (tool,) = _of_type(events, "function_call")
    payload = tool["payload"]
    assert payload["function_name"] == "_failing_tool"
    assert "database connection failed" in (payload.get("error") or ""), payload



@pytest.mark.parametrize("run", sorted(RUNS))
def test_the_agent_and_its_workflow_are_events(runs, run):
    events, spans, _ = runs[run]
    by_span = {e["metadata"]["span_id"]: e for e in events}
    agent_span = next(s for s in spans if s.name.startswith("invoke_agent "))
    workflow_span = next(s for s in spans if s.name.startswith("invoke_workflow "))
    agent = by_span.get(agent_span.span_id)
    workflow = by_span.get(workflow_span.span_id)
    assert agent is not None, "invoke_agent span is not an event"
    assert workflow is not None, "invoke_workflow span is not an event"
    agent_name = agent_span.name[len("invoke_agent "):]
    assert agent["type"] == "generic" and agent_name in agent["payload"]["details"]
    assert workflow["type"] == "generic" and "Agent workflow" in workflow["payload"]["details"]
    assert _parent(runs[run], agent) == workflow["client_event_id"]


@pytest.mark.parametrize("run", sorted(RUNS))
def test_the_run_is_a_tree_under_the_agent(runs, run):
    events, spans, _ = runs[run]
    agent_span = next(s for s in spans if s.name.startswith("invoke_agent "))
    agents_events = [e for e in events if e["metadata"]["span_id"] == agent_span.span_id]
    assert agents_events, "invoke_agent span is not an event"
    agent_id = agents_events[0]["client_event_id"]
    inside = _of_type(events, "llm_generation") + _of_type(events, "function_call")
    assert len(inside) == 3
    assert [_parent(runs[run], e) for e in inside] == [agent_id] * 3
