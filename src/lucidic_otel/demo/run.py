"""``lucidic-otel demo``: two instrumented services and an LLM, offline, in a few seconds.

The fastest way to believe a distro works is to watch it work on real processes, so the demo
runs the real thing rather than a simulation: a gateway and an agent service, each a separate
process started by the standard ``opentelemetry-instrument`` launcher with this distro, talking
HTTP to each other, and the agent calling the real ``openai`` client against a loopback fake of
the OpenAI API. The gateway opens one session per request; the agent never mentions sessions,
yet its spans land in the gateway's sessions because the session id travels as W3C baggage.
The demo then prints what ``lucidic-otel sessions`` and ``lucidic-otel show`` print.

Everything is local: 127.0.0.1 only, no API key (the distro records into a local store), and a
temporary store that is deleted afterwards unless ``--keep``. Every child process leads its own
process group, every wait has a deadline, and the groups are killed in a ``finally``, so the demo
never leaves a process behind, however it ends.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

HOST = "127.0.0.1"
GATEWAY = "demo-gateway"
AGENT = "demo-agent"
REQUESTS: Tuple[Tuple[str, str], ...] = (
    ("Paris", "What should I pack for a weekend in Paris?"),
    ("Tokyo", "Which neighbourhood of Tokyo is best for food?"),
    ("Lima", "Is Lima worth a stopover?"),
)
READY_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0
# The distro's SIGTERM handler flushes within LUCIDIC_EXIT_DEADLINE (5 s) plus 5 s of margin.
STOP_TIMEOUT_S = 15.0
KILL_WAIT_S = 5.0
# A second safety net for the fake server, after the stdin watch below.
FAKE_SERVER_MAX_S = 600
OUTPUT_LINES_KEPT = 200
TAIL_LINES_SHOWN = 15
INSTALL_HINT = "pip install 'lucidic-otel[openai]'"

# Used when no opentelemetry-instrument script sits next to the interpreter (a --user install,
# say): the launcher's own entry function, run by this interpreter.
_LAUNCHER_CODE = (
    "import sys; from opentelemetry.instrumentation.auto_instrumentation import run; "
    "sys.argv[0] = 'opentelemetry-instrument'; sys.exit(run())"
)


# ``python -m lucidic_otel.testing.fake_openai`` with one addition: like the demo services with
# ``--exit-with-parent``, it stops (by its own SIGTERM handler) when its stdin closes, which
# happens however this runner ends, even by SIGKILL.
_FAKE_SERVER_CODE = """\
import os, signal, sys, threading
def watch():
    try:
        while os.read(0, 4096):
            pass
    except (OSError, ValueError):
        pass
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=watch, daemon=True).start()
from lucidic_otel.testing.fake_openai import main
sys.exit(main(sys.argv[1:]))
"""


class DemoError(Exception):
    """A failure to report in one line, with the output lines that explain it."""

    def __init__(self, reason: str, details: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.details = list(details)


class _SigtermError(Exception):
    """SIGTERM arrived: unwind through the ``finally`` blocks that stop the services."""


# ------------------------------------------------------------------------------ processes


class Service:
    """One child process in its own process group, with its output kept for diagnosis.

    Output is drained continuously by a thread, so a chatty child never blocks on a full pipe
    and ``READY <port>`` can be awaited with a deadline.
    """

    def __init__(self, name: str, command: Sequence[str], env: Dict[str, str], cwd: Path) -> None:
        self.name = name
        self._lines: Deque[str] = collections.deque(maxlen=OUTPUT_LINES_KEPT)
        self._changed = threading.Condition()
        self._eof = False
        self._stopped = False
        self.proc = subprocess.Popen(
            list(command),
            env=env,
            cwd=str(cwd),
            stdin=subprocess.PIPE,  # closed by the OS if this process dies: children watch it
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,
        )
        self._reader = threading.Thread(
            target=self._drain, name=f"demo-drain-{name}", daemon=True
        )
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self._lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def tail(self, count: int = TAIL_LINES_SHOWN) -> List[str]:
        """The last lines the process printed (stdout and stderr interleaved)."""
        with self._changed:
            return list(self._lines)[-count:]

    def wait_ready(self, timeout: float) -> int:
        """The port from the ``READY <port>`` line; raises :class:`DemoError` otherwise."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self._lines:
                    parts = line.split()
                    if len(parts) == 2 and parts[0] == "READY" and parts[1].isdigit():
                        return int(parts[1])
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.5))
        try:
            status = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            raise DemoError(
                f"{self.name} did not start within {timeout:.0f}s", self.tail()
            ) from None
        raise DemoError(f"{self.name} exited with {describe_status(status)} before it was ready",
                        self.tail())

    def terminate(self) -> None:
        """Ask the whole group to stop (SIGTERM): the distro's handler flushes spans first."""
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)

    def wait_stopped(self, timeout: float) -> Tuple[Optional[int], bool]:
        """(exit status, whether it had to be killed). Kills the group on timeout."""
        try:
            return self.proc.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            try:
                return self.proc.wait(timeout=KILL_WAIT_S), True
            except subprocess.TimeoutExpired:
                return None, True

    def kill(self) -> None:
        """Last resort, always called: kill what is left of the group and reap the leader."""
        if self._stopped:
            return
        self._stopped = True
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=KILL_WAIT_S)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._reader.join(timeout=2.0)

    def _signal_group(self, signum: int) -> None:
        # The child called setsid(), so its pid is its group id; the group also holds anything
        # it started. A group whose members are all gone raises ProcessLookupError.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)


def describe_status(status: Optional[int]) -> str:
    """'status 1' or 'signal SIGTERM', as a person reads an exit status."""
    if status is None:
        return "no exit status"
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"status {status}"


def launcher() -> List[str]:
    """``opentelemetry-instrument <this python>``: the launcher of this installation."""
    script = Path(sys.executable).parent / "opentelemetry-instrument"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), sys.executable]
    return [sys.executable, "-c", _LAUNCHER_CODE, sys.executable]


def clean_env() -> Dict[str, str]:
    """This environment without ``OTEL_*``/``LUCIDIC_*``: the user's own settings (an API key,
    an OTLP endpoint, a disabled instrumentation) must not change or leak out of the demo."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LUCIDIC_"))}


def service_env(service_name: str, store: Path) -> Dict[str, str]:
    """The launcher settings of one demo service: our distro, local store only, fast batches."""
    env = clean_env()
    env.update({
        "OTEL_PYTHON_DISTRO": "lucidic",
        "OTEL_PYTHON_CONFIGURATOR": "lucidic",
        "OTEL_SERVICE_NAME": service_name,
        "OTEL_TRACES_EXPORTER": "lucidic",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "LUCIDIC_STORE_PATH": str(store),
        "PYTHONUNBUFFERED": "1",
    })
    return env


# ------------------------------------------------------------------------------- the demo


def say(text: str = "") -> None:
    """Progress goes out at once: each step takes a moment, and the user is watching."""
    print(text, flush=True)


def choose_store(args: argparse.Namespace, workdir: Path) -> Tuple[Path, bool]:
    """(store path, whether it is the demo's own temporary store).

    The demo never writes into the user's real store unless ``--store`` names it.
    """
    given = getattr(args, "store", None)
    if given is not None:
        return Path(given).expanduser(), False
    return workdir / "store.db", True


def post_json(url: str, payload: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    """POST ``payload`` and return the JSON reply; raises :class:`DemoError` on failure."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", errors="replace")
        raise DemoError(
            f"the gateway answered {exc.code}: {' '.join(detail.split())[:300]}"
        ) from None
    except (OSError, ValueError) as exc:
        raise DemoError(f"the gateway did not answer: {exc}") from exc
    if not isinstance(reply, dict):
        raise DemoError(f"the gateway answered with unexpected JSON: {str(reply)[:200]}")
    return reply


def send_requests(port: int) -> List[str]:
    """Send the demo's requests one by one; returns the session id of each."""
    session_ids = []
    for number, (city, question) in enumerate(REQUESTS, start=1):
        reply = post_json(
            f"http://{HOST}:{port}/chat", {"city": city, "question": question}, REQUEST_TIMEOUT_S
        )
        session_id = reply.get("session_id")
        if not isinstance(session_id, str):
            raise DemoError(f"request {number} came back without a session id: {reply}")
        session_ids.append(session_id)
        answer = " ".join(str(reply.get("weather") or reply.get("answer") or "").split())
        say(f"      request {number} ({city}): {answer}")
        say(f"                 session {session_id}")
    return session_ids


def start(
    name: str, command: List[str], env: Dict[str, str], cwd: Path, services: List[Service]
) -> int:
    """Start one service, register it for clean-up first, then wait for its port."""
    service = Service(name, command, env, cwd)
    services.append(service)
    return service.wait_ready(READY_TIMEOUT_S)


def stop_all(services: List[Service]) -> None:
    """SIGTERM every service at once, wait for each, and check how each one ended.

    The instrumented services end by the re-raised SIGTERM after the distro's handler flushed
    their spans (or with 0); anything else, or needing SIGKILL, is a failure worth reporting.
    """
    for service in services:
        service.terminate()
    problems = []
    for service in services:
        status, killed = service.wait_stopped(STOP_TIMEOUT_S)
        if killed:
            problems.append((f"{service.name} did not stop within {STOP_TIMEOUT_S:.0f}s of "
                             "SIGTERM and was killed", service))
        elif status not in (0, -signal.SIGTERM):
            problems.append((f"{service.name} ended with {describe_status(status)}", service))
        else:
            say(f"      {service.name}: stopped ({describe_status(status)})")
    if problems:
        reason, service = problems[0]
        raise DemoError(reason, service.tail())


def check_sessions(store: Path, session_ids: List[str]) -> str:
    """Check that every request's session crossed both services and recorded LLM calls;
    return the first one, to show.

    The agent's spans join the gateway's sessions only through baggage: a session without
    them means propagation broke, which is exactly what the demo must not hide.
    """
    from lucidic_otel.outbox.store import Store

    with Store(store) as opened:
        listed = {s["session_id"]: s for s in opened.list_sessions(limit=len(session_ids) + 50)}
    wanted = {GATEWAY, AGENT}
    for session_id in session_ids:
        session = listed.get(session_id)
        if session is None:
            raise DemoError(f"session {session_id} is not in the store {store}")
        services = set(session.get("services") or [])
        if not wanted <= services:
            raise DemoError(
                f"session {session_id} has spans from {', '.join(sorted(services)) or 'nothing'}"
                f", not from both {GATEWAY} and {AGENT}: the session did not cross services"
            )
        if not session.get("llm_calls"):
            raise DemoError(
                f"session {session_id} recorded no LLM call: is the OpenAI instrumentation "
                f"installed? ({INSTALL_HINT})"
            )
    return session_ids[0]


def show_tables(store: Path, session_id: str) -> None:
    """Print exactly what the two CLI commands print for this store."""
    from lucidic_otel.cli.main import main as cli_main

    say(f"\n$ lucidic-otel sessions --store {store}")
    if cli_main(["sessions", "--store", str(store)]) != 0:
        raise DemoError("`lucidic-otel sessions` failed (see the line above)")
    say(f"\n$ lucidic-otel show {session_id} --store {store}")
    if cli_main(["show", session_id, "--store", str(store)]) != 0:
        raise DemoError("`lucidic-otel show` failed (see the line above)")


def run_demo(store: Path, workdir: Path, services: List[Service]) -> None:
    """Start, exercise and stop the services, then show what was recorded."""
    if store != workdir / "store.db":
        from lucidic_otel.cli.doctor import StoreUnreadableError, probe_store

        try:
            probe_store(store)  # a user's --store: refuse a bad one before starting anything
        except StoreUnreadableError as exc:
            raise DemoError(str(exc)) from None
    launch = launcher()
    say("[1/5] starting the offline OpenAI-compatible server")
    fake_port = start(
        "fake OpenAI server",
        [sys.executable, "-c", _FAKE_SERVER_CODE, "--port", "0",
         "--max-seconds", str(FAKE_SERVER_MAX_S)],
        clean_env(), workdir, services,
    )
    say(f"      http://{HOST}:{fake_port}/v1")

    say(f"[2/5] starting {AGENT} and {GATEWAY} under opentelemetry-instrument")
    agent_port = start(
        AGENT,
        [*launch, "-m", "lucidic_otel.demo.agent", "--exit-with-parent",
         "--openai-base-url", f"http://{HOST}:{fake_port}/v1"],
        service_env(AGENT, store), workdir, services,
    )
    say(f"      {AGENT}    http://{HOST}:{agent_port}  (openai client, a tool, no Lucidic code)")
    gateway_port = start(
        GATEWAY,
        [*launch, "-m", "lucidic_otel.demo.gateway", "--exit-with-parent",
         "--agent-url", f"http://{HOST}:{agent_port}"],
        service_env(GATEWAY, store), workdir, services,
    )
    say(f"      {GATEWAY}  http://{HOST}:{gateway_port}  (one with_lucidic session per request)")

    say(f"[3/5] sending {len(REQUESTS)} requests to the gateway")
    session_ids = send_requests(gateway_port)

    say("[4/5] stopping the services (SIGTERM: the distro flushes their spans first)")
    stop_all(list(reversed(services)))

    say("[5/5] reading the local store")
    shown = check_sessions(store, session_ids)
    show_tables(store, shown)
    say()
    say(f"Every span above carries the session id. The {AGENT} spans got it from the W3C baggage")
    say(f"that the gateway's urllib call sent; {AGENT} has no Lucidic code. The gateway's own")
    say("`POST /chat` server span started before with_lucidic opened the session, so it stays")
    say("outside it (the 'not recorded here' parent).")


@contextlib.contextmanager
def sigterm_unwinds():
    """Turn SIGTERM into an exception while the demo runs, so its ``finally`` blocks stop the
    services; a default SIGTERM would end this process and orphan them."""
    installed = False
    previous: Any = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)
        if previous is signal.SIG_DFL:

            def raise_terminated(signum: int, frame: Any) -> None:
                raise _SigtermError()

            signal.signal(signal.SIGTERM, raise_terminated)
            installed = True
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)


def missing_openai_extra() -> Optional[str]:
    """What of the ``[openai]`` (or ``[openai-v2]``) extra is missing, or None.

    Checked without importing ``openai`` (half a second): the package must be findable and an
    ``openai`` instrumentor registered, or the agent would run but record no LLM call.
    """
    if importlib.util.find_spec("openai") is None:
        return "the openai package"
    from importlib.metadata import entry_points

    if not any(ep.name == "openai" for ep in entry_points(group="opentelemetry_instrumentor")):
        return "an OpenAI instrumentation"
    return None


def fail(reason: str, details: Sequence[str] = ()) -> None:
    print(f"lucidic-otel demo: {' '.join(reason.split())}", file=sys.stderr)
    for line in details:
        print(f"    | {line}", file=sys.stderr)
    sys.stderr.flush()


def main(args: argparse.Namespace) -> int:
    """Run the demo; 0 on success, 1 with a one-line reason on failure, 2 without the extra."""
    missing = missing_openai_extra()
    if missing:
        fail(f"the demo needs the OpenAI extra ({missing} is missing): {INSTALL_HINT}")
        return 2
    started = time.monotonic()
    keep = bool(getattr(args, "keep", False))
    # The services' working directory (the launcher puts it on sys.path, so not the user's
    # current directory, where any stray module could shadow a real one) and the temporary
    # store's home.
    workdir = Path(tempfile.mkdtemp(prefix="lucidic-otel-demo-"))
    store, temporary = choose_store(args, workdir)
    services: List[Service] = []
    status = 1
    try:
        with sigterm_unwinds():
            say("lucidic-otel demo: a gateway and an agent service, each under "
                "opentelemetry-instrument, one LLM, all offline on 127.0.0.1")
            note = " (temporary)" if temporary and not keep else ""
            say(f"store: {store}{note}")
            say()
            try:
                run_demo(store, workdir, services)
            finally:
                for service in services:
                    service.kill()
        status = 0
    except DemoError as exc:
        fail(str(exc), exc.details)
    except KeyboardInterrupt:
        fail("interrupted")
        status = 130
    except _SigtermError:
        fail("terminated")
        status = 128 + signal.SIGTERM
    finally:
        if not (temporary and keep):
            shutil.rmtree(workdir, ignore_errors=True)
    if status == 0:
        say()
        say(f"Done in {time.monotonic() - started:.1f}s.")
        if temporary and not keep:
            say("The temporary store was deleted; keep it with: lucidic-otel demo --keep")
            say("(then open its sessions in the browser with: lucidic-otel ui --store PATH)")
        else:
            say(f"The store is at {store}; look again with: "
                f"lucidic-otel sessions --store {store}")
            say(f"or open its sessions in the browser: lucidic-otel ui --store {store}")
    elif temporary and keep:
        print(f"lucidic-otel demo: the store is kept at {store}", file=sys.stderr)
    return status
