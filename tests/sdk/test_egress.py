"""Session baggage stays inside: the outbound policy, with real clients and real processes.

An application under the launcher, in one session, calls its own service (a Flask app under
the launcher, which echoes the ``baggage`` header it received and stamps its spans from it)
with requests, urllib and httpx (sync and async; ``httpx2`` where that is what is installed),
once by an allowed name and once by a denied one, and then calls an OpenAI-compatible fake
through the real ``openai`` client (a custom base URL on loopback, so only the in-LLM-call rule
can keep the session from it). The fake records the headers it received.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Dict, Optional

import pytest
from opentelemetry import baggage, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from support.launcher import (
    clean_env,
    run_instrumented,
    spawn_instrumented,
    stop,
    wait_ready,
    write_script,
)

from lucidic_otel.config import load_settings
from lucidic_otel.outbox.store import Store
from lucidic_otel.sdk.egress import (
    LLM_CALLS,
    PROVIDER_HOSTS,
    OutboundPolicy,
    SessionBaggagePolicy,
    destination,
)
from lucidic_otel.sdk.processor import LucidicSpanProcessor
from lucidic_otel.sessions.context import BAGGAGE_KEY
from lucidic_otel.sessions.propagation import inject_env

SESSION = "egress-1"
SECRET = "egress-shared-secret-0123456789"


def policy(**env: str) -> OutboundPolicy:
    return OutboundPolicy(load_settings(env))


# --- the rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "host", "in_llm", "expected"),
    [
        ({}, "orders.internal", False, (True, "default")),
        ({}, "orders.internal", True, (False, "inside an LLM client call")),
        ({}, "api.openai.com", False, (False, "a known LLM provider or Lucidic host")),
        ({}, "myres.openai.azure.com", False, (False, "a known LLM provider or Lucidic host")),
        ({}, "bedrock-runtime.us-east-1.amazonaws.com", False,
         (False, "a known LLM provider or Lucidic host")),
        ({}, "backend.lucidic.ai", False, (False, "a known LLM provider or Lucidic host")),
        ({}, None, False, (True, "default")),
        ({"LUCIDIC_PROPAGATE": "false"}, "orders.internal", False,
         (False, "LUCIDIC_PROPAGATE=false")),
        ({"LUCIDIC_PROPAGATE_DENY": "*.partner.com"}, "api.partner.com", False,
         (False, "LUCIDIC_PROPAGATE_DENY")),
        ({"LUCIDIC_PROPAGATE_TO": "*.internal"}, "orders.internal", True,
         (True, "LUCIDIC_PROPAGATE_TO")),
        ({"LUCIDIC_PROPAGATE_TO": "*.internal"}, "api.openai.com", False,
         (False, "not on LUCIDIC_PROPAGATE_TO")),
        ({"LUCIDIC_PROPAGATE_TO": "*.internal"}, None, False,
         (False, "not on LUCIDIC_PROPAGATE_TO")),
        ({"LUCIDIC_PROPAGATE_TO": "api.openai.com"}, "api.openai.com", False,
         (True, "LUCIDIC_PROPAGATE_TO")),
        ({"LUCIDIC_PROPAGATE_TO": "*", "LUCIDIC_PROPAGATE_DENY": "a.internal"}, "a.internal",
         False, (False, "LUCIDIC_PROPAGATE_DENY")),
    ],
)
def test_rules(env: Dict[str, str], host: Optional[str], in_llm: bool, expected) -> None:
    assert policy(**env).decide(host, in_llm) == expected


def test_the_lucidic_backend_is_matched_with_its_port() -> None:
    rules = policy(LUCIDIC_BASE_URL="http://127.0.0.1:9000/api")
    assert rules.decide("127.0.0.1", False, 9000) == (
        False, "the Lucidic backend (LUCIDIC_BASE_URL)")
    assert rules.decide("127.0.0.1", False, 9001) == (True, "default")  # an own service


def test_bad_host_patterns_are_named_and_left_out() -> None:
    settings = load_settings({"LUCIDIC_PROPAGATE_TO": "ok.internal, https://x.com/a ,bad host"})
    assert settings.propagate_to == ("ok.internal",)
    assert len(settings.problems) == 2
    assert settings.problems[0].startswith(
        "LUCIDIC_PROPAGATE_TO: 'https://x.com/a' is a URL or path, not a host name")
    assert settings.problems[0].endswith("that entry is ignored")
    assert "'bad host' contains spaces" in settings.problems[1]


def test_destination_from_the_client_span() -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("t")
    cases = [
        ({"url.full": "https://API.example.com:8443/v1"}, ("api.example.com", 8443)),
        ({"http.url": "http://svc.internal/x"}, ("svc.internal", 80)),
        ({"server.address": "svc.internal", "server.port": 81}, ("svc.internal", 81)),
        ({"net.peer.name": "old.internal"}, ("old.internal", None)),
        ({}, (None, None)),
    ]
    for attributes, expected in cases:
        with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes=attributes):
            assert destination(trace.get_current_span()) == expected, attributes


def test_a_genai_client_span_and_its_descendants_are_llm_calls() -> None:
    provider = TracerProvider()
    provider.add_span_processor(LucidicSpanProcessor(load_settings({})))
    tracer = provider.get_tracer("t")
    llm_attributes = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai"}
    with tracer.start_as_current_span("chat", kind=SpanKind.CLIENT, attributes=llm_attributes):
        with tracer.start_as_current_span("POST", kind=SpanKind.CLIENT) as http:
            with tracer.start_as_current_span("connect") as deeper:
                assert deeper.get_span_context().span_id in LLM_CALLS
            assert http.get_span_context().span_id in LLM_CALLS
    # An agent step (INTERNAL) is not an LLM call: the tool calls it makes may carry the session.
    with tracer.start_as_current_span("invoke_agent", attributes={"gen_ai.operation.name": "x"}):
        with tracer.start_as_current_span("GET") as tool:
            assert tool.get_span_context().span_id not in LLM_CALLS
    assert len(LLM_CALLS) == 0  # only open calls are kept


def test_only_our_entry_is_withheld_and_child_processes_get_it() -> None:
    rules = policy()
    wrapped = SessionBaggagePolicy(W3CBaggagePropagator(), rules)
    ctx = baggage.set_baggage("team", "blue", baggage.set_baggage(BAGGAGE_KEY, "s-1", Context()))
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span(
        "POST", context=ctx, kind=SpanKind.CLIENT, attributes={"url.full": "https://api.openai.com/v1"}
    ) as span:
        carrier: Dict[str, str] = {}
        wrapped.inject(carrier, context=trace.set_span_in_context(span, ctx))
    assert carrier == {"baggage": "team=blue"}
    from opentelemetry import propagate

    original = propagate.get_global_textmap()
    propagate.set_global_textmap(wrapped)
    try:
        env = inject_env({}, ctx)
    finally:
        propagate.set_global_textmap(original)
    assert f"{BAGGAGE_KEY}=s-1" in env["BAGGAGE"]
    assert "team=blue" in env["BAGGAGE"]


def test_the_builtin_list_names_the_providers_the_docs_promise() -> None:
    hosts = set(PROVIDER_HOSTS)
    for host in ("api.openai.com", "*.openai.azure.com", "api.anthropic.com",
                 "generativelanguage.googleapis.com", "bedrock*.amazonaws.com",
                 "api.mistral.ai", "api.groq.com", "*.lucidic.ai"):
        assert host in hosts
    docs = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    assert all(f"`{host}`" in docs for host in PROVIDER_HOSTS), "docs/security.md is behind"


# --- real clients, real processes -----------------------------------------------------------

OWN_SERVICE = """
    from flask import Flask, request
    from opentelemetry import trace

    app = Flask(__name__)

    @app.route("/echo")
    def echo():
        with trace.get_tracer("own").start_as_current_span("own-work"):
            return request.headers.get("baggage", "")

    if __name__ == "__main__":
        from werkzeug.serving import make_server
        server = make_server("127.0.0.1", 0, app, threaded=True)
        print("READY", server.server_port, flush=True)
        server.serve_forever()
"""

APP = f"""
    import asyncio, json, sys, urllib.request
    import lucidic_otel, requests
    from openai import OpenAI
    try:
        import httpx2 as httpx
    except ImportError:
        import httpx

    own, denied, fake = sys.argv[1:4]
    seen = {{}}

    async def async_get(url):
        async with httpx.AsyncClient() as client:
            return (await client.get(url, timeout=10)).text

    with lucidic_otel.session({SESSION!r}):
        for label, base in (("own", own), ("denied", denied)):
            url = base + "/echo"
            seen["requests " + label] = requests.get(url, timeout=10).text
            with urllib.request.urlopen(url, timeout=10) as reply:
                seen["urllib " + label] = reply.read().decode()
            seen["httpx " + label] = httpx.get(url, timeout=10).text
            seen["httpx-async " + label] = asyncio.run(async_get(url))
        OpenAI(base_url=fake, api_key="sk-fake", max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{{"role": "user", "content": "hi"}}])
    print("SEEN", json.dumps(seen), flush=True)
"""


def _run(tmp_path: Path, **policy_env: str):
    from lucidic_otel.testing.fake_openai import FakeOpenAIServer

    store = tmp_path / "store.db"
    env = clean_env(LUCIDIC_STORE_PATH=str(store), LUCIDIC_PROPAGATE_DENY="localhost",
                    **policy_env)
    own = spawn_instrumented([write_script(tmp_path, "own.py", OWN_SERVICE)], env)
    try:
        port = wait_ready(own, timeout=60).split()[0]
        with FakeOpenAIServer() as llm:
            app = run_instrumented(
                [write_script(tmp_path, "app.py", APP), f"http://127.0.0.1:{port}",
                 f"http://localhost:{port}", llm.base_url], env, timeout=120)
            to_llm = [v for r in llm.requests for k, v in r.headers.items() if k == "baggage"]
            llm_calls = len(llm.requests)
    finally:
        stop(own, signal.SIGTERM, timeout=30)
    assert app.returncode == 0, app.stderr
    seen = json.loads(app.stdout.split("SEEN", 1)[1])
    return seen, to_llm, llm_calls, store


def _own_spans(store: Path) -> list:
    with Store(store) as opened:
        return [s for s in opened.session_spans(SESSION) if s.name == "own-work"]


@pytest.mark.openai
@pytest.mark.parametrize("trust", ["accept", "signed"])
def test_own_services_get_the_session_and_the_llm_provider_does_not(
    tmp_path: Path, trust: str
) -> None:
    signed = {"LUCIDIC_BAGGAGE_TRUST": "signed", "LUCIDIC_BAGGAGE_SECRET": SECRET}
    seen, to_llm, llm_calls, store = _run(tmp_path, **(signed if trust == "signed" else {}))
    clients = ("requests", "urllib", "httpx", "httpx-async")
    for client in clients:
        assert f"{BAGGAGE_KEY}={SESSION}" in seen[f"{client} own"], (client, seen)
        assert BAGGAGE_KEY not in seen[f"{client} denied"], (client, seen)
    assert llm_calls == 1 and not any(BAGGAGE_KEY in value for value in to_llm), to_llm
    # The own service stamped its spans from the baggage (in signed mode: verified): one per
    # allowed call; the denied calls ran there too but carried no session.
    assert len(_own_spans(store)) == len(clients)


@pytest.mark.openai
def test_an_allowed_host_gets_the_session_even_inside_an_llm_call(tmp_path: Path) -> None:
    seen, to_llm, llm_calls, store = _run(tmp_path, LUCIDIC_PROPAGATE_TO="127.0.0.1")
    assert llm_calls == 1 and any(f"{BAGGAGE_KEY}={SESSION}" in v for v in to_llm), to_llm
    assert f"{BAGGAGE_KEY}={SESSION}" in seen["requests own"]
    assert BAGGAGE_KEY not in seen["requests denied"]  # localhost is not on the allow-list


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({}, "to every host except inside LLM calls, "),
        ({"LUCIDIC_PROPAGATE_TO": "*.internal"}, "only to *.internal (LUCIDIC_PROPAGATE_TO)"),
        ({"LUCIDIC_PROPAGATE": "false"}, "never sent (LUCIDIC_PROPAGATE=false)"),
    ],
    ids=["default", "allow-list", "off"],
)
def test_doctor_shows_the_effective_outbound_policy(
    tmp_path: Path, env: Dict[str, str], line: str
) -> None:
    import subprocess
    import sys

    cli = Path(sys.executable).parent / "lucidic-otel"
    run_env = clean_env(LUCIDIC_STORE_PATH=str(tmp_path / "s.db"), **env)
    text = subprocess.run([cli, "doctor"], env=run_env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert f"outbound session baggage: {line}" in text.stdout, text.stdout
    report = subprocess.run([cli, "doctor", "--json"], env=run_env, capture_output=True,
                            text=True, timeout=60, check=False)
    outbound = json.loads(report.stdout)["propagators"]["outbound"]
    assert outbound == policy(**env).describe()
    assert outbound["withheld_inside_llm_calls"] is (env == {})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://a.internal:8080/x?y=1", ("a.internal", 8080)),
        ("https://user:pw@API.example.com/v1", ("api.example.com", 443)),
        ("http://[::1]:9000/p", ("::1", 9000)),
        ("http://[::1]/p", ("::1", 80)),
        ("https://h.example?q=1", ("h.example", 443)),
        ("not a url", (None, None)),
        ("http://host:bad/x", ("host", None)),
    ],
)
def test_the_destination_of_a_url(url: str, expected) -> None:
    from lucidic_otel.sdk.egress import _netloc

    assert _netloc(url) == expected


def test_the_open_call_set_is_emptied_in_place_so_the_processor_reference_stays_valid() -> None:
    """The processor keeps a reference to ``LLM_CALLS.open`` (no method call per span): a forked
    child's reset must empty that same dict, not replace it."""
    from lucidic_otel.sdk import processor as processor_module

    assert processor_module._LLM_OPEN is LLM_CALLS.open
    LLM_CALLS.open[12345] = True
    try:
        LLM_CALLS.after_fork()
        assert processor_module._LLM_OPEN is LLM_CALLS.open
        assert not LLM_CALLS.open
    finally:
        LLM_CALLS.open.pop(12345, None)


def test_a_genai_span_is_recorded_when_no_call_is_open_and_a_plain_one_is_not() -> None:
    """The processor's pre-check (a GenAI key, or a call open) must not skip a real call."""
    provider = TracerProvider()
    provider.add_span_processor(LucidicSpanProcessor(load_settings({})))
    tracer = provider.get_tracer("t")
    assert not LLM_CALLS.open
    with tracer.start_as_current_span("plain", kind=SpanKind.CLIENT):
        assert not LLM_CALLS.open
    for key in ("gen_ai.operation.name", "gen_ai.system", "gen_ai.provider.name"):
        with tracer.start_as_current_span("c", kind=SpanKind.CLIENT, attributes={key: "v"}) as s:
            assert s.get_span_context().span_id in LLM_CALLS, key
    assert not LLM_CALLS.open
