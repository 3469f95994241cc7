"""The local store and outbox: one SQLite file (WAL mode) shared by every process on a machine.

Local-first: every span is kept here for the local tree view, and every backend operation
(session init, event, session end) is written here first, as an outbox item, before a
background sender delivers it. So nothing is lost when the backend is down or the process
restarts, a session's end can be held back until its events are delivered, and the CLI can
read what was recorded even with no API key at all.

:class:`Store` is the one public class; it composes the package's parts, one idea each:

- :mod:`~lucidic_otel.outbox.schema`: tables, and the outbox kinds and states as enums;
- :mod:`~lucidic_otel.outbox.records`: the records handed out, value encoding, row reading;
- :mod:`~lucidic_otel.outbox.db`: connections, transactions, lock retries, fork safety;
- :mod:`~lucidic_otel.outbox.writes`: span batches, session starts and ends (one transaction
  per batch, so ``kill -9`` never leaves half a batch);
- :mod:`~lucidic_otel.outbox.queue`: claims, leases, outcomes, delivery order;
- :mod:`~lucidic_otel.outbox.capacity`: the size cap and what it evicts or drops;
- :mod:`~lucidic_otel.outbox.reads`: what the CLI, the sender and ``doctor`` read;
- :mod:`~lucidic_otel.outbox.fallback`: the in-memory store for a file that cannot be used;
- :mod:`~lucidic_otel.outbox.problems` and :mod:`~lucidic_otel.outbox.health`: what went
  wrong and what to do, the counters and the rate-limited warnings.

Durability: ``synchronous=NORMAL``. In WAL mode a commit appends to the WAL without an fsync,
and the WAL is fsynced at checkpoints. The database can never be corrupted by a crash or power
loss in this mode; a power loss (not a process crash: the OS still has the pages) can roll back
the last few transactions. That is the right trade for telemetry, where ``FULL`` would cost one
fsync per exported batch on the export thread.

Degradation policy (never raise into callers, never lose data silently): an unusable file moves
the process to memory with one warning (see :mod:`~lucidic_otel.outbox.fallback`); a write that
cannot take the lock after the bounded retries is dropped, counted in ``stats()["dropped"]`` and
logged; a value SQLite cannot bind is written again coerced; reads that fail return an empty
answer (and ``False`` for delivery questions, so a session end is never sent too early).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

from lucidic_otel.outbox import reads
from lucidic_otel.outbox.capacity import Capacity
from lucidic_otel.outbox.db import FILE, MEMORY, Database
from lucidic_otel.outbox.fallback import MemoryFallback
from lucidic_otel.outbox.health import Health
from lucidic_otel.outbox.problems import (
    MAX_MB_VARIABLE,
    PATH_VARIABLE,
    BadPathError,
    StorePathProblem,
    store_path_problem,
)
from lucidic_otel.outbox.queue import Queue
from lucidic_otel.outbox.records import OutboxItem, SpanRecord, dumps, status_text
from lucidic_otel.outbox.records import session_dict as _session_dict
from lucidic_otel.outbox.schema import (
    KIND_EVENT,
    KIND_SESSION_END,
    KIND_SESSION_INIT,
    SCHEMA_VERSION,
    STATE_DELIVERED,
    STATE_FAILED,
    STATE_PENDING,
    STATES,
)
from lucidic_otel.outbox.writes import Writer

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_BYTES", "KIND_EVENT", "KIND_SESSION_END", "KIND_SESSION_INIT", "MAX_MB_VARIABLE",
    "PATH_VARIABLE", "SCHEMA_VERSION", "STATE_DELIVERED", "STATE_FAILED", "STATE_PENDING",
    "OutboxItem", "SpanRecord", "Store", "StorePathProblem", "default_store_path",
    "status_text", "store_path_problem", "_session_dict",
]

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
_SETUPS_KEPT = 20

T = TypeVar("T")


def default_store_path(env: Mapping[str, str]) -> Path:
    """Where the store lives when ``LUCIDIC_STORE_PATH`` is not set: the XDG data directory.

    ``LUCIDIC_STORE_PATH`` itself is read by :mod:`lucidic_otel.config` only (as
    ``Settings.store_path``), so a value it rejected is never opened behind its back. Takes
    the environment as an argument so tests need no monkeypatching. A relative
    ``XDG_DATA_HOME`` is ignored, as the XDG spec requires.
    """
    home = env.get("HOME") or os.path.expanduser("~")
    data_home = (env.get("XDG_DATA_HOME") or "").strip()
    if not os.path.isabs(data_home):
        data_home = os.path.join(home, ".local", "share")
    return Path(data_home) / "lucidic-otel" / "store.db"


def _record_setup(conn: sqlite3.Connection, row: Tuple[float, str]) -> bool:
    conn.execute("INSERT INTO setups (recorded_at, json) VALUES (?, ?)", row)
    conn.execute(
        "DELETE FROM setups WHERE id <= (SELECT MAX(id) FROM setups) - ?", (_SETUPS_KEPT,)
    )
    return True


_ALIAS_SQL = (
    "INSERT OR REPLACE INTO session_aliases (session_id, backend_session_id) VALUES (?, ?)"
)


class Store:
    """The local store and outbox. Thread-safe, fork-safe, and it never raises I/O errors.

    Construct it with a path (see :func:`default_store_path`) and a size cap in bytes; nothing
    is opened until the first call.

    Args:
        path: the SQLite file; made absolute at once, so a later ``chdir`` does not move it
            (nor part the application from its delivery process, which opens it by name).
        max_bytes: the cap on the live size of the database (at least 64 KB).
        delivery_enabled: False without an API key: the outbox is then only a local store, and
            reaching the cap is routine housekeeping (reported at info level, not a warning).

    Examples:
        >>> with Store("/tmp/store.db") as store:
        ...     store.write_batch([SpanRecord(trace_id="0" * 32, span_id="1" * 16)])
        True
    """

    def __init__(
        self,
        path: os.PathLike[str] | str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        delivery_enabled: bool = True,
    ):
        self._path = Path(os.path.abspath(os.fspath(path)))
        self._health = Health(self._path)
        self._db = Database(self._path, self._health)
        self._capacity = Capacity(self._db, self._health, max_bytes, delivery_enabled)
        self._fallback = MemoryFallback(self._db, self._health, self._capacity)
        self._writer = Writer(self._db, self._health, self._capacity)
        self._queue = Queue(self._db, self._fallback.mark_in_file_too)
        self._db.on_fatal = self._on_fatal
        self._db.on_fork = self._after_fork
        # Called instead of the switch to memory when set: a delivery process has no use for
        # a memory store (the application writes to the file) and hands back to it instead.
        self.on_unusable: Optional[Callable[[BaseException], None]] = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def max_bytes(self) -> int:
        return self._capacity.max_bytes

    @property
    def delivery_enabled(self) -> bool:
        return self._capacity.delivery_enabled

    @property
    def in_memory(self) -> bool:
        """True once this process fell back to the in-memory store (no other process sees it)."""
        return self._db.mode == MEMORY

    def check_path(self) -> bool:
        """Report a path that can never hold the store now, instead of at the first write.

        The exporter calls this at start-up: its first write is often at exit, where a warning
        is easily missed. Such a path moves this process to the in-memory store at once (or is
        handed to ``on_unusable``). Creates and opens nothing; False when the path is unusable.
        """
        if self._db.mode != FILE:
            return False
        problem = store_path_problem(self._path)
        if problem is None:
            return True
        self._on_fatal(BadPathError(problem))
        return False

    # ------------------------------------------------------------------ writes

    def write_batch(
        self, spans: Sequence[SpanRecord], events: Sequence[Mapping[str, Any]] = ()
    ) -> bool:
        """Store finished spans and the Lucidic events derived from them, in one transaction.

        ``events`` are ``POST events`` bodies; each needs ``session_id`` and
        ``client_event_id``. Returns True when stored (possibly in the in-memory fallback),
        False when the batch was dropped (counted and logged).
        """
        return self._writer.write_batch(spans, events)

    def record_session_init(self, session_id: str, body: Mapping[str, Any]) -> Optional[int]:
        """Record that this store opened ``session_id``: an ``initsession`` outbox item.

        Only sessions opened locally get lifecycle items; sessions merely joined through
        baggage appear through their spans. Returns the item's seq, None if it was lost.
        """
        return self._writer.record_session_init(session_id, body)

    def record_session_end(self, session_id: str, body: Mapping[str, Any]) -> Optional[int]:
        """Record the end of a session this store opened: an ``updatesession`` outbox item.

        The end's seq is after every event recorded before it, so the sender can hold it
        back until :meth:`session_events_delivered`. For a session that was not initiated
        here nothing is recorded (a process that only joined a session never ends it) and
        None is returned, as it is when the record was lost.
        """
        return self._writer.record_session_end(session_id, body)

    def merge_llm_layer(self, merge: Any) -> bool:
        """A late layer of an LLM call joined its event (``lucidic_otel.convert.layers.LateMerge``).

        The event keeps its id; its body is replaced while still pending (a delivered one keeps
        the backend's). Its span gets the merged model, tokens and cost, and the session's
        totals change by the difference, so the call is still counted once.
        """
        return self._writer.merge_llm_layer(merge)

    def record_setup(self, report: Mapping[str, Any]) -> bool:
        """Keep how this process set OpenTelemetry up (``bootstrap.setup_report``)."""
        row = (time.time(), dumps(dict(report)))
        return self._db.run("record_setup", lambda conn: _record_setup(conn, row),
                            write=True, default=False)

    def set_session_alias(self, session_id: str, backend_session_id: str) -> bool:
        """Remember that the backend calls ``session_id`` ``backend_session_id`` from now on."""
        return self._db.update("set_session_alias", _ALIAS_SQL, [(session_id, backend_session_id)])

    # ------------------------------------------------------------------ the queue

    def claim_pending(
        self, limit: int, now: float, lease_seconds: float = 60.0
    ) -> List[OutboxItem]:
        """Lease up to ``limit`` deliverable items, oldest first, for ``lease_seconds``.

        Deliverable: pending, due (``next_attempt_at <= now``), not leased by another sender,
        and in order: an end only once every earlier item of its session is settled, an event
        only once its session's init is settled. The lease keeps senders of other processes
        off these items; if this sender dies, they become claimable again when it expires.
        ``attempts`` counts claims (less those undone by :meth:`release_unattempted`).
        """
        return self._queue.claim_pending(limit, now, lease_seconds)

    def mark_delivered(self, seqs: Sequence[int]) -> bool:
        """The backend accepted these items. Kept (for the CLI) until the cap evicts them."""
        return self._queue.mark_delivered(seqs)

    def mark_retry(self, seq: int, error: str, next_attempt_at: float) -> bool:
        """Delivery failed for a transient reason; try again at ``next_attempt_at``."""
        return self._queue.mark_retry(seq, error, next_attempt_at)

    def release_unattempted(
        self, items: Sequence[OutboxItem], next_attempt_at: float, why: Optional[str] = None
    ) -> bool:
        """Give claimed items back unsent (paused, stopped, or held for a parent): due at
        ``next_attempt_at``, the claim's attempt undone (no backoff for a request never made),
        ``why`` as last error if given. An item another sender claimed since is left alone."""
        return self._queue.release_unattempted(items, next_attempt_at, why)

    def mark_failed(self, seq: int, reason: str) -> bool:
        """Move an item aside for good (the backend rejected it); the reason stays visible."""
        return self._queue.mark_failed(seq, reason)

    def session_events_delivered(self, session_id: str, up_to_seq: int) -> bool:
        """True when no item of ``session_id`` recorded before ``up_to_seq`` is still pending.

        Pass the seq of the session's end item. Failed-aside and evicted items count as
        settled (they will never be delivered, and must not hold the end back forever). On any
        read error the answer is False, so an end is never sent too early.
        """
        return self._queue.session_events_delivered(session_id, up_to_seq)

    def next_due_at(self) -> Optional[float]:
        """The earliest time a pending item not held back by ordering can be claimed.

        That is the latest of its retry time and its lease; None when nothing is pending. The
        sender sleeps until then instead of polling, and knows when a drain can stop.
        """
        return self._queue.next_due_at()

    def make_due(self) -> int:
        """Make every pending item due now (``lucidic-otel upload``: the user asked for it);
        leases are left alone. Returns how many items were rescheduled."""
        return self._queue.make_due()

    # ------------------------------------------------------------------ reads

    def _read(self, what: str, fn: Callable[[sqlite3.Connection], T], default: T) -> T:
        return self._db.run(what, fn, write=False, default=default)

    def is_initiated(self, session_id: str) -> bool:
        """True if this store recorded a ``session_init`` for ``session_id``."""
        return self._read("is_initiated", lambda c: reads.is_initiated(c, session_id), False)

    def outbox_counts(self) -> Dict[str, int]:
        """Outbox items by state: ``pending``, ``delivered``, ``failed``."""
        return self._read("outbox_counts", reads.outbox_counts, dict.fromkeys(STATES, 0))

    def failed_items(self, limit: int = 100) -> List[OutboxItem]:
        """Items moved aside, oldest first, with the reason in ``last_error``."""
        return self._read("failed_items", lambda c: reads.failed_items(c, limit), [])

    def nearest_event_ancestors(
        self, starts: Sequence[Tuple[str, Optional[str]]]
    ) -> List[Optional[str]]:
        """For each ``(trace_id, parent_span_id)``, the event id of the nearest span up that
        chain (the parent itself first) that is an event, or None.

        Walks the spans stored by every process of this store, so a parent recorded by another
        service on the machine counts; the walk stops at a span that is not stored (not ended
        yet, or never seen here). One read transaction for the whole list.
        """
        nothing: List[Optional[str]] = [None] * len(starts)
        return self._read("nearest_event_ancestors",
                          lambda c: reads.nearest_event_ancestors(c, starts), nothing)

    def event_parents(self, items: Sequence[OutboxItem]) -> Dict[int, Optional[str]]:
        """Each event's parent event by ``seq`` (see :func:`reads.event_parents`)."""
        return self._read("event_parents", lambda c: reads.event_parents(c, items),
                          reads.recorded_parents(items))

    def session_aliases(self, session_ids: Sequence[str]) -> Dict[str, str]:
        """The backend's ids for those of ``session_ids`` it renamed (others are absent)."""
        wanted = sorted(set(session_ids))
        if not wanted:
            return {}
        return self._read("session_aliases", lambda c: reads.session_aliases(c, wanted), {})

    def recent_setups(self, limit: int = 5) -> List[Dict[str, Any]]:
        """The set-ups of the processes that wrote here last, newest first."""
        return self._read("recent_setups", lambda c: reads.recent_setups(c, limit), [])

    def list_sessions(self, limit: int = 50) -> List[Dict[str, Any]]:
        """Sessions newest first, with their rollup: one dict per session.

        Keys: session_id, name, task, tags, initiated, started_ns, ended_ns, last_end_ns,
        duration_s, services, span_count, llm_calls, input_tokens, output_tokens, cost, status
        (``open``, ``ended``, ``ok``, ``failed``), is_successful, is_successful_reason,
        session_eval, session_eval_reason, pending, delivered, failed (outbox items).
        """
        return self._read("list_sessions", lambda c: reads.list_sessions(c, limit), [])

    def session_spans(
        self, session_id: Optional[str], limit: Optional[int] = None
    ) -> List[SpanRecord]:
        """Every stored span of a session (None: spans with no session), by start time."""
        return self._read("session_spans",
                          lambda c: reads.session_spans(c, session_id, limit), [])

    def session_events(self, session_id: str) -> List[OutboxItem]:
        """The Lucidic events of a session, in recording order, whatever their state."""
        return self._read("session_events", lambda c: reads.session_events(c, session_id), [])

    # ------------------------------------------------------------------ lifecycle

    def stats(self) -> Dict[str, Any]:
        """Counters for this process: rows written, evicted (settled data removed by the cap),
        dropped (undelivered rows removed by the cap or lost writes), errors; and the mode
        (``file``, or ``memory`` after the file proved unusable)."""
        result: Dict[str, Any] = self._health.counters()
        result["mode"] = self._db.mode
        result["path"] = str(self._path)
        result["max_bytes"] = self._capacity.max_bytes
        return result

    def close(self) -> None:
        """Close this process's connections once its threads are done with the store (a later
        call reopens lazily). In memory mode, says how many undelivered items are lost."""
        if self._db.mode == MEMORY and self._db.mem_conn is not None:
            lost = self._fallback.undelivered_only_in_memory()
            if lost:
                logger.warning(
                    "lucidic-otel: %d undelivered outbox items were kept in memory because the "
                    "local store %s could not be used; they are lost now",
                    lost, self._path,
                )
        self._capacity.report_drops(force=True)
        if self._db.forked():
            self._after_fork()
            return
        self._db.close()
        self._fallback.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _on_fatal(self, exc: BaseException) -> bool:
        """The file is unusable: hand it to ``on_unusable`` (True), or switch to memory."""
        if self.on_unusable is not None:
            self.on_unusable(exc)
            return True
        if self._db.mode == FILE:
            self._fallback.switch(exc)
        return False

    def _after_fork(self) -> None:
        """Called in a child: drop (without closing) everything the parent had open."""
        self._db.after_fork()
        self._fallback.after_fork()
        self._health.after_fork()
        self._capacity.after_fork()
