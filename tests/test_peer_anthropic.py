"""OpenInference's and OpenLLMetry's Anthropic instrumentations, as a user runs them.

The recorded Anthropic exchanges of ``tests/data/anthropic`` are replayed to the real
``anthropic`` client under ``opentelemetry-instrument`` with ``openinference-instrumentation-
anthropic`` or OpenLLMetry's ``opentelemetry-instrumentation-anthropic`` (installed aside by
``tests/support/peers.py`` from the project's extras) as the only instrumentation of
``anthropic``: the official ``-genai-anthropic`` is hidden from the launcher. ``anthropic``
2.x also traces its own calls (``anthropic.messages.create``), so each call has two LLM spans,
the package's and the client's, and must be one ``llm_generation`` event (see
``tests/test_anthropic_events.py``) with the recording's model, messages, answer (text, tool
calls, thinking), tokens (cache reads and writes too) and cost, or its error.

Each exchange runs in its own session ``anthropic-<name>``. What a package does not record is
``xfail(strict=True)`` naming what is missing.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

import pytest

from lucidic_otel.convert.pricing import cost as price_cost
from lucidic_otel.outbox.store import Store
from tests.support import peers
from tests.support.anthropic_replay import CLIENT_CALL, AnthropicReplayServer, load_recordings
from tests.support.launcher import clean_env, run_instrumented, write_script

anthropic = pytest.importorskip("anthropic")

pytestmark = pytest.mark.timeout(900)  # pip may install the family first
RECORDINGS = load_recordings()
SESSION_PREFIX = "anthropic-"

APP = """
    import inspect, json, sys
    import anthropic
    import lucidic_otel
""" + CLIENT_CALL + """
    for name, recording in recordings.items():
        lucidic_otel.with_lucidic(call, name, recording, session_name=name,
                                  session_id=sys.argv[3] + name)
"""


@pytest.fixture(scope="module", params=peers.FAMILIES)
def family_replay(request, tmp_path_factory) -> Tuple[str, Dict[str, Any]]:
    """(family, {recording: (its session's events, its LLM spans' names)})."""
    family = request.param
    tmp = tmp_path_factory.mktemp("anthropic-" + family)
    store_path = tmp / "store.db"
    recordings_file = tmp / "recordings.json"
    recordings_file.write_text(json.dumps(RECORDINGS), "utf-8")
    env = clean_env(LUCIDIC_STORE_PATH=str(store_path), ANTHROPIC_API_KEY=None,
                    ANTHROPIC_BASE_URL=None,
                    PYTHONPATH=peers.pythonpath(peers.hidden(tmp), peers.install_dir(family)))
    with AnthropicReplayServer(RECORDINGS) as server:
        proc = run_instrumented(
            [write_script(tmp, "app.py", APP), server.base_url, recordings_file,
             SESSION_PREFIX], env, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert server.unmatched == [], server.unmatched
    assert sorted(server.served) == sorted(RECORDINGS)
    found = {}
    with Store(store_path) as store:
        for name in RECORDINGS:
            events = [i.body for i in store.session_events(SESSION_PREFIX + name)
                      if i.kind == "event"]
            spans = [s.name for s in store.session_spans(SESSION_PREFIX + name)
                     if s.name != "POST"]
            found[name] = (events, spans)
    return family, found


def _recorded(recording: Dict[str, Any]) -> Dict[str, Any]:
    """Model, tokens (input as the semantic conventions count it: cache reads and writes
    included), text, tool call names and thinking of the recorded answer."""
    body = recording["response"]["body"]
    blocks: List[Dict[str, Any]] = []
    if recording["response"]["headers"]["content-type"].startswith("text/event-stream"):
        usage: Dict[str, Any] = {}
        for line in body.splitlines():
            if not line.startswith("data: "):
                continue
            data = json.loads(line[len("data: "):])
            if data["type"] == "message_start":
                model = data["message"]["model"]
                usage.update(data["message"]["usage"])
            elif data["type"] == "message_delta":
                usage.update(data["usage"])
            elif data["type"] == "content_block_start":
                blocks.append(dict(data["content_block"]))
            elif data["type"] == "content_block_delta":
                delta = data["delta"]
                for key in ("text", "thinking"):
                    if key in delta:
                        blocks[-1][key] = blocks[-1].get(key, "") + delta[key]
    else:
        message = json.loads(body)
        usage, model, blocks = message["usage"], message["model"], message["content"]
    write = usage.get("cache_creation_input_tokens") or 0
    read = usage.get("cache_read_input_tokens") or 0
    return {
        "model": model, "input": usage["input_tokens"] + write + read,
        "output": usage["output_tokens"], "write": write, "read": read,
        "text": "".join(b.get("text", "") for b in blocks if b["type"] == "text") or None,
        "tools": [b["name"] for b in blocks if b["type"] == "tool_use"],
        "thinking": [b["thinking"] for b in blocks if b["type"] == "thinking"],
    }


def _first_user_text(recording: Dict[str, Any]) -> str:
    content = recording["request"]["body"]["messages"][0]["content"]
    return content if isinstance(content, str) else content[0]["text"]


def check(found: Dict[str, Any], name: str) -> None:
    events, spans = found[name]
    llm = [e for e in events if e["type"] == "llm_generation"]
    assert len(llm) == 1 and len(events) == 1, [(e["type"], e["metadata"]["span_name"])
                                                 for e in events]
    # Two layers (the package's span and the client's own), one event.
    assert "anthropic.messages.create" in spans and len(spans) == 2, spans
    payload = llm[0]["payload"]
    recording = RECORDINGS[name]
    request = recording["request"]["body"]
    assert payload["request"]["provider"] == "anthropic"
    user = [m for m in payload["request"]["messages"] if m["role"] == "user"]
    assert user and (user[0]["content"] or "").startswith(_first_user_text(recording))
    if recording["response"]["status"] != 200:
        assert payload["status"] == "error"
        assert payload["request"]["model"] == request["model"]
        assert (payload["usage"]["input_tokens"], payload["usage"]["output_tokens"]) == (0, 0)
        assert payload["usage"]["cost"] is None
        return
    want = _recorded(recording)
    assert payload.get("status") != "error", payload.get("error")
    assert payload["request"]["model"] == want["model"]
    assert payload["misc"].get("request_model", want["model"]) == request["model"]
    assert (payload["usage"]["input_tokens"], payload["usage"]["output_tokens"]) == (
        want["input"], want["output"])
    assert payload["misc"].get("cache_creation_input_tokens", 0) == want["write"]
    assert payload["misc"].get("cache_read_input_tokens", 0) == want["read"]
    assert payload["usage"]["cost"] == pytest.approx(price_cost(
        want["model"], want["input"], want["output"], want["read"], want["write"]), rel=1e-9)
    response = payload["response"]
    assert [c["name"] for c in response["tool_calls"]] == want["tools"]
    if want["text"] is not None:
        assert response["output"] == want["text"]
    assert response.get("thinking", []) == want["thinking"]


# What a package leaves off (read in its source), so no conversion can recover it.
_OPENLLMETRY_WITH_STREAM = (
    "opentelemetry-instrumentation-anthropic 0.62.4 (OpenLLMetry) wraps the stream in an "
    "ObjectProxy whose __enter__ returns the unwrapped stream, so a stream used as "
    "`with client.messages.create(stream=True) as stream` is iterated past it and its span "
    "never ends: only anthropic's own span (no messages, no content) is recorded")
MISSING: Dict[Tuple[str, str], str] = {
    ("openllmetry", "streaming"): _OPENLLMETRY_WITH_STREAM,
    ("openllmetry", "multimodal_streaming"): _OPENLLMETRY_WITH_STREAM,
    ("openllmetry", "api_error"): (
        "opentelemetry-instrumentation-anthropic 0.62.4 (OpenLLMetry) does not make its span "
        "current, so anthropic's own span of the call is in another trace, and a failed call "
        "has no response id to join the two layers: two events for one call"),
}


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_exchange(family_replay, name, request):
    family, found = family_replay
    reason = MISSING.get((family, name))
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    check(found, name)
