"""Process exit: auto-end sessions after their spans, SIGTERM, and forked children.

The SDK only flushes in ``atexit``. Three common exits skip it: a default SIGTERM (Kubernetes,
uvicorn re-raising the signal), and ``os._exit`` in fork/forkserver children (multiprocessing,
pre-fork servers). The SIGTERM handler is installed only over the default disposition, keeps
the signal as the exit status, and exits explicitly as PID 1 where a re-raised default signal
would be ignored. Forked children get an ``os._exit`` that flushes first (bounded), so the
documented worker patterns lose nothing without any user code.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from typing import Any, Callable, Optional

from opentelemetry import trace

from lucidic_otel.config import get_settings
from lucidic_otel.sessions import REGISTRY, flush_spans

logger = logging.getLogger("lucidic_otel")

_installed = False
_exit_hooks: list[Callable[[float], None]] = []
_original_os_exit: Optional[Callable[[int], Any]] = None


def add_exit_hook(hook: Callable[[float], None]) -> None:
    """Run ``hook(deadline_seconds)`` at exit, after sessions ended and spans were flushed.

    The sender uses it to deliver what it can before the process goes.
    """
    _exit_hooks.append(hook)


def finish(deadline_s: Optional[float] = None) -> None:
    """End auto-end sessions after their spans, then run exit hooks. Never raises."""
    deadline = get_settings().exit_deadline_s if deadline_s is None else deadline_s
    try:
        REGISTRY.end_auto_sessions()
        REGISTRY.drain()
        flush_spans()
        for hook in list(_exit_hooks):
            hook(deadline)
    except Exception:
        logger.exception("lucidic-otel: error while finishing at exit")


def _shutdown_provider() -> None:
    shutdown = getattr(trace.get_tracer_provider(), "shutdown", None)
    if shutdown is not None:
        shutdown()


def _bounded(fn: Callable[[], None], seconds: float) -> None:
    """Run ``fn`` on a helper thread and wait at most ``seconds``.

    A signal handler interrupts the main thread wherever it is, possibly holding a lock that
    the exporter needs; doing the work elsewhere with a deadline cannot deadlock the exit.
    """
    worker = threading.Thread(target=fn, name="lucidic-exit-flush", daemon=True)
    worker.start()
    worker.join(seconds)


def _on_sigterm(signum: int, frame: Any) -> None:
    settings = get_settings()

    def work() -> None:
        finish()
        _shutdown_provider()

    _bounded(work, settings.exit_deadline_s + 5.0)
    signal.signal(signum, signal.SIG_DFL)
    if os.getpid() == 1:
        os._exit(128 + signum)
    os.kill(os.getpid(), signum)


def _flushing_exit(status: int) -> Any:
    """``os._exit`` for forked children: flush this child's spans first (bounded)."""
    try:
        _bounded(lambda: (finish(), flush_spans()), get_settings().exit_deadline_s + 5.0)
    except BaseException:
        pass  # exiting regardless: never let telemetry change how the child ends
    assert _original_os_exit is not None
    return _original_os_exit(status)


def _after_fork_in_child() -> None:
    global _original_os_exit
    REGISTRY.after_fork()
    if _original_os_exit is None:
        _original_os_exit = os._exit
        os._exit = _flushing_exit  # type: ignore[assignment]


def install_exit_handlers() -> None:
    """Install the atexit finisher, the SIGTERM handler and the fork hook, once."""
    global _installed
    if _installed:
        return
    _installed = True
    settings = get_settings()
    atexit.register(finish)
    if settings.flush_on_sigterm and threading.current_thread() is threading.main_thread():
        try:
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError, AttributeError):
            logger.debug("lucidic-otel: could not install the SIGTERM handler", exc_info=True)
    if settings.flush_on_fork_exit and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
