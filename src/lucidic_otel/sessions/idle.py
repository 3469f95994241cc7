"""Idle end of per-request sessions (``LUCIDIC_SESSION_IDLE_END``).

Sessions bound with ``session()``/``with_session()``/``set_active_session()`` have no owner
that ends them (``init`` sessions end at exit, ``with_lucidic`` ends its own). When
``LUCIDIC_SESSION_IDLE_END`` is set, such a session that had no span start or end in this
process for that many seconds gets an end recorded (``is_finished`` only, no outcome).

The span processor keeps :data:`SEEN` up to date: on every span start and end of a session
already in it, one dict write of the monotonic time (it never adds a key, so sessions only seen
in baggage are never tracked). One daemon thread sweeps :data:`SEEN` at a quarter of the idle
time and stops by itself when nothing is tracked. In a forked child the parent's sessions are
the parent's: :func:`_after_fork` empties everything.

A session that was ended for idleness is re-opened (a new ``initsession``, which the backend
takes as a continuation of the id) when the API binds it again; a span that starts in a scope
still bound to it is stamped and delivered as usual but does not re-open it (the span path does
no lifecycle work). Choose the idle time longer than the longest quiet stretch of one request.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional

from lucidic_otel import _diagnostics
from lucidic_otel.config import get_settings
from lucidic_otel.sessions.context import SESSION_ATTRIBUTE

logger = logging.getLogger(__name__)

#: session id -> ``time.monotonic()`` of its last span start or end (or binding) here. The one
#: dict the span processor writes; never replaced (cleared in place), so a reference stays valid.
SEEN: Dict[str, float] = {}

_SWEEP_LIMIT = 10_000  # sessions examined per sweep (the registry holds at most about as many)
_MAX_INTERVAL_S = 30.0

_monotonic = time.monotonic
#: Every tracker, for the fork hook.
_TRACKERS: weakref.WeakSet[IdleTracker] = weakref.WeakSet()


def touch_end(span: Any) -> None:
    """The processor's ``on_end`` hook: ``span``'s session had activity now (if tracked)."""
    try:
        attributes = span.attributes
        sid = attributes.get(SESSION_ATTRIBUTE) if attributes else None
        if sid in SEEN:
            SEEN[sid] = _monotonic()
    except Exception:  # noqa: BLE001 - telemetry must never break the application
        return


def configured_idle_end() -> Optional[float]:
    """``LUCIDIC_SESSION_IDLE_END`` in seconds, or None when off (or unreadable)."""
    try:
        return get_settings().session_idle_end
    except Exception:  # noqa: BLE001 - a strict-mode error is raised where settings load
        return None


class IdleTracker:
    """Tracks idle-endable sessions and ends the ones that went quiet, on one daemon thread.

    Args:
        end: ends the given sessions if they are still open and idle-endable (the registry's
            :meth:`~lucidic_otel.sessions.lifecycle.SessionRegistry.end_idle`).
        seen: the activity map (default the processor's :data:`SEEN`).
        limit: the idle time in seconds, or None when off (default the settings').
    """

    def __init__(
        self,
        end: Callable[[List[str]], Any],
        seen: Optional[Dict[str, float]] = None,
        limit: Callable[[], Optional[float]] = configured_idle_end,
    ) -> None:
        self._end = end
        self.seen = SEEN if seen is None else seen
        self._limit = limit
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._wake = threading.Event()
        _TRACKERS.add(self)

    def track(self, session_id: str) -> None:
        """Start (or refresh) the idle clock of ``session_id``, when idle end is on."""
        if self._limit() is None:
            return
        self.seen[session_id] = _monotonic()
        with self._lock:  # after the write: a stopping sweeper has already looked (see _run)
            if self._thread is None:
                self._wake = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, name="lucidic-session-idle", daemon=True
                )
                self._thread.start()

    def forget(self, session_id: str) -> None:
        self.seen.pop(session_id, None)

    def _run(self) -> None:
        wake = self._wake
        while True:
            limit = self._limit()
            with self._lock:
                if limit is None or not self.seen:
                    self._thread = None
                    return
            wake.wait(min(max(limit / 4.0, 0.05), _MAX_INTERVAL_S))
            if wake.is_set():  # stopped (tests) or forked away
                return
            with _diagnostics.guarded(logger, "ending idle sessions"):
                self.sweep(limit)

    def sweep(self, limit: float, now: Optional[float] = None) -> int:
        """End every tracked session idle for ``limit`` seconds; how many were due."""
        now = _monotonic() if now is None else now
        due = []
        for sid, last in list(self.seen.copy().items())[:_SWEEP_LIMIT]:
            if now - last >= limit and now - self.seen.get(sid, last) >= limit:
                self.seen.pop(sid, None)
                due.append(sid)
        if due:
            self._end(due)
        return len(due)

    def stop(self) -> None:
        """Stop the sweeper (tests); tracking starts it again."""
        with self._lock:
            self._wake.set()
            self._thread = None

    def after_fork(self) -> None:
        """In a forked child: no thread, nothing tracked (the parent's sessions)."""
        self.seen.clear()
        self._lock = threading.Lock()
        self._thread = None
        self._wake = threading.Event()


def _after_fork() -> None:
    for tracker in list(_TRACKERS):
        tracker.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
