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
from typing import Any, Dict, List

import pytest

from lucidic_otel.outbox.store import Store
from tests.support import peers
from tests.support.launcher import clean_env, run_instrumented, write_script
from tests.support.replay import ReplayServer, load_recordings
from tests.test_cassettes_openai import APP, check
from tests.test_cassettes_openai import expected_messages as official_messages

openai = pytest.importorskip("openai")

RECORDINGS = load_recordings("openai")
SESSION_PREFIX = "cassette-"
# pip may install the family's packages first (cached under .peers/ afterwards).
pytestmark = pytest.mark.timeout(900)


def _user_env(tmp: Path, family: str, store: Path, **overrides: str) -> Dict[str, str]:
    """The launcher's environment on a machine with ``family`` as its only instrumentation of
    openai, anthropic and langchain."""
    path = peers.pythonpath(peers.hidden(tmp), peers.install_dir(family))
    return clean_env(LUCIDIC_STORE_PATH=str(store), OPENAI_API_KEY=None, OPENAI_BASE_URL=None,
                     PYTHONPATH=path, **overrides)


def _run_exchanges(tmp: Path, family: str, app: str) -> Dict[str, List[Dict[str, Any]]]:
    store_path = tmp / "store.db"
    recordings_file = tmp / "recordings.json"
    recordings_file.write_text(json.dumps(RECORDINGS), "utf-8")
    env = _user_env(tmp, family, store_path)
    with ReplayServer(RECORDINGS, ignore=("encoding_format",)) as server:
        proc = run_instrumented(
            [write_script(tmp, "app.py", app), server.base_url + "/v1", recordings_file,
             SESSION_PREFIX], env, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert server.unmatched == [], server.unmatched
    assert sorted(server.served) == sorted(RECORDINGS)
    with Store(store_path) as store:
        return {
            name: [i.body for i in store.session_events(SESSION_PREFIX + name)
                   if i.kind == "event"]
            for name in RECORDINGS
        }


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
    family, replay = family_replay
    reason = MISSING.get((family, name))
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    if family == "openllmetry":
        request.getfixturevalue("embedding_input_as_message")
    check(replay, name)
