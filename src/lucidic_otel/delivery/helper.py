"""Out-of-process delivery, the application's side: start the helper process and talk to it.

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
    :func:`~lucidic_otel.delivery.supervisor.notify`
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

This module is the application's side (:class:`DeliveryAgent`); the helper process runs
:mod:`lucidic_otel.delivery.helper_main`, which is the only side that imports the sender.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Mapping, Optional

from lucidic_otel.config import Settings
from lucidic_otel.outbox.store import Store

logger = logging.getLogger(__name__)

# The launcher puts its sitecustomize (auto-instrumentation) first on PYTHONPATH; the agent
# must not instrument itself, or its own HTTP and SQLite calls would become spans.
_AUTO_INSTRUMENTATION_DIR = os.path.join("opentelemetry", "instrumentation", "auto_instrumentation")
_REPLY_MARGIN_S = 2.0  # the agent's stop after a drain, and its start if it was still starting
STOP_S = 0.5  # how long the helper's sender gets to record what is in flight
# ``python -c`` puts the working directory first on sys.path; a user's ``json.py`` or
# ``http/`` there must not shadow the standard library in the process that holds the key.
_BOOT = (
    "import sys; del sys.path[0]; "
    "from lucidic_otel.delivery.helper_main import main; sys.exit(main())"
)
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
        config = helper_config(self._store, self._settings)
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
        self._close(wait_s=0.0 if stop else STOP_S)
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


def helper_config(store: Store, settings: Settings) -> Dict[str, Any]:
    """The first line the helper reads: what it needs to deliver ``store`` as this process
    would (read back by :func:`lucidic_otel.delivery.helper_main.settings_from`)."""
    return {
        "store": str(store.path),
        "max_bytes": store.max_bytes,
        "api_key": settings.api_key,
        "agent_id": settings.agent_id,
        "base_url": settings.base_url,
        "blob_threshold": settings.blob_threshold,
        "exit_deadline_s": settings.exit_deadline_s,
    }


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
