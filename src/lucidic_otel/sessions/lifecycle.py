"""Session lifecycle: which sessions this process opened, and the records that tell the backend.

The backend needs ``initsession`` before a session's events and ``updatesession`` (end) after
them. Both are written as lifecycle records into a journal that the ``lucidic`` exporter drains
into its outbox on the export thread, so the application thread never does I/O. An end is
recorded only after the span pipeline was flushed, so the end follows every span of that
session that had finished when ``end_session`` was called. Only sessions opened through this
process's API get records: a service that joined a session through baggage never starts or
ends it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation

from lucidic_otel.sessions.idle import IdleTracker

logger = logging.getLogger(__name__)

LifecycleRecord = Tuple[str, str, Dict[str, Any]]  # (kind, session_id, body)
INIT = "session_init"
END = "session_end"
_JOURNAL_LIMIT = 100_000
_REGISTRY_LIMIT = 10_000
_COALESCE_SCAN = 64  # waiting records looked at for a start of the same session
#: The ``session_name`` of a session opened without one: the official Lucidic SDK's default, so
#: a backend that requires the field never rejects the session (the one place it is applied).
DEFAULT_SESSION_NAME = "Unnamed Session"


class LifecycleJournal:
    """Lifecycle records waiting for a sink (the exporter's store).

    Records are kept in memory, in order, until a sink drains them. Without a ``lucidic``
    exporter nothing drains them; the journal is bounded and says so once if it overflows.
    """

    def __init__(self, limit: int = _JOURNAL_LIMIT) -> None:
        self._records: Deque[LifecycleRecord] = deque()
        self._lock = threading.Lock()
        self._limit = limit
        self.dropped = 0
        #: Set by the ``lucidic`` exporter: stores waiting records now instead of at its next
        #: export, so a session end does not wait for the next span of a quiet service.
        self.flusher: Optional[Callable[[], Any]] = None

    def record(self, kind: str, session_id: str, body: Dict[str, Any]) -> None:
        with self._lock:
            if len(self._records) >= self._limit:
                self._records.popleft()
                self.dropped += 1
                if self.dropped == 1:
                    logger.warning(
                        "lucidic-otel: %d session lifecycle records are waiting and none is being "
                        "stored (is OTEL_TRACES_EXPORTER missing 'lucidic'?); dropping the oldest",
                        self._limit,
                    )
            self._records.append((kind, session_id, body))

    def record_init(self, session_id: str, body: Dict[str, Any]) -> None:
        """Record a start; a start of the same session still waiting here (with nothing of it
        after) takes the new fields instead, so a name given later replaces the default name
        in one ``initsession`` rather than in a second one the sender may deliver first."""
        with self._lock:
            last = len(self._records) - 1
            for i in range(last, max(last - _COALESCE_SCAN, -1), -1):
                kind, sid, waiting = self._records[i]
                if sid != session_id:
                    continue
                if kind == INIT:
                    self._records[i] = (kind, sid, {**waiting, **body})
                    return
                break
        self.record(INIT, session_id, body)

    def drain(self) -> List[LifecycleRecord]:
        """Take every waiting record, oldest first."""
        with self._lock:
            records = list(self._records)
            self._records.clear()
        return records

    def __len__(self) -> int:
        return len(self._records)

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._records = deque()


@dataclass
class OpenSession:
    session_id: str
    name: Optional[str]
    auto_end: bool
    opened_at: float = field(default_factory=time.time)
    ended: bool = False
    #: Nothing else ends it (bound by a scope only): ``LUCIDIC_SESSION_IDLE_END`` may.
    idle_end: bool = False
    #: Ended for idleness: an explicit end with an outcome may still follow, once.
    idle_ended: bool = False


class SessionRegistry:
    """The sessions opened by this process, and their idempotent, ordered end."""

    def __init__(self, journal: LifecycleJournal) -> None:
        self._journal = journal
        self._sessions: Dict[str, OpenSession] = {}
        self._lock = threading.Lock()
        self._ender = _Ender(journal)
        self._idle = IdleTracker(self.end_idle)

    def open(
        self,
        session_id: str,
        *,
        name: Optional[str] = None,
        auto_end: bool = False,
        idle_end: bool = False,
        **fields: Any,
    ) -> bool:
        """Record the start of ``session_id`` once; later calls may only raise its auto_end.

        ``idle_end``: only a scope binds it (``session``, ``set_active_session``), so the idle
        end may end it; an opener that ends it itself (``init``, ``with_lucidic``) turns that off
        for good.
        """
        with self._lock:
            existing = self._sessions.get(session_id)
            if existing is not None and not existing.ended:
                existing.auto_end = existing.auto_end or auto_end
                existing.idle_end = existing.idle_end and idle_end
                if name and not existing.name:
                    existing.name = name
                    self._journal.record_init(session_id, _init_body(session_id, name, fields))
                track = existing.idle_end
                opened = False
            else:
                self._sessions[session_id] = OpenSession(
                    session_id, name, auto_end, idle_end=idle_end
                )
                if len(self._sessions) > _REGISTRY_LIMIT:
                    self._prune()
                track = idle_end
                opened = True
        if opened:
            self._journal.record(INIT, session_id, _init_body(session_id, name, fields))
        if track:
            self._idle.track(session_id)
        return opened

    def idle_ended(self, session_id: str) -> bool:
        """True when ``session_id`` was ended for idleness (a binding re-opens it)."""
        s = self._sessions.get(session_id)
        return s is not None and s.idle_ended and s.ended

    def end_idle(self, session_ids: List[str]) -> int:
        """End the given sessions that are still open and idle-endable (no outcome), after
        one flush on the background thread; how many were ended."""
        with self._lock:
            due = []
            for sid in session_ids:
                s = self._sessions.get(sid)
                if s is None or s.ended or s.auto_end or not s.idle_end:
                    continue
                s.ended = s.idle_ended = True
                due.append(sid)
        for sid in due:
            self._ender.submit(sid, {"session_id": sid, "is_finished": True})
        if due:
            logger.debug("lucidic-otel: ended %d idle sessions", len(due))
        return len(due)

    def _prune(self) -> None:
        """Bound memory in services that open a session per request: forget ended sessions,
        then the oldest that nothing will end automatically (their end stays idempotent at the
        backend; only a duplicate end could follow)."""
        for sid in [k for k, s in self._sessions.items() if s.ended]:
            del self._sessions[sid]
        excess = len(self._sessions) - _REGISTRY_LIMIT // 2
        if excess > 0:
            for sid in [k for k, s in self._sessions.items() if not s.auto_end][:excess]:
                del self._sessions[sid]

    def knows(self, session_id: str) -> bool:
        """True for sessions this process opened (not ones it only joined through baggage)."""
        with self._lock:
            return session_id in self._sessions

    def end(self, session_id: str, fields: Dict[str, Any], *, wait: bool = False) -> bool:
        """End ``session_id`` once (False if it was already ended).

        The end is recorded after a flush of the span pipeline. ``wait=False`` does the flush
        on a background thread so that the caller is not blocked by exporters.
        """
        given = {k: v for k, v in fields.items() if v is not None}
        with self._lock:
            s = self._sessions.get(session_id)
            if s is not None and s.ended:
                if not (s.idle_ended and given):
                    return False
                s.idle_ended = False  # the outcome follows the idle end, once
            if s is None:
                s = self._sessions[session_id] = OpenSession(session_id, None, False)
            s.ended = True
        self._idle.forget(session_id)
        body = {"session_id": session_id, "is_finished": True}
        body.update(given)
        if wait:
            self._ender.end_now([(session_id, body)])
        else:
            self._ender.submit(session_id, body)
        return True

    def end_auto_sessions(self) -> int:
        """End every open auto-end session, after one flush; used at exit."""
        with self._lock:
            due = [s for s in self._sessions.values() if s.auto_end and not s.ended]
            for s in due:
                s.ended = True
        self._ender.drain()
        self._ender.end_now(
            [(s.session_id, {"session_id": s.session_id, "is_finished": True}) for s in due]
        )
        return len(due)

    def drain(self) -> None:
        """Finish every end still waiting on the background thread."""
        self._ender.drain()

    def store_now(self) -> None:
        """Write the waiting lifecycle records to the store now, on this thread.

        Called before work is handed to another process (``init``, ``carry_context``,
        ``inject_env``): that process writes its spans to the same store and may deliver them
        itself, and the store orders an event after its session's init only when the init is
        already there. Otherwise the init waits for this process's next export.
        """
        flusher = self._journal.flusher
        if flusher is None or not len(self._journal):
            return
        try:
            with suppress_instrumentation():  # the store's own sqlite3 calls are not traced
                flusher()
        except Exception:  # noqa: BLE001 - the next export writes them instead
            logger.debug("lucidic-otel: could not store lifecycle records now", exc_info=True)

    def after_fork(self) -> None:
        """In a forked child: the parent's sessions and pending records are the parent's."""
        self._lock = threading.Lock()
        self._sessions = {}
        self._journal.after_fork()
        self._ender = _Ender(self._journal)
        self._idle.after_fork()


def _init_body(session_id: str, name: Optional[str], fields: Dict[str, Any]) -> Dict[str, Any]:
    body: Dict[str, Any] = {"session_id": session_id, "session_name": name or DEFAULT_SESSION_NAME}
    body.update({k: v for k, v in fields.items() if v is not None})
    return body


def flush_spans(timeout_millis: int = 30000) -> bool:
    """Flush the global provider's span processors (exporters included), if it has any."""
    force_flush: Optional[Callable[..., bool]] = getattr(
        trace.get_tracer_provider(), "force_flush", None
    )
    if force_flush is None:
        return True
    try:
        return bool(force_flush(timeout_millis))
    except Exception:
        logger.exception("lucidic-otel: flushing spans failed")
        return False


class _Ender:
    """One background thread that flushes spans, then records the ends that were waiting.

    Ends requested while a flush runs are batched into the next flush, so many per-request
    sessions ending together cost one flush, not one each.
    """

    def __init__(self, journal: LifecycleJournal) -> None:
        self._journal = journal
        self._pending: List[Tuple[str, Dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._busy = False
        self._thread: Optional[threading.Thread] = None

    def submit(self, session_id: str, body: Dict[str, Any]) -> None:
        with self._cond:
            self._pending.append((session_id, body))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="lucidic-session-end", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending:
                    self._cond.wait(timeout=30.0)
                    if not self._pending:
                        self._thread = None
                        self._cond.notify_all()
                        return
                batch, self._pending = self._pending, []
                self._busy = True
            try:
                self.end_now(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def end_now(self, batch: List[Tuple[str, Dict[str, Any]]]) -> None:
        if not batch:
            return
        flush_spans()
        for session_id, body in batch:
            self._journal.record(END, session_id, body)
        flusher = self._journal.flusher
        if flusher is not None:
            try:
                flusher()
            except Exception:
                logger.exception("lucidic-otel: could not store session end records")

    def drain(self, timeout: float = 30.0) -> None:
        """Record every waiting end now (on the calling thread) and wait for one in flight."""
        with self._cond:
            batch, self._pending = self._pending, []
        self.end_now(batch)
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)


JOURNAL = LifecycleJournal()
REGISTRY = SessionRegistry(JOURNAL)
