"""Recorded Anthropic exchanges through the real client, both layers on: one event per call.

``anthropic`` 2.x traces its own API calls (``anthropic.messages.create``, on by default) and
``opentelemetry-instrumentation-genai-anthropic`` wraps the same calls in ``chat <model>``:
two LLM spans per call. Each recording in ``tests/data/anthropic`` is replayed to the real
``anthropic`` client through a loopback server, under the real launcher, and the real store must
hold exactly one ``llm_generation`` event per call, with the recording's tokens and their cost
counted once in the event, in the span table and in the session's totals.
"""

from __future__ import annotations

import json

import pytest

from lucidic_otel.convert.pricing import cost as price_cost
from lucidic_otel.outbox.store import Store
from tests.support.anthropic_replay import CLIENT_CALL, AnthropicReplayServer, load_recordings
from tests.support.launcher import clean_env, run_instrumented, write_script

anthropic = pytest.importorskip("anthropic")
pytest.importorskip("opentelemetry.instrumentation.genai.anthropic")

SESSION = "anthropic-replay-1"
RECORDINGS = load_recordings()

APP = """
    import inspect, json, sys
    import anthropic
    import lucidic_otel
""" + CLIENT_CALL + """
    def run():
        for name, recording in recordings.items():
            call(name, recording)

    lucidic_otel.with_lucidic(run, session_name="anthropic", session_id=sys.argv[3])
"""


def _recorded_usage(recording):
    """(model, input tokens, output tokens, cache write, cache read) as the API reported them;
    input tokens as the semantic conventions count them (cache reads and writes included)."""
    body = recording["response"]["body"]
    if recording["response"]["headers"]["content-type"].startswith("text/event-stream"):
        usage, model = {}, None
        for line in body.splitlines():
            if not line.startswith("data: "):
                continue
            data = json.loads(line[len("data: "):])
            if data["type"] == "message_start":
                model = data["message"]["model"]
                usage.update(data["message"]["usage"])
            elif data["type"] == "message_delta":
                usage.update(data["usage"])
    else:
        message = json.loads(body)
        usage, model = message["usage"], message["model"]
    write = usage.get("cache_creation_input_tokens") or 0
    read = usage.get("cache_read_input_tokens") or 0
    return model, usage["input_tokens"] + write + read, usage["output_tokens"], write, read


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("anthropic")
    store_path = tmp / "store.db"
    recordings_file = tmp / "recordings.json"
    recordings_file.write_text(json.dumps(RECORDINGS), "utf-8")
    with AnthropicReplayServer(RECORDINGS) as server:
        proc = run_instrumented(
            [write_script(tmp, "app.py", APP), server.base_url, recordings_file, SESSION],
            clean_env(LUCIDIC_STORE_PATH=str(store_path)),
            timeout=120,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert server.unmatched == [], server.unmatched
    assert sorted(server.served) == sorted(RECORDINGS)
    store = Store(store_path)
    try:
        events = [i.body for i in store.session_events(SESSION) if i.kind == "event"]
        spans = store.session_spans(SESSION)
        (session,) = [s for s in store.list_sessions() if s["session_id"] == SESSION]
    finally:
        store.close()
    return events, spans, session


def _by_recording(events):
    """Each llm_generation event, keyed by the recording whose first user message it has."""
    found = {}
    for event in events:
        if event["type"] != "llm_generation":
            continue
        messages = event["payload"]["request"]["messages"]
        user = [m for m in messages if m["role"] == "user"]
        for name, recording in RECORDINGS.items():
            content = recording["request"]["body"]["messages"][0]["content"]
            text = content if isinstance(content, str) else content[0]["text"]
            if user and user[0]["content"] and user[0]["content"].startswith(text):
                assert name not in found, f"two events for {name}"
                found[name] = event
    return found


def test_both_layers_really_ran(replay):
    _, spans, _ = replay
    names = [s.name for s in spans]
    # Without both layers this test proves nothing: the client's own span and the
    # instrumentation's span, once per recorded call.
    assert names.count("anthropic.messages.create") == len(RECORDINGS), names
    chat = [n for n in names if n.startswith("chat ")]
    assert len(chat) == len(RECORDINGS), names


def test_one_llm_event_per_api_call(replay):
    events, _, _ = replay
    llm = [e for e in events if e["type"] == "llm_generation"]
    assert len(llm) == len(RECORDINGS), [e["metadata"]["span_name"] for e in llm]
    assert sorted(_by_recording(events)) == sorted(RECORDINGS)


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_tokens_and_cost_equal_the_recording(replay, name):
    events, _, _ = replay
    event = _by_recording(events)[name]
    usage = event["payload"]["usage"]
    recording = RECORDINGS[name]
    if recording["response"]["status"] != 200:
        assert event["payload"]["status"] == "error"
        # A failed call counts 0 tokens, not null, as the official SDK sends it; no cost.
        assert usage["input_tokens"] == 0 and usage["output_tokens"] == 0
        assert usage["cost"] is None
        return
    model, input_tokens, output_tokens, write, read = _recorded_usage(recording)
    assert (usage["input_tokens"], usage["output_tokens"]) == (input_tokens, output_tokens)
    # Once: no other event of this call (the layer above or below it) counts them again.
    holder = event["metadata"]
    same_call = [
        e for e in events if e["type"] == "llm_generation" and (
            e["metadata"]["span_id"] == holder.get("parent_span_id")
            or e["metadata"].get("parent_span_id") == holder["span_id"])
    ]
    assert same_call == []
    # Cache reads and writes (inside the input count) at Anthropic's cache rates.
    assert usage["cost"] == price_cost(model, input_tokens, output_tokens, read, write)
    assert usage["cost"] is not None and usage["cost"] > 0
    if read or write:
        assert usage["cost"] != price_cost(model, input_tokens, output_tokens)
    misc = event["payload"]["misc"]
    assert misc["response_model"] == model
    assert misc.get("cache_creation_input_tokens", 0) == write
    assert misc.get("cache_read_input_tokens", 0) == read


def test_session_totals_count_each_call_once(replay):
    events, spans, session = replay
    expected_in = expected_out = 0
    expected_cost = 0.0
    for recording in RECORDINGS.values():
        if recording["response"]["status"] == 200:
            model, input_tokens, output_tokens, write, read = _recorded_usage(recording)
            expected_in += input_tokens
            expected_out += output_tokens
            expected_cost += price_cost(model, input_tokens, output_tokens, read, write)
    assert session["llm_calls"] == len(RECORDINGS)
    assert session["input_tokens"] == expected_in
    assert session["output_tokens"] == expected_out
    assert session["cost"] == pytest.approx(expected_cost, rel=1e-9)
    assert sum(1 for s in spans if s.is_llm_call) == len(RECORDINGS)
    assert sum(s.input_tokens or 0 for s in spans) == expected_in


def test_the_event_has_the_union_of_both_layers(replay):
    events, spans, _ = replay
    by_name = _by_recording(events)
    span_by_id = {s.span_id: s for s in spans}
    for name, event in by_name.items():
        payload = event["payload"]
        layers = payload["misc"]["layers"]
        assert sorted(layer["span_name"].split(" ")[0] for layer in layers) == [
            "anthropic.messages.create", "chat"], name
        # The event is the client's own span (innermost), its parent the instrumentation's.
        holder = span_by_id[event["metadata"]["span_id"]]
        assert holder.name == "anthropic.messages.create"
        outer = span_by_id[holder.parent_span_id]
        assert outer.name.startswith("chat ") and not outer.is_llm_call
        # Messages come from the instrumentation's layer, the provider from either.
        assert payload["request"]["provider"] == "anthropic"
        assert "user" in [m["role"] for m in payload["request"]["messages"]], name
    assert by_name["tool_use"]["payload"]["response"]["tool_calls"][0]["name"] == "get_weather"
    assert "323" in by_name["thinking"]["payload"]["response"]["thinking"][0]
    assert by_name["streaming"]["payload"]["response"]["output"] == "Hello."
    assert by_name["streaming"]["payload"]["misc"]["streaming"] is True
    assert "[image" in by_name["multimodal_streaming"]["payload"]["request"]["messages"][0][
        "content"]
    assert by_name["basic"]["payload"]["misc"]["response_id"] == "msg_01X2c4jNgRTKYFpNTgfptMUA"
    assert "not_found" in by_name["api_error"]["payload"]["error"].lower() or "404" in by_name[
        "api_error"]["payload"]["error"]
