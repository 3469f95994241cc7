"""The ``lucidic-otel`` command, run as a user runs it: a real console script on a real store.

The store is recorded by a real program under the real ``opentelemetry-instrument`` launcher
(the lucidic distro, configurator and exporter, with ``opentelemetry-distro`` installed next to
them): two sessions, nested spans, a hand-made GenAI span, a recorded exception, and a second
process under another service name that joins the first session through ``inject_env``. The
CLI is then run as a subprocess, so exit statuses, stderr and "no traceback, ever" are what a
user would see.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import types
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from lucidic_otel.cli import main as cli
from lucidic_otel.outbox.store import Store
from tests.support.contract_server import ContractServer
from tests.support.launcher import clean_env, run_instrumented, write_script

BIN = Path(sys.executable).parent
CLI = BIN / "lucidic-otel"
API_KEY = "sk-lucidic-TESTKEY-must-never-be-printed-8842"
BAGGAGE_SECRET = "baggage-secret-never-printed-0001"
SESSION_JSON_KEYS = {
    "session_id", "name", "started_at", "duration_s", "services", "spans", "llm_calls",
    "input_tokens", "output_tokens", "cost", "status", "status_text",
}
# gpt-4o-mini: 0.15 / 0.60 USD per million tokens
EXPECTED_COST = (120 * 0.15 + 30 * 0.60) / 1e6

PARENT = r'''
import json, os, subprocess, sys, time
from pathlib import Path

import lucidic_otel
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

tracer = trace.get_tracer("cli-test")
BIN = Path(sys.executable).parent
CHILD = Path(__file__).with_name("child.py")


def checkout():
    with tracer.start_as_current_span("agent.run"):
        with tracer.start_as_current_span("plan"):
            with tracer.start_as_current_span("retrieve"):
                pass
        with tracer.start_as_current_span("chat gpt-4o-mini") as llm:
            llm.set_attribute("gen_ai.operation.name", "chat")
            llm.set_attribute("gen_ai.provider.name", "openai")
            llm.set_attribute("gen_ai.request.model", "gpt-4o-mini")
            llm.set_attribute("gen_ai.usage.input_tokens", 120)
            llm.set_attribute("gen_ai.usage.output_tokens", 30)
            llm.set_attribute("gen_ai.input.messages", json.dumps([
                {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
                {"role": "user", "parts": [{"type": "text", "content": "hi, where is my parcel?"}]},
            ]))
            llm.set_attribute("gen_ai.output.messages", json.dumps([
                {"role": "assistant", "finish_reason": "stop",
                 "parts": [{"type": "text", "content": "It left the depot this morning."}]},
            ]))
        with tracer.start_as_current_span("tool.lookup") as tool:
            try:
                raise ValueError("lookup failed: no such parcel")
            except ValueError as exc:
                tool.record_exception(exc)
                tool.set_status(Status(StatusCode.ERROR, "ValueError: lookup failed"))
        env = lucidic_otel.inject_env(dict(os.environ))
        env["OTEL_SERVICE_NAME"] = "worker"
        subprocess.run(
            [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), str(CHILD)],
            env=env, check=True, timeout=60,
        )
    with tracer.start_as_current_span("followup"):  # a second trace in the same session
        pass
    return lucidic_otel.current_session_id()


first = lucidic_otel.with_lucidic(checkout, session_name="checkout agent")
time.sleep(0.05)


def second_run():
    with tracer.start_as_current_span("ping"):
        pass
    return lucidic_otel.current_session_id()


second = lucidic_otel.with_lucidic(second_run, session_name="second run")
print("IDS " + json.dumps({"first": first, "second": second, "pid": os.getpid()}))
'''

CHILD = r'''
import os
from opentelemetry import trace

tracer = trace.get_tracer("cli-test-worker")
with tracer.start_as_current_span("worker.handle"):
    with tracer.start_as_current_span("worker.step"):
        pass
print("CHILD", os.getpid())
'''


# Sessions nothing was recorded in, as programs really leave them: a scope no span ran in
# (the session is started and never ended), a one-shot whose function made no span (ended),
# and two ids where one is the start of the other.
NO_SPANS = r'''
import lucidic_otel

with lucidic_otel.session("batch-1"):
    pass
lucidic_otel.with_session("batch-10", lambda: None)
lucidic_otel.with_lucidic(lambda: None, session_id="one-shot", session_name="nothing ran")
print("DONE")
'''


# ------------------------------------------------------------------------------ helpers


def cli_env(store: Path | None = None, **overrides: str | None) -> Dict[str, str]:
    """A clean environment with secrets set, so every test also checks they never leak."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LUCIDIC_"))}
    env["LUCIDIC_API_KEY"] = API_KEY
    env["LUCIDIC_BAGGAGE_SECRET"] = BAGGAGE_SECRET
    if store is not None:
        env["LUCIDIC_STORE_PATH"] = str(store)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_cli(*args: str, env: Dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = result.stdout + result.stderr
    # Recorded exceptions legitimately carry stack traces inside JSON strings; a traceback of
    # the CLI itself would start a line.
    assert not any(line.startswith("Traceback") for line in output.splitlines()), output
    assert API_KEY not in output
    assert BAGGAGE_SECRET not in output
    return result


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


def indent_of(lines: List[str], name: str) -> int:
    """The column where the span named ``name`` starts on its tree line."""
    for line in lines:
        if "[" in line and (line.lstrip("│├└─|`- ").startswith(name + "  ")):
            return line.index(name)
    raise AssertionError(f"no tree line for {name!r}")


def line_of(lines: List[str], name: str) -> int:
    for index, line in enumerate(lines):
        if line.lstrip("│├└─|`- ").startswith(name + "  "):
            return index
    raise AssertionError(f"no tree line for {name!r}")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """A store written by a real two-process program under the launcher."""
    root = tmp_path_factory.mktemp("recorded")
    store = root / "store.db"
    parent = write_script(root, "parent.py", PARENT)
    write_script(root, "child.py", CHILD)
    env = clean_env(LUCIDIC_STORE_PATH=str(store), OTEL_SERVICE_NAME="api")
    result = run_instrumented([parent], env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    ids_line = next(line for line in result.stdout.splitlines() if line.startswith("IDS "))
    ids = json.loads(ids_line[4:])
    assert ids["first"] and ids["second"] and ids["first"] != ids["second"]
    return {"store": store, **ids}


@pytest.fixture(scope="module")
def no_spans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store a real program under the launcher left sessions without spans in."""
    root = tmp_path_factory.mktemp("no-spans")
    store = root / "store.db"
    script = write_script(root, "no_spans.py", NO_SPANS)
    result = run_instrumented([script], env=clean_env(LUCIDIC_STORE_PATH=str(store)), timeout=60)
    assert result.returncode == 0 and "DONE" in result.stdout, result.stdout + result.stderr
    return store


# ----------------------------------------------------------------------------- sessions


def test_sessions_table_lists_newest_first_with_rollups(recorded: Dict[str, Any]) -> None:
    result = run_cli("sessions", env=cli_env(recorded["store"]))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = lines[0].split()
    assert header[:3] == ["ID", "NAME", "START"]
    for column in ("DURATION", "SERVICES", "SPANS", "LLM", "TOKENS", "COST", "STATUS"):
        assert column in header
    second, first = lines[1], lines[2]
    assert second.startswith(recorded["second"]) and "second run" in second
    assert first.startswith(recorded["first"]) and "checkout agent" in first
    cells = first.split()
    assert "api,worker" in cells
    assert "120/30" in cells
    assert cells[-1] == "ok"  # with_lucidic recorded the outcome: the function returned
    # start is local time, ISO, to the second
    start = next(c for c in cells if c.count("-") == 2 and "T" in c)
    datetime.strptime(start, "%Y-%m-%dT%H:%M:%S")


def test_sessions_json_has_exactly_the_documented_fields(recorded: Dict[str, Any]) -> None:
    result = run_cli("--store", str(recorded["store"]), "sessions", "--json", env=cli_env())
    assert result.returncode == 0, result.stderr
    sessions = json.loads(result.stdout)
    assert [s["session_id"] for s in sessions] == [recorded["second"], recorded["first"]]
    for session in sessions:
        assert set(session) == SESSION_JSON_KEYS
    first = sessions[1]
    assert first["name"] == "checkout agent"
    assert first["services"] == ["api", "worker"]
    assert first["spans"] == 8
    assert first["llm_calls"] == 1
    assert (first["input_tokens"], first["output_tokens"]) == (120, 30)
    assert first["cost"] == pytest.approx(EXPECTED_COST)
    assert first["status"] == first["status_text"] == "ok"  # with_lucidic's outcome
    assert first["duration_s"] > 0
    started = datetime.fromisoformat(first["started_at"])
    assert started.utcoffset() == timezone.utc.utcoffset(None)
    assert sessions[0]["spans"] == 1 and sessions[0]["llm_calls"] == 0


def test_sessions_limit_and_store_option_after_the_command(recorded: Dict[str, Any]) -> None:
    result = run_cli("sessions", "--limit", "1", "--json", "--store", str(recorded["store"]),
                     env=cli_env())
    assert result.returncode == 0, result.stderr
    assert [s["session_id"] for s in json.loads(result.stdout)] == [recorded["second"]]
    assert result.stderr == ""  # JSON output is the array, and nothing else anywhere


def test_sessions_limit_says_how_many_it_left_out(recorded: Dict[str, Any]) -> None:
    cut = run_cli("sessions", "--limit", "1", env=cli_env(recorded["store"]))
    assert cut.returncode == 0, cut.stderr
    assert len(cut.stdout.splitlines()) == 2  # the header and the newest session, unchanged
    assert cut.stdout.splitlines()[1].startswith(recorded["second"])
    assert cut.stderr == "showing the newest 1 of 2 sessions; use --limit 2 to see all\n"
    whole = run_cli("sessions", "--limit", "2", env=cli_env(recorded["store"]))
    assert whole.returncode == 0 and len(whole.stdout.splitlines()) == 3
    assert whole.stderr == ""  # nothing was left out, so nothing is said


def test_missing_store_is_a_friendly_empty_answer(tmp_path: Path) -> None:
    """Also the answer right after ``lucidic-otel demo``, which recorded into its own
    temporary store: the hint says how to keep what the demo records."""
    store = tmp_path / "nothing" / "store.db"
    result = run_cli("sessions", env=cli_env(store))
    assert result.returncode == 0
    assert "No sessions recorded" in result.stdout and str(store) in result.stdout
    assert ("`lucidic-otel demo` records into a temporary store it deletes afterwards: run it "
            "with --keep to keep that store, or --store PATH to record into PATH.") in result.stdout
    assert result.stderr == ""
    assert not store.exists() and not store.parent.exists()  # reading creates nothing
    as_json = run_cli("sessions", "--json", env=cli_env(store))
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == []


def test_empty_store_file_is_a_friendly_empty_answer(tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    Store(store).outbox_counts()  # a fresh store: schema, no sessions
    result = run_cli("sessions", env=cli_env(store))
    assert result.returncode == 0
    assert "No sessions recorded" in result.stdout


@pytest.mark.parametrize("kind", ["directory", "garbage", "foreign"])
def test_unreadable_store_is_one_line_and_exit_1(tmp_path: Path, kind: str) -> None:
    store = tmp_path / "store.db"
    if kind == "directory":
        store.mkdir()
    elif kind == "garbage":
        store.write_bytes(os.urandom(4096))
    else:
        with sqlite3.connect(store) as conn:
            conn.execute("CREATE TABLE notes (body TEXT)")
    before = store.stat().st_mtime_ns
    for args in (("sessions",), ("sessions", "--json"), ("show", "abc")):
        result = run_cli(*args, env=cli_env(store))
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        line = one_error_line(result)
        assert line.startswith("lucidic-otel: cannot read the store") and str(store) in line
    assert store.stat().st_mtime_ns == before  # never "repaired" or rewritten


# --------------------------------------------------------------------------------- show


def test_show_draws_the_tree_across_services_and_processes(recorded: Dict[str, Any]) -> None:
    result = run_cli("show", recorded["first"], env=cli_env(recorded["store"]))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    lines = out.splitlines()
    assert lines[0].startswith(f"session {recorded['first']}")
    # with_lucidic records the outcome: the function returned, so the session is "ok"
    assert '"checkout agent"' in lines[0] and " ok" in lines[0]
    assert "services api, worker" in out
    assert "1 LLM call" in out and "tokens 120/30" in out
    traces = [index for index, line in enumerate(lines) if line.startswith("trace ")]
    assert len(traces) == 2
    assert traces[0] < line_of(lines, "agent.run") < traces[1] < line_of(lines, "followup")
    assert indent_of(lines, "followup") == 0

    root = indent_of(lines, "agent.run")
    assert root == 0
    for child in ("plan", "chat gpt-4o-mini", "tool.lookup", "worker.handle"):
        assert indent_of(lines, child) > root, child
    assert indent_of(lines, "retrieve") > indent_of(lines, "plan")
    assert line_of(lines, "plan") < line_of(lines, "retrieve") < line_of(lines, "chat gpt-4o-mini")
    assert indent_of(lines, "worker.step") > indent_of(lines, "worker.handle")
    assert line_of(lines, "worker.handle") < line_of(lines, "worker.step")

    api_line = lines[line_of(lines, "plan")]
    worker_line = lines[line_of(lines, "worker.step")]
    assert f"[api pid {recorded['pid']}]" in api_line
    assert "[worker pid " in worker_line and f"pid {recorded['pid']}]" not in worker_line
    assert " ms  " in api_line and api_line.rstrip().endswith("UNSET")


def test_show_llm_and_error_details(recorded: Dict[str, Any]) -> None:
    result = run_cli("show", recorded["first"], env=cli_env(recorded["store"]))
    lines = result.stdout.splitlines()
    llm = line_of(lines, "chat gpt-4o-mini")
    details = lines[llm + 1: llm + 4]
    assert "llm gpt-4o-mini" in details[0]
    assert "tokens 120/30" in details[0]
    assert f"cost ${EXPECTED_COST:.6f}" in details[0]
    assert details[1].strip().endswith("in:  user: hi, where is my parcel?")
    assert details[2].strip().endswith("out: It left the depot this morning.")
    tool = line_of(lines, "tool.lookup")
    assert lines[tool].rstrip().endswith("ERROR")
    assert "error ValueError: lookup failed: no such parcel" in lines[tool + 1]


def test_show_json(recorded: Dict[str, Any]) -> None:
    result = run_cli("show", recorded["first"], "--json", env=cli_env(recorded["store"]))
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert set(shown) == {"session", "spans", "events"}
    assert shown["session"]["session_id"] == recorded["first"]
    assert shown["session"]["services"] == ["api", "worker"]
    assert shown["session"]["started_at"].endswith("+00:00")
    spans = {s["name"]: s for s in shown["spans"]}
    assert len(shown["spans"]) == 8
    assert spans["retrieve"]["parent_span_id"] == spans["plan"]["span_id"]
    assert spans["worker.handle"]["parent_span_id"] == spans["agent.run"]["span_id"]
    assert spans["worker.handle"]["service"] == "worker"
    assert spans["chat gpt-4o-mini"]["model"] == "gpt-4o-mini"
    types_ = sorted(e["body"]["type"] for e in shown["events"])
    assert types_ == ["error_traceback", "llm_generation"]


def test_sessions_without_spans_say_so_in_every_view(no_spans: Path) -> None:
    """Not a bare "open", which reads as if spans were still on their way."""
    table = run_cli("sessions", env=cli_env(no_spans))
    assert table.returncode == 0, table.stderr
    status = {line.split()[0]: line.split("  ")[-1].strip()
              for line in table.stdout.splitlines()[1:]}
    assert status == {"batch-1": "open (no spans)", "batch-10": "open (no spans)",
                      "one-shot": "ok (no spans)"}
    as_json = run_cli("sessions", "--json", env=cli_env(no_spans))
    listed = {s["session_id"]: s for s in json.loads(as_json.stdout)}
    assert {sid: (s["status"], s["status_text"], s["spans"]) for sid, s in listed.items()} == {
        "batch-1": ("open", "open (no spans)", 0),  # "status" keeps its lifecycle values
        "batch-10": ("open", "open (no spans)", 0),
        "one-shot": ("ok", "ok (no spans)", 0),
    }
    shown = run_cli("show", "one-shot", env=cli_env(no_spans))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == 'session one-shot  "nothing ran"  ok (no spans)'
    assert "no spans stored for this session" in shown.stdout
    shown_json = json.loads(run_cli("show", "batch-1", "--json", env=cli_env(no_spans)).stdout)
    assert shown_json["session"]["status_text"] == "open (no spans)"


def test_show_takes_a_unique_prefix_of_the_id(recorded: Dict[str, Any]) -> None:
    first, second = recorded["first"], recorded["second"]
    length = next(n for n in range(4, len(first)) if not second.startswith(first[:n]))
    result = run_cli("show", first[:length], env=cli_env(recorded["store"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(f"session {first}  \"checkout agent\"")
    assert "worker.step" in result.stdout


def test_show_prefix_exact_id_wins_and_ambiguity_is_one_line(no_spans: Path) -> None:
    exact = run_cli("show", "batch-1", env=cli_env(no_spans))  # also the start of batch-10
    assert exact.returncode == 0, exact.stderr
    # an unnamed session carries the official SDK's default name, here as on the wire
    assert exact.stdout.startswith('session batch-1  "Unnamed Session"  open (no spans)\n')
    ambiguous = run_cli("show", "batch", env=cli_env(no_spans))
    assert ambiguous.returncode == 1
    assert one_error_line(ambiguous) == (
        "lucidic-otel: 'batch' is the start of more than one session id (batch-1, batch-10); "
        "give more of the id"
    )


def test_show_unknown_session_is_one_line_and_exit_1(recorded: Dict[str, Any]) -> None:
    result = run_cli("show", "no-such-session", env=cli_env(recorded["store"]))
    assert result.returncode == 1
    line = one_error_line(result)
    assert line == f"lucidic-otel: no session 'no-such-session' in {recorded['store']}"


def test_show_reads_messages_from_attributes_when_the_event_is_gone(
    recorded: Dict[str, Any], tmp_path: Path
) -> None:
    """The outbox may have been trimmed by the cap; the span attributes still tell the story."""
    copy = tmp_path / "store.db"
    with sqlite3.connect(recorded["store"]) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    with sqlite3.connect(copy) as conn:
        conn.execute("DELETE FROM outbox WHERE kind = 'event'")
    result = run_cli("show", recorded["first"], env=cli_env(copy))
    assert result.returncode == 0, result.stderr
    assert "in:  user: hi, where is my parcel?" in result.stdout
    assert "out: It left the depot this morning." in result.stdout


def test_show_makes_spans_with_unrecorded_parents_roots(
    recorded: Dict[str, Any], tmp_path: Path
) -> None:
    """A parent that ran in a process writing elsewhere: its children are roots, marked."""
    copy = tmp_path / "store.db"
    with sqlite3.connect(recorded["store"]) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    with sqlite3.connect(copy) as conn:
        root_id = conn.execute("SELECT span_id FROM spans WHERE name = 'agent.run'").fetchone()[0]
        conn.execute("DELETE FROM spans WHERE name = 'agent.run'")
    result = run_cli("show", recorded["first"], env=cli_env(copy))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for orphan in ("plan", "chat gpt-4o-mini", "tool.lookup", "worker.handle"):
        line = lines[line_of(lines, orphan)]
        assert indent_of(lines, orphan) == 0
        assert f"(parent {root_id} not recorded here)" in line
    assert indent_of(lines, "retrieve") > 0 and indent_of(lines, "worker.step") > 0


# ------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    "args",
    [("sessions", "--bogus"), ("sessions", "--limit", "0"), ("frobnicate",), (),
     ("upload", "--deadline", "soon")],
)
def test_bad_usage_exits_2_without_traceback(args: tuple, tmp_path: Path) -> None:
    result = run_cli(*args, env=cli_env(tmp_path / "store.db"))
    assert result.returncode == 2
    assert result.stderr.startswith("usage: lucidic-otel")
    assert result.stdout == ""


@pytest.mark.parametrize(("args", "command"), [
    (("sessions", "--jsn"), "sessions"), (("show", "abc", "--tree"), "show"),
    (("doctor", "--jsn"), "doctor"),
])
def test_a_mistyped_option_gets_its_command_usage(
    args: tuple, command: str, tmp_path: Path
) -> None:
    result = run_cli(*args, env=cli_env(tmp_path / "store.db"))
    assert result.returncode == 2 and result.stdout == ""
    usage, error = result.stderr.strip().splitlines()[0], result.stderr.strip().splitlines()[-1]
    assert usage.startswith(f"usage: lucidic-otel {command} [-h]")
    assert error == f"lucidic-otel {command}: error: unrecognized arguments: {args[-1]}"


def test_demo_help_says_the_demo_records_into_its_store() -> None:
    result = run_cli("demo", "--help", env=cli_env())
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert ("--store PATH record the demo into PATH, and keep it there (default: a temporary "
            "store, deleted afterwards unless --keep)") in text
    assert "to read" not in text
    reading = " ".join(run_cli("sessions", "--help", env=cli_env()).stdout.split())
    assert "--store PATH the local store to read" in reading


def test_version() -> None:
    result = run_cli("--version", env=cli_env())
    assert result.returncode == 0
    assert result.stdout.strip() == f"lucidic-otel {cli.__version__}"


# ---------------------------------------------------------------- demo and upload (lazy)


@pytest.fixture
def fake_modules(monkeypatch: pytest.MonkeyPatch) -> Iterator[Dict[str, Any]]:
    calls: Dict[str, Any] = {}
    demo_run = types.ModuleType("lucidic_otel.demo.run")

    def main(args: Any) -> None:
        calls["demo"] = args

    demo_run.main = main  # type: ignore[attr-defined]
    upload = types.ModuleType("lucidic_otel.cli.upload")

    def run(args: Any) -> int:
        calls["upload"] = args
        return 3

    upload.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lucidic_otel.demo.run", demo_run)
    monkeypatch.setitem(sys.modules, "lucidic_otel.cli.upload", upload)
    yield calls


def test_demo_and_upload_get_the_parsed_arguments(
    fake_modules: Dict[str, Any], tmp_path: Path
) -> None:
    store = tmp_path / "s.db"
    assert cli.main(["--store", str(store), "upload", "--deadline", "2.5", "--json"]) == 3
    upload = fake_modules["upload"]
    assert (upload.deadline, upload.json, upload.store) == (2.5, True, store)
    assert cli.main(["demo", "--keep", "--store", str(store)]) == 0
    assert fake_modules["demo"].keep is True and fake_modules["demo"].store == store
    assert cli.main(["upload"]) == 3
    assert fake_modules["upload"].deadline == cli.DEFAULT_UPLOAD_DEADLINE_S


@pytest.mark.parametrize(("command", "module"),
                         [("demo", "lucidic_otel.demo.run"), ("upload", "lucidic_otel.cli.upload")])
def test_missing_command_module_is_one_line_and_exit_2(
    command: str, module: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    assert cli.main([command]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and f"'{command}' command is not available" in lines[0]


def test_an_unexpected_exception_is_one_line(
    fake_modules: Dict[str, Any], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def boom(args: Any) -> int:
        raise RuntimeError("the sender\nexploded")

    monkeypatch.setattr(sys.modules["lucidic_otel.cli.upload"], "run", boom)
    assert cli.main(["upload"]) == 1
    err = capsys.readouterr().err
    assert err == "lucidic-otel: error: RuntimeError: the sender exploded\n"


def _copy_store(source: Path, target: Path) -> Path:
    with sqlite3.connect(source) as conn, sqlite3.connect(target) as copy:
        conn.backup(copy)
    return target


def test_upload_prints_its_result_on_stdout_and_no_progress_before_it(
    recorded: Dict[str, Any], tmp_path: Path
) -> None:
    """The recorded store was written with no API key: its outbox still holds every record."""
    text_store = _copy_store(recorded["store"], tmp_path / "text.db")
    json_store = _copy_store(recorded["store"], tmp_path / "json.db")
    with Store(text_store) as store:
        pending = store.outbox_counts()["pending"]
    assert pending > 0
    with ContractServer(api_key=API_KEY, agent_id="agent-1") as server:
        env = cli_env(LUCIDIC_AGENT_ID="agent-1", LUCIDIC_BASE_URL=server.base_url)
        text = run_cli("upload", "--store", str(text_store), "--deadline", "30", env=env)
        as_json = run_cli("upload", "--store", str(json_store), "--deadline", "30", "--json",
                          env=env)
    assert server.violations == []
    assert text.returncode == 0, text.stdout + text.stderr
    out = text.stdout.splitlines()
    assert out[0] == f"store: {text_store}"
    assert out[1].startswith(f"sent {pending} of {pending} pending records (")
    assert out[-1] == "everything pending was delivered"
    # Progress, if the run was slow enough to show any, counts something delivered.
    assert all(line.startswith("delivered ") and not line.startswith("delivered 0/")
               for line in text.stderr.splitlines()), text.stderr
    assert as_json.returncode == 0, as_json.stderr
    summary = json.loads(as_json.stdout)  # the whole of stdout
    assert (summary["delivered"], summary["remaining"]) == (pending, 0)


# ------------------------------------------------------------------------------- doctor


def _fake_distribution(root: Path, name: str, version: str, entry_point: str,
                       metadata: str = "") -> Path:
    """A throwaway distribution on its own path entry that registers one instrumentor."""
    site = root / f"{name}-site"
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{metadata}",
        encoding="utf-8",
    )
    (info / "entry_points.txt").write_text(
        f"[opentelemetry_instrumentor]\n{entry_point}\n", encoding="utf-8"
    )
    return site


def _fake_instrumentor_path(root: Path) -> Path:
    """A throwaway distribution that registers a second ``openai`` instrumentor."""
    return _fake_distribution(root, "fake-openai-instrumentor", "0.1",
                              "openai = fake_openai_instrumentor:Instrumentor")


def _second_openai_package(root: Path) -> Path:
    """A throwaway distribution that instruments ``openai`` under another entry-point name,
    as OpenInference's or OpenLLMetry's packages would next to ours."""
    return _fake_distribution(
        root, "other-openai-instrumentation", "2.0", "other_openai = other_openai:Instrumentor",
        'Provides-Extra: instruments\nRequires-Dist: openai>=1.0; extra == "instruments"\n',
    )


def test_doctor_flags_one_library_instrumented_by_two_packages(recorded: Dict[str, Any],
                                                               tmp_path: Path) -> None:
    env = cli_env(recorded["store"], OTEL_PYTHON_DISTRO="lucidic")
    assert _doctor_json(env)["instrumentors"]["library_instrumented_twice"] == {}
    env["PYTHONPATH"] = str(_second_openai_package(tmp_path))
    report = _doctor_json(env)
    twice = report["instrumentors"]["library_instrumented_twice"]
    assert list(twice) == ["openai"]
    assert "other-openai-instrumentation" in twice["openai"] and len(twice["openai"]) == 2
    assert any("the library 'openai' is instrumented by" in p for p in report["problems"])
    text = run_cli("doctor", env=env)
    assert "LIBRARY INSTRUMENTED TWICE: openai" in text.stdout
    env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = "other_openai"
    assert _doctor_json(env)["instrumentors"]["library_instrumented_twice"] == {}


@pytest.mark.timeout(900)  # pip may install the [openinference] extra first
def test_doctor_flags_openai_instrumented_by_openinference_and_the_official_package(
        recorded: Dict[str, Any], tmp_path: Path) -> None:
    """The real OpenInference packages (the [openinference] extra) next to the official GenAI
    instrumentations: each library is wrapped twice, and doctor names both distributions.
    With the official ones hidden (one instrumentation per library), nothing is flagged."""
    from tests.support import peers

    openinference = peers.install_dir("openinference")
    env = cli_env(recorded["store"], OTEL_PYTHON_DISTRO="lucidic",
                  PYTHONPATH=str(openinference))
    report = _doctor_json(env)
    twice = report["instrumentors"]["instrumented_twice"]
    assert twice["openai"] == ["openinference-instrumentation-openai",
                               "opentelemetry-instrumentation-genai-openai"], twice
    assert set(twice) == {"openai", "anthropic", "langchain"}, twice
    named = ("instrumented twice: 'openai' is registered by openinference-instrumentation-"
             "openai, opentelemetry-instrumentation-genai-openai")
    assert any(p.startswith(named) for p in report["problems"]), report["problems"]
    assert "INSTRUMENTED TWICE" in run_cli("doctor", env=env).stdout

    env["PYTHONPATH"] = peers.pythonpath(peers.hidden(tmp_path), openinference)
    alone = _doctor_json(env)["instrumentors"]
    assert (alone["instrumented_twice"], alone["library_instrumented_twice"]) == ({}, {})
    assert {r["distribution"] for r in alone["installed"] if r["name"] == "openai"} == {
        "openinference-instrumentation-openai"}


def _doctor_json(env: Dict[str, str], *args: str) -> Dict[str, Any]:
    """The report; doctor's exit status says whether it lists problems, every time."""
    result = run_cli("doctor", "--json", *args, env=env)
    report = json.loads(result.stdout)
    assert result.returncode == (1 if report["problems"] else 0), (result, report["problems"])
    return report


PROBE = """
import json, os
from opentelemetry import trace
seen = {k: os.environ.get(k) for k in ("OTEL_TRACES_EXPORTER", "OTEL_PYTHON_CONFIGURATOR")}
seen["provider"] = type(trace.get_tracer_provider()).__name__
print("ENV " + json.dumps(seen))
"""


@pytest.mark.parametrize(
    "overrides",
    [{}, {"OTEL_PYTHON_DISTRO": "lucidic"},
     {"OTEL_PYTHON_DISTRO": "lucidic", "OTEL_TRACES_EXPORTER": "lucidic,none"}],
    ids=["distro-unset", "distro-lucidic", "exporter-list-with-none"],
)
def test_doctor_agrees_with_the_real_launcher(
    recorded: Dict[str, Any], tmp_path: Path, overrides: Dict[str, str]
) -> None:
    """Same environment, doctor vs. the launcher itself: the winning distro's defaults, the
    configurator that ran (the launcher logs 'Configuration of X not loaded' for each one it
    skips), and whether the SDK got set up at all."""
    probe = write_script(tmp_path, "probe.py", PROBE)
    env = cli_env(recorded["store"], OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
                  **overrides)
    report = _doctor_json(env)
    launched = run_instrumented([probe], env=env, timeout=60)
    assert launched.returncode == 0, launched.stderr
    seen = json.loads(next(
        line[4:] for line in launched.stdout.splitlines() if line.startswith("ENV ")
    ))
    fatal = any("skips ALL instrumentation" in p for p in report["problems"])
    assert fatal == (seen["provider"] == "ProxyTracerProvider"), (report["problems"], seen)
    if not fatal:
        assert report["effective_env"]["OTEL_TRACES_EXPORTER"] == seen["OTEL_TRACES_EXPORTER"]
        assert (report["effective_env"]["OTEL_PYTHON_CONFIGURATOR"]
                == seen["OTEL_PYTHON_CONFIGURATOR"])
        picked = report["launcher"]["configurator"]["name"]
        assert f"Configuration of {picked} not loaded" not in launched.stderr
        # Our distro silences the skip notice when the configurator is its own choice.
        quiet = picked == "lucidic" and report["launcher"]["distro"]["name"] == "lucidic"
        for other in report["launcher"]["configurators"]:
            if other["name"] != picked:
                said = f"Configuration of {other['name']} not loaded" in launched.stderr
                assert said is not quiet, (quiet, launched.stderr)


def test_doctor_with_opentelemetry_distro_installed(recorded: Dict[str, Any]) -> None:
    from opentelemetry.util._importlib_metadata import entry_points

    installed = [ep.name for ep in entry_points(group="opentelemetry_distro")]
    assert {"distro", "lucidic"} <= set(installed), "opentelemetry-distro must be installed"

    unset = _doctor_json(cli_env(recorded["store"]))
    launcher = unset["launcher"]
    assert [d["name"] for d in launcher["distros"]] == installed
    assert {d["distribution"] for d in launcher["distros"]} >= {"opentelemetry-distro",
                                                               "lucidic-otel"}
    assert launcher["distro"]["name"] == installed[0]  # first found wins
    # A note, not a problem: sessions are recorded whoever wins, and the pipeline says how.
    assert any("OTEL_PYTHON_DISTRO is unset" in n for n in unset["notes"])
    assert not any("OTEL_PYTHON_DISTRO is unset" in p for p in unset["problems"])
    assert unset["launcher"]["distro_how"] == "raced"
    assert unset["pipeline"]["attached"] is True
    assert unset["pipeline"]["by"] == (
        "exporter list" if installed[0] == "lucidic" else "lucidic-otel"
    )

    chosen = _doctor_json(cli_env(recorded["store"], OTEL_PYTHON_DISTRO="lucidic"))
    launcher = chosen["launcher"]
    assert launcher["distro"]["name"] == "lucidic"
    assert launcher["distro_reason"] == "named by OTEL_PYTHON_DISTRO"
    assert launcher["configurator"]["name"] == "lucidic"  # the distro's setdefault
    assert launcher["sessions_stamped_by"] == "the lucidic configurator"
    assert [(e["name"], e["registered"]) for e in chosen["exporters"]["names"]] == [
        ("lucidic", True)
    ]
    assert chosen["propagators"]["baggage"] is True
    assert not any("distro" in p.lower() for p in chosen["problems"])

    text = run_cli("doctor", env=cli_env(recorded["store"], OTEL_PYTHON_DISTRO="lucidic"))
    assert text.returncode == 1  # cli_env sets the API key without an agent id
    assert "OTEL_PYTHON_DISTRO=lucidic  ->  picks lucidic (lucidic-otel" in text.stdout
    assert "distro (opentelemetry-distro" in text.stdout
    assert "api_key=set" in text.stdout


def test_doctor_settings_exporters_and_propagators(recorded: Dict[str, Any]) -> None:
    env = cli_env(recorded["store"], OTEL_PYTHON_DISTRO="lucidic",
                  OTEL_TRACES_EXPORTER="lucidic,otlp,bogus", OTEL_PROPAGATORS="tracecontext",
                  OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf", LUCIDIC_AGENT_ID="agent-7",
                  LUCIDIC_AUTO_END="perhaps")
    report = _doctor_json(env)
    settings = report["settings"]
    assert settings["api_key_set"] is True and settings["baggage_secret_set"] is True
    assert settings["agent_id"] == "agent-7"
    names = {e["name"]: e for e in report["exporters"]["names"]}
    assert set(names) == {"lucidic", "otlp"}
    assert names["otlp"]["entry_point"] == "otlp_proto_http" and names["otlp"]["registered"]
    assert report["exporters"]["dropped"] == ["bogus"]
    assert report["propagators"]["baggage"] is False
    problems = "\n".join(report["problems"])
    assert "bogus" in problems
    assert "'baggage' propagator is off" in problems
    assert "LUCIDIC_AUTO_END='perhaps' is not valid" in problems
    data = report["data"]
    assert data["delivery_enabled"] is True
    assert data["delivery"] == "process"
    assert data["backend_url"] == "https://backend.lucidic.ai/api"
    assert data["store_path"] == str(recorded["store"]) and data["store_bytes"] > 0
    assert data["outbox"]["pending"] > 0


def test_doctor_flags_an_instrumentor_registered_twice(recorded: Dict[str, Any],
                                                       tmp_path: Path) -> None:
    env = cli_env(recorded["store"], OTEL_PYTHON_DISTRO="lucidic")
    assert _doctor_json(env)["instrumentors"]["instrumented_twice"] == {}

    env["PYTHONPATH"] = str(_fake_instrumentor_path(tmp_path))
    report = _doctor_json(env)
    twice = report["instrumentors"]["instrumented_twice"]
    assert list(twice) == ["openai"]
    assert "fake-openai-instrumentor" in twice["openai"] and len(twice["openai"]) == 2
    rows = [r for r in report["instrumentors"]["installed"] if r["name"] == "openai"]
    assert len(rows) == 2 and all(r["instrumented_twice"] for r in rows)
    assert any(r["version"] == "0.1" for r in rows)
    assert any("instrumented twice: 'openai'" in p for p in report["problems"])

    text = run_cli("doctor", env=env)
    assert "INSTRUMENTED TWICE" in text.stdout
    assert "fake-openai-instrumentor 0.1" in text.stdout


def test_doctor_lists_failed_outbox_items_with_reasons(recorded: Dict[str, Any],
                                                      tmp_path: Path) -> None:
    copy = tmp_path / "store.db"
    with sqlite3.connect(recorded["store"]) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    store = Store(copy)
    item = store.claim_pending(limit=1, now=1e12)[0]
    assert store.mark_failed(item.seq, "HTTP 422: payload rejected")
    store.close()
    report = _doctor_json(cli_env(copy))
    assert report["data"]["outbox"]["failed"] == 1
    failed = report["data"]["failed_items"]
    assert [(f["seq"], f["reason"]) for f in failed] == [(item.seq, "HTTP 422: payload rejected")]
    text = run_cli("doctor", env=cli_env(copy))
    assert "HTTP 422: payload rejected" in text.stdout
    assert "1 failed" in text.stdout


def _damaged_copy(source: Path, target: Path) -> Path:
    """A real store cut short, as a crash of the disk (not of a process) leaves one: still
    SQLite by its header, no longer readable as a whole."""
    with sqlite3.connect(source) as conn, sqlite3.connect(target) as copy:
        conn.backup(copy)
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 3])
    return target


def test_doctor_tells_a_garbage_store_from_a_damaged_one(recorded: Dict[str, Any],
                                                         tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    damaged = _damaged_copy(recorded["store"], tmp_path / "damaged.db")
    lines = {}
    for name, store in (("garbage", garbage), ("damaged", damaged)):
        env = cli_env(store, LUCIDIC_API_KEY=None)  # no problem but the store's
        report = _doctor_json(env)
        assert report["data"]["store_error"].startswith(f"cannot read the store {store}")
        assert report["problems"] == [report["data"]["store_problem"]]
        text = run_cli("doctor", env=env)
        assert text.returncode == 1, text.stdout
        assert f"store: {store}  (cannot be used, see Problems; from LUCIDIC_STORE_PATH)" in (
            text.stdout)
        (lines[name],) = [line for line in text.stdout.splitlines() if line.startswith("  - ")]
    assert "it is not an SQLite database" in lines["garbage"]
    assert "it is a damaged SQLite database" in lines["damaged"]
    for line in lines.values():
        assert "keep their telemetry in memory only" in line and "To fix: move it aside" in line
    missing = _doctor_json(cli_env(tmp_path / "absent.db"))
    assert missing["data"]["store_exists"] is False and missing["data"]["store_error"] is None
    assert not (tmp_path / "absent.db").exists()


@pytest.mark.parametrize("kind", ["directory", "under a file"])
def test_doctor_lists_a_store_path_that_cannot_be_used(tmp_path: Path, kind: str) -> None:
    if kind == "directory":
        store, reason = tmp_path, "it is a directory, and a file path is expected"
    else:
        (tmp_path / "a-file").write_text("a regular file")
        store = tmp_path / "a-file" / "lucidic" / "store.db"
        reason = f"'{tmp_path / 'a-file'}' is a file, not a directory"
    text = run_cli("doctor", "--store", str(store), env=cli_env(LUCIDIC_API_KEY=None))
    assert text.returncode == 1, text.stdout
    assert "No problems found" not in text.stdout
    assert f"store_path='{store}'" in text.stdout  # the store examined, in the Configuration
    assert f"store: {store}  (cannot be used, see Problems; from --store)" in text.stdout
    problems = text.stdout.split("\nProblems (1)\n", 1)[1].splitlines()
    assert problems == [
        f"  - the store path {store} cannot be used: {reason}; programs recording here keep "
        "their telemetry in memory only (lost at exit, and `lucidic-otel sessions` cannot show "
        f"it). To fix: {problems[0].split('To fix: ', 1)[1]}"
    ]
    assert "writable" not in problems[0]  # it is writable; that is not what is wrong
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        [] if kind == "directory" else ["a-file"])  # doctor created nothing


@pytest.mark.parametrize("given", ["LUCIDIC_API_KEY", "LUCIDIC_AGENT_ID"])
def test_doctor_lists_half_of_the_delivery_credentials(
    recorded: Dict[str, Any], given: str
) -> None:
    only = {"LUCIDIC_API_KEY": None, given: API_KEY if given == "LUCIDIC_API_KEY" else "agent-1"}
    env = cli_env(recorded["store"], OTEL_PYTHON_DISTRO="lucidic", **only)
    report = _doctor_json(env)
    missing = ({"LUCIDIC_API_KEY", "LUCIDIC_AGENT_ID"} - {given}).pop()
    assert [p for p in report["problems"] if missing in p] == [
        f"{given} is set but {missing} is not: nothing is delivered to Lucidic (delivery needs "
        "both; data stays in the local store) unless the program passes "
        f"{'agent_id' if missing == 'LUCIDIC_AGENT_ID' else 'api_key'} to lucidic_otel.init(); "
        f"set {missing}"
    ]
    both = cli_env(recorded["store"], OTEL_PYTHON_DISTRO="lucidic", LUCIDIC_AGENT_ID="agent-1")
    whole = run_cli("doctor", env=both)
    assert whole.returncode == 0, whole.stdout
    assert whole.stdout.rstrip().endswith("No problems found.")
