"""The local store and outbox: one SQLite file (WAL mode) shared by every process on a machine.

Local-first (DESIGN 2.3): every span is kept here for the local tree view, and every backend
operation (session init, event, session end) is written here first, as an outbox item, before a
background sender delivers it. So nothing is lost when the backend is down or the process
restarts, a session's end can be held back until its events are delivered, and the CLI can
read what was recorded even with no API key at all.

Concurrency and durability
    Several processes write at once. WAL lets readers run next to the single writer; writes use
    ``BEGIN IMMEDIATE`` (take the write lock up front, so a transaction never fails half-way
    when upgrading a read lock), stay short (rows are encoded before the lock is taken), wait on
    ``busy_timeout`` and are retried with a bounded, jittered backoff on ``database is locked``.
    A batch of spans and the events derived from it is ONE transaction, so ``kill -9`` loses at
    most the batch in flight and never leaves half a batch.

    ``synchronous=NORMAL``: in WAL mode a commit appends to the WAL without an fsync, and the
    WAL is fsynced at checkpoints. The database can never be corrupted by a crash or power loss
    in this mode; a power loss (not a process crash: the OS still has the pages) can roll back
    the last few transactions. That is the right trade for telemetry, where ``FULL`` would cost
    one fsync per exported batch on the export thread.

    Connections are opened lazily, one per thread and per process. A SQLite connection must
    not cross ``fork()``: a child notices the pid change (and ``os.register_at_fork``) and
    opens its own, leaving the inherited objects untouched (closing them could disturb the
    parent's locks).

Size cap
    ``max_bytes`` caps the live size of the database (``(page_count - freelist) * page_size``;
    the WAL adds at most a few MB on top). The size is measured every ``_CHECK_EVERY_WRITES``
    writes or every ``max_bytes / 32`` bytes written, never on every write. Over the cap, the
    oldest *settled* data goes first without fuss: spans and delivered items of sessions that
    are ended (or were only joined) and have nothing left to deliver, sessionless spans, then
    delivered items of open sessions. Only if the store is still over the cap, undelivered
    data is dropped, just enough to get back to 90%: failed-aside items first (they will never
    be delivered), then the oldest data by time, spans of undelivered sessions and pending items
    alike, with a warning that says how much was dropped and names ``LUCIDIC_STORE_MAX_MB``.
    A second, rate-limited warning fires when undelivered data alone reaches 90% of the cap
    (measured from the outbox, or seen when eviction runs out of settled data), so it normally
    comes before anything is lost.

Degradation policy (never raise into callers, never lose data silently)
    * A file that cannot be used at all (cannot create the directory, read-only location,
      corrupt or foreign file, disk full, I/O error, a schema from a newer version): one
      warning naming the path, the error and the fix (at start-up, from :meth:`Store.check_path`,
      when the path itself rules the file out); the process then keeps working on a
      private in-memory database of the same schema, capped at ``min(max_bytes, 64 MB)`` with
      the same eviction rules and warnings. The sender can still deliver from it; what is
      undelivered at exit is counted and reported by :meth:`Store.close`. The file is never
      moved or deleted: another process may still be using it, and it is the user's data.
    * A write that still cannot take the lock after the bounded retries (another writer held it
      for seconds): the batch is dropped, counted in ``stats()["dropped"]`` and logged.
    * A value SQLite cannot bind (lone surrogates, integers over 64 bits, odd types): the batch
      is written again with every field coerced to text/number/None.
    * Reads that fail return an empty answer (and ``False`` for delivery questions, so a
      session end is never sent too early).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar

from lucidic_otel import gil

logger = logging.getLogger("lucidic_otel.outbox.store")

SCHEMA_VERSION = 1
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
PATH_VARIABLE = "LUCIDIC_STORE_PATH"
MAX_MB_VARIABLE = "LUCIDIC_STORE_MAX_MB"

KIND_SESSION_INIT = "session_init"
KIND_EVENT = "event"
KIND_SESSION_END = "session_end"
STATE_PENDING = "pending"
STATE_DELIVERED = "delivered"
STATE_FAILED = "failed"

_MIN_MAX_BYTES = 64 * 1024
_MEMORY_MAX_BYTES = 64 * 1024 * 1024
_BUSY_TIMEOUT_S = 1.0
# Sleeps between attempts after busy_timeout expired; the worst case stays under ~10 s.
_LOCK_RETRY_DELAYS = (0.01, 0.03, 0.1, 0.3, 1.0)
_JOURNAL_SIZE_LIMIT = 8 * 1024 * 1024
_CHECK_EVERY_WRITES = 64
_LOW_WATER = 0.8  # settled data is evicted down to this fraction of the cap
_DROP_TARGET = 0.9  # undelivered data is dropped only down to this fraction
_UNDELIVERED_WARN = 0.9
_EVICT_CHUNK = 2000
_MAX_EVICT_STEPS = 2000
_VACUUM_PAGES = 2048  # per pass: each moved page is also written to the WAL
_DROP_WARN_INTERVAL_S = 600.0  # later drops are summed into the next warning
_UNDELIVERED_WARN_INTERVAL_S = 3600.0
_ERROR_LOG_INTERVAL_S = 60.0
_MAX_CLAIM = 10000
_MAX_TEXT = 4000
# Rough on-disk bytes of a row beyond its variable text (ids, numbers, record header, index
# entries). With the page model in _on_disk, stored per row as ``nbytes`` so that sums of it
# estimate file space (how much the cap dropped, how much undelivered data there is).
_SPAN_OVERHEAD = 300
_OUTBOX_OVERHEAD = 120
_PAGE = 4096  # SQLite's default page size, which this module never changes
_MAX_LOCAL = _PAGE - 35  # the largest row a table leaf page holds without overflow pages

_COUNTERS = ("spans_written", "events_written", "lifecycle_written", "evicted", "dropped", "errors")

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


@dataclass
class SpanRecord:
    """One finished span as stored for the local tree view.

    Ids are lowercase hex (trace 32, span 16 chars). The LLM summary fields (model, tokens,
    cost) are filled for LLM spans only, so that listing sessions is a cheap aggregate instead
    of a parse of every span's attributes.
    """

    trace_id: str
    span_id: str
    parent_span_id: Optional[str] = None
    session_id: Optional[str] = None
    name: str = ""
    kind: str = "INTERNAL"
    service: Optional[str] = None
    pid: Optional[int] = None
    start_ns: int = 0
    end_ns: int = 0
    status_code: str = "UNSET"
    status_message: Optional[str] = None
    attributes: Dict[str, Any] = field(default_factory=dict)
    events: List[Dict[str, Any]] = field(default_factory=list)
    resource: Dict[str, Any] = field(default_factory=dict)
    event_id: Optional[str] = None
    event_type: Optional[str] = None
    model: Optional[str] = None
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    cost: Optional[float] = None

    @property
    def is_llm_call(self) -> bool:
        return self.event_type == "llm_generation" or self.model is not None


@dataclass
class OutboxItem:
    """One backend operation waiting for (or done with) delivery.

    ``kind`` is ``session_init``, ``event`` or ``session_end``; ``key`` is the
    ``client_event_id`` for events and the session id otherwise. ``seq`` is the global
    recording order: the sender delivers in that order.
    """

    seq: int
    kind: str
    session_id: str
    key: Optional[str]
    body: Dict[str, Any]
    attempts: int = 0
    state: str = STATE_PENDING
    next_attempt_at: float = 0.0
    last_error: Optional[str] = None
    created_at: float = 0.0


# ------------------------------------------------------------------------------- encoding

_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def _dumps(value: Any) -> str:
    """Compact JSON that never raises: unknown types become ``str``; the unencodable, a repr.

    ``ensure_ascii`` stays on so lone surrogates are escaped instead of failing to bind.
    """
    try:
        return _ENCODER.encode(value)
    except Exception:  # noqa: BLE001 - circular, non-str keys, a __str__ that raises ...
        try:
            shown = repr(value)[:_MAX_TEXT]
        except Exception:  # noqa: BLE001
            shown = f"<unrepresentable {type(value).__name__}>"
        return _ENCODER.encode({"_unencodable": shown})


def _loads(text: Optional[str], empty: Any) -> Any:
    if not text:
        return empty
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return {"_undecodable": text[:_MAX_TEXT]}


def _text(value: Any) -> Optional[str]:
    """A value SQLite can always bind as TEXT (used only when the fast path failed)."""
    if value is None:
        return None
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # noqa: BLE001
        text = f"<unprintable {type(value).__name__}>"
    return text.encode("utf-8", "replace").decode("utf-8")


def _int(value: Any) -> Optional[int]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = int(value)
    except (ValueError, OverflowError):
        return None
    return number if -(2**63) <= number < 2**63 else None


def _float(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


# --------------------------------------------------------------------------------- schema

_SCHEMA = (
    # A session known to this store: opened here (initiated=1), or only seen on spans/events.
    # The rollup columns are maintained at write time so the CLI list needs no scan of spans.
    """CREATE TABLE IF NOT EXISTS sessions (
        no INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL UNIQUE,
        initiated INTEGER NOT NULL DEFAULT 0,
        name TEXT,
        task TEXT,
        meta TEXT,
        started_ns INTEGER,
        last_end_ns INTEGER,
        ended_ns INTEGER,
        is_successful INTEGER,
        is_successful_reason TEXT,
        session_eval REAL,
        session_eval_reason TEXT,
        span_count INTEGER NOT NULL DEFAULT 0,
        llm_calls INTEGER NOT NULL DEFAULT 0,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cost REAL NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS sessions_started ON sessions(started_ns)",
    "CREATE INDEX IF NOT EXISTS sessions_updated ON sessions(updated_at)",
    """CREATE TABLE IF NOT EXISTS session_services (
        session_no INTEGER NOT NULL,
        service TEXT NOT NULL,
        PRIMARY KEY (session_no, service)
    ) WITHOUT ROWID""",
    # Resources repeat on every span of a process; stored once.
    """CREATE TABLE IF NOT EXISTS resources (
        id INTEGER PRIMARY KEY,
        json TEXT NOT NULL UNIQUE
    )""",
    """CREATE TABLE IF NOT EXISTS spans (
        id INTEGER PRIMARY KEY,
        session_no INTEGER,
        resource_id INTEGER,
        trace_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        parent_span_id TEXT,
        name TEXT NOT NULL,
        kind TEXT,
        service TEXT,
        pid INTEGER,
        start_ns INTEGER,
        end_ns INTEGER,
        status_code TEXT,
        status_message TEXT,
        attributes TEXT NOT NULL,
        events TEXT NOT NULL,
        event_id TEXT,
        event_type TEXT,
        model TEXT,
        input_tokens INTEGER,
        output_tokens INTEGER,
        cost REAL,
        nbytes INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS spans_session ON spans(session_no)",
    # seq never goes back (AUTOINCREMENT), even after the newest rows were evicted.
    """CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('session_init', 'event', 'session_end')),
        session_id TEXT NOT NULL,
        key TEXT,
        body TEXT NOT NULL,
        nbytes INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        lease_until REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_state ON outbox(state, seq)",
    "CREATE INDEX IF NOT EXISTS outbox_session ON outbox(session_id, state, seq)",
    """CREATE INDEX IF NOT EXISTS outbox_pending_init ON outbox(session_id, seq)
        WHERE kind = 'session_init' AND state = 'pending'""",
)

# Added after schema version 1 shipped: created with IF NOT EXISTS on every open, so files
# written before them gain them without a version bump. The index serves the sender's walk up
# a trace to an event's nearest ancestor event; the aliases keep the session id the backend
# assigned in answer to ``initsession`` (contract: adopt it), across processes and restarts.
_SCHEMA_ADDITIONS = (
    "CREATE INDEX IF NOT EXISTS spans_trace ON spans(trace_id, span_id)",
    """CREATE TABLE IF NOT EXISTS session_aliases (
        session_id TEXT PRIMARY KEY,
        backend_session_id TEXT NOT NULL
    ) WITHOUT ROWID""",
    # How each recording process set OpenTelemetry up (who won the launcher's race, whether
    # the lucidic pipeline was attached and why), for ``doctor``; the newest rows are kept.
    """CREATE TABLE IF NOT EXISTS setups (
        id INTEGER PRIMARY KEY,
        recorded_at REAL NOT NULL,
        json TEXT NOT NULL
    )""",
)
_SETUPS_KEPT = 20
_MAX_ANCESTOR_DEPTH = 256

_INSERT_SPAN = (
    "INSERT INTO spans (session_no, resource_id, trace_id, span_id, parent_span_id, name, kind,"
    " service, pid, start_ns, end_ns, status_code, status_message, attributes, events, event_id,"
    " event_type, model, input_tokens, output_tokens, cost, nbytes)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_OUTBOX = (
    "INSERT INTO outbox (kind, session_id, key, body, nbytes, state, last_error, created_at,"
    " updated_at) VALUES (?,?,?,?,?,?,?,?,?)"
)
# No UPSERT (SQLite >= 3.24): Python 3.9 builds on older distributions link an older SQLite.
# Everything here works from SQLite 3.8.3 on.
_ENSURE_SESSION = "INSERT OR IGNORE INTO sessions (session_id, updated_at) VALUES (?, ?)"
_ADD_SESSION_ROLLUP = """
    UPDATE sessions SET
        started_ns = min(coalesce(started_ns, :start), coalesce(:start, started_ns)),
        last_end_ns = max(coalesce(last_end_ns, :end), coalesce(:end, last_end_ns)),
        span_count = span_count + :spans,
        llm_calls = llm_calls + :llm,
        input_tokens = input_tokens + :input_tokens,
        output_tokens = output_tokens + :output_tokens,
        cost = cost + :cost,
        updated_at = :now
    WHERE session_id = :session_id
"""
_TOUCH_SESSION = "UPDATE sessions SET updated_at = ? WHERE session_id = ?"
_MARK_SESSION_INITIATED = """
    UPDATE sessions SET
        initiated = 1,
        name = coalesce(:name, name),
        task = coalesce(:task, task),
        meta = :meta,
        started_ns = min(coalesce(started_ns, :start), :start),
        updated_at = :now
    WHERE session_id = :session_id
"""
_UPDATE_SESSION_END = """
    UPDATE sessions SET
        ended_ns = ?,
        is_successful = coalesce(?, is_successful),
        is_successful_reason = coalesce(?, is_successful_reason),
        session_eval = coalesce(?, session_eval),
        session_eval_reason = coalesce(?, session_eval_reason),
        task = coalesce(?, task),
        updated_at = ?
    WHERE no = ?
"""
_OUTBOX_COLUMNS = (
    "seq, kind, session_id, key, body, attempts, state, next_attempt_at, last_error, created_at"
)
# An end waits for every earlier item of its session; an event waits for its session's init.
_CLAIMABLE = f"""
    SELECT {_OUTBOX_COLUMNS} FROM outbox AS o
    WHERE o.state = 'pending' AND o.next_attempt_at <= ? AND o.lease_until <= ?
      AND NOT (o.kind = 'session_end' AND EXISTS (
            SELECT 1 FROM outbox AS p
            WHERE p.session_id = o.session_id AND p.state = 'pending' AND p.seq < o.seq))
      AND NOT (o.kind = 'event' AND EXISTS (
            SELECT 1 FROM outbox AS p
            WHERE p.session_id = o.session_id AND p.kind = 'session_init'
              AND p.state = 'pending' AND p.seq < o.seq))
    ORDER BY o.seq LIMIT ?
"""
# When the next item becomes claimable, ignoring items held back by ordering (their blockers
# are pending too and are counted instead).
_NEXT_DUE = """
    SELECT min(max(o.next_attempt_at, o.lease_until)) FROM outbox AS o
    WHERE o.state = 'pending'
      AND NOT (o.kind = 'session_end' AND EXISTS (
            SELECT 1 FROM outbox AS p
            WHERE p.session_id = o.session_id AND p.state = 'pending' AND p.seq < o.seq))
      AND NOT (o.kind = 'event' AND EXISTS (
            SELECT 1 FROM outbox AS p
            WHERE p.session_id = o.session_id AND p.kind = 'session_init'
              AND p.state = 'pending' AND p.seq < o.seq))
"""
_SPAN_COLUMNS = (
    "s.trace_id, s.span_id, s.parent_span_id, s.name, s.kind, s.service, s.pid, s.start_ns,"
    " s.end_ns, s.status_code, s.status_message, s.attributes, s.events, s.event_id,"
    " s.event_type, s.model, s.input_tokens, s.output_tokens, s.cost, s.resource_id, r.json"
)
_LIST_SESSIONS = """
    SELECT no, session_id, name, task, meta, initiated, started_ns, last_end_ns, ended_ns,
           is_successful, is_successful_reason, session_eval, session_eval_reason,
           span_count, llm_calls, input_tokens, output_tokens, cost
    FROM sessions ORDER BY coalesce(started_ns, 0) DESC, no DESC LIMIT ?
"""
# Settled: not an open session of ours, and nothing left to deliver. Oldest activity first.
_SETTLED_SESSION = """
    SELECT s.no, s.session_id, (SELECT min(id) FROM spans WHERE session_no = s.no)
    FROM sessions AS s
    WHERE NOT (s.initiated = 1 AND s.ended_ns IS NULL)
      AND NOT EXISTS (SELECT 1 FROM outbox AS o
                      WHERE o.session_id = s.session_id AND o.state = 'pending')
    ORDER BY s.updated_at, s.no LIMIT 1
"""

# What a switch to the memory fallback carries over from the file (see Store._carry_into).
# Leases are not carried (lease_until = 0): the sender holding one may be unable to mark
# the item, in the file (a delivery process, another process) or at all, and a kept lease would
# hold the item, and every later item of its session, for up to half a minute. An item in
# flight at the switch may so be sent twice, with the same client_event_id (at-least-once).
_CARRY_OUTBOX = (
    "SELECT seq, kind, session_id, key, body, nbytes, attempts, next_attempt_at, 0,"
    " last_error, created_at, updated_at FROM outbox WHERE state = 'pending' ORDER BY seq"
)
_CARRIED_SESSION_COLUMNS = (
    "session_id, initiated, name, task, meta, started_ns, last_end_ns, ended_ns, is_successful,"
    " is_successful_reason, session_eval, session_eval_reason, span_count, llm_calls,"
    " input_tokens, output_tokens, cost, updated_at"
)
# Sessions with pending items, and sessions opened here and not ended yet (their end must be
# recordable in memory); filtered in Python against the carried items.
_CARRY_SESSIONS = (
    f"SELECT {_CARRIED_SESSION_COLUMNS} FROM sessions AS s"
    " WHERE (s.initiated = 1 AND s.ended_ns IS NULL) OR EXISTS (SELECT 1 FROM outbox AS o"
    " WHERE o.session_id = s.session_id AND o.state = 'pending')"
)
_CARRIED_SESSION_MARKS = ",".join("?" * len(_CARRIED_SESSION_COLUMNS.split(",")))
_CARRY_ALIASES = "SELECT session_id, backend_session_id FROM session_aliases"
_CARRY_TIMEOUT_S = 5.0


# ------------------------------------------------------------------------------ errors


class _UnusableStoreError(Exception):
    """The file opened but is not a store this version can write (newer schema)."""


class _BadDataError(Exception):
    """A value could not be bound; the caller retries with coerced values."""


class _BadPathError(Exception):
    """The path can never hold a store; found by :func:`store_path_problem`, before opening."""

    def __init__(self, problem: StorePathProblem) -> None:
        super().__init__(problem.reason)
        self.problem = problem


class _UnavailableError(Exception):
    """The operation could not be completed (lock held too long, memory store failed)."""


class _SwitchedError(Exception):
    """The store moved to memory while this transaction waited for the file; retry there."""


def _classify(exc: BaseException) -> str:
    """``locked`` (retry), ``data`` (coerce and retry), ``fatal`` (file unusable) or ``bug``."""
    if isinstance(exc, sqlite3.OperationalError):
        message = str(exc).lower()
        if "locked" in message or "busy" in message:
            return "locked"
    if isinstance(
        exc,
        (sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.IntegrityError,
         UnicodeError, OverflowError, TypeError, ValueError),
    ):
        return "data"
    if isinstance(exc, (sqlite3.DatabaseError, OSError, _UnusableStoreError, _BadPathError)):
        return "fatal"
    return "bug"


def _root_cause(exc: BaseException) -> BaseException:
    """The error behind this module's own wrapper exceptions, for log messages."""
    if isinstance(exc, (_UnavailableError, _BadDataError)) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


def _describe(exc: BaseException) -> str:
    """The error for the warning line: our own path reasons need no exception type."""
    return str(exc) if isinstance(exc, _BadPathError) else f"{type(exc).__name__}: {exc}"


def _remedy(exc: BaseException, path: Path) -> str:
    message = str(exc).lower()
    if isinstance(exc, _BadPathError):
        return exc.problem.remedy
    if isinstance(exc, _UnusableStoreError):
        return (
            f"upgrade lucidic-otel in this environment or point {PATH_VARIABLE} at another "
            "file, then restart"
        )
    if "not a database" in message or "malformed" in message or "corrupt" in message:
        return (
            f"the file is damaged or is not a lucidic-otel store: move it aside (mv '{path}' "
            f"'{path}.bad') or point {PATH_VARIABLE} at another file, then restart"
        )
    if "full" in message or getattr(exc, "errno", None) == 28:
        return f"free disk space (or lower {MAX_MB_VARIABLE}), then restart"
    if (
        isinstance(exc, (PermissionError, NotADirectoryError, FileExistsError))
        or "readonly" in message
        or "read-only" in message
        or "unable to open" in message
        or "permission" in message
    ):
        return (
            f"make '{path.parent}' writable by this user or point {PATH_VARIABLE} at a "
            "writable location, then restart"
        )
    return (
        "check the disk and the file system (network file systems without working locks are "
        f"not supported) or point {PATH_VARIABLE} at a file on a local disk, then restart"
    )


@dataclass(frozen=True)
class StorePathProblem:
    """Why a path can never hold the store (``reason``) and what to do (``remedy``)."""

    reason: str
    remedy: str


def store_path_problem(path: os.PathLike[str] | str) -> Optional[StorePathProblem]:
    """What makes ``path`` unusable as a store, known without creating or opening anything.

    Only certain answers: a directory where the file should be, a regular file where a
    directory should be, or a missing file whose nearest existing directory this user cannot
    write (so neither it nor its directory can be created). Whatever else can go wrong (a
    damaged or read-only file, a full disk) is only known by opening the file, and is
    reported then. Never raises: a path it cannot examine gets None.
    """
    try:
        path = Path(os.path.abspath(os.fspath(path)))
        if path.is_dir():
            return StorePathProblem(
                "it is a directory, and a file path is expected",
                f"point {PATH_VARIABLE} at a file, for example '{path / 'store.db'}', then "
                "restart",
            )
        if path.exists() or path.is_symlink():
            return None  # a file: opening it tells whether it is a usable store
        ancestor = path.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            return StorePathProblem(
                f"'{ancestor}' is a file, not a directory",
                f"point {PATH_VARIABLE} at a file in a directory (not under the file "
                f"'{ancestor}'), then restart",
            )
        if not os.access(ancestor, os.W_OK | os.X_OK):
            missing = "the file" if ancestor == path.parent else f"the directory '{path.parent}'"
            return StorePathProblem(
                f"{missing} cannot be created: '{ancestor}' is not writable by this user",
                f"make '{ancestor}' writable by this user or point {PATH_VARIABLE} at a "
                "writable location, then restart",
            )
    except (OSError, ValueError):
        return None
    return None


# Connections inherited across fork() are never used nor closed in the child (closing could
# release or disturb the parent's locks); they are parked here so garbage collection does not
# close them either. At most one per thread that had a connection at fork time.
_ABANDONED: List[sqlite3.Connection] = []
_LIVE_STORES: weakref.WeakSet[Store] = weakref.WeakSet()


def _reset_stores_after_fork() -> None:
    for store in list(_LIVE_STORES):
        store._after_fork()


class _ForkGate:
    """No transaction of this process is open while it forks.

    SQLite keeps, per process, which of its connections hold which file lock. A child forked
    while a thread of the parent was inside a transaction (the sender claiming, the exporter
    writing) inherits that record with a connection that will never finish: every new
    connection in the child is then refused with "database is locked", and a pool worker's
    spans were lost (seen: 1 of 6 events delivered, about one run in five). So a fork waits
    (bounded) for open transactions to end and holds new ones back until it is done.
    """

    WAIT_S = 2.0

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._open = 0
        self._held = False

    def enter(self) -> None:
        with self._cond:
            self._open += 1

    def leave(self) -> None:
        with self._cond:
            self._open -= 1
            if self._open == 0:
                self._cond.notify_all()

    def before_fork(self) -> None:
        self._cond.acquire()  # new transactions wait from here until the fork is done
        self._held = True
        self._cond.wait_for(lambda: self._open == 0, timeout=self.WAIT_S)

    def after_fork_in_parent(self) -> None:
        if self._held:
            self._held = False
            self._cond.release()

    def after_fork_in_child(self) -> None:
        self.__init__()  # type: ignore[misc]  # no other thread exists in the child


_FORK_GATE = _ForkGate()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_FORK_GATE.before_fork,
        after_in_parent=_FORK_GATE.after_fork_in_parent,
        after_in_child=_FORK_GATE.after_fork_in_child,
    )
    os.register_at_fork(after_in_child=_reset_stores_after_fork)


class _Group:
    """Per-session aggregate of one batch, applied to the session row in one update."""

    __slots__ = ("spans", "llm", "input_tokens", "output_tokens", "cost", "start", "end",
                 "services")

    def __init__(self) -> None:
        self.spans = 0
        self.llm = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost = 0.0
        self.start: Optional[int] = None
        self.end: Optional[int] = None
        self.services: set = set()


class _PreparedBatch:
    """A batch encoded outside the transaction, so the write lock is held only for inserts."""

    __slots__ = ("span_rows", "groups", "resources", "event_rows", "event_sessions", "nbytes")

    def __init__(self) -> None:
        # (session_id, resource_json, row values after session_no and resource_id)
        self.span_rows: List[Tuple[Optional[str], str, tuple]] = []
        self.groups: Dict[str, _Group] = {}
        self.resources: Dict[str, None] = {}
        self.event_rows: List[tuple] = []
        self.event_sessions: Dict[str, None] = {}
        self.nbytes = 0


# -------------------------------------------------------------------------------- store


class Store:
    """The local store and outbox. Thread-safe, fork-safe, and it never raises I/O errors.

    Construct it with a path (see :func:`default_store_path`) and a size cap in bytes; nothing
    is opened until the first call.
    """

    def __init__(
        self,
        path: os.PathLike[str] | str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        delivery_enabled: bool = True,
    ):
        # Absolute once: a later chdir must not move the store (nor part the application
        # from its delivery process, which opens it by name).
        self._path = Path(os.path.abspath(os.fspath(path)))
        self._max_bytes = max(int(max_bytes), _MIN_MAX_BYTES)
        # Without delivery (no API key) the outbox is just the local store: nothing is "waiting",
        # so reaching the cap is routine housekeeping, reported at info level, not a warning.
        self._delivery_enabled = bool(delivery_enabled)
        self._state_lock = threading.Lock()
        self._mem_lock = threading.Lock()
        self._local = threading.local()
        self._conns: Dict[int, sqlite3.Connection] = {}
        self._generation = 0
        self._pid = os.getpid()
        self._mode = "file"
        self._mem_conn: Optional[sqlite3.Connection] = None
        self._schema_ready = False
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._writes_since_check = 0
        self._bytes_since_check = 0
        self._checked_once = False
        self._last_warned: Dict[str, float] = {}
        self._drop_unreported = [0, 0, 0]  # spans, outbox items, bytes
        self._carried_up_to = 0  # items up to this seq are in the file too (after a switch)
        # Called instead of the switch to memory when set: a delivery process has no use for
        # a memory store (the application writes to the file) and hands back to it instead.
        self.on_unusable: Optional[Callable[[BaseException], None]] = None
        self._file_marks_lock = threading.Lock()
        self._file_marks_conn: Optional[sqlite3.Connection] = None
        self._file_marks_failures = 0
        _LIVE_STORES.add(self)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def delivery_enabled(self) -> bool:
        return self._delivery_enabled

    @property
    def in_memory(self) -> bool:
        """True once this process fell back to the in-memory store (no other process sees it)."""
        return self._mode == "memory"

    def check_path(self) -> bool:
        """Report a path that can never hold the store now, instead of at the first write.

        The exporter calls this at start-up: its first write is often at exit, and a warning
        printed after all of the program's own output is easily missed. Such a path moves
        this process to the in-memory store at once, with the usual single warning (or is
        handed to ``on_unusable``, as a failed open would be). Creates and opens nothing.
        Returns False when the path cannot be used.
        """
        if self._mode != "file":
            return False
        problem = store_path_problem(self._path)
        if problem is None:
            return True
        error = _BadPathError(problem)
        if self.on_unusable is not None:
            self.on_unusable(error)
        else:
            self._switch_to_memory(error)
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
        try:
            spans = list(spans)
            events = list(events)
        except Exception:  # noqa: BLE001 - a broken iterable must not break the exporter
            self._log_error("write_batch", None)
            return False
        if not spans and not events:
            return True

        def prepare(sanitize: bool) -> _PreparedBatch:
            return self._prepare_batch(spans, events, time.time(), sanitize)

        stored = self._write("write_batch", prepare, self._apply_batch, len(spans) + len(events))
        if stored:
            self._count(spans_written=len(spans), events_written=len(events))
        return stored

    def record_session_init(self, session_id: str, body: Mapping[str, Any]) -> Optional[int]:
        """Record that this store opened ``session_id``: an ``initsession`` outbox item.

        Only sessions opened locally get lifecycle items; sessions merely joined through
        baggage appear through their spans. Returns the item's seq, None if it was lost.
        """
        now = time.time()

        def prepare(sanitize: bool) -> tuple:
            sid = _text(session_id) if sanitize else session_id
            name = body.get("session_name") if isinstance(body, Mapping) else None
            task = body.get("task") if isinstance(body, Mapping) else None
            body_json = _dumps(body)
            return (sid, _text(name), _text(task), body_json, time.time_ns(), now)

        def apply(conn: sqlite3.Connection, row: tuple) -> Tuple[int, int]:
            sid, name, task, body_json, now_ns, now_s = row
            conn.execute(_ENSURE_SESSION, (sid, now_s))
            conn.execute(
                _MARK_SESSION_INITIATED,
                {"session_id": sid, "name": name, "task": task, "meta": body_json,
                 "start": now_ns, "now": now_s},
            )
            size = _outbox_size(body_json, sid, sid)
            cur = conn.execute(
                _INSERT_OUTBOX,
                (KIND_SESSION_INIT, sid, sid, body_json, size, STATE_PENDING, None, now_s, now_s),
            )
            return cur.lastrowid, size

        return self._write_lifecycle("record_session_init", prepare, apply)

    def record_session_end(self, session_id: str, body: Mapping[str, Any]) -> Optional[int]:
        """Record the end of a session this store opened: an ``updatesession`` outbox item.

        The end's seq is after every event recorded before it, so the sender can hold it
        back until :meth:`session_events_delivered`. For a session that was not initiated
        here nothing is recorded (a process that only joined a session never ends it) and
        None is returned, as it is when the record was lost.
        """
        now = time.time()

        def prepare(sanitize: bool) -> tuple:
            get = body.get if isinstance(body, Mapping) else (lambda _key: None)
            successful = get("is_successful")
            return (
                _text(session_id) if sanitize else session_id,
                None if successful is None else int(bool(successful)),
                _text(get("is_successful_reason")),
                _float(get("session_eval")),
                _text(get("session_eval_reason")),
                _text(get("task")),
                _dumps(body),
                time.time_ns(),
                now,
            )

        def apply(conn: sqlite3.Connection, row: tuple) -> Tuple[Optional[int], int]:
            sid, successful, reason, evaluation, eval_reason, task, body_json, now_ns, now_s = row
            found = conn.execute(
                "SELECT no, initiated FROM sessions WHERE session_id = ?", (sid,)
            ).fetchone()
            if found is None or not found[1]:
                return None, 0
            conn.execute(
                _UPDATE_SESSION_END,
                (now_ns, successful, reason, evaluation, eval_reason, task, now_s, found[0]),
            )
            size = _outbox_size(body_json, sid, sid)
            cur = conn.execute(
                _INSERT_OUTBOX,
                (KIND_SESSION_END, sid, sid, body_json, size, STATE_PENDING, None, now_s, now_s),
            )
            return cur.lastrowid, size

        seq = self._write_lifecycle("record_session_end", prepare, apply)
        if seq is None:
            logger.debug("session %r was not opened by this store; no end recorded", session_id)
        return seq

    def merge_llm_layer(self, merge: Any) -> bool:
        """A late layer of an LLM call joined its event (``lucidic_otel.convert.layers.LateMerge``).

        The event keeps its id; its body is replaced while it is still pending (one that is
        already delivered keeps the body the backend has). The span holding it gets the
        merged model, tokens and cost, and its session's totals change by the difference, so
        the call is still counted once.
        """
        now = time.time()
        body = _dumps(merge.body)
        size = _outbox_size(body, merge.session_id, merge.event_key)

        def apply(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "UPDATE outbox SET body = ?, nbytes = ?, updated_at = ? WHERE kind = 'event'"
                " AND session_id = ? AND key = ? AND state = 'pending'",
                (body, size, now, merge.session_id, merge.event_key),
            )
            row = conn.execute(
                "SELECT id, session_no, input_tokens, output_tokens, cost FROM spans"
                " WHERE trace_id = ? AND span_id = ? LIMIT 1",
                (merge.trace_id, merge.span_id),
            ).fetchone()
            if row is None:
                return False
            new_in, new_out = _int(merge.input_tokens), _int(merge.output_tokens)
            new_cost = _float(merge.cost)
            conn.execute(
                "UPDATE spans SET model = ?, input_tokens = ?, output_tokens = ?, cost = ?"
                " WHERE id = ?",
                (_text(merge.model), new_in, new_out, new_cost, row[0]),
            )
            if row[1] is not None:
                conn.execute(
                    "UPDATE sessions SET input_tokens = input_tokens + ?,"
                    " output_tokens = output_tokens + ?, cost = cost + ?, updated_at = ?"
                    " WHERE no = ?",
                    ((new_in or 0) - (row[2] or 0), (new_out or 0) - (row[3] or 0),
                     (new_cost or 0.0) - (row[4] or 0.0), now, row[1]),
                )
            return True

        return self._guarded("merge_llm_layer", lambda: self._transact(apply, write=True), False)

    # ------------------------------------------------------------------ outbox

    def claim_pending(
        self, limit: int, now: float, lease_seconds: float = 60.0
    ) -> List[OutboxItem]:
        """Lease up to ``limit`` deliverable items, oldest first, for ``lease_seconds``.

        Deliverable: pending, due (``next_attempt_at <= now``), not leased by another sender,
        and in order: an end only once every earlier item of its session is settled, an event
        only once its session's init is settled. The lease keeps senders of other processes
        off these items; if this sender dies, they become claimable again when it expires.
        ``attempts`` counts claims.
        """
        limit = max(1, min(int(limit), _MAX_CLAIM))
        now = float(now)

        def claim(conn: sqlite3.Connection) -> List[OutboxItem]:
            items = [_outbox_item(row) for row in conn.execute(_CLAIMABLE, (now, now, limit))]
            if items:
                conn.executemany(
                    "UPDATE outbox SET lease_until = ?, attempts = attempts + 1 WHERE seq = ?",
                    [(now + lease_seconds, item.seq) for item in items],
                )
                for item in items:
                    item.attempts += 1
            return items

        return self._guarded("claim_pending", lambda: self._transact(claim, write=True), [])

    def mark_delivered(self, seqs: Sequence[int]) -> bool:
        """The backend accepted these items. Kept (for the CLI) until the cap evicts them."""
        now = time.time()
        rows = [(now, int(seq)) for seq in seqs]
        sql = (
            "UPDATE outbox SET state = 'delivered', lease_until = 0, last_error = NULL,"
            " updated_at = ? WHERE seq = ? AND state = 'pending'"
        )
        self._mark_in_file_too(sql, rows)
        return self._update("mark_delivered", sql, rows)

    def mark_retry(self, seq: int, error: str, next_attempt_at: float) -> bool:
        """Delivery failed for a transient reason; try again at ``next_attempt_at``."""
        sql = (
            "UPDATE outbox SET next_attempt_at = ?, last_error = ?, lease_until = 0,"
            " updated_at = ? WHERE seq = ? AND state = 'pending'"
        )
        row = (float(next_attempt_at), _text(error)[:_MAX_TEXT] if error else None,
               time.time(), int(seq))
        return self._update("mark_retry", sql, [row])

    def mark_failed(self, seq: int, reason: str) -> bool:
        """Move an item aside for good (the backend rejected it); the reason stays visible."""
        sql = (
            "UPDATE outbox SET state = 'failed', last_error = ?, lease_until = 0, updated_at = ?"
            " WHERE seq = ? AND state = 'pending'"
        )
        row = (_text(reason)[:_MAX_TEXT] if reason else "failed", time.time(), int(seq))
        self._mark_in_file_too(sql, [row])
        return self._update("mark_failed", sql, [row])

    def session_events_delivered(self, session_id: str, up_to_seq: int) -> bool:
        """True when no item of ``session_id`` recorded before ``up_to_seq`` is still pending.

        Pass the seq of the session's end item. Failed-aside and evicted items count as
        settled (they will never be delivered, and must not hold the end back forever). On any
        read error the answer is False, so an end is never sent too early.
        """

        def read(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM outbox WHERE session_id = ? AND state = 'pending' AND seq < ?"
                " LIMIT 1",
                (session_id, int(up_to_seq)),
            ).fetchone()
            return row is None

        return self._guarded(
            "session_events_delivered", lambda: self._transact(read, write=False), False
        )

    def is_initiated(self, session_id: str) -> bool:
        """True if this store recorded a ``session_init`` for ``session_id``."""

        def read(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT initiated FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            return bool(row and row[0])

        return self._guarded("is_initiated", lambda: self._transact(read, write=False), False)

    def outbox_counts(self) -> Dict[str, int]:
        """Outbox items by state: ``pending``, ``delivered``, ``failed``."""

        def read(conn: sqlite3.Connection) -> Dict[str, int]:
            counts = dict.fromkeys((STATE_PENDING, STATE_DELIVERED, STATE_FAILED), 0)
            for state, count in conn.execute("SELECT state, count(*) FROM outbox GROUP BY state"):
                counts[state] = count
            return counts

        empty = dict.fromkeys((STATE_PENDING, STATE_DELIVERED, STATE_FAILED), 0)
        return self._guarded("outbox_counts", lambda: self._transact(read, write=False), empty)

    def failed_items(self, limit: int = 100) -> List[OutboxItem]:
        """Items moved aside, oldest first, with the reason in ``last_error``."""

        def read(conn: sqlite3.Connection) -> List[OutboxItem]:
            rows = conn.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state = 'failed' ORDER BY seq"
                " LIMIT ?",
                (int(limit),),
            )
            return [_outbox_item(row) for row in rows]

        return self._guarded("failed_items", lambda: self._transact(read, write=False), [])

    # ------------------------------------------------------------------ sender support

    def next_due_at(self) -> Optional[float]:
        """The earliest time a pending item not held back by ordering can be claimed.

        That is the latest of its retry time and its lease; None when nothing is pending. The
        sender sleeps until then instead of polling, and knows when a drain can stop.
        """

        def read(conn: sqlite3.Connection) -> Optional[float]:
            row = conn.execute(_NEXT_DUE).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return self._guarded("next_due_at", lambda: self._transact(read, write=False), None)

    def make_due(self) -> int:
        """Make every pending item due now (``lucidic-otel upload``: the user asked for it);
        leases are left alone. Returns how many items were rescheduled."""

        def apply(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE outbox SET next_attempt_at = 0 WHERE state = 'pending'"
                " AND next_attempt_at > 0"
            ).rowcount

        return self._guarded("make_due", lambda: self._transact(apply, write=True), 0)

    def nearest_event_ancestors(
        self, starts: Sequence[Tuple[str, Optional[str]]]
    ) -> List[Optional[str]]:
        """For each ``(trace_id, parent_span_id)``, the event id of the nearest span up that
        chain (the parent itself first) that is an event, or None.

        Walks the spans stored by every process of this store, so a parent recorded by another
        service on the machine counts; the walk stops at a span that is not stored (not ended
        yet, or never seen here). One read transaction for the whole list.
        """

        def read(conn: sqlite3.Connection) -> List[Optional[str]]:
            found: List[Optional[str]] = []
            for trace_id, span_id in starts:
                result = None
                seen = 0
                while span_id and seen < _MAX_ANCESTOR_DEPTH:
                    seen += 1
                    row = conn.execute(
                        "SELECT parent_span_id, event_type, event_id FROM spans"
                        " WHERE trace_id = ? AND span_id = ? LIMIT 1",
                        (trace_id, span_id),
                    ).fetchone()
                    if row is None:
                        break
                    if row[1] is not None and row[2]:
                        result = row[2]
                        break
                    span_id = row[0]
                found.append(result)
            return found

        nothing: List[Optional[str]] = [None] * len(starts)
        return self._guarded(
            "nearest_event_ancestors", lambda: self._transact(read, write=False), nothing
        )

    def set_session_alias(self, session_id: str, backend_session_id: str) -> bool:
        """Remember that the backend calls ``session_id`` ``backend_session_id`` from now on."""
        sql = (
            "INSERT OR REPLACE INTO session_aliases (session_id, backend_session_id)"
            " VALUES (?, ?)"
        )
        return self._update("set_session_alias", sql, [(session_id, backend_session_id)])

    def session_aliases(self, session_ids: Sequence[str]) -> Dict[str, str]:
        """The backend's ids for those of ``session_ids`` it renamed (others are absent)."""
        wanted = sorted(set(session_ids))

        def read(conn: sqlite3.Connection) -> Dict[str, str]:
            aliases: Dict[str, str] = {}
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for sid, backend_id in conn.execute(
                    "SELECT session_id, backend_session_id FROM session_aliases"
                    f" WHERE session_id IN ({marks})",
                    chunk,
                ):
                    aliases[sid] = backend_id
            return aliases

        if not wanted:
            return {}
        return self._guarded("session_aliases", lambda: self._transact(read, write=False), {})

    def record_setup(self, report: Mapping[str, Any]) -> bool:
        """Keep how this process set OpenTelemetry up (``bootstrap.setup_report``)."""
        row = (time.time(), _dumps(dict(report)))

        def apply(conn: sqlite3.Connection) -> bool:
            conn.execute("INSERT INTO setups (recorded_at, json) VALUES (?, ?)", row)
            conn.execute(
                "DELETE FROM setups WHERE id <= (SELECT MAX(id) FROM setups) - ?", (_SETUPS_KEPT,)
            )
            return True

        return self._guarded("record_setup", lambda: self._transact(apply, write=True), False)

    def recent_setups(self, limit: int = 5) -> List[Dict[str, Any]]:
        """The set-ups of the processes that wrote here last, newest first."""

        def read(conn: sqlite3.Connection) -> List[Dict[str, Any]]:
            rows = conn.execute(
                "SELECT recorded_at, json FROM setups ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
            return [{**_loads(text, {}), "recorded_at": at} for at, text in rows]

        return self._guarded("recent_setups", lambda: self._transact(read, write=False), [])

    # ------------------------------------------------------------------ CLI reads

    def list_sessions(self, limit: int = 50) -> List[Dict[str, Any]]:
        """Sessions newest first, with their rollup: one dict per session.

        Keys: session_id, name, task, tags, initiated, started_ns, ended_ns, last_end_ns,
        duration_s, services, span_count, llm_calls, input_tokens, output_tokens, cost, status
        (``open``, ``ended``, ``ok``, ``failed``), is_successful, is_successful_reason,
        session_eval, session_eval_reason, pending, delivered, failed (outbox items).
        """

        def read(conn: sqlite3.Connection) -> List[Dict[str, Any]]:
            sessions = []
            for row in conn.execute(_LIST_SESSIONS, (int(limit),)).fetchall():
                sessions.append(_session_dict(conn, row))
            return sessions

        return self._guarded("list_sessions", lambda: self._transact(read, write=False), [])

    def session_spans(
        self, session_id: Optional[str], limit: Optional[int] = None
    ) -> List[SpanRecord]:
        """Every stored span of a session (None: spans with no session), by start time."""

        def read(conn: sqlite3.Connection) -> List[SpanRecord]:
            if session_id is None:
                where, params = "s.session_no IS NULL", ()
            else:
                where = "s.session_no = (SELECT no FROM sessions WHERE session_id = ?)"
                params = (session_id,)
            rows = conn.execute(
                f"SELECT {_SPAN_COLUMNS} FROM spans AS s"
                " LEFT JOIN resources AS r ON r.id = s.resource_id"
                f" WHERE {where} ORDER BY s.start_ns, s.id LIMIT ?",
                (*params, -1 if limit is None else int(limit)),
            )
            resources: Dict[Any, Dict[str, Any]] = {}
            spans = []
            for row in rows:
                resource_id = row[19]
                if resource_id not in resources:
                    resources[resource_id] = _loads(row[20], {})
                spans.append(
                    SpanRecord(
                        trace_id=row[0], span_id=row[1], parent_span_id=row[2],
                        session_id=session_id, name=row[3], kind=row[4], service=row[5],
                        pid=row[6], start_ns=row[7], end_ns=row[8], status_code=row[9],
                        status_message=row[10], attributes=_loads(row[11], {}),
                        events=_loads(row[12], []), resource=resources[resource_id],
                        event_id=row[13], event_type=row[14], model=row[15],
                        input_tokens=row[16], output_tokens=row[17], cost=row[18],
                    )
                )
            return spans

        return self._guarded("session_spans", lambda: self._transact(read, write=False), [])

    def session_events(self, session_id: str) -> List[OutboxItem]:
        """The Lucidic events of a session, in recording order, whatever their state."""

        def read(conn: sqlite3.Connection) -> List[OutboxItem]:
            rows = conn.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE session_id = ? AND kind = 'event'"
                " ORDER BY seq",
                (session_id,),
            )
            return [_outbox_item(row) for row in rows]

        return self._guarded("session_events", lambda: self._transact(read, write=False), [])

    # ------------------------------------------------------------------ lifecycle

    def stats(self) -> Dict[str, Any]:
        """Counters for this process: rows written, evicted (settled data removed by the cap),
        dropped (undelivered rows removed by the cap or lost writes), errors; and the mode
        (``file``, or ``memory`` after the file proved unusable)."""
        with self._state_lock:
            result: Dict[str, Any] = dict(self._counters)
        result["mode"] = self._mode
        result["path"] = str(self._path)
        result["max_bytes"] = self._max_bytes
        return result

    def close(self) -> None:
        """Close this process's connections. Call when the threads using the store are done.

        A later call reopens lazily. In memory mode, says how many undelivered items are lost.
        """
        if self._mode == "memory" and self._mem_conn is not None:
            lost = self._undelivered_only_in_memory()
            if lost:
                logger.warning(
                    "lucidic-otel: %d undelivered outbox items were kept in memory because the "
                    "local store %s could not be used; they are lost now",
                    lost, self._path,
                )
        self._report_drops(force=True)
        if self._pid != os.getpid():
            self._after_fork()
            return
        with self._state_lock:
            conns = list(self._conns.values())
            self._conns.clear()
            self._generation += 1
            mem, self._mem_conn = self._mem_conn, None
            marks, self._file_marks_conn = self._file_marks_conn, None
        for conn in conns + [c for c in (mem, marks) if c is not None]:
            with contextlib.suppress(Exception):
                conn.close()

    def _undelivered_only_in_memory(self) -> int:
        """Pending items in memory that the file does not also hold (carried ones it does)."""

        def read(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "SELECT count(*) FROM outbox WHERE state = 'pending' AND seq > ?",
                (self._carried_up_to,),
            ).fetchone()[0]

        return self._guarded("close", lambda: self._transact(read, write=False), 0)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals: writing

    def _prepare_batch(
        self,
        spans: List[SpanRecord],
        events: List[Mapping[str, Any]],
        now: float,
        sanitize: bool,
    ) -> _PreparedBatch:
        batch = _PreparedBatch()
        groups = batch.groups
        resource_json: Dict[int, str] = {}
        nbytes = 0
        for span in spans:
            gil.tick()  # long work on the application's GIL
            attributes = _dumps(span.attributes) if span.attributes else "{}"
            span_events = _dumps(span.events) if span.events else "[]"
            resource = span.resource
            rkey = id(resource)
            rjson = resource_json.get(rkey)
            if rjson is None:
                rjson = _dumps(resource) if resource else "{}"
                resource_json[rkey] = rjson
                batch.resources[rjson] = None
            size = _on_disk(len(attributes) + len(span_events) + _SPAN_OVERHEAD)
            if sanitize:
                session_id = _text(span.session_id)
                values: tuple = (
                    _text(span.trace_id) or "", _text(span.span_id) or "",
                    _text(span.parent_span_id), _text(span.name) or "", _text(span.kind),
                    _text(span.service), _int(span.pid), _int(span.start_ns),
                    _int(span.end_ns), _text(span.status_code), _text(span.status_message),
                    attributes, span_events, _text(span.event_id), _text(span.event_type),
                    _text(span.model), _int(span.input_tokens), _int(span.output_tokens),
                    _float(span.cost), size,
                )
            else:
                session_id = span.session_id
                values = (
                    span.trace_id, span.span_id, span.parent_span_id, span.name, span.kind,
                    span.service, span.pid, span.start_ns, span.end_ns, span.status_code,
                    span.status_message, attributes, span_events, span.event_id,
                    span.event_type, span.model, span.input_tokens, span.output_tokens,
                    span.cost, size,
                )
            batch.span_rows.append((session_id, rjson, values))
            nbytes += size
            if session_id is None:
                continue
            group = groups.get(session_id)
            if group is None:
                group = groups[session_id] = _Group()
            group.spans += 1
            if span.is_llm_call:
                group.llm += 1
                group.input_tokens += _int(span.input_tokens) or 0
                group.output_tokens += _int(span.output_tokens) or 0
                group.cost += _float(span.cost) or 0.0
            start, end = _int(span.start_ns), _int(span.end_ns)
            if start and (group.start is None or start < group.start):
                group.start = start
            if end and (group.end is None or end > group.end):
                group.end = end
            if span.service is not None:
                group.services.add(_text(span.service) if sanitize else span.service)
        for event in events:
            gil.tick()  # long work on the application's GIL
            body = _dumps(event)
            get = event.get if isinstance(event, Mapping) else (lambda _key: None)
            session_id = get("session_id")
            key = get("client_event_id")
            state, error = STATE_PENDING, None
            if not session_id:
                # Undeliverable, but kept visibly instead of vanishing.
                state, error = STATE_FAILED, "event has no session_id"
            session_id = _text(session_id) or ""
            if session_id:
                batch.event_sessions[session_id] = None
            key = _text(key)
            size = _outbox_size(body, session_id, key)
            batch.event_rows.append(
                (KIND_EVENT, session_id, key, body, size, state, error, now, now)
            )
            nbytes += size
        batch.nbytes = nbytes
        return batch

    def _apply_batch(self, conn: sqlite3.Connection, batch: _PreparedBatch) -> Tuple[None, int]:
        now = time.time()
        resource_ids: Dict[str, int] = {}
        for rjson in batch.resources:
            conn.execute("INSERT OR IGNORE INTO resources (json) VALUES (?)", (rjson,))
            resource_ids[rjson] = conn.execute(
                "SELECT id FROM resources WHERE json = ?", (rjson,)
            ).fetchone()[0]
        session_nos: Dict[Optional[str], Optional[int]] = {None: None}
        services: List[Tuple[int, str]] = []
        for session_id, group in batch.groups.items():
            conn.execute(_ENSURE_SESSION, (session_id, now))
            conn.execute(
                _ADD_SESSION_ROLLUP,
                {"session_id": session_id, "start": group.start, "end": group.end,
                 "spans": group.spans, "llm": group.llm, "input_tokens": group.input_tokens,
                 "output_tokens": group.output_tokens, "cost": group.cost, "now": now},
            )
            no = conn.execute(
                "SELECT no FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()[0]
            session_nos[session_id] = no
            services.extend((no, service) for service in group.services)
        if services:
            conn.executemany("INSERT OR IGNORE INTO session_services VALUES (?, ?)", services)
        if batch.span_rows:
            conn.executemany(
                _INSERT_SPAN,
                [
                    (session_nos[sid], resource_ids[rjson], *values)
                    for sid, rjson, values in batch.span_rows
                ],
            )
        if batch.event_rows:
            touched = [sid for sid in batch.event_sessions if sid not in batch.groups]
            conn.executemany(_ENSURE_SESSION, [(sid, now) for sid in touched])
            conn.executemany(_TOUCH_SESSION, [(now, sid) for sid in touched])
            conn.executemany(_INSERT_OUTBOX, batch.event_rows)
        return None, batch.nbytes

    def _write_lifecycle(
        self,
        what: str,
        prepare: Callable[[bool], tuple],
        apply: Callable[[sqlite3.Connection, tuple], Tuple[Optional[int], int]],
    ) -> Optional[int]:
        result: List[Optional[int]] = [None]

        def apply_and_keep(conn: sqlite3.Connection, row: tuple) -> Tuple[None, int]:
            seq, nbytes = apply(conn, row)
            result[0] = seq
            return None, nbytes

        if self._write(what, prepare, apply_and_keep, 1) and result[0] is not None:
            self._count(lifecycle_written=1)
            return result[0]
        return None

    def _write(
        self,
        what: str,
        prepare: Callable[[bool], Any],
        apply: Callable[[sqlite3.Connection, Any], Tuple[Any, int]],
        rows: int,
    ) -> bool:
        """One write transaction with the full degradation policy; True when stored."""
        for sanitize in (False, True):
            try:
                prepared = prepare(sanitize)
                _, nbytes = self._transact(_bind(apply, prepared), write=True)
            except Exception as exc:  # noqa: BLE001 - the policy below decides
                if not sanitize and (isinstance(exc, _BadDataError) or _classify(exc) == "data"):
                    continue
                self._lose(what, rows, exc)
                return False
            self._after_write(nbytes)
            return True
        return False

    def _lose(self, what: str, rows: int, exc: BaseException) -> None:
        self._count(dropped=rows, errors=1)
        if self._may_warn(f"lost:{what}", _ERROR_LOG_INTERVAL_S):
            cause = _root_cause(exc)
            logger.warning(
                "lucidic-otel: %s could not store %d rows in %s (%s: %s); they are lost "
                "(stats()['dropped'] counts them)",
                what, rows, self._path, type(cause).__name__, cause,
                exc_info=_classify(cause) == "bug",
            )

    def _mark_in_file_too(self, sql: str, rows: List[tuple]) -> None:
        """After a switch to memory, also settle carried items in the file, if it lets us.

        The file keeps every item it held at the switch, and the next process or
        ``lucidic-otel upload`` would deliver the ones this process already delivered a second
        time (same ids, so the backend can tell, but avoidable). Updating rows in place often
        still works on a full disk or at a file-size limit (the WAL reuses its space); when it
        does not, a few attempts are made and then the file is left alone.
        """
        carried = self._carried_up_to
        if not carried or self._mode != "memory" or self._file_marks_failures >= 3:
            return
        rows = [row for row in rows if row[-1] <= carried]
        if not rows:
            return
        with self._file_marks_lock:
            try:
                if self._file_marks_conn is None:
                    self._file_marks_conn = sqlite3.connect(
                        str(self._path), timeout=0.2, isolation_level=None,
                        check_same_thread=False,
                    )
                _in_transaction(self._file_marks_conn, lambda c: c.executemany(sql, rows), True)
                self._file_marks_failures = 0
            except Exception as exc:  # noqa: BLE001 - the file is known to be failing
                self._file_marks_failures += 1
                logger.debug("could not settle carried items in %s too: %s", self._path, exc)

    def _update(self, what: str, sql: str, rows: List[tuple]) -> bool:
        if not rows:
            return True

        def apply(conn: sqlite3.Connection) -> bool:
            conn.executemany(sql, rows)
            return True

        return self._guarded(what, lambda: self._transact(apply, write=True), False)

    # ------------------------------------------------------------------ internals: plumbing

    def _transact(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run ``fn`` in one transaction, retrying lock contention and moving to memory when
        the file is unusable. Raises ``_BadDataError`` or ``_UnavailableError``."""
        attempt = 0
        for _ in range(len(_LOCK_RETRY_DELAYS) + 3):
            # The mode this attempt used: another thread may switch to memory meanwhile, and
            # then this batch must be retried there, not reported as lost.
            mode = self._mode
            try:
                _FORK_GATE.enter()
                try:
                    with self._connection() as conn:
                        return _in_transaction(conn, _unless_switched(self, conn, fn), write)
                finally:
                    _FORK_GATE.leave()  # before any back-off sleep below
            except _SwitchedError:
                continue
            except Exception as exc:  # noqa: BLE001 - classified below
                kind = _classify(exc)
                if kind == "locked" and attempt < len(_LOCK_RETRY_DELAYS):
                    time.sleep(_LOCK_RETRY_DELAYS[attempt] * (0.5 + random.random()))
                    attempt += 1
                    continue
                if kind == "fatal" and mode == "file":
                    if self.on_unusable is not None:
                        self.on_unusable(exc)
                        raise _UnavailableError(str(exc)) from exc
                    if self._mode == "file":
                        self._switch_to_memory(exc)
                    continue
                if kind == "data":
                    raise _BadDataError(str(exc)) from exc
                raise _UnavailableError(str(exc)) from exc
        raise _UnavailableError("retries exhausted")

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        if self._pid != os.getpid():
            self._after_fork()
        if self._mode == "file":
            yield self._file_connection()
            return
        with self._mem_lock:
            if self._mem_conn is None:
                self._mem_conn = _open_memory()
            yield self._mem_conn

    def _file_connection(self) -> sqlite3.Connection:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.generation == self._generation:
            return conn
        if conn is not None:
            local.conn = None
            with contextlib.suppress(Exception):
                conn.close()
        conn = self._open_file()
        local.conn, local.generation = conn, self._generation
        with self._state_lock:
            alive = {thread.ident for thread in threading.enumerate()}
            for ident in [ident for ident in self._conns if ident not in alive]:
                with contextlib.suppress(Exception):
                    self._conns.pop(ident).close()
            self._conns[threading.get_ident()] = conn
        return conn

    def _open_file(self) -> sqlite3.Connection:
        path = self._path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            # Prompts and completions end up here: readable by this user only.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(
            str(path), timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            if not self._schema_ready:
                self._ensure_schema(conn)
                self._schema_ready = True
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA journal_size_limit={_JOURNAL_SIZE_LIMIT}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        """Create or check the schema; safe when several processes open a new file at once.

        ``auto_vacuum`` only takes effect on a file without tables, so it is set first; it
        lets the cap give space back to the file system (``incremental_vacuum``).
        """
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        journal = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(journal).lower() != "wal" and self._may_warn("no-wal", float("inf")):
            logger.warning(
                "lucidic-otel: the local store %s cannot use WAL mode (journal_mode=%s); "
                "concurrent processes will wait for each other more often",
                self._path, journal,
            )

        def create(conn: sqlite3.Connection) -> None:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise _UnusableStoreError(
                    f"it was written by a newer lucidic-otel (schema version {version}, "
                    f"this one knows {SCHEMA_VERSION})"
                )
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            for statement in _SCHEMA_ADDITIONS:
                conn.execute(statement)

        _in_transaction(conn, create, True)

    def _switch_to_memory(self, exc: BaseException) -> None:
        """Move this process to the in-memory store, carrying over what the file still owes.

        The memory lock is held from the switch until the carry is done, so no memory
        transaction runs before the carried items are there (an event written to memory must
        still wait for its session's ``initsession`` that was pending in the file). File
        transactions that already hold the write lock finish first (the carry waits for the
        lock); later ones see the switch in :func:`_unless_switched` and retry in memory.
        """
        # The same error ("unable to open database file", ENOTDIR from mkdir) has several
        # causes; when the path itself is the cause, the warning says what is wrong with it.
        problem = None if isinstance(exc, _BadPathError) else store_path_problem(self._path)
        if problem is not None:
            exc = _BadPathError(problem)
        with self._mem_lock:
            with self._state_lock:
                if self._mode != "file":
                    return
                self._mode = "memory"
                self._generation += 1  # every thread drops its file connection on next use
                self._counters["errors"] += 1
            if self._mem_conn is None:
                self._mem_conn = _open_memory()
            # A newer version's file is never written, so nothing of it is carried (its items
            # would be marked in it), a damaged one has nothing readable, and a path that
            # cannot hold a store holds nothing.
            carry = not isinstance(exc, (_UnusableStoreError, _BadPathError))
            items, sessions = self._carry_into(self._mem_conn) if carry else (0, 0)
        carried = (
            f" {items} undelivered items and {sessions} open sessions were carried over from "
            "the file, which keeps them too, for the next process or `lucidic-otel upload`."
            if items or sessions else ""
        )
        logger.warning(
            "lucidic-otel: cannot use the local store %s (%s). This process keeps its "
            "telemetry in memory instead (at most %d MB; anything undelivered is lost at exit, "
            "and `lucidic-otel sessions` will not show it).%s To fix: %s.",
            self._path, _describe(exc), self._cap() // (1024 * 1024), carried,
            _remedy(exc, self._path),
        )

    def _carry_into(self, mem: sqlite3.Connection) -> Tuple[int, int]:
        """Copy the file's pending outbox items, open sessions and aliases into ``mem``.

        Items keep their seq, so ordering holds across the switch (an end still follows its
        events), an item this process's sender claimed from the file can be marked in memory,
        and new items get later seqs. Leases are released (see ``_CARRY_OUTBOX``). Best
        effort: a file that cannot be read carries nothing (it still holds everything it
        held). Returns (items, sessions) carried.
        """
        budget = self._cap() // 2
        try:
            src = sqlite3.connect(str(self._path), timeout=_CARRY_TIMEOUT_S, isolation_level=None)
        except Exception:  # noqa: BLE001 - nothing to carry from a file that will not open
            return 0, 0
        try:
            if src.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                return 0, 0  # not a file this version writes
            try:
                # Waits for a writer that committed to the file before the switch.
                src.execute("BEGIN IMMEDIATE")
            except sqlite3.Error:
                src.execute("BEGIN")
            rows: List[tuple] = []
            used = 0
            for row in src.execute(_CARRY_OUTBOX):
                used += row[5]
                if used > budget:
                    break
                rows.append(row)
            sids = {row[2] for row in rows}
            session_rows = [
                row for row in src.execute(_CARRY_SESSIONS)
                if row[0] in sids or (row[1] and row[7] is None)
            ]
            carried_sids = sids | {row[0] for row in session_rows}
            aliases = [row for row in src.execute(_CARRY_ALIASES) if row[0] in carried_sids]
            src.execute("ROLLBACK")
        except Exception as exc:  # noqa: BLE001 - a damaged file carries nothing
            logger.debug("nothing carried from %s: %s", self._path, exc)
            return 0, 0
        finally:
            with contextlib.suppress(Exception):
                src.close()
        try:
            _in_transaction(mem, lambda conn: _insert_carried(conn, rows, session_rows, aliases),
                            True)
        except Exception as exc:  # noqa: BLE001 - the file still has them
            self._log_error("carry to memory", exc)
            return 0, 0
        self._carried_up_to = max((row[0] for row in rows), default=0)
        return len(rows), len(session_rows)

    def _after_fork(self) -> None:
        """Called in a child: drop (without closing) everything the parent had open."""
        self._pid = os.getpid()
        self._state_lock = threading.Lock()
        self._mem_lock = threading.Lock()
        _ABANDONED.extend(self._conns.values())
        if self._mem_conn is not None:
            _ABANDONED.append(self._mem_conn)
        if self._file_marks_conn is not None:
            _ABANDONED.append(self._file_marks_conn)
        self._conns = {}
        self._mem_conn = None
        self._file_marks_conn = None
        self._file_marks_lock = threading.Lock()
        self._carried_up_to = 0  # the child's memory store starts empty
        self._local = threading.local()
        self._generation += 1
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._writes_since_check = 0
        self._bytes_since_check = 0
        self._drop_unreported = [0, 0, 0]

    def _guarded(self, what: str, call: Callable[[], T], default: T) -> T:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - never raise into callers
            self._log_error(what, exc)
            return default

    def _log_error(self, what: str, exc: Optional[BaseException]) -> None:
        self._count(errors=1)
        if self._may_warn(f"error:{what}", _ERROR_LOG_INTERVAL_S):
            cause = _root_cause(exc) if exc is not None else None
            logger.warning(
                "lucidic-otel: local store %s: %s failed (%s: %s)",
                self._path, what, type(cause).__name__, cause,
                exc_info=cause is not None and _classify(cause) == "bug",
            )

    def _count(self, **amounts: int) -> None:
        with self._state_lock:
            for name, amount in amounts.items():
                self._counters[name] += amount

    def _may_warn(self, key: str, interval: float) -> bool:
        now = time.monotonic()
        with self._state_lock:
            last = self._last_warned.get(key)
            if last is not None and now - last < interval:
                return False
            self._last_warned[key] = now
            return True

    # ------------------------------------------------------------------ internals: the cap

    def _cap(self) -> int:
        if self._mode == "memory":
            return min(self._max_bytes, _MEMORY_MAX_BYTES)
        return self._max_bytes

    def _after_write(self, nbytes: int) -> None:
        with self._state_lock:
            self._writes_since_check += 1
            self._bytes_since_check += nbytes
            due = (
                not self._checked_once
                or self._writes_since_check >= _CHECK_EVERY_WRITES
                or self._bytes_since_check >= max(self._cap() // 32, 16 * 1024)
            )
            if due:
                self._checked_once = True
                self._writes_since_check = 0
                self._bytes_since_check = 0
        if due:
            try:
                self._enforce_cap()
            except Exception as exc:  # noqa: BLE001 - the write itself succeeded
                self._log_error("size check", exc)

    def _enforce_cap(self) -> None:
        cap = self._cap()
        used = self._transact(_used_bytes, write=False)
        if used >= _UNDELIVERED_WARN * cap:
            self._warn_if_undelivered_near(cap)
        if used <= cap:
            return
        steps = 0
        evicted = 0
        exhausted = False
        while used > _LOW_WATER * cap and steps < _MAX_EVICT_STEPS:
            steps += 1
            need = int(used - _LOW_WATER * cap) + _PAGE
            removed, used = self._transact(_bind(_evict_settled_chunk, need), write=True)
            evicted += removed
            if not removed:
                exhausted = True
                break
        self._count(evicted=evicted)
        if exhausted and used >= _UNDELIVERED_WARN * cap:
            # Nothing settled is left: everything in the store is still undelivered.
            self._warn_undelivered(used, cap)
        if evicted:
            logger.debug("lucidic-otel: evicted %d settled rows from %s", evicted, self._path)
        # Undelivered data goes only past the cap itself, and then only down to _DROP_TARGET
        # (not _LOW_WATER): as little as possible.
        dropping = used > cap
        while dropping and used > _DROP_TARGET * cap and steps < _MAX_EVICT_STEPS:
            steps += 1
            need = int(used - _DROP_TARGET * cap) + _PAGE
            (spans, items, nbytes), used = self._transact(
                _bind(_drop_undelivered_chunk, need), write=True
            )
            if not spans and not items:
                break
            self._count(dropped=spans + items)
            with self._state_lock:
                self._drop_unreported[0] += spans
                self._drop_unreported[1] += items
                self._drop_unreported[2] += nbytes
        self._report_drops(force=False)
        self._transact(_release_free_pages, write=True)

    def _report_drops(self, force: bool) -> None:
        with self._state_lock:
            spans, items, nbytes = self._drop_unreported
        if not (spans or items):
            return
        if not force and not self._may_warn("dropped", _DROP_WARN_INTERVAL_S):
            return
        with self._state_lock:
            self._drop_unreported = [0, 0, 0]
        if not self._delivery_enabled:
            logger.info(
                "lucidic-otel: the local store %s reached its cap of %.1f MB (%s): removed the "
                "oldest %d spans and %d records (about %s). Delivery is off (no "
                "LUCIDIC_API_KEY/LUCIDIC_AGENT_ID), so this is a local store only; raise %s to "
                "keep more history.",
                self._path, self._cap() / 1048576, MAX_MB_VARIABLE, spans, items, _human(nbytes),
                MAX_MB_VARIABLE,
            )
            return
        logger.warning(
            "lucidic-otel: the local store %s reached its cap of %.1f MB (%s) while holding "
            "undelivered data: dropped the oldest %d spans of undelivered sessions and %d "
            "undelivered outbox items "
            "(about %s). Raise %s, or check that delivery to the backend works.",
            self._path, self._cap() / 1048576, MAX_MB_VARIABLE, spans, items, _human(nbytes),
            MAX_MB_VARIABLE,
        )

    def _warn_if_undelivered_near(self, cap: int) -> None:
        """Early warning while the store is nearly full: is it the outbox that fills it?"""
        with self._state_lock:
            last = self._last_warned.get("undelivered")
        if last is not None and time.monotonic() - last < _UNDELIVERED_WARN_INTERVAL_S:
            return  # warned recently: skip the sum, too
        undelivered = self._transact(
            lambda conn: conn.execute(
                "SELECT coalesce(sum(nbytes), 0) FROM outbox WHERE state IN ('pending', 'failed')"
            ).fetchone()[0],
            write=False,
        )
        if undelivered >= _UNDELIVERED_WARN * cap:
            self._warn_undelivered(undelivered, cap)

    def _warn_undelivered(self, undelivered: int, cap: int) -> None:
        if not self._delivery_enabled:
            return  # a local store only: nothing is waiting for delivery
        if self._may_warn("undelivered", _UNDELIVERED_WARN_INTERVAL_S):
            logger.warning(
                "lucidic-otel: about %s of undelivered data is waiting in the local store %s, "
                "%d%% of its %.1f MB cap (%s). Delivery is failing or disabled (no "
                "LUCIDIC_API_KEY?); once the cap is reached the oldest undelivered data is "
                "dropped. Raise %s or check delivery.",
                _human(undelivered), self._path, int(100 * undelivered / cap), cap / 1048576,
                MAX_MB_VARIABLE, MAX_MB_VARIABLE,
            )


# ----------------------------------------------------------------------- helper functions


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T],
                    write: bool) -> T:
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return result


def _unless_switched(
    store: Store, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]
) -> Callable[[sqlite3.Connection], T]:
    """``fn``, but refusing to run on a file connection once the store moved to memory.

    It runs inside the transaction, after the file lock was taken, so a write either
    commits before the carry reads the file or is retried in memory; none is left behind.
    """

    def run(c: sqlite3.Connection) -> T:
        if store._mode != "file" and c is not store._mem_conn:
            raise _SwitchedError()
        return fn(c)

    return run


def _insert_carried(
    conn: sqlite3.Connection, rows: List[tuple], sessions: List[tuple], aliases: List[tuple]
) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO outbox (seq, kind, session_id, key, body, nbytes, attempts,"
        " next_attempt_at, lease_until, last_error, created_at, updated_at)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        rows,
    )
    conn.executemany(
        f"INSERT OR IGNORE INTO sessions ({_CARRIED_SESSION_COLUMNS})"
        f" VALUES ({_CARRIED_SESSION_MARKS})",
        sessions,
    )
    conn.executemany(
        "INSERT OR IGNORE INTO session_aliases (session_id, backend_session_id) VALUES (?, ?)",
        aliases,
    )


def _human(nbytes: int) -> str:
    if nbytes >= 1024 * 1024:
        return f"{nbytes / 1048576:.1f} MB"
    return f"{max(1, round(nbytes / 1024))} KB"


def _bind(
    apply: Callable[[sqlite3.Connection, Any], T], prepared: Any
) -> Callable[[sqlite3.Connection], T]:
    return lambda conn: apply(conn, prepared)


def _open_memory() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    for statement in _SCHEMA + _SCHEMA_ADDITIONS:
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return conn


def _outbox_size(body: str, session_id: str, key: Optional[str]) -> int:
    # The session id is stored in the row and in one index; the key in the row.
    return _on_disk(len(body) + 2 * len(session_id) + len(key or "") + _OUTBOX_OVERHEAD)


def _on_disk(raw: int) -> int:
    """Bytes a row of ``raw`` bytes takes in pages: rows share a leaf page only whole (two
    2.2 KB rows do not fit one 4 KB page), and a larger row fills whole overflow pages."""
    if raw <= _MAX_LOCAL:
        return _PAGE // max(1, _MAX_LOCAL // (raw + 4))
    return -(-raw // (_PAGE - 4)) * _PAGE


def _used_bytes(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return (pages - free) * size


def _delete_oldest(
    conn: sqlite3.Connection, table: str, key: str, where: str, params: tuple, need: int
) -> Tuple[int, int]:
    """Delete the oldest rows matching ``where`` until their estimated size covers ``need``
    bytes (at least one row, at most ``_EVICT_CHUNK``); returns (rows, bytes)."""
    oldest = conn.execute(
        f"SELECT {key}, nbytes FROM {table} WHERE {where} ORDER BY {key} LIMIT {_EVICT_CHUNK}",
        params,
    ).fetchall()
    doomed: List[Tuple[int]] = []
    total = 0
    for row_key, nbytes in oldest:
        doomed.append((row_key,))
        total += nbytes or 0
        if total >= need:
            break
    conn.executemany(f"DELETE FROM {table} WHERE {key} = ?", doomed)
    return len(doomed), total


def _evict_settled_chunk(conn: sqlite3.Connection, need: int) -> Tuple[int, int]:
    """One step of silent eviction; returns (rows removed, used bytes after)."""
    removed = 0
    session = conn.execute(_SETTLED_SESSION).fetchone()
    sessionless = conn.execute("SELECT min(id) FROM spans WHERE session_no IS NULL").fetchone()[0]
    if session is not None and (
        sessionless is None or session[2] is None or session[2] <= sessionless
    ):
        no, session_id, first_span = session
        if first_span is not None:
            removed, _ = _delete_oldest(conn, "spans", "id", "session_no = ?", (no,), need)
        if conn.execute("SELECT 1 FROM spans WHERE session_no = ? LIMIT 1", (no,)).fetchone():
            return removed, _used_bytes(conn)
        removed += conn.execute(
            "DELETE FROM outbox WHERE session_id = ? AND state = 'delivered'", (session_id,)
        ).rowcount
        conn.execute("DELETE FROM session_services WHERE session_no = ?", (no,))
        conn.execute("DELETE FROM session_aliases WHERE session_id = ?", (session_id,))
        removed += conn.execute("DELETE FROM sessions WHERE no = ?", (no,)).rowcount
    elif sessionless is not None:
        removed, _ = _delete_oldest(conn, "spans", "id", "session_no IS NULL", (), need)
    else:
        removed, _ = _delete_oldest(conn, "outbox", "seq", "state = 'delivered'", (), need)
        if not removed:
            removed = conn.execute(
                "DELETE FROM resources WHERE id NOT IN"
                " (SELECT resource_id FROM spans WHERE resource_id IS NOT NULL)"
            ).rowcount
    return removed, _used_bytes(conn)


def _drop_undelivered_chunk(
    conn: sqlite3.Connection, need: int
) -> Tuple[Tuple[int, int, int], int]:
    """One step of dropping undelivered data: failed-aside items first (they will never be
    delivered), then the older of the oldest span and the oldest pending item."""
    spans = 0
    items, nbytes = _delete_oldest(conn, "outbox", "seq", "state = 'failed'", (), need)
    if not items:
        span = conn.execute("SELECT end_ns FROM spans ORDER BY id LIMIT 1").fetchone()
        item = conn.execute(
            "SELECT created_at FROM outbox WHERE state = 'pending' ORDER BY seq LIMIT 1"
        ).fetchone()
        if span is not None and (item is None or (span[0] or 0) / 1e9 <= item[0]):
            spans, nbytes = _delete_oldest(conn, "spans", "id", "1", (), need)
        elif item is not None:
            items, nbytes = _delete_oldest(conn, "outbox", "seq", "state = 'pending'", (), need)
    return (spans, items, nbytes), _used_bytes(conn)


def _release_free_pages(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA incremental_vacuum({_VACUUM_PAGES})").fetchall()


def _outbox_item(row: tuple) -> OutboxItem:
    return OutboxItem(
        seq=row[0], kind=row[1], session_id=row[2], key=row[3], body=_loads(row[4], {}),
        attempts=row[5], state=row[6], next_attempt_at=row[7], last_error=row[8],
        created_at=row[9],
    )


def status_text(session: Mapping[str, Any]) -> str:
    """The status as every view prints it: the lifecycle, and "(no spans)" when nothing was
    recorded in the session (a scope no span ran in, an ``init()`` in a process that made
    none), which a bare "open" would hide: it suggests spans are still on their way."""
    status = str(session.get("status"))
    return status if session.get("span_count") else f"{status} (no spans)"


def _session_dict(conn: sqlite3.Connection, row: tuple) -> Dict[str, Any]:
    (no, session_id, name, task, meta, initiated, started_ns, last_end_ns, ended_ns,
     is_successful, successful_reason, session_eval, eval_reason, span_count, llm_calls,
     input_tokens, output_tokens, cost) = row
    services = [
        service for (service,) in conn.execute(
            "SELECT service FROM session_services WHERE session_no = ? ORDER BY service", (no,)
        )
    ]
    counts = dict.fromkeys((STATE_PENDING, STATE_DELIVERED, STATE_FAILED), 0)
    for state, count in conn.execute(
        "SELECT state, count(*) FROM outbox WHERE session_id = ? GROUP BY state", (session_id,)
    ):
        counts[state] = count
    if ended_ns is None:
        status = "open"
    elif is_successful is None:
        status = "ended"
    else:
        status = "ok" if is_successful else "failed"
    finish = ended_ns if ended_ns is not None else last_end_ns
    meta_dict = _loads(meta, {}) if meta else {}
    return {
        "session_id": session_id,
        "name": name,
        "task": task,
        "tags": meta_dict.get("tags") if isinstance(meta_dict, dict) else None,
        "initiated": bool(initiated),
        "started_ns": started_ns,
        "ended_ns": ended_ns,
        "last_end_ns": last_end_ns,
        "duration_s": (finish - started_ns) / 1e9 if finish and started_ns else None,
        "services": services,
        "span_count": span_count,
        "llm_calls": llm_calls,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost": cost,
        "status": status,
        "is_successful": None if is_successful is None else bool(is_successful),
        "is_successful_reason": successful_reason,
        "session_eval": session_eval,
        "session_eval_reason": eval_reason,
        **counts,
    }
