"""The README's "three ways to scope work", run as a user would run them.

Each program in ``examples/`` is run with the command the README section gives for it (under
the real ``opentelemetry-instrument`` launcher, or a plain ``python`` where the README says that
works too), with nothing but a temporary local store. Then the store is read back, through
the ``lucidic-otel sessions --json`` console script a user would run and through
:class:`lucidic_otel.outbox.store.Store`, to check what the README promises: which sessions exist,
which spans are in each, and which are ended and which are still open.

The README cannot drift from what runs here: every code block of its section must be a
verbatim excerpt of the example file it names, every example file must be shown and run, and
the commands it gives must be exactly the commands these tests run.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from lucidic_otel.outbox.store import SpanRecord, Store
from tests.support.launcher import BIN, INSTRUMENT, PYTHON, clean_env

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
EXAMPLES = REPO / "examples"
SECTION_START = "## Sessions: three ways to scope work\n"
SECTION_END = "| call | what it does |"

PER_REQUEST = "opentelemetry-instrument python examples/per_request.py"
ONE_SHOT = "opentelemetry-instrument python examples/one_shot.py"
ONE_SHOT_PLAIN = "python examples/one_shot.py"
QUEUE_CONSUMER = "opentelemetry-instrument python examples/queue_consumer.py"
COMMANDS = {PER_REQUEST, ONE_SHOT, ONE_SHOT_PLAIN, QUEUE_CONSUMER}

_LINK = re.compile(r"\(examples/(\w+\.py)\)")
_CODE_BLOCK = re.compile(r"^```python\n(.*?)^```\n", re.S | re.M)
_SKIPPED_CONFIGURATOR = re.compile(
    r"Configuration of \w+ not loaded because lucidic is set by OTEL_PYTHON_CONFIGURATOR"
)
_COMMAND = re.compile(r"^    ((?:opentelemetry-instrument )?python examples/\S+)", re.M)


# --- the README section -------------------------------------------------------------------


def readme_section(text: str) -> str:
    start = text.index(SECTION_START)
    return text[start : text.index(SECTION_END, start)]


def excerpts(section: str) -> list[tuple[str, str]]:
    """(example file name, code) for each code block, named by the last link before it."""
    found = []
    for block in _CODE_BLOCK.finditer(section):
        links = _LINK.findall(section, 0, block.start())
        assert links, f"this README code block names no examples/ file:\n{block.group(1)}"
        found.append((links[-1], block.group(1)))
    return found


def is_verbatim_excerpt(code: str, source: str) -> bool:
    """True when the lines of ``code`` are consecutive lines of ``source``, unchanged."""
    want = code.splitlines()
    have = source.splitlines()
    return bool(want) and any(
        have[i : i + len(want)] == want for i in range(len(have) - len(want) + 1)
    )


def test_readme_section_shows_each_example_as_verbatim_excerpts():
    section = readme_section(README.read_text())
    shown = excerpts(section)
    assert {name for name, _ in shown} == {p.name for p in EXAMPLES.glob("*.py")}
    for name, code in shown:
        assert "lucidic_otel." in code, f"the {name} excerpt shows no lucidic_otel call"
        assert is_verbatim_excerpt(code, (EXAMPLES / name).read_text()), (
            f"this README excerpt is not a verbatim part of examples/{name}:\n{code}"
        )


def test_excerpt_check_catches_an_edited_a_reordered_and_an_empty_excerpt():
    source = "def f():\n    a = 1\n    b = 2\n    return a + b\n"
    assert is_verbatim_excerpt("    a = 1\n    b = 2\n", source)
    assert not is_verbatim_excerpt("    a = 1\n    b = 3\n", source)
    assert not is_verbatim_excerpt("    b = 2\n    a = 1\n", source)
    assert not is_verbatim_excerpt("a = 1\nb = 2\n", source)  # indentation counts
    assert not is_verbatim_excerpt("", source)


def test_readme_and_examples_readme_give_exactly_the_commands_ci_runs():
    assert set(_COMMAND.findall(readme_section(README.read_text()))) == COMMANDS
    assert set(_COMMAND.findall((EXAMPLES / "README.md").read_text())) == COMMANDS


def test_fastapi_instrumentation_pin_in_the_readmes_is_the_pinned_set():
    pins = re.findall(r'"(opentelemetry-instrumentation-fastapi==[^"]+)"',
                      (REPO / "pyproject.toml").read_text())
    assert len(pins) == 1, pins
    assert f"'{pins[0]}'" in readme_section(README.read_text())
    assert f"'{pins[0]}'" in (EXAMPLES / "README.md").read_text()


# --- running the examples -----------------------------------------------------------------


def run(command: str, store: Path) -> subprocess.CompletedProcess[str]:
    """Run a README command from the repository root, as a user would type it."""
    words = command.split()
    argv = [
        {"opentelemetry-instrument": str(INSTRUMENT), "python": str(PYTHON)}.get(w, w)
        for w in words
    ]
    if words[0] == "python":  # no launcher: its variables would mean nothing to a user here
        env = clean_env(OTEL_PYTHON_DISTRO=None, OTEL_PYTHON_CONFIGURATOR=None)
    else:
        env = clean_env(OTEL_PYTHON_DISTRO="lucidic")
    env["LUCIDIC_STORE_PATH"] = str(store)
    proc = subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A clean run says nothing on stderr: no traceback, no "lucidic-otel: ..." warning. The one
    # line allowed is the launcher's own note that opentelemetry-distro's configurator (a test
    # dependency) was skipped for ours.
    noise = [
        line for line in proc.stderr.splitlines()
        if line.strip() and not _SKIPPED_CONFIGURATOR.fullmatch(line)
    ]
    assert noise == [], proc.stderr
    return proc


def cli_sessions(store: Path) -> dict[str, dict]:
    """``lucidic-otel sessions --json``, by session id."""
    proc = subprocess.run(
        [str(BIN / "lucidic-otel"), "sessions", "--json"],
        env=clean_env(LUCIDIC_STORE_PATH=str(store)),
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {s["session_id"]: s for s in json.loads(proc.stdout)}


def names(spans: list[SpanRecord]) -> Counter:
    return Counter(s.name for s in spans)


def assert_stamped(spans: list[SpanRecord], session_id: str) -> None:
    for span in spans:
        assert span.attributes.get("lucidic.session_id") == session_id, span
        assert span.attributes.get("session.id") == session_id, span


def test_per_request_conversation_sessions_end_only_when_the_app_ends_them(tmp_path):
    store_path = tmp_path / "store.db"
    proc = run(PER_REQUEST, store_path)
    assert "trip-42 ended: True" in proc.stdout, proc.stdout

    sessions = cli_sessions(store_path)
    assert set(sessions) == {"trip-42", "support-7"}
    assert sessions["trip-42"]["status"] == "ok"  # ended by end_session(is_successful=True)
    assert sessions["support-7"]["status"] == "open"  # with_session never ended it

    with Store(store_path) as store:
        trip = store.session_spans("trip-42")
        support = store.session_spans("support-7")
        sessionless = store.session_spans(None)
    assert_stamped(trip, "trip-42")
    assert_stamped(support, "support-7")
    own = {"agent turn", "summarise conversation"}
    assert {n: c for n, c in names(trip).items() if n in own} == {
        "agent turn": 2,
        "summarise conversation": 1,
    }
    assert {n: c for n, c in names(support).items() if n in own} == {"agent turn": 1}
    # The server span FastAPI makes for each request joined the session its handler opened,
    # and each agent turn is its child.
    for spans, requests in ((trip, 3), (support, 1)):
        servers = {s.span_id: s for s in spans if s.kind == "SERVER"}
        assert len(servers) == requests, [(s.name, s.kind) for s in spans]
        for turn in (s for s in spans if s.name == "agent turn"):
            assert servers[turn.parent_span_id].name == "POST /chat"
    assert [s.attributes["chat.message"] for s in support if s.name == "agent turn"] == ["Hello"]
    # The script's own four client calls belong to no conversation; nor does the ASGI
    # "http receive" span, which ended before the handler opened the session (Known limits).
    assert {(s.name, s.kind) for s in sessionless} <= {
        ("POST", "CLIENT"),
        ("POST /chat http receive", "INTERNAL"),
    }, names(sessionless)
    assert names(sessionless)["POST"] == 4


@pytest.mark.parametrize("command", [ONE_SHOT, ONE_SHOT_PLAIN], ids=["launcher", "plain-python"])
def test_one_shot_is_one_named_session_ended_after_its_spans(tmp_path, command):
    store_path = tmp_path / "store.db"
    proc = run(command, store_path)
    match = re.search(r"^session (\S+)$", proc.stdout, re.M)
    assert match, proc.stdout
    sid = match.group(1)
    assert "answers {'capital of France': 'Paris', 'capital of Japan': 'Tokyo'}" in proc.stdout

    listed = cli_sessions(store_path)[sid]
    # with_lucidic records the outcome: the function returned, so the session is "ok"
    assert (listed["name"], listed["status"], listed["spans"]) == ("nightly eval", "ok", 3)
    with Store(store_path) as store:
        (session,) = store.list_sessions()
        spans = store.session_spans(sid)
        events = store.session_events(sid)
        sessionless = store.session_spans(None)
    assert session["session_id"] == sid
    assert session["name"] == "nightly eval" and session["tags"] == ["eval"]
    assert session["status"] == "ok" and session["is_successful"] is True
    assert names(spans) == {"agent run": 1, "execute_tool lookup": 2}
    assert_stamped(spans, sid)
    (run_span,) = (s for s in spans if s.name == "agent run")
    assert all(s.parent_span_id == run_span.span_id for s in spans if s is not run_span)
    assert session["ended_ns"] >= max(s.end_ns for s in spans)  # ended after its spans
    assert [e.body["type"] for e in events] == ["function_call", "function_call"]
    assert sessionless == []


def test_queue_consumer_binds_one_session_per_order_and_ends_each(tmp_path):
    store_path = tmp_path / "store.db"
    run(QUEUE_CONSUMER, store_path)

    sessions = cli_sessions(store_path)
    assert {sid: s["status"] for sid, s in sessions.items()} == {
        "order-1": "ended",
        "order-2": "ended",
        "order-3": "ended",
    }
    expected = {
        "order-1": ["order charge", "order ship"],
        "order-2": ["order charge", "order ship"],
        "order-3": ["order charge"],
    }
    with Store(store_path) as store:
        recorded = {sid: store.session_spans(sid) for sid in expected}
        sessionless = store.session_spans(None)
    for sid, spans in recorded.items():
        assert [s.name for s in spans] == expected[sid], sid
        assert_stamped(spans, sid)
        assert all(s.name == f"order {s.attributes['order.step']}" for s in spans)
        assert all(s.parent_span_id is None for s in spans)  # detached roots, no parent span
    # clear_active_session(token) restored "no session": the consumer's own span after the last
    # message did not land in order-2, the session of that message.
    assert [(s.name, s.attributes.get("messages.consumed")) for s in sessionless] == [
        ("consumer stats", 5)
    ]
