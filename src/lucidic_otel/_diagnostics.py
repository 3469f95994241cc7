"""The one "never raise into the application" boundary and the one log-once mechanism.

Why one: telemetry code runs inside the user's program (in their request threads, in atexit,
in signal handlers), so an exception of ours must never reach it, and a problem that repeats on
every span must not flood their log. Before this module each place wrote its own ``try/except``
and its own "already warned" flag; the catches differed in what they logged, and the flags in
how they were reset. Here there is one of each:

- :func:`guarded` (a context manager) and :func:`never_raises` (a decorator) swallow an
  exception, log it once per ``what`` with its traceback at DEBUG afterwards, and return. A
  :class:`~lucidic_otel.config.ConfigError` always passes through: it is raised only in strict
  mode, where the user asked for the program to stop.
- :func:`log_once` and :func:`log_every` rate-limit messages by key.

Swallowed bugs must not hide from the test suite: :data:`swallowed` keeps what was swallowed
while :func:`record_swallowed` is on, and the suite fails a test that swallowed a programming
error (``TypeError``, ``AttributeError``, ``NameError``...) it did not expect.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple, TypeVar

_T = TypeVar("_T")

_lock = threading.Lock()
_once: Set[Tuple[str, str]] = set()
_last: Dict[Tuple[str, str], float] = {}

#: Exceptions swallowed by :func:`guarded` while recording is on: ``(what, exception)``.
swallowed: List[Tuple[str, BaseException]] = []
_recording = False

#: Exception types that are bugs of ours, never a consequence of the user's input or the world.
PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, KeyError, IndexError, AssertionError,
                      UnboundLocalError, ImportError)


def record_swallowed(on: bool = True) -> None:
    """Keep what :func:`guarded` swallows in :data:`swallowed` (the test suite turns this on)."""
    global _recording
    _recording = on
    swallowed.clear()


def reset() -> None:
    """Forget every log-once key (tests; and a forked child inherits none of its parent's)."""
    with _lock:
        _once.clear()
        _last.clear()


def log_once(logger: logging.Logger, key: str, message: str, *args: Any,
             level: int = logging.WARNING, exc_info: Any = None) -> bool:
    """Log ``message`` the first time ``key`` is seen on ``logger`` in this process.

    Returns:
        True if it was logged now, False if it had been logged before.
    """
    k = (logger.name, key)
    with _lock:
        if k in _once:
            return False
        _once.add(k)
    logger.log(level, message, *args, exc_info=exc_info)
    return True


def log_every(logger: logging.Logger, key: str, interval_s: float, message: str, *args: Any,
              level: int = logging.WARNING) -> bool:
    """Log ``message`` at most once per ``interval_s`` seconds for ``key``.

    Returns:
        True if it was logged now.
    """
    k = (logger.name, key)
    now = time.monotonic()
    with _lock:
        last = _last.get(k)
        if last is not None and now - last < interval_s:
            return False
        _last[k] = now
    logger.log(level, message, *args)
    return True


def _passes_through(exc: BaseException) -> bool:
    from lucidic_otel.config import ConfigError  # config imports nothing of ours but ids

    return isinstance(exc, ConfigError)


def swallow(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """Log a swallowed exception: once with its traceback, then at DEBUG."""
    if _recording:
        swallowed.append((what, exc))
    if not log_once(logger, "swallowed:" + what, "lucidic-otel: %s failed (%s: %s); the "
                    "application is not affected", what, type(exc).__name__, exc,
                    exc_info=exc):
        logger.debug("lucidic-otel: %s failed again: %r", what, exc)


@contextmanager
def guarded(logger: logging.Logger, what: str) -> Iterator[None]:
    """Run the block; an exception from it is logged (see :func:`swallow`) and not raised.

    Args:
        logger: the module's logger (``logging.getLogger(__name__)``).
        what: what the block does, for the message ("stamping a span").

    Examples:
        >>> with guarded(logger, "ending the session"):
        ...     registry.end(session_id)
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - this is the boundary
        if _passes_through(exc):
            raise
        swallow(logger, what, exc)


def never_raises(logger: logging.Logger, what: str,
                 default: Optional[Any] = None) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """Decorate a function so it returns ``default`` instead of raising (see :func:`guarded`)."""

    def wrap(fn: Callable[..., _T]) -> Callable[..., _T]:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - this is the boundary
                if _passes_through(exc):
                    raise
                swallow(logger, what, exc)
                return default

        return call

    return wrap
