"""Reliability scenarios shared by the tests and ``bench/reliability.py``.

Each scenario runs real programs under the real launcher and then compares two independent
records of what happened:

* a **witness**: a tiny span processor that the scenario's programs add to their provider
  (``witness.py``, written next to them). It appends one line per ended span (trace id, span
  id) to a ledger file, plus ``expect`` lines in which the program states which session every
  span of a trace must belong to. It never reads a session attribute, so it cannot share a
  mistake with the session processor;
* the **store** (``LUCIDIC_STORE_PATH``, always in a temporary directory), read back with
  :class:`lucidic_otel.outbox.store.Store` like the CLI does.

:func:`tally` turns the two into an :class:`Outcome`: spans created (witnessed), exported
(found in the store), stamped correctly, lost (witnessed, not stored) and misattributed (stored
with another session than expected, including stamped when none was expected).

Every process has a timeout, every server is stopped in ``finally``, every loop is bounded,
and only loopback addresses are used.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from lucidic_otel.ids import event_id
from lucidic_otel.outbox.store import Store
from tests.support.launcher import (
    BIN,
    INSTRUMENT,
    CapturedProcess,
    clean_env,
    instrumented_command,
    run_instrumented,
    spawn,
    spawn_instrumented,
    stop,
    wait_ready,
    write_script,
)

SpanKey = Tuple[str, str]  # (trace id, span id), lowercase hex
NO_SESSION = "-"
LEDGER = "ledger.txt"
STORE = "store.db"
HOLD_EXPORTS = "600000"  # OTEL_BSP_SCHEDULE_DELAY: nothing leaves before exit or a signal

WITNESS = '''
"""Test witness: records every span this process ends, and what the test expects of it."""
import os

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor

_PATH = os.environ.get("WITNESS_LEDGER")


def append(line):
    if _PATH:
        fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\\n").encode("utf-8"))
        finally:
            os.close(fd)


class Witness(SpanProcessor):
    def on_end(self, span):
        c = span.context
        append(f"span {c.trace_id:032x} {c.span_id:016x} {os.getpid()} {span.name}")


def install():
    provider = trace.get_tracer_provider()
    if hasattr(provider, "add_span_processor") and not getattr(provider, "_witness", False):
        provider.add_span_processor(Witness())
        provider._witness = True


def expect(session):
    """Every span of the current trace must belong to ``session`` (None or "-": to none)."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        append(f"expect {ctx.trace_id:032x} {session or '-'}")


def note(text):
    append(f"note {text}")


install()
'''


# ------------------------------------------------------------------------------ accounting


@dataclass
class Ledger:
    """What the programs' witnesses wrote."""

    spans: Dict[SpanKey, str] = field(default_factory=dict)  # -> span name
    expected: Dict[str, Optional[str]] = field(default_factory=dict)  # trace -> session
    notes: List[str] = field(default_factory=list)
    conflicts: List[str] = field(default_factory=list)


def read_ledger(path: Path) -> Ledger:
    ledger = Ledger()
    if not path.exists():
        return ledger
    for line in path.read_text(encoding="utf-8").splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "span":
            trace_id, span_id, _pid, name = (rest.split(" ", 3) + [""])[:4]
            ledger.spans[(trace_id, span_id)] = name
        elif kind == "expect":
            trace_id, session = rest.split(" ", 1)
            wanted = None if session == NO_SESSION else session
            if ledger.expected.get(trace_id, wanted) != wanted:
                ledger.conflicts.append(line)
            ledger.expected[trace_id] = wanted
        elif kind == "note":
            ledger.notes.append(rest)
    return ledger


def read_store(path: Path) -> Dict[SpanKey, Optional[str]]:
    """Every span in the store and the session it was stored under (None: sessionless)."""
    if not path.exists():
        return {}
    found: Dict[SpanKey, Optional[str]] = {}
    with Store(path) as store:
        sessions = [s["session_id"] for s in store.list_sessions(limit=1_000_000)]
        for sid in [*sessions, None]:
            for span in store.session_spans(sid):
                found[(span.trace_id, span.span_id)] = sid
    return found


@dataclass
class Outcome:
    """One row of the reliability table."""

    scenario: str
    created: int = 0
    exported: int = 0
    stamped: int = 0
    lost: int = 0
    misattributed: int = 0
    details: Dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.created > 0 and self.lost == 0 and self.misattributed == 0

    def problems(self, limit: int = 5) -> str:
        return (
            f"{self.scenario}: created {self.created}, exported {self.exported}, stamped "
            f"{self.stamped}, lost {self.lost}, misattributed {self.misattributed}; "
            + "; ".join(f"{k}={str(v)[:300]}" for k, v in list(self.details.items())[:limit])
        )


def tally(scenario: str, ledger: Ledger, stored: Dict[SpanKey, Optional[str]]) -> Outcome:
    """Compare witnessed spans with stored ones. A trace nobody stated an expectation for
    must be sessionless (that is what "no session" means for a span)."""
    out = Outcome(scenario, created=len(ledger.spans))
    lost: List[str] = []
    wrong: List[str] = []
    for key, name in ledger.spans.items():
        if key not in stored:
            lost.append(name)
            continue
        out.exported += 1
        want = ledger.expected.get(key[0])
        if stored[key] == want:
            out.stamped += 1
        else:
            wrong.append(f"{name}: stored {stored[key]!r}, expected {want!r}")
    out.lost, out.misattributed = len(lost), len(wrong)
    if lost:
        out.details["lost"] = lost[:10]
    if wrong:
        out.details["misattributed"] = wrong[:10]
    if ledger.conflicts:
        out.details["conflicting expectations"] = ledger.conflicts[:5]
        out.misattributed += len(ledger.conflicts)
    return out


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    write_script(path, "witness.py", WITNESS)
    return path


def _wait(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def _scrub_launcher_noise(text: str) -> str:
    return "\n".join(
        line for line in text.splitlines() if not line.startswith("Configuration of configurator")
    )


# ------------------------------------------------------------------------------ 1. servers

ASGI_APP = """
import asyncio

from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

import witness

tracer = trace.get_tracer("asgi-app")
TOOL = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup"}


async def handle(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    i = scope["path"].rsplit("/", 1)[-1]
    headers = dict(scope["headers"])
    witness.expect(headers.get(b"x-expect-session", b"").decode() or None)
    with tracer.start_as_current_span("work-start") as span:
        span.add_event("begin", {"request": i})
    witness.note(f"begin {i}")
    await asyncio.sleep(float(headers.get(b"x-work-seconds", b"1")))
    with tracer.start_as_current_span("lookup", attributes=TOOL):
        pass
    tracer.start_span("work-done").end()
    witness.note(f"end {i}")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok " + i.encode()})


app = OpenTelemetryMiddleware(handle)
"""

WSGI_APP = """
import time

from opentelemetry import trace
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

import witness

tracer = trace.get_tracer("wsgi-app")
TOOL = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup"}


def handle(environ, start_response):
    i = environ["PATH_INFO"].rsplit("/", 1)[-1]
    witness.expect(environ.get("HTTP_X_EXPECT_SESSION") or None)
    with tracer.start_as_current_span("work-start") as span:
        span.add_event("begin", {"request": i})
    witness.note(f"begin {i}")
    time.sleep(float(environ.get("HTTP_X_WORK_SECONDS", "1")))
    with tracer.start_as_current_span("lookup", attributes=TOOL):
        pass
    tracer.start_span("work-done").end()
    witness.note(f"end {i}")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok " + i.encode()]


app = OpenTelemetryMiddleware(handle)
"""


@dataclass(frozen=True)
class ServerKind:
    name: str
    module: str  # "asgi" or "wsgi"
    args: Tuple[str, ...]
    in_flight: int  # requests the server works on at once (the rest wait in the backlog)
    workers: int  # worker processes that must report start-up before requests are sent
    ready: str  # a line every worker prints once it can serve
    requires: Tuple[str, ...]


SERVER_KINDS: Dict[str, ServerKind] = {
    "uvicorn": ServerKind(
        "uvicorn",
        "asgi",
        ("uvicorn", "asgi_app:app", "--host", "127.0.0.1", "--port", "0"),
        6,
        1,
        "Application startup complete",
        ("uvicorn", "opentelemetry.instrumentation.asgi"),
    ),
    "uvicorn --workers 2": ServerKind(
        "uvicorn --workers 2",
        "asgi",
        ("uvicorn", "asgi_app:app", "--host", "127.0.0.1", "--port", "0", "--workers", "2"),
        6,
        2,
        "Application startup complete",
        ("uvicorn", "opentelemetry.instrumentation.asgi"),
    ),
    "gunicorn": ServerKind(
        "gunicorn",
        "wsgi",
        ("gunicorn", "-w", "2", "-b", "127.0.0.1:0", "wsgi_app:app"),
        2,
        2,
        "Booting worker",
        ("gunicorn",),
    ),
    "gunicorn --preload": ServerKind(
        "gunicorn --preload",
        "wsgi",
        ("gunicorn", "-w", "2", "-b", "127.0.0.1:0", "--preload", "wsgi_app:app"),
        2,
        2,
        "Booting worker",
        ("gunicorn",),
    ),
}
_PORT_LINE = re.compile(r"(?:Uvicorn running on|Listening at:) http://127\.0\.0\.1:(\d+)")


def missing_modules(names: Sequence[str]) -> List[str]:
    import importlib.util

    return [name for name in names if importlib.util.find_spec(name) is None]


@dataclass
class ServerRun:
    kind: str
    instrumented: bool
    returncode: Optional[int]
    begun: Set[str]
    responses: Dict[int, str]
    stored_before_signal: int
    output: str
    outcome: Outcome


def run_server(
    kind_name: str,
    workdir: Path,
    *,
    instrumented: bool = True,
    requests: Optional[int] = None,
    extra_env: Optional[Dict[str, str]] = None,
) -> ServerRun:
    """Start the server, put requests in flight, SIGTERM it while they run, read the store.

    Each request ``i`` carries ``baggage: lucidic.session_id=srv-i`` (written by hand: the
    test client is not instrumented) and tells the app, through a header of its own, which
    session its spans must get. With ``instrumented=False`` the same server runs without the
    launcher: the baseline exit status.
    """
    kind = SERVER_KINDS[kind_name]
    workdir = _fresh_dir(workdir)
    write_script(workdir, f"{kind.module}_app.py", ASGI_APP if kind.module == "asgi" else WSGI_APP)
    ledger_path, store_path = workdir / LEDGER, workdir / STORE
    env = clean_env(
        WITNESS_LEDGER=str(ledger_path),
        LUCIDIC_STORE_PATH=str(store_path),
        OTEL_BSP_SCHEDULE_DELAY=HOLD_EXPORTS,
        **(extra_env or {}),
    )
    command = [str(BIN / kind.args[0]), *kind.args[1:]]
    if instrumented:
        command = [str(INSTRUMENT), *command]
    n = kind.in_flight + 2 if requests is None else requests
    responses: Dict[int, str] = {}
    clients: List[threading.Thread] = []
    stored_before = 0
    proc: CapturedProcess = spawn(command, env, cwd=workdir)
    try:
        port = _server_port(proc, kind)
        for i in range(n):
            thread = threading.Thread(target=_request, args=(port, i, responses), daemon=True)
            thread.start()
            clients.append(thread)
            if i + 1 == kind.in_flight:  # let these be accepted before the rest queue up
                _wait(lambda: _begun(ledger_path) >= kind.in_flight, 20)
        if not _wait(lambda: _begun(ledger_path) >= min(n, kind.in_flight), 20):
            raise AssertionError(f"requests never started; output:\n{proc.output()}")
        stored_before = len(read_store(store_path))
    finally:
        result = stop(proc, signal.SIGTERM, timeout=40)
        for thread in clients:
            thread.join(35)
    ledger = read_ledger(ledger_path)
    outcome = tally(f"{kind.name} SIGTERM", ledger, read_store(store_path))
    begun = {text.split()[1] for text in ledger.notes if text.startswith("begin ")}
    return ServerRun(
        kind.name,
        instrumented,
        result.returncode,
        begun,
        responses,
        stored_before,
        _scrub_launcher_noise(result.stdout),
        outcome,
    )


def _server_port(proc: CapturedProcess, kind: ServerKind) -> int:
    port: List[int] = []

    def ready() -> bool:
        text = proc.output()
        match = _PORT_LINE.search(text)
        if match and not port:
            port.append(int(match.group(1)))
        return bool(port) and text.count(kind.ready) >= kind.workers

    if not _wait(ready, 60, 0.1) or proc.poll() is not None:
        raise AssertionError(f"{kind.name} did not start; output:\n{proc.output()}")
    return port[0]


def _request(port: int, i: int, responses: Dict[int, str]) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/r/{i}",
        headers={"baggage": f"lucidic.session_id=srv-{i}", "x-expect-session": f"srv-{i}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            responses[i] = reply.read().decode()
    except (OSError, urllib.error.URLError) as exc:
        responses[i] = f"error: {exc!r}"


def _begun(ledger_path: Path) -> int:
    try:
        return ledger_path.read_text(encoding="utf-8").count("note begin ")
    except FileNotFoundError:
        return 0


# ------------------------------------------------------------------------------ 2. workers

WORKERS_APP = """
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

from opentelemetry import trace

import lucidic_otel
import witness

tracer = trace.get_tracer("workers")


def work(tag):
    with tracer.start_as_current_span(f"child-{tag}"):
        tracer.start_span(f"leaf-{tag}").end()
    return os.getpid()


def run(method, carry, tasks):
    ctx = multiprocessing.get_context(method)
    sid = f"mp-{method}-{'carry' if carry else 'plain'}"
    with lucidic_otel.session(sid):
        with tracer.start_as_current_span("submit"):
            witness.expect(sid)
            fn = lucidic_otel.carry_context(work) if carry else work
            procs = [ctx.Process(target=fn, args=(f"process-{i}",)) for i in range(2)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(60)
            codes = [p.exitcode for p in procs]
            with ctx.Pool(2) as pool:
                pool.map(fn, [f"pool-{i}" for i in range(tasks)])
                pool.close()  # let workers finish (see run_workers: terminate() can hang)
                pool.join()
            with ProcessPoolExecutor(2, mp_context=ctx) as executor:
                list(executor.map(fn, [f"executor-{i}" for i in range(tasks)]))
    print("EXITCODES", codes, flush=True)


if __name__ == "__main__":
    method, modes, tasks = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
    for mode in modes:
        run(method, mode == "carry", tasks)
    print("APP DONE", flush=True)
"""


@dataclass
class ProgramRun:
    returncode: int
    stdout: str
    stderr: str
    outcome: Outcome


def run_workers(
    method: str,
    workdir: Path,
    *,
    modes: Sequence[str] = ("carry",),
    tasks: int = 4,
    extra_env: Optional[Dict[str, str]] = None,
) -> ProgramRun:
    """Work submitted inside a session to Process, Pool and ProcessPoolExecutor children.

    ``carry`` wraps the work in ``lucidic_otel.carry_context``; ``plain`` does not (then only
    fork children can know the session; the others' spans must still be stored, unstamped).
    The program never calls ``flush``: children's spans must survive their exit on their own.

    The pool is closed and joined before ``with`` ends, so its workers exit on their own rather
    than by ``Pool.terminate()``'s SIGTERM: with any Python-level SIGTERM handler in the parent
    (ours, or a two-line one in a script without lucidic-otel), CPython's fork pool sometimes
    never reaps a terminated worker and ``terminate()`` waits for ever (reported; about one pool
    in a few hundred on a loaded 2-core machine).
    """
    workdir = _fresh_dir(workdir)
    app = write_script(workdir, "workers_app.py", WORKERS_APP)
    env = clean_env(
        WITNESS_LEDGER=str(workdir / LEDGER),
        LUCIDIC_STORE_PATH=str(workdir / STORE),
        OTEL_BSP_SCHEDULE_DELAY=HOLD_EXPORTS,
        **(extra_env or {}),
    )
    proc = run_instrumented(
        [app, method, ",".join(modes), str(tasks)], env, timeout=120, cwd=workdir
    )
    ledger = read_ledger(workdir / LEDGER)
    label = f"multiprocessing {method}" + ("" if modes == ("carry",) else f" ({','.join(modes)})")
    outcome = tally(label, ledger, read_store(workdir / STORE))
    return ProgramRun(proc.returncode, proc.stdout, _scrub_launcher_noise(proc.stderr), outcome)


# ------------------------------------------------------------------------------ 3. isolation

ISOLATION_SERVER = """
import os

from flask import Flask, request
from openai import OpenAI
from opentelemetry import trace

import witness

app = Flask(__name__)
tracer = trace.get_tracer("isolation-server")
llm = OpenAI(base_url=os.environ["FAKE_OPENAI_URL"], api_key="sk-fake", max_retries=0,
             timeout=60)


@app.route("/chat/<int:i>")
def chat(i):
    witness.expect(request.headers.get("x-expect-session"))
    with tracer.start_as_current_span("handle"):
        reply = llm.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"request {i}"}]
        )
    return reply.choices[0].message.content or ""


if __name__ == "__main__":
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    server.socket.listen(1024)
    print("READY", server.server_port, flush=True)
    server.serve_forever()
"""

ISOLATION_CLIENT = """
import sys
import threading
import urllib.request

from opentelemetry import trace

import lucidic_otel
import witness

port, n = int(sys.argv[1]), int(sys.argv[2])
tracer = trace.get_tracer("isolation-client")
start = threading.Barrier(n)
failures = []


def one(i):
    start.wait(60)
    sid = f"req-{i}"
    with lucidic_otel.session(sid):
        with tracer.start_as_current_span("client-request"):
            witness.expect(sid)
            url = f"http://127.0.0.1:{port}/chat/{i}"
            request = urllib.request.Request(url, headers={"x-expect-session": sid})
            try:
                urllib.request.urlopen(request, timeout=90).read()
            except Exception as exc:
                failures.append(f"{i}: {exc!r}")


threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(120)
print("FAILURES", len(failures), failures[:3], flush=True)
"""


def run_isolation(workdir: Path, n: int = 200) -> ProgramRun:
    """``n`` concurrent requests, each in its own session carried only by baggage.

    The client opens ``session(f"req-{i}")`` around an instrumented urllib call; the threaded
    Flask server never calls the session API, and each request calls a loopback LLM with the
    real openai client. Both processes write to the same store.
    """
    from lucidic_otel.testing.fake_openai import FakeOpenAIServer

    workdir = _fresh_dir(workdir)
    server_app = write_script(workdir, "isolation_server.py", ISOLATION_SERVER)
    client_app = write_script(workdir, "isolation_client.py", ISOLATION_CLIENT)
    common = {"WITNESS_LEDGER": str(workdir / LEDGER), "LUCIDIC_STORE_PATH": str(workdir / STORE)}
    with FakeOpenAIServer() as llm:
        llm._server.socket.listen(1024)  # a deeper backlog than 5: 200 requests at once
        server = spawn_instrumented(
            [server_app],
            clean_env(**common, FAKE_OPENAI_URL=llm.base_url, OTEL_SERVICE_NAME="iso-server"),
            cwd=workdir,
        )
        try:
            port = wait_ready(server, timeout=60).split()[0]
            client = run_instrumented(
                [client_app, port, str(n)],
                clean_env(**common, OTEL_SERVICE_NAME="iso-client"),
                timeout=180,
                cwd=workdir,
            )
            llm_calls = len(llm.requests)
        finally:
            server_result = stop(server, signal.SIGTERM, timeout=30)
    outcome = tally(
        f"isolation: {n} concurrent sessions",
        read_ledger(workdir / LEDGER),
        read_store(workdir / STORE),
    )
    outcome.details.update(
        llm_calls=llm_calls, server_status=server_result.returncode, client_out=client.stdout
    )
    return ProgramRun(
        client.returncode, client.stdout, _scrub_launcher_noise(client.stderr), outcome
    )


# ------------------------------------------------------------------------------ 5. trust

TRUST_AGENT = """
import os

from flask import Flask, request
from openai import OpenAI
from opentelemetry import trace

import witness

app = Flask(__name__)
tracer = trace.get_tracer("agent")
llm = OpenAI(base_url=os.environ["FAKE_OPENAI_URL"], api_key="sk-fake", max_retries=0,
             timeout=30)


@app.route("/work/<tag>")
def work(tag):
    witness.expect(request.headers.get("x-expect-session"))
    with tracer.start_as_current_span("agent-step", attributes={"request.tag": tag}):
        reply = llm.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"work {tag}"}]
        )
    return reply.choices[0].message.content or ""


if __name__ == "__main__":
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    print("READY", server.server_port, flush=True)
    server.serve_forever()
"""

TRUST_GATEWAY = """
import sys
import urllib.request

from opentelemetry import trace

import lucidic_otel
import witness

port = int(sys.argv[1])
tracer = trace.get_tracer("gateway")
sid = lucidic_otel.init(session_name="signed conversation", session_id="conv-signed-1")
with tracer.start_as_current_span("gateway-request"):
    witness.expect(sid)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/work/legit", headers={"x-expect-session": sid}
    )
    print("REPLY", urllib.request.urlopen(request, timeout=30).read().decode(), flush=True)
lucidic_otel.end_session(is_successful=True)
print("APP DONE", flush=True)
"""

TRUST_KEY = "lk-DISTINCTIVE-api-key-7f3a9c2e41b8"
TRUST_SECRET = "bs-DISTINCTIVE-baggage-secret-5d1e8b7c"
TRUST_SESSION = "conv-signed-1"


@dataclass
class TrustRun:
    outcome: Outcome
    outputs: Dict[str, str]  # name -> text seen by a user or an operator
    store_files: Dict[str, bytes]  # the raw store, WAL and shared-memory files
    llm_baggage: List[str]  # baggage headers the LLM provider received
    attacks: Dict[str, str]  # name -> baggage value sent by the attacker
    backend: Dict[str, object]
    returncodes: Dict[str, Optional[int]]


def run_trust(workdir: Path) -> TrustRun:
    """Two services in signed mode with a distinctive key and secret, plus an attacker.

    The gateway opens a signed session and calls the agent; the agent calls a loopback LLM.
    Then an attacker calls the agent directly with unsigned, forged and replayed baggage;
    those spans must stay sessionless. Everything a user or operator can see afterwards is
    collected for the caller to search: process output, CLI output (text and JSON), the raw
    store files (the test keeps a reader open so that the WAL file survives), what the LLM
    provider and the backend received.
    """
    from lucidic_otel.ids import sign_session_id
    from lucidic_otel.testing.fake_openai import FakeOpenAIServer
    from tests.support.contract_server import ContractServer

    workdir = _fresh_dir(workdir)
    agent_app = write_script(workdir, "agent.py", TRUST_AGENT)
    gateway_app = write_script(workdir, "gateway.py", TRUST_GATEWAY)
    store_path = workdir / STORE
    outputs: Dict[str, str] = {}
    codes: Dict[str, Optional[int]] = {}
    with (
        ContractServer(api_key=TRUST_KEY, agent_id="agent-trust") as backend,
        FakeOpenAIServer() as llm,
    ):
        env = clean_env(
            WITNESS_LEDGER=str(workdir / LEDGER),
            LUCIDIC_STORE_PATH=str(store_path),
            LUCIDIC_API_KEY=TRUST_KEY,
            LUCIDIC_AGENT_ID="agent-trust",
            LUCIDIC_BASE_URL=backend.base_url,
            LUCIDIC_BAGGAGE_TRUST="signed",
            LUCIDIC_BAGGAGE_SECRET=TRUST_SECRET,
            FAKE_OPENAI_URL=llm.base_url,
        )
        reader = Store(store_path)  # keeps a connection open: the WAL is not removed at exit
        reader.list_sessions()
        agent = spawn_instrumented([agent_app], {**env, "OTEL_SERVICE_NAME": "agent"}, workdir)
        try:
            port = int(wait_ready(agent, timeout=60).split()[0])
            gateway = run_instrumented(
                [gateway_app, str(port)],
                {**env, "OTEL_SERVICE_NAME": "gateway"},
                timeout=60,
                cwd=workdir,
            )
            outputs["gateway stdout"], outputs["gateway stderr"] = gateway.stdout, gateway.stderr
            codes["gateway"] = gateway.returncode
            legit = next(
                (v for r in llm.requests for k, v in r.headers.items() if k.lower() == "baggage"),
                "",
            )
            signed = legit.partition("lucidic.session_id=")[2].split(",")[0]
            signature = signed.rpartition("~")[2]
            attacks = {
                "unsigned": "attacker-1",
                "replayed signature": f"attacker-2~{signature}",
                "foreign secret": sign_session_id("attacker-3", b"another-secret-of-16+bytes"),
                "signature only": f"~{signature}",
                "separator stuffing": f"{TRUST_SESSION}~{signature}~{signature}",
                "case-changed signature": f"{TRUST_SESSION}~{signature.upper()}",
                "truncated signature": f"{TRUST_SESSION}~{signature[:-1]}",
            }
            for name, value in attacks.items():
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/work/{name.replace(' ', '-')}",
                    headers={"baggage": f"lucidic.session_id={value}"},
                )
                with urllib.request.urlopen(request, timeout=30) as reply:
                    reply.read()
            llm_baggage = [
                v for r in llm.requests for k, v in r.headers.items() if k.lower() == "baggage"
            ]
        finally:
            agent_result = stop(agent, signal.SIGTERM, timeout=30)
        outputs["agent output"] = agent_result.stdout
        codes["agent"] = agent_result.returncode
        store_files = {
            p.name: p.read_bytes() for p in sorted(workdir.glob(STORE + "*")) if p.is_file()
        }
        reader.close()
        for args in (
            ["sessions"],
            ["sessions", "--json"],
            ["show", TRUST_SESSION],
            ["show", TRUST_SESSION, "--json"],
            ["doctor"],
            ["doctor", "--json"],
        ):
            cli = subprocess.run(
                [str(BIN / "lucidic-otel"), *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            outputs["lucidic-otel " + " ".join(args)] = cli.stdout + cli.stderr
            codes["lucidic-otel " + " ".join(args)] = cli.returncode
        backend_seen = {
            "events": dict(backend.events),
            "inits": list(backend.inits),
            "updates": list(backend.updates),
            "violations": list(backend.violations),
        }
    ledger = read_ledger(workdir / LEDGER)
    outcome = tally("signed trust: 2 services + attacker", ledger, read_store(store_path))
    outcome.details["rejections logged"] = outputs["agent output"].count("ignored inbound baggage")
    return TrustRun(outcome, outputs, store_files, llm_baggage, attacks, backend_seen, codes)


# ------------------------------------------------------------------------------ 6. data safety

DATA_APP = """
import sys

from opentelemetry import trace

import lucidic_otel
import witness

tracer = trace.get_tracer("data-safety")
units, pad = int(sys.argv[1]), int(sys.argv[2])
with lucidic_otel.session("data-1"):
    for u in range(units):
        with tracer.start_as_current_span(f"unit-{u}", attributes={"pad": "x" * pad}):
            witness.expect("data-1")
            for k in range(3):
                tracer.start_span(f"part-{u}-{k}", attributes={"pad": "y" * pad}).end()
            tracer.start_span(f"tool-{u}", attributes={
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "pad",
                "gen_ai.tool.call.arguments": "z" * pad}).end()
        lucidic_otel.flush()  # one unit, one export batch
print("APP DONE", units, flush=True)
"""

DATA_FAULTS = (
    "corrupt file",
    "parent is a file",
    "read-only mount",
    "disk full (tmpfs)",
    "file size limit",
)
UNIT_SPANS = 5
_GARBAGE = b"this is not a database\x00" * 700


@dataclass
class DataRun:
    fault: str
    returncode: int
    stdout: str
    stderr: str
    available: bool
    warnings: List[str]
    file_intact: Optional[bool]  # the user's damaged file untouched (corrupt case)
    file_spans: Dict[SpanKey, Optional[str]]  # what the file store holds after recovery
    integrity: Optional[str]
    whole_units: bool
    delivered: Dict[str, List[Dict[str, object]]]
    backend: Dict[str, object]
    outcome: Outcome


def _try(cmd: List[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def run_data_fault(fault: str, workdir: Path, *, units: int = 60, pad: int = 2000) -> DataRun:
    """Run the app against a store location with ``fault``, delivering to a loopback backend.

    After the run the store is "recovered" (copied somewhere roomy, the mount removed) and
    ``lucidic-otel upload`` delivers what the file still holds. Lost means: an event (tool
    span) neither delivered nor kept in the file.
    """
    from tests.support.contract_server import ContractServer

    workdir = _fresh_dir(workdir)
    app = write_script(workdir, "data_app.py", DATA_APP)
    mount: Optional[Path] = None
    prefix: List[str] = []
    garbage: Optional[Path] = None
    if fault == "corrupt file":
        garbage = store_path = workdir / STORE
        store_path.write_bytes(_GARBAGE)
    elif fault == "parent is a file":
        (workdir / "not-a-dir").write_text("a regular file\n")
        store_path = workdir / "not-a-dir" / STORE
    elif fault == "read-only mount":
        (workdir / "src").mkdir()
        mount = workdir / "ro"
        mount.mkdir()
        if not _try(["mount", "--bind", "-o", "ro", str(workdir / "src"), str(mount)]):
            return _unavailable(fault)
        store_path = mount / STORE
    elif fault == "disk full (tmpfs)":
        mount = workdir / "full"
        mount.mkdir()
        if not _try(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)]):
            return _unavailable(fault)
        store_path = mount / STORE
    elif fault == "file size limit":
        store_path = workdir / STORE
        prefix = [sys.executable, "-c", _FSIZE_LIMIT, str(256 * 1024)]
    else:
        raise ValueError(fault)
    try:
        with ContractServer(api_key="data-key", agent_id="agent-data") as backend:
            env = clean_env(
                WITNESS_LEDGER=str(workdir / LEDGER),
                LUCIDIC_STORE_PATH=str(store_path),
                LUCIDIC_API_KEY="data-key",
                LUCIDIC_AGENT_ID="agent-data",
                LUCIDIC_BASE_URL=backend.base_url,
                LUCIDIC_EXIT_DEADLINE="20",
            )
            proc = subprocess.run(
                prefix + instrumented_command([app, str(units), str(pad)]),
                env=env,
                cwd=workdir,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            recovered = _recover(store_path, workdir / "recovered", mount)
            mount = None
            if recovered is not None:
                _release_dead_leases(recovered)
                upload = subprocess.run(
                    [
                        str(BIN / "lucidic-otel"),
                        "upload",
                        "--store",
                        str(recovered),
                        "--deadline",
                        "30",
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=90,
                    check=False,
                )
                if upload.returncode != 0:
                    backend.violations.append(f"upload failed: {upload.stderr[-500:]}")
            seen = {**backend.counts(), "violations": list(backend.violations)}
            delivered = {eid: list(bodies) for eid, bodies in backend.events.items()}
    finally:
        if mount is not None:
            _try(["umount", str(mount)])
    ledger = read_ledger(workdir / LEDGER)
    file_spans = read_store(recovered) if recovered is not None else {}
    integrity = _integrity(recovered) if recovered is not None else None
    stderr = _scrub_launcher_noise(proc.stderr)
    warnings = [line for line in stderr.splitlines() if line.startswith("lucidic-otel:")]
    outcome = _tally_events(f"store fault: {fault}", ledger, recovered, delivered)
    return DataRun(
        fault,
        proc.returncode,
        proc.stdout,
        stderr,
        True,
        warnings,
        None if garbage is None else garbage.read_bytes() == _GARBAGE,
        file_spans,
        integrity,
        _whole_units(ledger, file_spans),
        delivered,
        seen,
        outcome,
    )


_FSIZE_LIMIT = (
    "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "limit = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def _unavailable(fault: str) -> DataRun:
    return DataRun(
        fault, 0, "", "", False, [], None, {}, None, True, {}, {}, Outcome(f"store fault: {fault}")
    )


def _recover(store_path: Path, target: Path, mount: Optional[Path]) -> Optional[Path]:
    """Copy the store (and its WAL) out of the faulty place, as an operator would; None if
    there is no usable store file to recover."""
    if not store_path.is_file() or store_path.read_bytes()[:16] != b"SQLite format 3\x00":
        if mount is not None:
            _try(["umount", str(mount)])
        return None
    target.mkdir(parents=True, exist_ok=True)
    for path in store_path.parent.glob(store_path.name + "*"):
        shutil.copyfile(path, target / path.name)
    if mount is not None:
        _try(["umount", str(mount)])
    return target / store_path.name


def _release_dead_leases(path: Path) -> None:
    """Clear delivery leases left in a recovered copy by a process that has exited.

    Items the process had claimed from the file when it fell back to memory keep their lease
    (about 30 s) and ``lucidic-otel upload`` waits for it to run out; the process is gone, so
    an operator loses nothing by clearing it, and the test does not wait.
    """
    import sqlite3

    conn = sqlite3.connect(str(path))
    try:
        conn.execute("UPDATE outbox SET lease_until = 0 WHERE state = 'pending'")
        conn.commit()
    finally:
        conn.close()


def _integrity(path: Path) -> str:
    import sqlite3

    conn = sqlite3.connect(str(path))
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def _whole_units(ledger: Ledger, stored: Dict[SpanKey, Optional[str]]) -> bool:
    """Each unit (one trace, one export batch) is in the file entirely or not at all."""
    by_trace: Dict[str, List[bool]] = {}
    for key in ledger.spans:
        by_trace.setdefault(key[0], []).append(key in stored)
    return all(all(found) or not any(found) for found in by_trace.values())


def _tally_events(
    scenario: str,
    ledger: Ledger,
    recovered: Optional[Path],
    delivered: Dict[str, List[Dict[str, object]]],
) -> Outcome:
    """Events (the tool spans) are what reaches the backend, so count those: each must be
    delivered or still waiting in the recovered file, under its session."""
    kept: Dict[str, str] = {}
    if recovered is not None:
        with Store(recovered) as store:
            for session in store.list_sessions(limit=1_000_000):
                for item in store.session_events(session["session_id"]):
                    kept[str(item.key)] = item.session_id
    out = Outcome(scenario)
    lost: List[str] = []
    wrong: List[str] = []
    for (trace_id, span_id), name in ledger.spans.items():
        if not name.startswith("tool-"):
            continue
        out.created += 1
        eid = event_id(int(trace_id, 16), int(span_id, 16))
        sessions = {str(body.get("session_id")) for body in delivered.get(eid, [])}
        if eid in kept:
            sessions.add(kept[eid])
        if not sessions:
            lost.append(name)
            continue
        out.exported += 1
        if sessions == {ledger.expected.get(trace_id)}:
            out.stamped += 1
        else:
            wrong.append(f"{name}: {sorted(sessions)}")
    out.lost, out.misattributed = len(lost), len(wrong)
    if lost:
        out.details["lost events"] = lost[:10]
    if wrong:
        out.details["misattributed events"] = wrong[:10]
    return out


def expected_status(kind_name: str) -> int:
    """The exit status each server has without us (measured by the baseline runs)."""
    return -signal.SIGTERM if kind_name == "uvicorn" else 0
