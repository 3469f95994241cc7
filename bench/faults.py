"""Delivery under backend faults: events created, delivered, retained and lost per scenario.

Each scenario records sessions through the real exporter (real SDK spans into a fresh SQLite
store), then delivers them with the real sender to the strict loopback contract server
(``tests/support/contract_server.py``) while it injects one kind of fault. Afterwards:

  created    events recorded in the outbox;
  delivered  distinct events the backend accepted;
  retained   events still pending in the outbox, to be sent by the next process or
             ``lucidic-otel upload`` (expected only where the backend stayed unusable);
  failed     events the backend rejected, kept aside with the reason;
  lost       created - delivered - retained - failed: must be 0 everywhere.

Time is compressed so a run takes seconds: per-request timeout 1 s, backoff from 50 ms capped
at 1 s (the defaults are 5 s and 0.5 s to 60 s); the ``exit deadline`` column is the drain
deadline of the live phase. Scenarios that leave data behind are followed by an upload row.

    python bench/faults.py            # 4 sessions x 100 tool+LLM pairs (800 events) each
    python bench/faults.py --quick    # 2 x 15 (60 events), for CI

Exit status is non-zero when an event is lost or the contract server saw a violation.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _machine import machine_lines  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from support.contract_server import TRANSIENT_FAULTS, ContractServer, Faults  # noqa: E402

from lucidic_otel.cli import upload  # noqa: E402
from lucidic_otel.config import Settings, load_settings  # noqa: E402
from lucidic_otel.delivery.sender import Sender  # noqa: E402
from lucidic_otel.outbox.store import Store  # noqa: E402
from lucidic_otel.sdk.exporter import LucidicSpanExporter  # noqa: E402
from lucidic_otel.sessions.context import SESSION_ATTRIBUTE  # noqa: E402
from lucidic_otel.sessions.lifecycle import END, INIT, LifecycleJournal  # noqa: E402

TIMEOUT_S = 1.0
COMPRESSED: Dict[str, Any] = dict(
    timeout_s=TIMEOUT_S,
    connect_timeout_s=0.5,
    backoff_base_s=0.05,
    backoff_cap_s=1.0,
    idle_poll_s=0.5,
)
LIVE_DEADLINE_S = 30.0
EXIT_DEADLINE_S = 2.0

KILLED_CHILD = """
    import sys
    from lucidic_otel.config import load_settings
    from lucidic_otel.delivery.sender import Sender
    from lucidic_otel.outbox.store import Store

    store = Store(sys.argv[1])
    settings = load_settings({"LUCIDIC_API_KEY": "test-key", "LUCIDIC_AGENT_ID": "agent-1",
                              "LUCIDIC_BASE_URL": sys.argv[2]})
    sender = Sender(store, settings, timeout_s=5.0, lease_s=2.0, workers=4)
    print("READY", flush=True)
    sender.drain(60)
"""




# ------------------------------------------------------------------------------ recording


class Recorder:
    """Sessions of tool spans wrapping LLM spans, through the real exporter (no delivery)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.journal = LifecycleJournal()
        self.exporter = LucidicSpanExporter(Settings(), store=store, journal=self.journal)
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("bench")

    def session(self, sid: str, pairs: int, content: Optional[str] = None) -> None:
        self.journal.record(INIT, sid, {"session_id": sid, "session_name": f"bench {sid}"})
        with self.tracer.start_as_current_span("agent", attributes={SESSION_ATTRIBUTE: sid}):
            for n in range(pairs):
                tool = {
                    SESSION_ATTRIBUTE: sid,
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": "search",
                }
                with self.tracer.start_as_current_span("tool", attributes=tool):
                    llm: Dict[str, Any] = {
                        SESSION_ATTRIBUTE: sid,
                        "gen_ai.operation.name": "chat",
                        "gen_ai.provider.name": "openai",
                        "gen_ai.request.model": "gpt-4o-mini",
                        "gen_ai.usage.input_tokens": 10 + n,
                        "gen_ai.usage.output_tokens": 5,
                    }
                    if content is not None:
                        llm["gen_ai.input.messages"] = json.dumps(
                            [
                                {
                                    "role": "user",
                                    "parts": [{"type": "text", "content": f"{i} {content}"}],
                                }
                                for i in range(6)
                            ]
                        )
                    with self.tracer.start_as_current_span("chat", attributes=llm):
                        pass
        self.journal.record(END, sid, {"session_id": sid, "is_finished": True})
        self.exporter.force_flush()

    def close(self) -> None:
        self.provider.shutdown()


# ------------------------------------------------------------------------------ scenarios


@dataclass
class Row:
    scenario: str
    created: int
    delivered: int
    retained: int
    failed: int
    duplicates: int
    violations: int
    seconds: float
    deadline: str
    notes: List[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.created - self.delivered - self.retained - self.failed


@dataclass
class Scenario:
    name: str
    faults: Faults = field(default_factory=Faults)
    server: Dict[str, Any] = field(default_factory=dict)
    settings: Dict[str, str] = field(default_factory=dict)
    content: Optional[str] = None
    down: bool = False  # nothing listens on the backend port during the live phase
    recover_after_s: Optional[float] = None  # faults stop after this long
    killed: bool = False  # a first sender process is killed with SIGKILL mid-delivery
    upload_after: bool = False  # the live phase is expected to leave data: upload it
    deadline_s: float = LIVE_DEADLINE_S


def scenarios() -> List[Scenario]:
    slow = TIMEOUT_S + 0.5
    return [
        Scenario("healthy backend"),
        Scenario(
            "30% mixed transient faults",
            Faults(rate=0.3, kinds=TRANSIENT_FAULTS, slow_s=slow, retry_after="0.2"),
        ),
        Scenario(
            "5xx for 2 s, then recovery",
            Faults(rate=1.0, kinds=("500", "502", "503"), retry_after="0.2"),
            recover_after_s=2.0,
        ),
        Scenario(
            "429 with Retry-After (s + date)",
            Faults(rate=0.1, kinds=("429", "429-date"), retry_after="0.3"),
        ),
        Scenario("slow replies past the timeout", Faults(rate=0.1, kinds=("slow",), slow_s=slow)),
        Scenario(
            "connection resets (before/after)", Faults(rate=0.3, kinds=("reset", "reset-after"))
        ),
        Scenario(
            "garbage bodies / garbage HTTP",
            Faults(rate=0.3, kinds=("garbage", "garbage-http", "empty")),
        ),
        Scenario(
            "blob flow + 20% faults (PUT too)",
            Faults(rate=0.2, kinds=TRANSIENT_FAULTS, slow_s=slow, retry_after="0.2"),
            server={"blob_threshold": 1024},
            settings={"LUCIDIC_BLOB_THRESHOLD": "1024"},
            content="lorem ipsum " * 100,
        ),
        Scenario("413 body limit -> blob fallback", Faults(max_body_bytes=2000), content="x" * 200),
        Scenario("backend adopts other session ids", server={"rename_sessions": True}),
        Scenario(
            "kill -9 mid-delivery, restart",
            Faults(rate=1.0, kinds=("slow",), slow_s=3.0),
            killed=True,
        ),
        Scenario("backend down for the whole run", down=True, upload_after=True, deadline_s=3.0),
        Scenario("401 for the whole run", Faults(status=401), upload_after=True, deadline_s=3.0),
        Scenario("402 for the whole run", Faults(status=402), upload_after=True, deadline_s=3.0),
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def event_ids(store: Store, state: Optional[str] = None) -> Set[str]:
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        sql = "SELECT key FROM outbox WHERE kind = 'event'"
        params: tuple = ()
        if state is not None:
            sql += " AND state = ?"
            params = (state,)
        return {key for (key,) in conn.execute(sql, params)}


def settings_for(base_url: str, extra: Dict[str, str]) -> Settings:
    return load_settings(
        {
            "LUCIDIC_API_KEY": "test-key",
            "LUCIDIC_AGENT_ID": "agent-1",
            "LUCIDIC_BASE_URL": base_url,
            **extra,
        }
    )


def run_scenario(scenario: Scenario, work: Path, sessions: int, pairs: int) -> List[Row]:
    path = work / (scenario.name.replace(" ", "_").replace("/", "_") + ".db")
    store = Store(path)
    recorder = Recorder(store)
    for n in range(sessions):
        recorder.session(f"s{n}", pairs, scenario.content)
    recorder.close()
    created = event_ids(store)
    port = free_port()
    rows: List[Row] = []
    started = time.monotonic()
    server: Optional[ContractServer] = None
    if not scenario.down:
        server = ContractServer(port=port, faults=scenario.faults, **scenario.server).start()
    try:
        settings = settings_for(f"http://127.0.0.1:{port}/api", scenario.settings)
        if scenario.killed:
            assert server is not None
            kill_a_sender_mid_delivery(path, server)
            server.set_faults(Faults())
        if scenario.recover_after_s is not None and server is not None:
            live = server

            def recover() -> None:
                time.sleep(scenario.recover_after_s or 0)
                live.set_faults(Faults())

            threading.Thread(target=recover, daemon=True).start()
        sender = Sender(store, settings, **COMPRESSED).start()
        try:
            # A live process: the sender works until the outbox is empty or time is up ...
            deadline = time.monotonic() + scenario.deadline_s
            while time.monotonic() < deadline and store.outbox_counts()["pending"]:
                if sender.halted:
                    break
                time.sleep(0.05)
            # ... then exits, delivering what it still can within the exit deadline.
            sender.drain(EXIT_DEADLINE_S)
        finally:
            sender.stop()
        rows.append(
            measure(scenario.name, store, created, server, started, f"{scenario.deadline_s:g} s")
        )
        if scenario.upload_after:
            if server is not None:
                server.stop()
            server = ContractServer(port=port, **scenario.server).start()
            started = time.monotonic()
            status = run_upload(path, server.base_url)
            row = measure("  ... then lucidic-otel upload", store, created, server, started, "60 s")
            row.notes.append(f"upload exit {status}")
            rows.append(row)
    finally:
        if server is not None:
            server.stop()
        store.close()
    return rows


def kill_a_sender_mid_delivery(path: Path, server: ContractServer) -> None:
    """A sender in another process claims items (2 s leases) and dies with SIGKILL."""
    script = path.with_suffix(".child.py")
    script.write_text(textwrap.dedent(KILLED_CHILD), encoding="utf-8")
    child = subprocess.Popen(
        [sys.executable, str(script), str(path), server.base_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        child.stdout.readline()
        server.wait_for(lambda: len(server.seen) >= 3, 10)
        time.sleep(0.3)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)


def run_upload(path: Path, base_url: str) -> int:
    saved = {
        k: os.environ.get(k) for k in ("LUCIDIC_API_KEY", "LUCIDIC_AGENT_ID", "LUCIDIC_BASE_URL")
    }
    os.environ.update(
        {"LUCIDIC_API_KEY": "test-key", "LUCIDIC_AGENT_ID": "agent-1", "LUCIDIC_BASE_URL": base_url}
    )
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return upload.run(Namespace(store=str(path), deadline=60.0, json=True))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def measure(
    name: str,
    store: Store,
    created: Set[str],
    server: Optional[ContractServer],
    started: float,
    deadline: str,
) -> Row:
    delivered = server.delivered_event_ids() & created if server is not None else set()
    return Row(
        scenario=name,
        created=len(created),
        delivered=len(delivered),
        retained=len(event_ids(store, "pending") - delivered),
        failed=len(event_ids(store, "failed")),
        duplicates=server.duplicates() if server is not None else 0,
        violations=len(server.violations) if server is not None else 0,
        seconds=time.monotonic() - started,
        deadline=deadline,
    )


# ------------------------------------------------------------------------------ main


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run for CI")
    args = parser.parse_args(argv)
    sessions, pairs = (2, 15) if args.quick else (4, 100)

    print("== faults ==")
    for line in machine_lines():
        print(line)
    print(
        f"{sessions} sessions x {pairs} tool+LLM pairs = {sessions * pairs * 2} events per "
        f"scenario; request timeout {TIMEOUT_S:g} s, backoff 50 ms .. 1 s"
    )
    print()
    header = (
        f"{'scenario':<36} {'created':>7} {'delivered':>9} {'retained':>8} {'failed':>6} "
        f"{'lost':>5} {'dups':>5} {'violations':>10} {'deadline':>8} {'seconds':>7}"
    )
    print(header)
    rows: List[Row] = []
    violations: List[str] = []
    with tempfile.TemporaryDirectory(prefix="lucidic-faults-") as tmp:
        for scenario in scenarios():
            for row in run_scenario(scenario, Path(tmp), sessions, pairs):
                rows.append(row)
                notes = f"  {'; '.join(row.notes)}" if row.notes else ""
                print(
                    f"{row.scenario:<36} {row.created:>7} {row.delivered:>9} "
                    f"{row.retained:>8} {row.failed:>6} {row.lost:>5} {row.duplicates:>5} "
                    f"{row.violations:>10} {row.deadline:>8} {row.seconds:>7.1f}{notes}",
                    flush=True,
                )
                if row.violations:
                    violations.append(row.scenario)
    print()
    lost = sum(row.lost for row in rows)
    print(f"lost in total: {lost} (target 0)")
    checks = []
    if lost:
        checks.append(f"{lost} events lost")
    if violations:
        checks.append(f"contract violations in: {', '.join(violations)}")
    print("checks: " + ("ok" if not checks else "; ".join(checks)))
    return 0 if not checks else 1


if __name__ == "__main__":
    sys.exit(main())
