"""Process exit: one sequence (:func:`finish`) that every way out of the process goes through.

The sequence, in order: end the auto-end sessions (their end records follow their spans),
flush the span pipeline, then let delivery deliver what the outbox holds within the deadline.
It runs from ``atexit``, from the SIGTERM handler (or the SIGTERM thread of a multiprocessing
worker) and from the flushing ``os._exit`` of forked children (:mod:`.fork`).

The SDK only flushes in ``atexit``. Three common exits skip it: a default SIGTERM (Kubernetes,
uvicorn re-raising the signal), and ``os._exit`` in fork/forkserver children (multiprocessing,
pre-fork servers). The SIGTERM handler is installed only over the default disposition, keeps
the signal as the exit status, and exits explicitly as PID 1 where a re-raised default signal
would be ignored. Forked children get an ``os._exit`` that flushes first (bounded), so the
documented worker patterns lose nothing without any user code.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Optional

from opentelemetry import trace

from lucidic_otel.config import get_settings
from lucidic_otel.launcher import fork
from lucidic_otel.sessions.lifecycle import REGISTRY, flush_spans

logger = logging.getLogger(__name__)

_installed = False


def finish(deadline_s: Optional[float] = None) -> None:
    """The exit sequence, in order; never raises.

    1. End the auto-end sessions (their end records follow their spans).
    2. Flush the span pipeline, so every finished span reached the exporter.
    3. Deliver what the outbox holds within the deadline (only if this process started
       delivery: the sender module is imported by the first sender, so an absent module means
       there is nothing of ours to deliver).
    """
    deadline = get_settings().exit_deadline_s if deadline_s is None else deadline_s
    try:
        REGISTRY.end_auto_sessions()
        REGISTRY.drain()
        flush_spans()
        delivery = sys.modules.get("lucidic_otel.delivery.sender")
        if delivery is not None:
            delivery.deliver_at_exit(deadline)
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


# Code that may hold, on the interrupted main thread, a lock the flush needs: the SDK's
# processors and exporters (a BatchSpanProcessor export holds a non-reentrant lock), our
# export path, logging's handler locks and the import lock.
_LOCK_HOLDING_MODULES = (
    "opentelemetry.sdk",
    "opentelemetry.exporter",
    "lucidic_otel.sessions.lifecycle",
    "lucidic_otel.sdk.exporter",
    "lucidic_otel.outbox",  # the store and its modules (db, writes, queue, ...)
    "lucidic_otel.delivery",  # supervisor, thread sender, dispatcher, policy
    "logging",
    "importlib._bootstrap",
)
_MAX_FRAMES = 500
_EXIT_SEQUENCE_FRAMES = {(__name__, "finish"), (fork.__name__, "_flushing_exit")}


def _interrupted_inside_telemetry(frame: Any) -> bool:
    """True when the signal stopped the main thread inside code that may hold a flush lock.

    Then the handler must not wait for the flush: the flush would wait for that very lock,
    which the main thread only releases once the handler returns (observed: a spawn pool
    worker that was flushing at exit when ``Pool.terminate()`` sent SIGTERM hung for the whole
    deadline and lost the batch it was exporting).
    """
    for _ in range(_MAX_FRAMES):
        if frame is None:
            return False
        module = frame.f_globals.get("__name__", "")
        if module.startswith(_LOCK_HOLDING_MODULES) or (
            (module, frame.f_code.co_name) in _EXIT_SEQUENCE_FRAMES
        ):
            return True
        frame = frame.f_back
    return False


class _SigtermState:
    """Whether a SIGTERM is being handled, and whether its flush is done (reset at fork)."""

    def __init__(self) -> None:
        self.started = False
        self.flushed = threading.Event()


_sigterm = _SigtermState()
# The pid whose fork hooks have all run. In a child that is still running them, the batch
# processors may still hold the parent's queued spans (observed: an idle pool worker that
# ``Pool.terminate()`` signalled while it was being forked exported its parent's spans again).
_ready_pid = os.getpid()


def _finish_and_shut_down() -> None:
    finish()
    _shutdown_provider()


def _die_of(signum: int) -> None:
    """End the process with ``signum`` as its status, as the default disposition would."""
    signal.signal(signum, signal.SIG_DFL)
    if os.getpid() == 1:  # PID 1 ignores a default-action signal sent to itself
        os._exit(128 + signum)
    os.kill(os.getpid(), signum)


def _flush_then_resignal(signum: int, seconds: float) -> None:
    _bounded(_finish_and_shut_down, seconds)
    _sigterm.flushed.set()
    # Back on the main thread, the handler now ends the process. Sent to the main thread
    # itself: a process-wide signal may land on this thread and leave a main thread that is
    # blocked in a wait (a pool worker on its queue) asleep, with the handler never run.
    try:
        signal.pthread_kill(threading.main_thread().ident or 0, signum)
    except (AttributeError, ValueError, OSError):
        os.kill(os.getpid(), signum)


def _on_sigterm(signum: int, frame: Any) -> None:
    if os.getpid() != _ready_pid:
        _die_of(signum)  # a child still being forked has no spans of its own to flush
        return
    if _sigterm.flushed.is_set():
        _die_of(signum)
        return
    if _sigterm.started:
        return  # a repeated signal while the first one is being handled
    _sigterm.started = True
    seconds = get_settings().exit_deadline_s + 5.0
    if _interrupted_inside_telemetry(frame):
        # Let the main thread finish what it holds; the helper flushes once the lock is free
        # and signals again.
        threading.Thread(
            target=_flush_then_resignal,
            args=(signum, seconds),
            name="lucidic-sigterm",
            daemon=True,
        ).start()
        return
    _bounded(_finish_and_shut_down, seconds)
    _sigterm.flushed.set()
    _die_of(signum)


def _flush_this_child() -> None:
    _bounded(lambda: (finish(), flush_spans()), get_settings().exit_deadline_s + 5.0)


def _flush_before_os_exit() -> None:
    """Make ``os._exit`` flush first (once, unless ``LUCIDIC_FLUSH_ON_FORK_EXIT=false``)."""
    if get_settings().flush_on_fork_exit:
        fork.flush_before_os_exit(_flush_this_child)


# SIGTERM is held back in the forking thread across ``fork()``: CPython drops a signal that
# reaches a child before its post-fork re-initialisation, and with our handler installed (the
# default disposition would have killed the child in the kernel) such a SIGTERM is lost.
_fork_masks = threading.local()
_SIGTERM_ONLY = {signal.SIGTERM} if hasattr(signal, "pthread_sigmask") else set()
_MP_FORK_MODULES = ("multiprocessing.popen_fork", "multiprocessing.forkserver")
_taker_started = False  # SIGTERM is taken by _sigterm_taker in this process
_masked = False  # SIGTERM is blocked by us in threads of this process (taker or not)
_taker: Optional[threading.Thread] = None
_original_signal: Optional[Callable[..., Any]] = None


def _hold_sigterm_before_fork() -> None:
    if _SIGTERM_ONLY:
        _fork_masks.held = signal.SIGTERM not in signal.pthread_sigmask(
            signal.SIG_BLOCK, _SIGTERM_ONLY
        )


def _release_sigterm() -> None:
    if getattr(_fork_masks, "held", False):
        _fork_masks.held = False
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGTERM_ONLY)


def _forked_by_multiprocessing() -> bool:
    frame: Any = sys._getframe(1)
    for _ in range(_MAX_FRAMES):
        if frame is None:
            return False
        if frame.f_globals.get("__name__") in _MP_FORK_MODULES:
            return True
        frame = frame.f_back
    return False


def _in_multiprocessing_worker() -> bool:
    """A process started by multiprocessing: a spawn child (seen from its command line, before
    multiprocessing itself has run), or a fork/forkserver child (its parent process is known)."""
    if "--multiprocessing-fork" in getattr(sys, "orig_argv", ()):
        return True
    process = sys.modules.get("multiprocessing.process")
    try:
        return process is not None and process.parent_process() is not None
    except Exception:  # noqa: BLE001 - a private layout that changed: not a worker we know
        return False


def take_sigterm_in_worker() -> bool:
    """In a multiprocessing worker that sets up telemetry itself (a spawn child under the
    launcher, or a spawn/forkserver worker recording a carried context in plain python):
    take SIGTERM the way forked workers do (:func:`_take_sigterm_on_a_thread`).

    Call it before the SDK starts its threads: the mask is per thread, and a thread that
    does not block SIGTERM would take the signal with the default action and lose the flush.
    Returns True when SIGTERM is taken by our thread (then no Python handler is installed).
    """
    global _taker_started
    if _taker_started:
        return True
    try:
        if (
            not _SIGTERM_ONLY
            or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            or not _in_multiprocessing_worker()
            or not get_settings().flush_on_sigterm
        ):
            return False
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGTERM_ONLY)
        _take_sigterm_on_a_thread()
    except Exception:  # noqa: BLE001 - never stop the worker over its exit path
        logger.debug("lucidic-otel: could not take SIGTERM on a thread", exc_info=True)
        return False
    return True


def _take_sigterm_on_a_thread() -> None:
    """In a multiprocessing worker: SIGTERM stays blocked in every thread and one thread takes
    it with ``sigwait``, flushes (bounded) and ends the process with the signal.

    ``Pool.terminate()`` SIGTERMs workers that sit in a blocking wait on the pool's shared queue
    lock. A Python-level handler only runs when the main thread gets back to the interpreter,
    and measured under load (``bench/pool_soak.py``) some such workers never ran it and stayed
    alive, blocked, with the parent waiting for them for ever (4 of 49 runs of the
    ``with Pool() as pool`` idiom). Taking the signal on a thread of our own does not depend
    on where the main thread is, or on which lock it holds.
    """
    global _taker_started, _masked, _taker
    _taker_started = _masked = True
    _patch_subprocess()
    _give_sigterm_back_to_a_handler_of_its_own()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the disposition the thread ends with
    _taker = threading.Thread(target=_sigterm_taker, name="lucidic-sigterm", daemon=True)
    _taker.start()


def _give_sigterm_back_to_a_handler_of_its_own() -> None:
    """A worker that sets its own SIGTERM handler (uvicorn's and gunicorn's workers shut down
    gracefully on it, asyncio's ``add_signal_handler`` goes through ``signal.signal`` too) gets
    SIGTERM back: the main thread, where Python handlers run, unblocks it and our thread
    retires. The application's handler then decides, and the exit flushes through ``atexit``
    as in any process. Only ``signal.signal`` on the main thread can install a handler, and
    that is where this runs."""
    global _original_signal
    if _original_signal is not None:
        return
    original = _original_signal = signal.signal

    @functools.wraps(original)
    def setting(signalnum: Any, handler: Any) -> Any:
        if not (
            signalnum == signal.SIGTERM
            and handler is not signal.SIG_DFL
            and _taker_started
            and threading.current_thread() is threading.main_thread()
        ):
            return original(signalnum, handler)
        # The handler the application replaces (and may restore and re-raise into, as
        # uvicorn does after its graceful shutdown) is our flushing one, as in any process.
        if get_settings().flush_on_sigterm:
            original(signal.SIGTERM, _on_sigterm)
        previous = original(signalnum, handler)
        _retire_taker()
        return previous

    signal.signal = setting  # type: ignore[assignment]


def _retire_taker() -> None:
    global _taker_started
    _taker_started = False
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGTERM_ONLY)  # this (main) thread only
    taker = _taker
    if taker is not None and taker.ident is not None and taker.is_alive():
        try:
            signal.pthread_kill(taker.ident, signal.SIGTERM)  # ends its sigwait, and it
        except (OSError, ValueError):
            pass


def _sigterm_taker() -> None:
    signum = signal.sigwait(_SIGTERM_ONLY)
    if not _taker_started:
        return  # retired: the application's own handler has SIGTERM now
    if get_settings().flush_on_sigterm:
        _bounded(_finish_and_shut_down, get_settings().exit_deadline_s + 5.0)
    if signal.getsignal(signum) is not signal.SIG_DFL:  # the worker's own handler: its call
        logger.warning(
            "lucidic-otel: this multiprocessing worker set its own SIGTERM handler; it cannot "
            "run while SIGTERM is taken by lucidic-otel's flush thread, so the worker ends now"
        )
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGTERM_ONLY)
    os.kill(os.getpid(), signum)  # pending for this thread, now unblocked: the default action


def _after_fork_in_child() -> None:
    """The parent's sessions and SIGTERM state are the parent's; the child's ``os._exit``
    flushes first unless ``LUCIDIC_FLUSH_ON_FORK_EXIT=false``. A SIGTERM that arrived during
    the fork is delivered at the end, once the child is in a state to handle it. A child of a
    process whose SIGTERM is taken by our thread inherits the blocked mask but not the thread:
    a multiprocessing worker starts its own, any other child gets SIGTERM back."""
    global _sigterm, _ready_pid, _taker_started, _masked
    _sigterm = _SigtermState()
    parent_masked = _masked
    _taker_started = _masked = False  # a parent's taker thread does not survive the fork
    try:
        REGISTRY.after_fork()
        _flush_before_os_exit()
    finally:
        _ready_pid = os.getpid()  # registered after the SDK's hooks, so it runs after them
        held = getattr(_fork_masks, "held", False)
        disposition = signal.getsignal(signal.SIGTERM)
        ours = (parent_masked and disposition is signal.SIG_DFL) or (
            held and disposition is _on_sigterm
        )
        if ours and _forked_by_multiprocessing():
            _fork_masks.held = False  # stays blocked here, and in every thread started from here
            _take_sigterm_on_a_thread()
        elif parent_masked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGTERM_ONLY)
        else:
            _release_sigterm()


def _unblocked_for_exec(execute_child: Callable[..., Any]) -> Callable[..., Any]:
    """``subprocess.Popen._execute_child`` that gives the new program SIGTERM unblocked.

    A signal mask survives ``fork`` and ``exec``, and ``subprocess`` forks in C without the
    fork hooks: a program started from a worker whose SIGTERM we block would ignore
    ``terminate()`` for ever. The calling thread unblocks it for the duration of the start
    only (a SIGTERM in that window ends the worker with the default action, as it would have
    without us).
    """

    @functools.wraps(execute_child)
    def start(*args: Any, **kwargs: Any) -> Any:
        if not _masked or signal.SIGTERM not in signal.pthread_sigmask(
            signal.SIG_BLOCK, set()
        ):
            return execute_child(*args, **kwargs)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGTERM_ONLY)
        try:
            return execute_child(*args, **kwargs)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGTERM_ONLY)

    start.__wrapped_by_lucidic__ = True  # type: ignore[attr-defined]
    return start


def _patch_subprocess() -> None:
    import subprocess

    current = getattr(subprocess.Popen, "_execute_child", None)
    if current is not None and not getattr(current, "__wrapped_by_lucidic__", False):
        subprocess.Popen._execute_child = _unblocked_for_exec(current)  # type: ignore[attr-defined]


def install_exit_handlers() -> None:
    """Install the atexit finisher, the SIGTERM handler and the fork hook, once."""
    global _installed, _ready_pid
    if _installed:
        return
    _installed = True
    _ready_pid = os.getpid()
    settings = get_settings()
    atexit.register(finish)
    if _in_multiprocessing_worker():
        _flush_before_os_exit()  # fork/forkserver workers end with os._exit, not atexit
    if (
        settings.flush_on_sigterm
        and not _taker_started
        and threading.current_thread() is threading.main_thread()
    ):
        try:
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError, AttributeError):
            logger.debug("lucidic-otel: could not install the SIGTERM handler", exc_info=True)
    fork.add(
        before=_hold_sigterm_before_fork,
        after_in_parent=_release_sigterm,
        after_in_child=_after_fork_in_child,
    )
    fork.install()
