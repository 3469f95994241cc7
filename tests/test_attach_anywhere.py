"""Sessions are recorded and delivered whoever set OpenTelemetry up.

- The launcher's race, decided by ``sys.path`` order (not by ``OTEL_PYTHON_DISTRO``): a copy of
  one distribution's metadata placed first on ``PYTHONPATH`` makes its distro and configurator
  the ones found first. The same app, run in both orders, must give the same local session and
  the same backend requests (against the strict contract server), and exit by itself.
- An application that built its own ``TracerProvider`` and then calls ``init()``.
- A provider that is not the SDK's: one warning naming it, nothing raised.
- Framework server spans (Flask, FastAPI on uvicorn) join the session their handler opens,
  and a server span that arrived with another session keeps it.
- ``doctor --json`` says who won and whether the lucidic pipeline is attached, in each.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from lucidic_otel.outbox.store import Store
from lucidic_otel.testing.fake_openai import FakeOpenAIServer
from tests.support.contract_server import ContractServer
from tests.support.launcher import (
    BIN,
    PYTHON,
    clean_env,
    delivery_env,
    run_instrumented,
    spawn_instrumented,
    stop,
    write_script,
)
from tests.support.otlp_receiver import OTLPTraceReceiver

pytest.importorskip("opentelemetry.distro")
CLI = BIN / "lucidic-otel"
API_KEY, AGENT = "test-key", "agent-1"
UNSELECTED = {"OTEL_PYTHON_DISTRO": None, "OTEL_PYTHON_CONFIGURATOR": None}


def first_on_path(tmp: Path, distribution: str) -> Path:
    """A directory holding a copy of ``distribution``'s metadata, to put first on PYTHONPATH.

    ``importlib.metadata`` lists distributions in ``sys.path`` order and keeps the first of each
    name, so the copy makes that distribution's entry points the first the launcher finds; the
    code itself still imports from site-packages.
    """
    dist = importlib.metadata.distribution(distribution)
    source = Path(str(dist._path))  # type: ignore[attr-defined]
    target = tmp / f"first-{distribution}"
    target.mkdir()
    shutil.copytree(source, target / source.name)
    return target


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def _doctor(env: dict[str, str], store: Path) -> dict:
    proc = _cli("doctor", "--json", "--store", str(store), env=env)
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout)


RACE_APP = """
    import sys
    import openai
    import lucidic_otel
    from opentelemetry import trace

    client = openai.OpenAI(base_url=sys.argv[1], api_key="test", max_retries=0)

    def run():
        with trace.get_tracer("app").start_as_current_span("plan-step"):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hello race"}])

    lucidic_otel.with_lucidic(run, session_name="race", session_id="race-run-1")
    print("DONE")
"""


def _race_run(tmp: Path, first: str, openai_url: str) -> dict:
    """Run the app with ``first``'s metadata first on ``sys.path``; what it left behind."""
    tmp.mkdir()
    store = tmp / "store.db"
    with ContractServer(api_key=API_KEY, agent_id=AGENT) as backend, OTLPTraceReceiver() as otlp:
        env = delivery_env(store, backend.base_url, API_KEY, AGENT, **UNSELECTED,
                           PYTHONPATH=str(first_on_path(tmp, first)),
                           OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                           OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=otlp.endpoint)
        started = time.monotonic()
        proc = run_instrumented([write_script(tmp, "app.py", RACE_APP), openai_url], env,
                                timeout=90)
        elapsed = time.monotonic() - started
        assert proc.returncode == 0 and "DONE" in proc.stdout, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        assert backend.wait_for(lambda: backend.report()["sessions"].get("race-run-1", {})
                                .get("finished"), timeout=20), backend.report()
        report = backend.report()
        bodies = [b for bs in backend.events.values() for b in bs]
        otlp_spans = otlp.spans
    with Store(store) as local:
        sessions = local.list_sessions()
        spans = local.session_spans("race-run-1")
        events = [i.body for i in local.session_events("race-run-1") if i.kind == "event"]
    return {
        "stderr": proc.stderr,
        "elapsed": elapsed,
        "doctor": _doctor(env, store),
        "sessions": [(s["session_id"], s["name"], s["llm_calls"]) for s in sessions],
        "spans": sorted((s.name, s.kind, s.session_id) for s in spans),
        "local_events": sorted(Counter(e["type"] for e in events).items()),
        "backend": {
            "violations": report["violations"],
            "session": {k: v for k, v in report["sessions"]["race-run-1"].items()
                        if k != "events"},
            "event_types": sorted(Counter(b["type"] for b in bodies).items()),
            "models": sorted(b["payload"]["request"]["model"] for b in bodies
                             if b["type"] == "llm_generation"),
            "messages": sorted(str(b["payload"]["request"]["messages"]) for b in bodies
                               if b["type"] == "llm_generation"),
            "inits": len(backend.inits),
        },
        "otlp_sessions": sorted({s["attributes"].get("lucidic.session_id") for s in otlp_spans}),
        "otlp_count": len(otlp_spans),
    }


@pytest.mark.openai
def test_the_race_gives_the_same_session_and_delivery_in_both_orders(tmp_path):
    pytest.importorskip("openai")
    with FakeOpenAIServer() as llm:
        ours = _race_run(tmp_path / "lucidic-first", "lucidic-otel", llm.base_url)
        theirs = _race_run(tmp_path / "distro-first", "opentelemetry-distro", llm.base_url)

    # Who won is what the order says, and doctor tells it (predicted and as recorded).
    for run, winner in ((ours, "lucidic"), (theirs, "distro")):
        launcher = run["doctor"]["launcher"]
        assert launcher["distro"]["name"] == winner and launcher["distro_how"] == "raced"
        pipeline = run["doctor"]["pipeline"]
        assert pipeline["attached"] is True, pipeline
        (setup, *_) = run["doctor"]["data"]["recorded_setups"]
        assert setup["distro"] == {"name": winner, "how": "raced"}, setup
        assert setup["pipeline_attached"] is True
    assert ours["doctor"]["pipeline"]["by"] == "exporter list"
    assert theirs["doctor"]["pipeline"]["by"] == "lucidic-otel"
    assert theirs["doctor"]["data"]["recorded_setups"][0]["pipeline_by"] == "lucidic-otel"

    # The same outcome: local session, spans, LLM events, backend requests.
    for key in ("sessions", "spans", "local_events", "backend"):
        assert ours[key] == theirs[key], (key, ours[key], theirs[key])
    assert ours["sessions"] == [("race-run-1", "race", 1)]
    assert ("llm_generation", 1) in ours["local_events"]
    assert ours["backend"]["violations"] == []
    assert ours["backend"]["session"]["inits"] == 1 and ours["backend"]["session"]["finished"]
    assert "hello race" in ours["backend"]["messages"][0]  # content capture applied too

    # One warning line names the winner, only when the other distro won.
    assert "the launcher ran distro 'distro'" not in ours["stderr"]
    assert theirs["stderr"].count("the launcher ran distro 'distro'") == 1, theirs["stderr"]
    assert "OTEL_PYTHON_DISTRO=lucidic" in theirs["stderr"]

    # The winner's own exporters stay as they were: its OTLP exporter got the stamped spans.
    assert ours["otlp_count"] == 0
    assert theirs["otlp_count"] == len(theirs["spans"])
    assert theirs["otlp_sessions"] == ["race-run-1"]


CHOSEN_APP = """
    import lucidic_otel
    from opentelemetry import trace
    with lucidic_otel.session("chosen-1"):
        trace.get_tracer("t").start_span("stamped").end()
"""


def test_an_explicitly_chosen_distro_is_respected_and_doctor_says_so(tmp_path):
    store = tmp_path / "store.db"
    with OTLPTraceReceiver() as otlp:
        env = clean_env(LUCIDIC_STORE_PATH=str(store), OTEL_PYTHON_DISTRO="distro",
                        OTEL_PYTHON_CONFIGURATOR=None,
                        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=otlp.endpoint)
        proc = run_instrumented([write_script(tmp_path, "app.py", CHOSEN_APP)], env)
        assert proc.returncode == 0, proc.stderr
        (span,) = otlp.wait_for("stamped", timeout=10)
    assert span["attributes"]["lucidic.session_id"] == "chosen-1"  # stamped for their exporter
    assert not store.exists()  # but no lucidic pipeline: the user chose that distro
    report = _doctor(env, store)
    assert report["launcher"]["distro_how"] == "chosen"
    assert report["pipeline"]["attached"] is False
    assert "chosen by OTEL_PYTHON_DISTRO" in report["pipeline"]["rule"]


def test_an_exporter_list_without_lucidic_is_respected_with_a_warning_when_keyed(tmp_path):
    """The rule for OTEL_TRACES_EXPORTER without lucidic but with credentials: respected."""
    store = tmp_path / "store.db"
    env = delivery_env(store, "http://127.0.0.1:9/api", API_KEY, AGENT,
                       OTEL_TRACES_EXPORTER="console")
    proc = run_instrumented([write_script(tmp_path, "app.py", CHOSEN_APP)], env)
    assert proc.returncode == 0, proc.stderr
    assert not store.exists()
    assert proc.stderr.count("nothing is recorded or delivered to Lucidic") == 1, proc.stderr
    assert "OTEL_TRACES_EXPORTER='console'" in proc.stderr
    report = _doctor(env, store)
    assert report["pipeline"]["attached"] is False
    assert "leaves lucidic out" in report["pipeline"]["rule"]
    assert any("lucidic pipeline is not attached" in p for p in report["problems"])


OWN_PROVIDER_APP = """
    import lucidic_otel
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    mine = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(mine))
    trace.set_tracer_provider(provider)

    sid = lucidic_otel.init(session_name="own provider", session_id="own-1")
    lucidic_otel.init(session_name="again", session_id="own-2", auto_end=False)  # never twice
    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("step-1"):
        tracer.start_span("step-2").end()
    lucidic_otel.end_session("own-2")
    assert trace.get_tracer_provider() is provider
    procs = provider._active_span_processor._span_processors
    print("PROCESSORS", len(procs))
    lucidic_otel.flush()
    print("MINE", sorted(s.name for s in mine.get_finished_spans()))
    print("SESSIONS", sorted({s.attributes.get("lucidic.session_id")
                              for s in mine.get_finished_spans()}))
"""


def test_init_attaches_to_the_applications_own_provider(tmp_path):
    store = tmp_path / "store.db"
    with ContractServer(api_key=API_KEY, agent_id=AGENT) as backend:
        env = delivery_env(store, backend.base_url, API_KEY, AGENT)
        proc = subprocess.run([str(PYTHON), write_script(tmp_path, "app.py", OWN_PROVIDER_APP)],
                              env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        # The application's own pipeline, ours (session processor + lucidic export): 3.
        assert "PROCESSORS 3" in proc.stdout, proc.stdout
        assert "MINE ['step-1', 'step-2']" in proc.stdout, proc.stdout
        assert "SESSIONS ['own-2']" in proc.stdout, proc.stdout
        assert backend.wait_for(
            lambda: backend.report()["sessions"].get("own-1", {}).get("finished"), timeout=20
        ), backend.report()
        report = backend.report()
    assert report["violations"] == []
    assert report["sessions"]["own-2"]["finished"]
    with Store(store) as local:
        assert sorted(s.name for s in local.session_spans("own-2")) == ["step-1", "step-2"]
        assert {s["session_id"] for s in local.list_sessions()} >= {"own-1", "own-2"}
    (setup, *_) = _doctor(env, store)["data"]["recorded_setups"]
    assert setup["launcher"] is False and setup["pipeline_by"] == "lucidic-otel"
    assert setup["provider"] == "opentelemetry.sdk.trace.TracerProvider"


FOREIGN_PROVIDER_APP = """
    import lucidic_otel
    from opentelemetry import trace

    class VendorTracerProvider(trace.NoOpTracerProvider):
        pass

    trace.set_tracer_provider(VendorTracerProvider())
    sid = lucidic_otel.init(session_name="vendor")
    with lucidic_otel.session("v-1"):
        trace.get_tracer("t").start_span("x").end()
    print("SID", sid, lucidic_otel.current_session_id())
"""


def test_a_provider_that_is_not_the_sdks_gets_one_clear_warning(tmp_path):
    store = tmp_path / "store.db"
    env = clean_env(LUCIDIC_STORE_PATH=str(store))
    proc = subprocess.run([str(PYTHON), write_script(tmp_path, "app.py", FOREIGN_PROVIDER_APP)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "SID" in proc.stdout
    assert proc.stderr.count("VendorTracerProvider, not an OpenTelemetry SDK") == 1, proc.stderr
    assert "Overriding of current TracerProvider" not in proc.stderr  # it was never replaced
    assert not store.exists()


# ---------------------------------------------------------------------- server span adoption

FLASK_APP = """
    import sys
    from flask import Flask
    import lucidic_otel
    from opentelemetry import trace

    app = Flask(__name__)

    @app.get("/chat/<sid>")
    def chat(sid):
        with lucidic_otel.session(sid):
            trace.get_tracer("app").start_span("handler-step").end()
        return "ok " + sid

    app.run(host="127.0.0.1", port=int(sys.argv[1]))
"""

FASTAPI_APP = """
    from fastapi import FastAPI
    import lucidic_otel
    from opentelemetry import trace

    app = FastAPI()

    def handle(sid):
        trace.get_tracer("app").start_span("handler-step").end()
        return "ok " + sid

    @app.get("/chat/{sid}")
    async def chat(sid: str):
        return lucidic_otel.with_session(sid, handle, sid)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, headers: dict[str, str] | None = None, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=5) as reply:
                return reply.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _show(store: Path, sid: str) -> dict:
    proc = _cli("show", sid, "--json", "--store", str(store), env=clean_env())
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("framework", ["flask", "fastapi"])
def test_the_server_span_joins_the_session_its_handler_opens(tmp_path, framework):
    pytest.importorskip(framework)
    store = tmp_path / "store.db"
    port = _free_port()
    env = clean_env(LUCIDIC_STORE_PATH=str(store))
    if framework == "flask":
        args = [write_script(tmp_path, "app.py", FLASK_APP), str(port)]
    else:
        write_script(tmp_path, "app.py", FASTAPI_APP)
        args = ["-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)]
    proc = spawn_instrumented(args, env, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}/chat"
        assert _get(f"{base}/req-1").strip('"') == "ok req-1"
        # This request arrives with a session in baggage: its server span is stamped with it
        # at start and keeps it; the handler's own session gets the handler's spans.
        reply = _get(f"{base}/inner-1", {"baggage": "lucidic.session_id=upstream-1"})
        assert reply.strip('"') == "ok inner-1"
    finally:
        result = stop(proc, signal.SIGTERM, timeout=20)
    assert "Traceback" not in result.stdout, result.stdout

    spans = _show(store, "req-1")["spans"]
    servers = [s for s in spans if s["kind"] == "SERVER"]
    assert len(servers) == 1, [(s["name"], s["kind"]) for s in spans]
    assert servers[0]["parent_span_id"] is None  # the root of the request's trace
    assert "handler-step" in [s["name"] for s in spans]
    assert servers[0]["attributes"]["session.id"] == "req-1"

    upstream = _show(store, "upstream-1")["spans"]
    assert [s["kind"] for s in upstream].count("SERVER") == 1, upstream
    setups = _doctor(env, store)["data"]["recorded_setups"]
    assert setups and all(x["pipeline_attached"] and x["launcher"] for x in setups), setups
    assert {x["distro"]["name"] for x in setups} == {"lucidic"}
    inner = _show(store, "inner-1")["spans"]
    assert [s["name"] for s in inner if s["kind"] != "SERVER"] == ["handler-step"]
    assert all(s["kind"] != "SERVER" for s in inner)


CREDENTIALS_APP = """
    import os, subprocess, sys
    import lucidic_otel
    from lucidic_otel.config import get_settings

    lucidic_otel.init(session_name="keyed", api_key="secret-key-1", agent_id="agent-9")
    settings = get_settings()
    print("SETTINGS", settings.api_key == "secret-key-1", settings.agent_id)
    print("ENV", os.environ.get("LUCIDIC_API_KEY"), os.environ.get("LUCIDIC_AGENT_ID"))
    child = subprocess.run([sys.executable, "-c",
                            "import os; print(os.environ.get('LUCIDIC_API_KEY'))"],
                           capture_output=True, text=True, check=True)
    print("CHILD", child.stdout.strip())
"""


def test_credentials_given_to_init_stay_in_memory(tmp_path):
    env = clean_env(LUCIDIC_STORE_PATH=str(tmp_path / "store.db"), LUCIDIC_DELIVERY="thread",
                    LUCIDIC_BASE_URL="http://127.0.0.1:9/api", LUCIDIC_EXIT_DEADLINE="0")
    proc = subprocess.run([str(PYTHON), write_script(tmp_path, "app.py", CREDENTIALS_APP)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "SETTINGS True agent-9" in proc.stdout, proc.stdout
    assert "ENV None None" in proc.stdout, proc.stdout
    assert "CHILD None" in proc.stdout, proc.stdout
    assert "secret-key-1" not in proc.stderr


HAND_BUILT = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import lucidic_otel
from lucidic_otel.sdk.exporter import LucidicSpanExporter

provider = TracerProvider()
provider.add_span_processor(lucidic_otel.LucidicSpanProcessor())
provider.add_span_processor(BatchSpanProcessor(LucidicSpanExporter()))
trace.set_tracer_provider(provider)
sid = lucidic_otel.init(session_name="hand built")
with trace.get_tracer("app").start_as_current_span("work"):
    pass
lucidic_otel.flush()
print("PROCESSORS", len(provider._active_span_processor._span_processors))
"""


def test_init_on_a_provider_that_already_has_our_pieces_adds_nothing(tmp_path: Path) -> None:
    """The README's "your own provider" set-up plus init(): the processor and the pipeline the
    application added by hand are found, so each span is recorded once, not twice."""
    store_path = tmp_path / "store.db"
    script = write_script(tmp_path, "app.py", HAND_BUILT)
    result = subprocess.run(
        [sys.executable, str(script)], env=clean_env(LUCIDIC_STORE_PATH=str(store_path)),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "PROCESSORS 2" in result.stdout, result.stdout + result.stderr
    spans = [s for s in Store(store_path).list_sessions()]
    assert len(spans) == 1
    assert spans[0]["span_count"] == 1
