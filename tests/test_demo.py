"""``lucidic-otel demo``, run as a new user runs it: the console script, in a subprocess.

The demo is the README's first command, so these tests hold it to what it promises: exit 0
offline with nothing but the installed package, sessions whose spans come from two separately
launched services, complete LLM events in the store, and no process left behind, whether the
demo finishes or is stopped half way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from lucidic_otel.demo import run
from lucidic_otel.outbox.store import Store

pytestmark = pytest.mark.openai

CLI = Path(sys.executable).parent / "lucidic-otel"
TIMEOUT_S = 120
SERVICES = {"demo-gateway", "demo-agent"}
PORT = re.compile(r"http://127\.0\.0\.1:(\d+)")
PID = re.compile(r"\[(demo-gateway|demo-agent) pid (\d+)\]")
TEMP_STORE = re.compile(r"^store: (\S+) \(temporary\)$", re.MULTILINE)
KEPT_STORE = re.compile(r"^The store is at (\S+);", re.MULTILINE)
LLM_LINE = re.compile(r"llm gpt-4o-mini  tokens (\d+)/(\d+)  cost \$\d+\.\d+")


def _env(home: Path) -> Dict[str, str]:
    """A user's environment without OTel/Lucidic settings, with a private home, so the test
    can prove the demo never touches the default store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LUCIDIC_"))}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"), PYTHONUNBUFFERED="1")
    return env


def _demo(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "demo", *args], env=_env(home), capture_output=True, text=True,
        timeout=TIMEOUT_S, check=False,
    )


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _processes_in(directory: Path) -> List[int]:
    """Live processes whose working directory is ``directory`` (the demo runs its children in
    its own temporary directory, so this finds them whatever their command line)."""
    found = []
    target = str(directory)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "cwd") in (target, target + " (deleted)") and _alive(
                int(entry.name)
            ):
                found.append(int(entry.name))
    return found


def _assert_nothing_left(output: str, workdir: Path | None) -> None:
    ports = {int(p) for p in PORT.findall(output)}
    pids = {int(pid) for _, pid in PID.findall(output)}
    deadline = time.monotonic() + 5.0  # the OS may take a moment to release a socket
    while time.monotonic() < deadline:
        open_ports = {p for p in ports if _accepts(p)}
        live = {p for p in pids if _alive(p)}
        strays = _processes_in(workdir) if workdir is not None else []
        if not (open_ports or live or strays):
            return
        time.sleep(0.2)
    raise AssertionError(f"left behind: ports {open_ports}, pids {live}, processes {strays}")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def plain_run(home: Path) -> Tuple[subprocess.CompletedProcess[str], float]:
    """One plain run shared by the tests that read its output, with its wall time."""
    started = time.monotonic()
    proc = _demo(home)
    return proc, time.monotonic() - started


@pytest.fixture(scope="module")
def kept_store(home: Path) -> Iterator[Path]:
    proc = _demo(home, "--keep")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = KEPT_STORE.search(proc.stdout)
    assert match, proc.stdout
    store = Path(match.group(1))
    try:
        yield store
    finally:
        shutil.rmtree(store.parent, ignore_errors=True)


def test_demo_succeeds_and_shows_a_cross_service_session(plain_run):
    proc, elapsed = plain_run
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert proc.stderr == "", proc.stderr
    assert "Traceback" not in out
    assert elapsed < 60, elapsed

    # One line per request, with the agent's reply and the session it ran in.
    for number, city in enumerate(("Paris", "Tokyo", "Lima"), start=1):
        assert re.search(rf"request {number} \({city}\): The tool returned: .*{city}", out), out

    # The sessions table: three sessions, each with spans from both services.
    table = out.split("$ lucidic-otel sessions", 1)[1].split("$ lucidic-otel show", 1)[0]
    rows = [line for line in table.splitlines() if "demo request" in line]
    assert len(rows) == 3, table
    for row in rows:
        assert "demo-agent,demo-gateway" in row, row

    # The shown session's tree crosses both services and shows the LLM calls.
    tree = out.split("$ lucidic-otel show", 1)[1]
    assert {service for service, _ in PID.findall(tree)} == SERVICES, tree
    assert len({pid for _, pid in PID.findall(tree)}) == 2, tree
    assert "execute_tool get_weather" in tree
    llm_lines = LLM_LINE.findall(tree)
    assert len(llm_lines) == 4, tree
    assert all(int(i) > 0 and int(o) > 0 for i, o in llm_lines), llm_lines
    assert "out: assistant: tool calls: get_weather" in tree


def test_demo_leaves_no_process_and_no_store_behind(plain_run, home):
    proc, _ = plain_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = TEMP_STORE.search(proc.stdout)
    assert match, proc.stdout
    workdir = Path(match.group(1)).parent
    _assert_nothing_left(proc.stdout, workdir)
    assert not workdir.exists(), "the temporary store was not deleted"
    assert "demo-gateway: stopped (signal SIGTERM)" in proc.stdout
    assert "demo-agent: stopped (signal SIGTERM)" in proc.stdout
    # The user's own store (default location) was never written.
    assert not (home / "data" / "lucidic-otel").exists()


def test_kept_store_holds_cross_service_sessions(kept_store):
    with Store(kept_store) as store:
        sessions = [s for s in store.list_sessions() if s["name"].startswith("demo request")]
        assert len(sessions) >= 3, sessions
        for session in sessions:
            assert set(session["services"]) == SERVICES, session
            spans = store.session_spans(session["session_id"])
            assert {span.service for span in spans} == SERVICES
            assert len({span.pid for span in spans}) == 2
            # One trace per request, from the gateway into the agent.
            assert len({span.trace_id for span in spans}) == 1


def test_kept_store_holds_complete_llm_events(kept_store):
    with Store(kept_store) as store:
        session = next(s for s in store.list_sessions() if s["name"] == "demo request 1")
        events = [item.body for item in store.session_events(session["session_id"])]
    llm = [e for e in events if e["type"] == "llm_generation"]
    assert len(llm) == 4, events
    for event in llm:
        payload = event["payload"]
        assert payload["request"]["model"] == "gpt-4o-mini"
        assert payload["request"]["messages"], payload
        assert payload["response"]["output"] or payload["response"]["tool_calls"], payload
        usage = payload["usage"]
        assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0, usage
        assert usage["cost"] > 0, usage
        assert event["metadata"]["service_name"] == "demo-agent"

    asked = [e for e in llm if e["payload"]["response"]["tool_calls"]]
    assert len(asked) == 1
    (call,) = asked[0]["payload"]["response"]["tool_calls"]
    assert call["name"] == "get_weather" and call["arguments"] == {"city": "Paris"}, call
    answer = llm[-1]["payload"]
    assert answer["request"]["messages"][-1]["role"] == "tool"
    assert answer["response"]["output"].startswith("The tool returned:")

    (tool,) = [e for e in events if e["type"] == "function_call"]
    assert tool["payload"]["function_name"] == "get_weather"
    assert tool["payload"]["arguments"] == {"city": "Paris"}
    assert tool["payload"]["return_value"]["city"] == "Paris"


def test_explicit_store_is_used_and_kept(tmp_path, home):
    store = tmp_path / "mine" / "store.db"
    store.parent.mkdir()
    proc = _demo(home, "--store", str(store))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"store: {store}\n" in proc.stdout
    assert store.exists()
    with Store(store) as opened:
        assert len(opened.list_sessions()) == 3


def test_demo_stopped_half_way_cleans_up(home):
    """SIGTERM while the services run: they are stopped, the store removed, status 143."""
    proc = subprocess.Popen(
        [str(CLI), "demo"], env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    lines: List[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # bounded by the demo's own start-up deadlines
            lines.append(line)
            if line.strip().startswith("demo-gateway") and "http://" in line:
                proc.send_signal(signal.SIGTERM)
                break
        rest, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    output = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGTERM, output + err
    assert "lucidic-otel demo: terminated" in err
    match = TEMP_STORE.search(output)
    assert match, output
    _assert_nothing_left(output, Path(match.group(1)).parent)
    assert not Path(match.group(1)).parent.exists()


def test_a_service_that_cannot_start_is_reported_in_one_line(monkeypatch, capsys):
    """The reason, then the service's last output lines; the fake server is stopped."""
    monkeypatch.setattr(
        run, "launcher",
        lambda: [sys.executable, "-c", "import sys; print('boom: no start'); sys.exit(3)", "x"],
    )
    status = run.main(argparse.Namespace(store=None, keep=False))
    out, err = capsys.readouterr()
    assert status == 1
    lines = err.splitlines()
    assert lines[0] == "lucidic-otel demo: demo-agent exited with status 3 before it was ready"
    assert lines[1:] == ["    | boom: no start"], err
    match = TEMP_STORE.search(out)
    assert match, out
    _assert_nothing_left(out, Path(match.group(1)).parent)
    assert not Path(match.group(1)).parent.exists()


def test_without_the_openai_extra_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openai", None)  # what find_spec sees when it is absent
    status = run.main(argparse.Namespace(store=None, keep=False))
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'lucidic-otel[openai]'" in err, err
