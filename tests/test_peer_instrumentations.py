"""OpenInference's and OpenLLMetry's instrumentations, as a user runs them: one event per call.

A user who installed ``lucidic-otel`` and ONE other vendor's instrumentation per library
(``[openinference]``: Arize's ``openinference-instrumentation-openai``; ``[openllmetry]``:
Traceloop's ``opentelemetry-instrumentation-openai``) runs ``opentelemetry-instrument python
app.py``. These tests do exactly that, offline: the real ``openai`` client, the real launcher,
the real peer packages (installed aside by ``tests/support/peers.py`` from the project's own
extras, and put on ``PYTHONPATH``), and the recorded exchanges of ``tests/data/openai``
replayed by a loopback server. The official ``-genai-openai`` of this environment is hidden
from the launcher (its metadata first on ``PYTHONPATH`` with no entry points), so the peer's
``openai`` instrumentor is the only one, as on the user's machine; that each call is one event
and the client has one wrapper proves it.

Every exchange runs in its own session ``cassette-<name>`` and is checked against the recorded
request and response as ``tests/test_cassettes_openai.py`` checks the official
instrumentation: the model (requested and answering), request messages (text, content parts,
tool calls and results), the output or refusal, structured tool calls, input/output tokens,
cached and reasoning tokens, the cost at published prices, and the error of a failed call.
What a package does not record is ``xfail(strict=True)`` naming what is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Tuple

import pytest

from lucidic_otel.convert.classify import LLM, classify
from lucidic_otel.outbox.store import Store
from tests.support import peers
from tests.support.launcher import clean_env, run_instrumented, write_script
from tests.support.replay import ReplayServer, load_recordings
from tests.test_cassettes_openai import APP, check
from tests.test_cassettes_openai import expected_messages as official_messages

openai = pytest.importorskip("openai")

RECORDINGS = load_recordings("openai")
Events = Dict[str, List[Dict[str, Any]]]
Spans = Dict[str, List[str]]
SESSION_PREFIX = "cassette-"
# pip may install the family's packages first (cached under .peers/ afterwards).
pytestmark = pytest.mark.timeout(900)


def _user_env(tmp: Path, family: str, store: Path, *, hide_official: bool = True,
              **overrides: str) -> Dict[str, str]:
    """The launcher's environment on a machine with ``family`` as its only instrumentation of
    openai, anthropic and langchain (``hide_official=False``: next to the official ones)."""
    dirs = [peers.hidden(tmp)] if hide_official else []
    path = peers.pythonpath(*dirs, peers.install_dir(family))
    return clean_env(LUCIDIC_STORE_PATH=str(store), OPENAI_API_KEY=None, OPENAI_BASE_URL=None,
                     PYTHONPATH=path, **overrides)


def _run_exchanges(tmp: Path, family: str, app: str, names: Iterable[str] = tuple(RECORDINGS),
                   *, hide_official: bool = True) -> Tuple[Events, Spans]:
    """({name: the events of its session}, {name: its LLM spans' names}) after one launcher
    run of ``app`` on ``names``."""
    recordings = {name: RECORDINGS[name] for name in names}
    store_path = tmp / "store.db"
    recordings_file = tmp / "recordings.json"
    recordings_file.write_text(json.dumps(recordings), "utf-8")
    env = _user_env(tmp, family, store_path, hide_official=hide_official)
    with ReplayServer(recordings, ignore=("encoding_format",)) as server:
        proc = run_instrumented(
            [write_script(tmp, "app.py", app), server.base_url + "/v1", recordings_file,
             SESSION_PREFIX], env, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert server.unmatched == [], server.unmatched
    assert sorted(server.served) == sorted(recordings)
    with Store(store_path) as store:
        return {
            name: [i.body for i in store.session_events(SESSION_PREFIX + name)
                   if i.kind == "event"]
            for name in recordings
        }, {
            name: [span.name for span in store.session_spans(SESSION_PREFIX + name)
                   if classify(span.attributes) == LLM]
            for name in recordings
        }


def _one_instrumentor(spans: Dict[str, List[str]], events: Dict[str, List[Dict[str, Any]]],
                      name: str) -> None:
    """The call was wrapped once: one LLM span (the peer's), and an event of one layer."""
    assert len(spans[name]) == 1, spans[name]
    (event,) = [e for e in events[name] if e["type"] == "llm_generation"]
    assert "layers" not in event["payload"].get("misc", {}), event["payload"]["misc"]


@pytest.fixture(scope="module", params=peers.FAMILIES)
def family_replay(request, tmp_path_factory):
    """(family, {recording name: the events of its session}) from one launcher run."""
    family = request.param
    return family, _run_exchanges(tmp_path_factory.mktemp(family), family, APP)


def _embedding_inputs(name: str) -> List[Dict[str, Any]]:
    body = RECORDINGS[name]["request"]["body"]
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    return [{"role": "user", "content": text} for text in inputs]


@pytest.fixture
def embedding_input_as_message(monkeypatch):
    """OpenLLMetry records an embedding's input text as a user message (the official
    instrumentation records none): that is the request, so expect it."""
    import tests.test_cassettes_openai as official

    def messages(name: str) -> List[Dict[str, Any]]:
        if RECORDINGS[name]["request"]["path"] == "/v1/embeddings":
            return _embedding_inputs(name)
        return official_messages(name)

    monkeypatch.setattr(official, "expected_messages", messages)


# What a package leaves off its span, so no conversion can recover it (read in its source).
MISSING = {
    ("openinference", "chat_refusal"): (
        "openinference-instrumentation-openai 0.1.66 records no refusal for Chat Completions "
        "(llm.output_messages.0 has only its role; only the Responses API path reads refusals)"),
    ("openllmetry", "responses_tool_call"): (
        "opentelemetry-instrumentation-openai 0.62.4 records a Responses function call's item "
        "id (fc_...) as the tool call's id, not its call_id (call_...), which a tool result "
        "must name"),
}


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_exchange(family_replay, name, request):
    family, (replay, spans) = family_replay
    _one_instrumentor(spans, replay, name)
    reason = MISSING.get((family, name))
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    if family == "openllmetry":
        request.getfixturevalue("embedding_input_as_message")
    check(replay, name)


# ------------------------------------------------ one instrumentor, however it is switched on

# The documented explicit use of each package, at the top of the application.
EXPLICIT = {
    "openinference": "from openinference.instrumentation.openai import OpenAIInstrumentor",
    "openllmetry": "from opentelemetry.instrumentation.openai import OpenAIInstrumentor",
}
FEW = ("chat_basic", "chat_tool_calls", "chat_404")


@pytest.mark.parametrize("family", peers.FAMILIES)
def test_explicit_instrument_under_the_launcher_is_still_one_event(family, tmp_path):
    """The app calls ``OpenAIInstrumentor().instrument()`` as the package documents, and the
    launcher has already applied the same instrumentor from its entry point: still one
    wrapper, one event per call."""
    app = "\n    " + EXPLICIT[family] + "\n    OpenAIInstrumentor().instrument()" + APP
    replay, spans = _run_exchanges(tmp_path, family, app, FEW)
    for name in FEW:
        _one_instrumentor(spans, replay, name)
        check(replay, name)


@pytest.mark.parametrize("family", peers.FAMILIES)
def test_next_to_the_official_instrumentation_the_client_is_wrapped_twice(family, tmp_path):
    """Without the official instrumentation hidden, both ``openai`` instrumentors wrap the
    client: two LLM spans per call (what the one-instrumentation-per-library rule prevents,
    and what makes the check of the tests above able to fail), merged into one event of two
    layers, so the call is still counted once."""
    replay, spans = _run_exchanges(tmp_path, family, APP, ("chat_basic",), hide_official=False)
    assert len(spans["chat_basic"]) == 2, spans["chat_basic"]
    with pytest.raises(AssertionError):
        _one_instrumentor(spans, replay, "chat_basic")
    (event,) = [e for e in replay["chat_basic"] if e["type"] == "llm_generation"]
    assert len(event["payload"]["misc"]["layers"]) == 2, event["payload"]["misc"]
    check(replay, "chat_basic")
