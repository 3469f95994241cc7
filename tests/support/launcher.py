"""Run real processes under the real ``opentelemetry-instrument`` launcher.

A distro is only proven by the launcher path: entry points resolved from installed metadata,
``sitecustomize`` start-up, instrumentors applied, spans flushed at exit or on a signal. These
helpers make that path cheap to test and impossible to hang: every wait has a timeout, and a
process that outlives its ``stop()`` timeout is killed together with any children it started.

The parent environment is scrubbed of ``OTEL_*`` and ``LUCIDIC_*`` variables so that a
developer's shell configuration cannot change what a test observes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Sequence, Union

__all__ = [
    "BIN",
    "INSTRUMENT",
    "PYTHON",
    "CapturedProcess",
    "clean_env",
    "instrumented_command",
    "otlp_env",
    "run_instrumented",
    "spawn",
    "spawn_instrumented",
    "stop",
    "wait_ready",
    "write_script",
]

BIN = Path(sys.executable).parent
INSTRUMENT = BIN / "opentelemetry-instrument"
PYTHON = BIN / "python"

Arg = Union[str, "os.PathLike[str]"]

_SCRUBBED_PREFIXES = ("OTEL_", "LUCIDIC_")
_BASE_ENV = {
    "OTEL_PYTHON_DISTRO": "lucidic",
    "OTEL_PYTHON_CONFIGURATOR": "lucidic",
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
    "PYTHONUNBUFFERED": "1",
}
_KILL_WAIT_SECONDS = 5.0
_EXIT_STATUS_WAIT_SECONDS = 1.0


def clean_env(**overrides: str | None) -> dict[str, str]:
    """The current environment without ``OTEL_*``/``LUCIDIC_*``, set up for the lucidic distro.

    ``overrides`` are applied last; a value of None removes that variable.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env.update(_BASE_ENV)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def delivery_env(
    store: Path, base_url: str, api_key: str, agent_id: str, **overrides: str | None
) -> dict[str, str]:
    """:func:`clean_env` for an application that delivers ``store`` to ``base_url``."""
    return clean_env(
        LUCIDIC_STORE_PATH=str(store),
        LUCIDIC_API_KEY=api_key,
        LUCIDIC_AGENT_ID=agent_id,
        LUCIDIC_BASE_URL=base_url,
        **overrides,
    )


def otlp_env(endpoint: str) -> dict[str, str]:
    """Variables that select the stock OTLP/HTTP protobuf trace exporter sending to ``endpoint``.

    The short batch delay keeps tests that wait for spans from a live process fast.
    """
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }


def instrumented_command(args: Sequence[Arg]) -> list[str]:
    """``[opentelemetry-instrument, python, *args]``, both from this interpreter's venv."""
    return [str(INSTRUMENT), str(PYTHON), *(os.fspath(a) for a in args)]


def run_instrumented(
    args: Sequence[Arg],
    env: dict[str, str],
    timeout: float = 60.0,
    cwd: Arg | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` under the launcher to completion and capture its text output.

    Spans flushed by the SDK's atexit hook have reached any receiver by the time this returns.
    """
    return subprocess.run(
        instrumented_command(args),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# Shells start background jobs with SIGINT ignored, children inherit that, and a lifecycle test
# that sends SIGINT must see what an interactive user would. The reset happens in a tiny
# isolated interpreter that then execs the real command (same pid), not in ``preexec_fn``:
# with ``preexec_fn`` CPython runs every ``os.register_at_fork`` child hook between fork and
# exec, and a hook that takes a lock held by another thread hangs the spawn for ever.
_SIGINT_DEFAULT_THEN_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def _with_default_sigint(command: list[str]) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", _SIGINT_DEFAULT_THEN_EXEC, *command]


class CapturedProcess(subprocess.Popen):
    """A ``Popen`` whose merged stdout/stderr is drained by a thread into ``output()``.

    ``command`` is what was asked for; ``args`` also shows the SIGINT-resetting trampoline.

    Draining continuously means a chatty child can never block on a full pipe, and
    ``wait_ready`` can scan lines with a timeout. The child leads its own process group so that
    ``stop()`` can kill workers it forked, too.
    """

    def __init__(self, command: Sequence[Arg], env: dict[str, str], cwd: Arg | None) -> None:
        self.command = [os.fspath(a) for a in command]
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        super().__init__(
            _with_default_sigint(self.command),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._drain, name=f"drain-{self.pid}", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.stdout is not None
        for line in self.stdout:  # ends at EOF, which stop() guarantees by killing the group
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def output(self) -> str:
        """Everything the process has printed so far (stdout and stderr interleaved)."""
        with self._changed:
            return "".join(self._lines)

    def wait_for_line(self, prefix: str, timeout: float) -> str | None:
        """The first line starting with ``prefix``, or None on timeout or end of output."""
        deadline = time.monotonic() + timeout
        scanned = 0
        with self._changed:
            while True:  # bounded: every pass either returns or waits out part of the deadline
                for line in self._lines[scanned:]:
                    if line.startswith(prefix):
                        return line
                scanned = len(self._lines)
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def join_output(self, timeout: float) -> bool:
        """Wait for the drain thread to reach EOF; True once ``output()`` is complete."""
        self._reader.join(timeout)
        return not self._reader.is_alive()


def spawn(command: Sequence[Arg], env: dict[str, str], cwd: Arg | None = None) -> CapturedProcess:
    """Start ``command`` (not instrumented) with captured output; pair with ``stop()``."""
    return CapturedProcess(command, env, cwd)


def spawn_instrumented(
    args: Sequence[Arg], env: dict[str, str], cwd: Arg | None = None
) -> CapturedProcess:
    """Start ``python *args`` under the launcher; pair with ``wait_ready()`` and ``stop()``."""
    return CapturedProcess(instrumented_command(args), env, cwd)


def wait_ready(proc: CapturedProcess, timeout: float = 30.0) -> str:
    """Block until the process prints a ``READY`` line and return the rest of that line.

    Raises ``AssertionError`` with the captured output if the process exits or stays silent,
    because that output is the only clue to why start-up failed.
    """
    line = proc.wait_for_line("READY", timeout)
    if line is None:
        try:  # output may end a moment before the exit status is available
            state = f"exited with {proc.wait(_EXIT_STATUS_WAIT_SECONDS)}"
        except subprocess.TimeoutExpired:
            state = "still running"
        raise AssertionError(f"no READY line within {timeout}s ({state}); output:\n{proc.output()}")
    return line[len("READY") :].strip()


def _kill_group(proc: CapturedProcess) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop(
    proc: CapturedProcess, sig: int = signal.SIGTERM, timeout: float = 10.0
) -> subprocess.CompletedProcess[str]:
    """Send ``sig``, wait up to ``timeout``, and kill the process group if it is still alive.

    Returns the exit status and full output; a return code of ``-SIGKILL`` means the process
    ignored ``sig``. The group is killed in every case, so no test leaves a stray worker.
    """
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait(_KILL_WAIT_SECONDS)
    _kill_group(proc)  # workers the process forked may outlive it and hold the pipe open
    if proc.join_output(_KILL_WAIT_SECONDS) and proc.stdout is not None:
        proc.stdout.close()  # only once drained: closing under the reader would break it
    return subprocess.CompletedProcess(proc.command, proc.returncode, proc.output(), None)


def write_script(tmp_path: Path, name: str, source: str) -> Path:
    """Write dedented ``source`` to ``tmp_path/name`` so tests can keep scripts inline."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(source).lstrip("\n"), encoding="utf-8")
    return path
