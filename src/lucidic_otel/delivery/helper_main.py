"""The helper process itself: a thread sender driven by a pipe from the application.

Started by :class:`~lucidic_otel.delivery.helper.DeliveryAgent` (see that module for why a
process, the pipe protocol and the lifecycle). It reads its settings from the first line on
stdin, delivers the store the application writes, and answers the exit request with one JSON
line. It never raises into its parent: a problem ends it, and the application delivers from
threads instead.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import sys
import threading
from typing import Any, List, Mapping, Optional, Tuple

from lucidic_otel.config import Settings
from lucidic_otel.delivery.helper import EXIT_STORE_UNUSABLE, STOP_S
from lucidic_otel.delivery.thread_sender import Sender
from lucidic_otel.outbox.store import Store

logger = logging.getLogger(__name__)

_POLL_S = 0.5  # how soon the command loop notices SIGTERM
_NICENESS = 10

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


def settings_from(config: Mapping[str, Any]) -> Settings:
    """The settings :func:`~lucidic_otel.delivery.helper.helper_config` sent."""
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


def _first_line(commands: _Commands) -> Optional[bytes]:
    first = None
    while first is None and not commands.closed and not _terminated.is_set():
        first = commands.next(_POLL_S)
    return first


def _open(first: Optional[bytes]) -> Optional[Tuple[Settings, Store]]:
    """The settings and the store from the first line, or None (said once) if unusable."""
    try:
        config = json.loads(first or b"null")
        settings = settings_from(config)
        store = Store(config["store"], max_bytes=int(config["max_bytes"]), delivery_enabled=True)
        store.on_unusable = _store_unusable
    except (ValueError, TypeError, KeyError) as exc:
        logger.error("lucidic-otel: the delivery process got no usable settings (%s)", exc)
        return None
    return settings, store


def _serve(sender: Sender, commands: _Commands, deadline: float) -> Tuple[float, bool]:
    """Wake the sender on each ``w`` until the application asks to finish (or is gone).

    Returns the deadline of the final delivery and whether to skip it (``q``).
    """
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
            return _deadline(command, deadline), False
        elif command[0] == b"q":
            return deadline, True
    return deadline, False


def _deadline(command: List[bytes], default: float) -> float:
    try:
        return max(0.0, float(command[1]))
    except (IndexError, ValueError):
        return default


def main(argv: Optional[List[str]] = None) -> int:
    """The agent process, started by the application (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    lower_priority()
    commands = _Commands(sys.stdin.fileno())
    opened = _open(_first_line(commands))
    if opened is None:
        return 2
    settings, store = opened
    sender = Sender(store, settings).start()
    sender.wake()
    deadline, stop = _serve(sender, commands, settings.exit_deadline_s)
    settled = False
    if not stop:
        raise_priority_for_exit()
        settled = sender.drain(deadline)
    sender.stop(timeout_s=STOP_S)
    try:
        sys.stdout.buffer.write(_reply(sender, settled))
        sys.stdout.buffer.flush()
    except OSError:
        pass  # nobody is listening any more
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
