"""Trust boundaries: signed baggage, secrets that never leak, what leaves the process.

* Signed mode (``LUCIDIC_BAGGAGE_TRUST=signed``): a session id without the HMAC of that id
  under the shared secret is never stamped, and a signature cannot be moved to another id
  (property-based, in-process, real propagators); outbound values are signed, and the secret
  itself never appears in a baggage header.
* A real two-service scenario under the launcher with a distinctive API key and secret, plus
  an attacker calling the second service directly with unsigned, forged and replayed baggage:
  the attacker's spans stay sessionless, and neither the key nor the secret (nor their hex or
  base64 forms) appears in any span, baggage header, log line, CLI output (``sessions``,
  ``show``, ``doctor``, text and ``--json``), event sent to the backend, or in the raw bytes
  of the store file, its WAL and its shared-memory file.
* ``LUCIDIC_PROPAGATE=false``: the session does not leave the process, not even a session the
  service only joined through inbound baggage (it used to be forwarded to the LLM provider).
* ``LUCIDIC_CAPTURE_CONTENT=false``: no prompt or completion text in the store or the backend.
* The store is created readable by its owner only.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import urllib.request
from pathlib import Path
from typing import Dict, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, attach, detach
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from lucidic_otel.config import load_settings, reset_settings
from lucidic_otel.ids import sign_session_id
from lucidic_otel.outbox.store import Store
from lucidic_otel.sdk.egress import OutboundPolicy, SessionBaggagePolicy, install_outbound_policy
from lucidic_otel.sdk.processor import PROCESS_SESSION, LucidicSpanProcessor
from lucidic_otel.sessions.context import BAGGAGE_KEY, SESSION_ATTRIBUTE, context_with_session
from tests.support.launcher import (
    clean_env,
    run_instrumented,
    spawn_instrumented,
    stop,
    wait_ready,
    write_script,
)
from tests.support.scenarios import TRUST_KEY, TRUST_SECRET, TRUST_SESSION, run_trust

SECRET = "trust-boundary-secret-0123456789"
PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
ids = st.text(alphabet="abcXYZ019._:-", min_size=1, max_size=40)


@pytest.fixture(autouse=True)
def _signed_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("LUCIDIC_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LUCIDIC_BAGGAGE_TRUST", "signed")
    monkeypatch.setenv("LUCIDIC_BAGGAGE_SECRET", SECRET)
    monkeypatch.setattr(PROCESS_SESSION, "session_id", None)
    reset_settings()
    token = attach(Context())
    try:
        yield
    finally:
        detach(token)
        reset_settings()


def _signed_processor() -> LucidicSpanProcessor:
    return LucidicSpanProcessor(
        load_settings({"LUCIDIC_BAGGAGE_TRUST": "signed", "LUCIDIC_BAGGAGE_SECRET": SECRET})
    )


def _stamped(processor: LucidicSpanProcessor, header: str):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ctx = PROPAGATOR.extract({"baggage": header})
    provider.get_tracer("t").start_span("inbound", context=ctx).end()
    (span,) = exporter.get_finished_spans()
    return (span.attributes or {}).get(SESSION_ATTRIBUTE)


# --- signed mode, in-process ---------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(sid=ids, other=ids)
def test_outbound_is_signed_and_only_that_signature_is_accepted(sid: str, other: str) -> None:
    carrier: Dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=context_with_session(sid, Context()))
    header = carrier["baggage"]
    assert SECRET not in header
    value = baggage.get_baggage(BAGGAGE_KEY, PROPAGATOR.extract(carrier))
    assert value == sign_session_id(sid, SECRET.encode())

    processor = _signed_processor()
    assert _stamped(processor, header) == sid  # the service that shares the secret joins
    signature = value.rpartition("~")[2]
    forged = {
        f"{BAGGAGE_KEY}={sid}",  # unsigned
        f"{BAGGAGE_KEY}={other}~{signature}",  # replayed onto another id
        f"{BAGGAGE_KEY}={sign_session_id(sid, b'a-different-secret-0123')}",
    } - {f"{BAGGAGE_KEY}={value}"}
    before = processor.rejected_baggage
    for attempt in forged:
        assert _stamped(processor, attempt) is None, attempt
    assert processor.rejected_baggage - before == len(forged)


def test_signed_mode_without_a_secret_stamps_nothing_inbound() -> None:
    processor = LucidicSpanProcessor(load_settings({"LUCIDIC_BAGGAGE_TRUST": "signed"}))
    good = sign_session_id("conv-1", SECRET.encode())
    assert _stamped(processor, f"{BAGGAGE_KEY}={good}") is None


# --- LUCIDIC_PROPAGATE=false, in-process ---------------------------------------------------


def test_withheld_session_never_goes_out_but_other_baggage_does() -> None:
    inner = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    outer = SessionBaggagePolicy(inner, OutboundPolicy(load_settings({"LUCIDIC_PROPAGATE": "0"})))
    joined = inner.extract({"baggage": f"{BAGGAGE_KEY}=joined-1,team=blue"})
    carrier: Dict[str, str] = {}
    outer.inject(carrier, context=joined)
    assert carrier == {"baggage": "team=blue"}
    only_session = baggage.set_baggage(BAGGAGE_KEY, "own-1", Context())
    carrier = {}
    outer.inject(carrier, context=only_session)
    assert "baggage" not in carrier
    assert outer.fields == inner.fields
    # Extraction is untouched: the service still joins the inbound session.
    assert baggage.get_baggage(BAGGAGE_KEY, outer.extract({"baggage": f"{BAGGAGE_KEY}=x"})) == "x"


def test_the_outbound_policy_wraps_the_global_propagator_once() -> None:
    original = propagate.get_global_textmap()
    try:
        assert install_outbound_policy() is True
        assert install_outbound_policy() is False
        wrapped = propagate.get_global_textmap()
        assert isinstance(wrapped, SessionBaggagePolicy) and wrapped.inner is original
    finally:
        propagate.set_global_textmap(original)


# --- the two-service scenario under the launcher ----------------------------------------------

FORMS = {
    "api key": [TRUST_KEY],
    "secret": [
        TRUST_SECRET,
        TRUST_SECRET.encode().hex(),
        base64.b64encode(TRUST_SECRET.encode()).decode(),
        base64.urlsafe_b64encode(TRUST_SECRET.encode()).decode().rstrip("="),
    ],
}


def test_two_services_signed_mode_attacker_and_no_secret_anywhere(tmp_path: Path) -> None:
    pytest.importorskip("openai")
    run = run_trust(tmp_path)
    assert run.returncodes["gateway"] == 0, run.outputs
    assert run.returncodes["agent"] == -signal.SIGTERM, run.outputs["agent output"]
    assert all(code == 0 for name, code in run.returncodes.items() if name.startswith("lucidic"))

    # Attack spans are sessionless, the legitimate ones stamped; nothing lost.
    assert run.outcome.ok, run.outcome.problems()
    with Store(tmp_path / "store.db") as store:
        assert [s["session_id"] for s in store.list_sessions()] == [TRUST_SESSION]
        tags = {s.attributes.get("request.tag") for s in store.session_spans(None)}
        assert tags >= {n.replace(" ", "-") for n in run.attacks}, tags
        legit = store.session_spans(TRUST_SESSION)
        assert {s.service for s in legit} == {"gateway", "agent"}
    # One warning line for the first refusal, the rest only counted.
    assert run.outcome.details["rejections logged"] == 1

    # Where a key or secret could leak: every text a person or a log shipper sees, the raw
    # store files (the WAL is checked while it still exists), headers sent to the LLM
    # provider, and everything sent to the backend.
    assert run.store_files.get("store.db-wal"), sorted(run.store_files)
    haystacks: Dict[str, bytes] = {
        **{f"output: {name}": text.encode() for name, text in run.outputs.items()},
        **{f"file: {name}": data for name, data in run.store_files.items()},
        "baggage sent to the LLM provider": "\n".join(run.llm_baggage).encode(),
        "sent to the backend": json.dumps(run.backend, default=str).encode(),
    }
    assert len(run.outputs) == 9, sorted(run.outputs)
    for what, forms in FORMS.items():
        for form in forms:
            for where, data in haystacks.items():
                assert form.encode() not in data, f"the {what} appears in {where}"
    # The signed session went from the gateway to the agent (verified and stamped there, above)
    # but not on to the LLM provider: the outbound policy keeps it inside.
    assert not any(TRUST_SESSION in b for b in run.llm_baggage), run.llm_baggage


PROPAGATE_AGENT = """
    import os
    from flask import Flask
    from openai import OpenAI

    app = Flask(__name__)
    llm = OpenAI(base_url=os.environ["FAKE_OPENAI_URL"], api_key="sk-fake", max_retries=0)

    @app.route("/work")
    def work():
        reply = llm.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
        return reply.choices[0].message.content or ""

    if __name__ == "__main__":
        from werkzeug.serving import make_server
        server = make_server("127.0.0.1", 0, app, threaded=True)
        print("READY", server.server_port, flush=True)
        server.serve_forever()
"""


@pytest.mark.parametrize(
    ("policy", "forwarded"),
    [
        ({}, False),  # the default: never inside an LLM call, whatever its base URL
        ({"LUCIDIC_PROPAGATE": "false"}, False),
        ({"LUCIDIC_PROPAGATE_TO": "127.0.0.1"}, True),  # the user allowed that host
        ({"LUCIDIC_PROPAGATE_TO": "127.0.0.1", "LUCIDIC_PROPAGATE_DENY": "127.*"}, False),
    ],
    ids=["default", "propagate-false", "allowed-host", "denied-beats-allowed"],
)
def test_a_joined_session_goes_to_the_llm_provider_only_when_allowed(
    tmp_path: Path, policy: Dict[str, str], forwarded: bool
) -> None:
    pytest.importorskip("openai")
    from lucidic_otel.testing.fake_openai import FakeOpenAIServer

    store_path = tmp_path / "store.db"
    with FakeOpenAIServer() as llm:
        agent = spawn_instrumented(
            [write_script(tmp_path, "agent.py", PROPAGATE_AGENT)],
            clean_env(
                LUCIDIC_STORE_PATH=str(store_path),
                FAKE_OPENAI_URL=llm.base_url,
                **policy,
            ),
        )
        try:
            port = wait_ready(agent, timeout=60).split()[0]
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/work",
                headers={"baggage": f"{BAGGAGE_KEY}=joined-1,team=blue"},
            )
            with urllib.request.urlopen(request, timeout=30) as reply:
                reply.read()
            (sent,) = [
                v for r in llm.requests for k, v in r.headers.items() if k.lower() == "baggage"
            ]
        finally:
            stop(agent, signal.SIGTERM, timeout=30)
    if forwarded:
        assert BAGGAGE_KEY in sent and "team=blue" in sent, sent
    else:
        assert sent == "team=blue"  # only our entry is withheld
    with Store(store_path) as store:  # the service still joined the session itself
        spans = store.session_spans("joined-1")
        assert len(spans) >= 3 and {s.kind for s in spans} >= {"SERVER", "CLIENT"}


CONTENT_APP = """
    import os
    import lucidic_otel
    from openai import OpenAI

    llm = OpenAI(base_url=os.environ["FAKE_OPENAI_URL"], api_key="sk-fake", max_retries=0)
    with lucidic_otel.session("private-1"):
        llm.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "system", "content": "SYSTEM-PROMPT-7d2e"},
            {"role": "user", "content": "USER-PROMPT-91ac"}])
    print("APP DONE", flush=True)
"""


def test_capture_content_off_keeps_prompts_out_of_store_and_backend(tmp_path: Path) -> None:
    pytest.importorskip("openai")
    from lucidic_otel.testing.fake_openai import FakeOpenAIServer
    from tests.support.contract_server import ContractServer

    store_path = tmp_path / "store.db"
    with FakeOpenAIServer() as llm, ContractServer(api_key="content-key") as backend:
        reader = Store(store_path)
        reader.list_sessions()  # keep the WAL alive for the byte search
        proc = run_instrumented(
            [write_script(tmp_path, "app.py", CONTENT_APP)],
            clean_env(
                LUCIDIC_STORE_PATH=str(store_path),
                LUCIDIC_CAPTURE_CONTENT="false",
                LUCIDIC_API_KEY="content-key",
                LUCIDIC_AGENT_ID="agent-1",
                LUCIDIC_BASE_URL=backend.base_url,
                FAKE_OPENAI_URL=llm.base_url,
            ),
        )
        files = {p.name: p.read_bytes() for p in tmp_path.glob("store.db*")}
        reader.close()
        sent = json.dumps(backend.events, default=str)
        delivered = len(backend.events)
    assert proc.returncode == 0 and "APP DONE" in proc.stdout, proc.stderr
    assert delivered == 1  # the LLM call still reached the backend, without its text
    for secret_text in ("SYSTEM-PROMPT-7d2e", "USER-PROMPT-91ac", "Echo: USER-PROMPT"):
        assert secret_text not in sent
        for name, data in files.items():
            assert secret_text.encode() not in data, (secret_text, name)


def test_store_is_private_to_its_owner(tmp_path: Path) -> None:
    store_path = tmp_path / "new" / "dir" / "store.db"
    with Store(store_path) as store:
        store.list_sessions()
        modes = {
            p.name: stat.S_IMODE(p.stat().st_mode) for p in store_path.parent.glob("store.db*")
        }
    assert stat.S_IMODE(store_path.parent.stat().st_mode) & 0o077 == 0
    assert modes and all(mode & 0o077 == 0 for mode in modes.values()), modes


KEY_APP = """
    import lucidic_otel
    from opentelemetry import trace

    with lucidic_otel.session("key-1"):
        trace.get_tracer("t").start_span("tool", attributes={
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "t"}).end()
    print("APP DONE", flush=True)
"""


def test_an_api_key_with_a_line_break_is_refused_without_being_logged(tmp_path: Path) -> None:
    """A key pasted with a CR/LF inside is not a usable header value. It must be refused with
    one line that names LUCIDIC_API_KEY and does not print the key."""
    from tests.support.contract_server import ContractServer

    key = "lk-SECRET-KEY-PART-ONE\r\nlk-PART-TWO"
    with ContractServer(api_key=key) as backend:
        proc = run_instrumented(
            [write_script(tmp_path, "app.py", KEY_APP)],
            clean_env(
                LUCIDIC_STORE_PATH=str(tmp_path / "store.db"),
                LUCIDIC_API_KEY=key,
                LUCIDIC_AGENT_ID="agent-1",
                LUCIDIC_BASE_URL=backend.base_url,
            ),
        )
    assert proc.returncode == 0 and "APP DONE" in proc.stdout
    output = proc.stdout + proc.stderr
    assert "SECRET-KEY-PART" not in output and "PART-TWO" not in output, output
    assert "LUCIDIC_API_KEY" in output
