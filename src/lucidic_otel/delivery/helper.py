"""Out-of-process delivery: the sender runs in a helper process, off the application's GIL.

Why a process
    Every delivery is one HTTP request per event (the contract has no batch endpoint), and
    each costs about 130 µs of Python CPU in ``http.client``, json and the sender's
    bookkeeping. On a sender thread that time is taken from the application: whenever the
    application thread wants the GIL while a sender thread holds it, it waits, and that shows
    in the p99 of every instrumented call. The outbox is a SQLite file that several processes
    may share (leases keep senders off each other's items), so the sender can just as well run
    in a child process that reads the same file. The application then only writes the outbox,
    as it does with delivery off, and writes one byte to a pipe to say "look now".

Protocol (the application is the parent; the agent reads its stdin, answers on its stdout)
    line 1      JSON: the delivery settings (key, agent id, base URL, store, limits). Over the
                pipe, not argv or the environment, so the key is never in ``ps`` output.
    ``w``       new items were written: look now.
    ``d <s>``   the application is exiting: deliver for at most ``s`` seconds, answer one JSON
                line (settled, counts, halted, last error), exit.
    ``q``       stop now (the application's store fell back to memory), answer, exit.
    EOF         the application is gone (killed, or closed the pipe without a word): deliver
                for at most the exit deadline, exit. SIGTERM means the same.

Lifecycle
    Started when the exporter is built (so that its start-up, about 0.1 s of CPU in the new
    process, is not in the middle of the application's work), or by
    :func:`~lucidic_otel.delivery.sender.notify`
    on the first write of a forked child, in its own session
    (a Ctrl-C or a signal to the application's process group is the application's to handle;
    the application asks the agent to finish through the pipe). A forked child never uses its
    parent's agent: it closes its copies of the pipes and starts its own when it writes. It
    runs as background work (``SCHED_IDLE`` on Linux, else nice 10): on a busy machine the
    application's threads go first. At exit the application waits for its answer only if it
    wrote something; otherwise it just tells it to stop. For its final delivery it leaves
    ``SCHED_IDLE`` (for nice 10), so other busy processes cannot starve that deadline. Where
    an agent cannot be started (not POSIX, a frozen application, an embedding host such as
    uWSGI whose ``sys.executable`` is not a Python, or the start fails), delivery falls back to
    sender threads in the application and says so once; so does a helper that dies, up to
    three times. ``LUCIDIC_DELIVERY=thread`` selects threads on purpose.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Mapping, Optional

from lucidic_otel.config import Settings
from lucidic_otel.outbox.store import Store

logger = logging.getLogger("lucidic_otel.delivery.helper")

# The launcher puts its sitecustomize (auto-instrumentation) first on PYTHONPATH; the agent
# must not instrument itself, or its own HTTP and SQLite calls would become spans.
_AUTO_INSTRUMENTATION_DIR = os.path.join("opentelemetry", "instrumentation", "auto_instrumentation")
_REPLY_MARGIN_S = 2.0  # the agent's stop after a drain, and its start if it was still starting
_STOP_S = 0.5
_POLL_S = 0.5  # how soon the command loop notices SIGTERM
# ``python -c`` puts the working directory first on sys.path; a user's ``json.py`` or
# ``http/`` there must not shadow the standard library in the process that holds the key.
_BOOT = (
    "import sys; del sys.path[0]; "
    "from lucidic_otel.delivery.helper import main; sys.exit(main())"
)
_NICENESS = 10
# The agent's exit status when the store file cannot be used: the application then delivers
# from threads, with its own store's memory fallback, and it is the one that warns.
EXIT_STORE_UNUSABLE = 75


class DeliveryAgent:
    """The application's handle on its delivery process. Never raises."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._proc: Optional[subprocess.Popen] = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._dead = False
        self.woken = False  # whether this process ever wrote something for it to deliver
        self.last_reply: Optional[Dict[str, Any]] = None

    @property
    def store(self) -> Store:
        return self._store

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def halted(self) -> Optional[str]:
        """Why the agent stopped delivering (401/402/403/3xx), from its last reply."""
        reply = self.last_reply or {}
        halted = reply.get("halted")
        return halted if isinstance(halted, str) else None

    @property
    def exit_status(self) -> Optional[int]:
        proc = self._proc
        if proc is None or self._pid != os.getpid():
            return None
        return proc.poll()

    @property
    def alive(self) -> bool:
        proc = self._proc
        return (
            not self._dead and proc is not None and self._pid == os.getpid()
            and proc.poll() is None
        )

    def start(self) -> bool:
        """Start the process; False if it could not be (the caller falls back to threads)."""
        executable = runnable_python()
        if executable is None:
            logger.info(
                "lucidic-otel: no Python interpreter to run a delivery process in (%r); "
                "delivering from threads in this process", sys.executable,
            )
            return False
        config = {
            "store": str(self._store.path),
            "max_bytes": self._store.max_bytes,
            "api_key": self._settings.api_key,
            "agent_id": self._settings.agent_id,
            "base_url": self._settings.base_url,
            "blob_threshold": self._settings.blob_threshold,
            "exit_deadline_s": self._settings.exit_deadline_s,
        }
        proc: Optional[subprocess.Popen] = None
        try:
            proc = subprocess.Popen(
                [executable, "-c", _BOOT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=agent_environment(os.environ),
                close_fds=True,
                start_new_session=True,
            )
            self._proc = proc
            assert proc.stdin is not None
            os.set_blocking(proc.stdin.fileno(), False)
            if self._send((json.dumps(config) + "\n").encode()):
                return True
            raise OSError("the delivery process did not take its settings")
        except Exception as exc:  # noqa: BLE001 - fall back to threads
            logger.warning(
                "lucidic-otel: could not start the delivery process (%s: %s); delivering "
                "from threads in this process instead", type(exc).__name__, exc,
            )
            self._dead = True
            if proc is not None:
                try:
                    proc.kill()
                except OSError:
                    pass
                self._close(wait_s=1.0)
            return False

    def wake(self) -> None:
        """Tell the agent to look now: one small write to a non-blocking pipe."""
        if self._pid != os.getpid() or self._dead:
            return
        self.woken = True
        self._send(b"w\n", quiet_when_full=True)

    def finish(self, deadline_s: float, stop: bool = False) -> Optional[Dict[str, Any]]:
        """Ask the agent to deliver for at most ``deadline_s`` (or to stop now) and exit.

        Returns its reply (None if it did not answer in time or is gone, and always with
        ``stop``, which does not wait). Waits at most ``deadline_s`` plus a small margin.
        """
        proc = self._proc
        if proc is None or self._pid != os.getpid():
            return None
        stop = stop or deadline_s <= 0  # no time to deliver: do not wait for it either
        reply: Optional[Dict[str, Any]] = None
        with self._lock:
            if not self._dead:
                message = b"q\n" if stop else f"d {max(0.0, deadline_s):.3f}\n".encode()
                if self._send(message) and not stop:
                    reply = self._read_reply(deadline_s + _REPLY_MARGIN_S)
                self._dead = True
        self.last_reply = reply
        self._close(wait_s=0.0 if stop else _STOP_S)
        return reply

    def forget(self) -> None:
        """In a forked child: drop this handle without touching the parent's process."""
        proc, self._proc, self._dead = self._proc, None, True
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    try:
                        os.close(stream.fileno())
                    except OSError:
                        pass

    # ------------------------------------------------------------------ internals

    def _send(self, data: bytes, quiet_when_full: bool = False) -> bool:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return False
        try:
            fd = proc.stdin.fileno()  # ValueError once closed (exit raced a wake-up)
            written = 0
            end = time.monotonic() + 1.0
            while written < len(data):
                try:
                    written += os.write(fd, data[written:])
                except BlockingIOError:
                    if quiet_when_full:
                        return True  # the agent has unread wake-ups: it will look anyway
                    if time.monotonic() > end:
                        return False
                    select.select([], [fd], [], 0.05)
            return True
        except (OSError, ValueError):  # the agent is gone, or the pipe closed at exit
            self._dead = True
            return False

    def _read_reply(self, timeout_s: float) -> Optional[Dict[str, Any]]:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return None
        fd = proc.stdout.fileno()
        end = time.monotonic() + timeout_s
        buffer = b""
        while b"\n" not in buffer:
            left = end - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            buffer += chunk
        try:
            reply = json.loads(buffer.split(b"\n", 1)[0])
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None

    def _close(self, wait_s: float) -> None:
        proc = self._proc
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass  # it ends by itself once its own deadline passes


def runnable_python() -> Optional[str]:
    """The interpreter to run the agent with, or None where there is no usable one.

    POSIX only (the pipes are non-blocking and polled with ``select``). Not from a frozen
    application (``sys.executable`` is the application itself) nor from an embedding host such
    as uWSGI (``sys.executable`` is not a Python): starting that would start the application.
    """
    executable = sys.executable
    if os.name != "posix" or getattr(sys, "frozen", False) or not executable:
        return None
    name = os.path.basename(executable).lower()
    if not name.startswith(("python", "pypy")) or not os.access(executable, os.X_OK):
        return None
    return executable


def agent_environment(env: Mapping[str, str]) -> Dict[str, str]:
    """The agent's environment: the application's, without the launcher's auto-instrumentation."""
    out = dict(env)
    path = out.get("PYTHONPATH")
    if path:
        kept = [
            entry for entry in path.split(os.pathsep)
            if not entry.rstrip(os.sep).endswith(_AUTO_INSTRUMENTATION_DIR)
        ]
        if kept:
            out["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            out.pop("PYTHONPATH")
    out["OTEL_SDK_DISABLED"] = "true"
    return out


# ------------------------------------------------------------------------ the agent process


_terminated = threading.Event()


def _on_sigterm(signum: int, frame: Any) -> None:
    # Only a flag: an exception raised from a handler could land anywhere (inside a store
    # transaction, between a drain and its reply). The command loop polls it.
    _terminated.set()


class _Commands:
    """Lines from the application on stdin, read with a timeout so SIGTERM is noticed."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""
        self.closed = False

    def next(self, timeout: float) -> Optional[bytes]:
        """The next line, or None when none came within ``timeout`` (or the pipe closed)."""
        while b"\n" not in self._buffer:
            if self.closed:
                return None
            try:
                ready, _, _ = select.select([self._fd], [], [], timeout)
            except InterruptedError:  # pragma: no cover - retried by PEP 475
                return None
            if not ready:
                return None
            chunk = os.read(self._fd, 65536)
            if not chunk:
                self.closed = True
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line


def lower_priority() -> str:
    """Run as background work: the CPU goes to the application (and everything else) first.

    ``SCHED_IDLE`` where there is one (Linux): the agent then runs only on CPU time nobody else
    wants, so its HTTP work and JSON never stretch the application's calls, even on a machine
    with as many busy threads as cores (``nice`` only lowers a share: at nice 10 a busy agent
    still takes about a tenth of a core the application wanted). An application thread waiting
    for the agent (at exit) leaves its core idle, so the agent then runs at once. Elsewhere,
    nice 10. Returns what was applied.
    """
    idle = getattr(os, "SCHED_IDLE", None)
    if idle is not None and hasattr(os, "sched_setscheduler"):
        try:
            os.sched_setscheduler(0, idle, os.sched_param(0))
            return "SCHED_IDLE"
        except OSError:
            pass
    try:
        os.nice(_NICENESS)
        return f"nice {_NICENESS}"
    except OSError:
        return "unchanged"


def raise_priority_for_exit() -> None:
    """The final delivery has a deadline: leave ``SCHED_IDLE`` (allowed without privileges) so
    that a machine kept busy by other processes cannot starve it; stay at nice 10."""
    other = getattr(os, "SCHED_OTHER", None)
    if other is None or not hasattr(os, "sched_setscheduler"):
        return
    try:
        if os.sched_getscheduler(0) != other:
            os.sched_setscheduler(0, other, os.sched_param(0))
            os.nice(_NICENESS)
    except OSError:
        pass


def _store_unusable(exc: BaseException) -> None:
    logger.debug("lucidic-otel: the delivery process cannot use the store: %s", exc)
    os._exit(EXIT_STORE_UNUSABLE)


def _settings_from(config: Mapping[str, Any]) -> Settings:
    return Settings(
        api_key=str(config["api_key"]),
        agent_id=str(config["agent_id"]),
        base_url=str(config["base_url"]),
        blob_threshold=int(config["blob_threshold"]),
        exit_deadline_s=float(config["exit_deadline_s"]),
    )


def _reply(sender: Any, settled: bool) -> bytes:
    stats = sender.stats
    return (json.dumps({
        "settled": settled,
        "delivered": stats.delivered_total,
        "failed": stats.failed,
        "retried": stats.retried,
        "halted": stats.halted,
        "last_error": stats.last_error,
    }) + "\n").encode()


def main(argv: Optional[List[str]] = None) -> int:
    """The agent process, started by the application (see the module docstring)."""
    from lucidic_otel.delivery.sender import Sender

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    lower_priority()
    commands = _Commands(sys.stdin.fileno())
    first = None
    while first is None and not commands.closed and not _terminated.is_set():
        first = commands.next(_POLL_S)
    try:
        config = json.loads(first or b"null")
        settings = _settings_from(config)
        store = Store(config["store"], max_bytes=int(config["max_bytes"]), delivery_enabled=True)
        store.on_unusable = _store_unusable
    except (ValueError, TypeError, KeyError) as exc:
        logger.error("lucidic-otel: the delivery process got no usable settings (%s)", exc)
        return 2
    sender = Sender(store, settings).start()
    sender.wake()
    deadline = settings.exit_deadline_s
    stop = False
    while not _terminated.is_set():
        line = commands.next(_POLL_S)
        if line is None:
            if commands.closed:
                break  # the application is gone
            continue
        command = line.split()
        if not command:
            continue
        if command[0] == b"w":
            sender.wake()
        elif command[0] == b"d":
            try:
                deadline = max(0.0, float(command[1]))
            except (IndexError, ValueError):
                pass
            break
        elif command[0] == b"q":
            stop = True
            break
    settled = False
    if not stop:
        raise_priority_for_exit()
        settled = sender.drain(deadline)
    sender.stop(timeout_s=_STOP_S)
    try:
        sys.stdout.buffer.write(_reply(sender, settled))
        sys.stdout.buffer.flush()
    except OSError:
        pass  # nobody is listening any more
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
