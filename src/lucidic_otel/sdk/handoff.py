"""Sessions that cross services: the end waits for the services that worked on the session.

A session's end (``updatesession`` with ``is_finished``) is delivered by the service that ended
it, and a downstream service's events by that service. Left alone, the downstream events wait
for their own service's batch delay (``OTEL_BSP_SCHEDULE_DELAY``, 5 s by default) and reach the
backend seconds after the end, which the official SDK never does and a strict backend may
refuse. Two things close the gap, one on each side:

- Downstream, a request that arrived with a session (a server span with a remote parent and a
  session stamp) asks for a prompt flush when it ends: one daemon thread flushes the provider
  at most every :data:`FLUSH_EVERY_S`, so the request's events leave within tens of
  milliseconds instead of seconds, and batching is kept under load.
- Upstream, the session baggage policy notes every session it let out to another service
  (:data:`SENT_OUT`), and the exporter holds such a session's end for ``LUCIDIC_END_GRACE``
  seconds (bounded, and waited for at exit within ``LUCIDIC_EXIT_DEADLINE``), so the
  downstream events are delivered first in the common case.

Sessions that never left the process are not held: their events are flushed before their end.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

from opentelemetry import trace

from lucidic_otel import _diagnostics
from lucidic_otel.sessions.lifecycle import END

logger = logging.getLogger(__name__)

#: The shortest interval between two prompt flushes of one process.
FLUSH_EVERY_S = 0.05
#: A prompt-flush thread that had nothing to do for this long stops (a new request restarts it).
_IDLE_STOP_S = 30.0
_SENT_OUT_KEPT = 10_000


class SentOut:
    """The ids of sessions whose baggage went to another service from this process (bounded:
    the oldest are forgotten first; a forgotten session just ends without the grace)."""

    def __init__(self, kept: int = _SENT_OUT_KEPT) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._kept = kept
        self._lock = threading.Lock()

    def mark(self, session_id: str) -> None:
        """Note that ``session_id`` went out (cheap when it is already known)."""
        if session_id in self._ids:
            return
        with self._lock:
            self._ids[session_id] = None
            while len(self._ids) > self._kept:
                self._ids.popitem(last=False)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._ids

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._ids.pop(session_id, None)

    def clear(self) -> None:
        with self._lock:
            self._ids.clear()


#: The one record of this process.
SENT_OUT = SentOut()

LifecycleEnd = Tuple[str, str, Dict[str, Any]]


class HeldEnds:
    """Session ends held for the grace, in the exporter that would have written them.

    ``hold`` keeps an end whose session went out (:data:`SENT_OUT`) and arms one timer that
    calls ``release`` when the first held end comes due; ``due`` hands back what is due (or
    everything), oldest first. At most one timer runs; it is a daemon, so it never keeps a
    process alive, and the exit sequence waits for held ends itself (:meth:`wait`).
    """

    def __init__(self, grace_s: float, release: Callable[[], None]) -> None:
        self.grace_s = grace_s
        self._release = release
        self._held: List[Tuple[float, LifecycleEnd]] = []
        self._lock = threading.Lock()
        self._timer: Optional[threading.Timer] = None

    def __bool__(self) -> bool:
        return bool(self._held)

    def hold(self, session_id: str, body: Dict[str, Any]) -> bool:
        """Keep this end for the grace if its session went out; True if it was kept."""
        if self.grace_s <= 0 or session_id not in SENT_OUT:
            return False
        with self._lock:
            self._held.append((time.monotonic() + self.grace_s, (END, session_id, body)))
            self._arm(self.grace_s)
        SENT_OUT.forget(session_id)
        return True

    def due(self, everything: bool = False) -> List[LifecycleEnd]:
        """The held ends whose grace is over (all of them with ``everything``)."""
        if not self._held:
            return []
        now = time.monotonic()
        with self._lock:
            ready = [r for due, r in self._held if everything or due <= now]
            self._held = [] if everything else [(d, r) for d, r in self._held if d > now]
            if self._held:
                self._arm(max(0.0, self._held[0][0] - now))
        return ready

    def wait(self, limit_s: float) -> None:
        """Sleep until every held end is due, for at most ``limit_s`` (the exit sequence)."""
        with self._lock:
            last = max((due for due, _ in self._held), default=None)
        if last is not None:
            time.sleep(max(0.0, min(limit_s, last - time.monotonic())))

    def _arm(self, delay_s: float) -> None:
        if self._timer is not None and self._timer.is_alive():
            return
        timer = threading.Timer(delay_s + 0.01, self._fire)
        timer.daemon = True
        timer.name = "lucidic-end-grace"
        self._timer = timer
        timer.start()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
        self._release()


class PromptFlush:
    """Flush the tracer provider soon after a request that carried a session ended."""

    def __init__(self) -> None:
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def request(self) -> None:
        """Ask for a flush (called on the application's thread: an Event set, nothing more)."""
        self._wanted.set()
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    thread = threading.Thread(
                        target=self._run, name="lucidic-prompt-flush", daemon=True
                    )
                    self._thread = thread
                    thread.start()

    def _run(self) -> None:
        try:
            while self._wanted.wait(_IDLE_STOP_S):
                time.sleep(FLUSH_EVERY_S)  # gathers the requests that end together
                self._wanted.clear()
                with _diagnostics.guarded(logger, "flushing spans after a request"):
                    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
                    if flush is not None:
                        flush(5000)
        finally:
            with self._lock:
                self._thread = None
            if self._wanted.is_set():  # a request arrived while stopping
                self.request()

    def after_fork(self) -> None:
        """The parent's thread does not exist in a child."""
        self._thread = None
        self._wanted = threading.Event()
        self._lock = threading.Lock()


PROMPT_FLUSH = PromptFlush()


def _after_fork_in_child() -> None:
    PROMPT_FLUSH.after_fork()
    SENT_OUT.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
