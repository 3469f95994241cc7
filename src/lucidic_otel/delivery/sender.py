"""The background sender: delivers the local outbox to the Lucidic backend.

The exporter only writes to the outbox (DESIGN 2.3) and then calls :func:`notify`, which costs
a dictionary lookup and a condition notify; every network call happens here, on the sender's
own threads, so a slow or dead backend can never slow the program down or overflow the span
queue.

How it works
    One dispatcher thread owns the outbox: it claims deliverable items with a lease
    (:meth:`Store.claim_pending`, which also enforces the order: ``initsession`` before the
    session's events, ``updatesession`` only once every earlier item of the session is
    settled), resolves each event's parent event and the backend's session id, and queues the
    items for a bounded pool of worker threads. Each worker keeps its own keep-alive
    connections; no connection is shared between threads. Workers only do HTTP and report a
    verdict; the dispatcher marks items delivered (batched: one transaction for many),
    schedules retries, or moves bad records aside.

    Every request costs the program CPU and GIL time, so the sender runs only as many workers
    as the backend's latency needs (two for a backend that answers in a millisecond, the whole
    pool for a distant or struggling one), and while replies are fast it claims several items
    per worker so that one claim transaction serves many requests.

Failures (the contract's status table, decided in :mod:`lucidic_otel.delivery.contract`)
    Transient failures are retried with exponential backoff and jitter per item; a run of them
    (an outage) also pauses the whole sender, and ``Retry-After`` on 429/503 pauses it for as
    long as asked. A refused key (401/403), no credits (402) or a wrong base URL (3xx) stops
    delivery in this process with one error line and keeps every record. A record the backend
    rejects (other 4xx) is moved aside with the status and body, visible in
    ``Store.failed_items()``. Nothing is ever dropped here.

Processes
    One sender per process and store, started lazily on the first write. A forked child never
    touches its parent's sender (threads and sockets do not survive ``fork``; the parent still
    uses them): it starts its own. Several processes may share a store: leases keep them off
    each other's items, and an item whose process died is claimed again when its lease expires.
    At exit (and on SIGTERM) :func:`deliver_at_exit` delivers what it can within
    ``LUCIDIC_EXIT_DEADLINE``; the rest stays in the outbox for the next process or
    ``lucidic-otel upload``.
"""

from __future__ import annotations

import functools
import http.client
import logging
import os
import queue
import random
import socket
import ssl
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, TypeVar
from urllib.parse import urlsplit

from opentelemetry.instrumentation.utils import suppress_instrumentation

from lucidic_otel.config import Settings
from lucidic_otel.delivery import contract as backend
from lucidic_otel.delivery.helper import EXIT_STORE_UNUSABLE, DeliveryAgent
from lucidic_otel.outbox.store import (
    KIND_EVENT,
    KIND_SESSION_END,
    KIND_SESSION_INIT,
    OutboxItem,
    Store,
)

logger = logging.getLogger("lucidic_otel.delivery.sender")

DEFAULT_WORKERS = 8
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_CONNECT_TIMEOUT_S = 3.0
DEFAULT_BACKOFF_BASE_S = 0.5
DEFAULT_BACKOFF_CAP_S = 60.0
DEFAULT_IDLE_POLL_S = 10.0
# A run of transient failures this long pauses the whole sender (an outage, not a blip) ...
PAUSE_AFTER_FAILURES = 3
PAUSE_CAP_S = 30.0
# A drain (exit, upload) gives up early after this many transient failures with no success
# since it began: the backend is down, and waiting out the deadline would not help.
DRAIN_GIVE_UP_FAILURES = 3
# A 2xx reply without the blob_url it needs is retried this many times, then moved aside.
MAX_PROTOCOL_ATTEMPTS = 8
MAX_REPLY_BYTES = 64 * 1024
IDLE_CONNECTION_S = 30.0
_OUTAGE_LOG_INTERVAL_S = 600.0
_REJECT_LOG_INTERVAL_S = 60.0
_REJECTS_LOGGED_IN_FULL = 5
_REJECTED_KEPT = 50
_MAX_DISPATCH_RESTARTS = 10
_ALIAS_TTL_S = 60.0
_CLAIM_LINGER_S = 0.02
_MIN_ACTIVE_WORKERS = 2
_MARK_BATCH = 64
_QUEUE_DEPTH = 8
_FAST_REPLY_S = 0.05
_MARK_LINGER_S = 0.05
_LATENCY_PER_WORKER_S = 0.005
_LATENCY_WEIGHT = 0.2
_ALIAS_CACHE_MAX = 10_000


T = TypeVar("T")


def _untraced(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` with instrumentation suppressed (the instrumentations' own switch).

    Instrumentations (sqlite3, http clients) must not trace the sender's own work: those spans
    would be exported into the store and wake the sender again, forever.
    """

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> T:
        with suppress_instrumentation():
            return fn(*args, **kwargs)

    return run


# ------------------------------------------------------------------------------ results


@dataclass
class DeliveryStats:
    """What this sender has done so far (a snapshot; see :attr:`Sender.stats`)."""

    delivered: Dict[str, int] = field(default_factory=dict)  # by outbox kind
    failed: int = 0  # moved aside: the backend rejected them
    retried: int = 0  # transient failures, each scheduled again
    blobs: int = 0  # payloads uploaded through the blob flow
    halted: Optional[str] = None  # why delivery stopped in this process, if it did
    last_error: Optional[str] = None
    rejected: List[Dict[str, Any]] = field(default_factory=list)  # the first few, with reasons

    @property
    def delivered_total(self) -> int:
        return sum(self.delivered.values())


@dataclass
class _Job:
    item: OutboxItem
    session_id: str  # the backend's id for the session (adopted from initsession)
    parent_event_id: Optional[str]


@dataclass
class _Result:
    item: OutboxItem
    verdict: backend.Verdict
    error: Optional[str] = None
    status: Optional[int] = None
    retry_after: Optional[float] = None
    adopted_session_id: Optional[str] = None
    outage: bool = False  # counts toward the outage run (transport error, 5xx, 408)
    protocol: bool = False  # a 2xx that did not give what the flow needs
    blob: bool = False
    seconds: float = 0.0  # how long the worker spent on it


# ------------------------------------------------------------------------------ transport


class TransportError(Exception):
    """No HTTP reply: refused, reset, timed out, or not HTTP at all."""


@dataclass
class _Reply:
    status: int
    data: bytes
    retry_after: Optional[str] = None
    location: Optional[str] = None


class _Connections:
    """One worker's keep-alive connections, one per origin (API host, blob host).

    Owned by a single thread, so no locking. A request on a reused connection that the server
    had closed meanwhile (its idle timeout) is retried once on a fresh one; every request and
    connect has a timeout.
    """

    def __init__(
        self, timeout_s: float, connect_timeout_s: float, tls: Callable[[], ssl.SSLContext]
    ) -> None:
        self._timeout = timeout_s
        self._connect_timeout = connect_timeout_s
        self._tls = tls
        self._conns: Dict[Tuple[str, str, int], Tuple[http.client.HTTPConnection, float]] = {}

    def request(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> _Reply:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(f"unsupported URL {url[:200]!r}")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise TransportError(f"bad port in URL {url[:200]!r}") from exc
        origin = (scheme, parts.hostname, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        for attempt in (0, 1):
            conn, reused = self._connection(origin)
            try:
                conn.request(method, target, body=body, headers=headers)
                response = conn.getresponse()
                data, reusable = _read_reply(response)
                # Only the headers a verdict needs: each lookup parses, and this is per event.
                status = response.status
                reply = _Reply(
                    status,
                    data,
                    retry_after=response.getheader("retry-after") if status in (429, 503) else None,
                    location=response.getheader("location") if 300 <= status < 400 else None,
                )
            except (
                http.client.RemoteDisconnected,
                ConnectionResetError,
                ConnectionAbortedError,
                BrokenPipeError,
            ) as exc:
                self._close(origin)
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection: reconnect
                raise TransportError(_describe(exc, self._timeout)) from exc
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._close(origin)
                raise TransportError(_describe(exc, self._timeout)) from exc
            if reusable:
                self._conns[origin] = (conn, time.monotonic())
            else:
                self._close(origin)
            return reply
        raise TransportError("connection closed twice")  # pragma: no cover - loop returns

    def close(self) -> None:
        for origin in list(self._conns):
            self._close(origin)

    def _connection(self, origin: Tuple[str, str, int]) -> Tuple[http.client.HTTPConnection, bool]:
        held = self._conns.get(origin)
        if held is not None:
            conn, last_used = held
            if time.monotonic() - last_used < IDLE_CONNECTION_S:
                return conn, True
            self._close(origin)
        scheme, host, port = origin
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(
                host, port, timeout=self._connect_timeout, context=self._tls()
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self._connect_timeout)
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(self._timeout)
                # Each request is written whole; never hold its last segment back.
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn.close()
            raise TransportError(_describe(exc, self._connect_timeout)) from exc
        self._conns[origin] = (conn, time.monotonic())
        return conn, False

    def _close(self, origin: Tuple[str, str, int]) -> None:
        held = self._conns.pop(origin, None)
        if held is not None:
            try:
                held[0].close()
            except Exception:  # noqa: BLE001 - closing a broken socket may fail; it is gone
                pass


def _read_reply(response: http.client.HTTPResponse) -> Tuple[bytes, bool]:
    """The reply body (at most 64 KB) and whether the connection can be used again."""
    length = response.getheader("content-length")
    try:
        declared = int(length) if length is not None else None
    except ValueError:
        declared = None
    if declared is not None and declared > MAX_REPLY_BYTES:
        return b"", False  # not worth reading: close instead
    data = response.read(MAX_REPLY_BYTES + 1)
    if len(data) > MAX_REPLY_BYTES or not response.isclosed():
        return data[:MAX_REPLY_BYTES], False
    return data, not response.will_close


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g} s"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ------------------------------------------------------------------------------ the sender


class Sender:
    """Delivers one store's outbox to the backend named by ``settings``.

    Use :func:`notify` from the exporter; construct one directly for a one-off job such as
    ``lucidic-otel upload`` (``start``, ``drain``, ``stop``). Threads are created by
    :meth:`start` and are daemons: a stuck request can never hold the process open.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        workers: int = DEFAULT_WORKERS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
        backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
        idle_poll_s: float = DEFAULT_IDLE_POLL_S,
        lease_s: Optional[float] = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        if not settings.api_key or not settings.agent_id:
            raise ValueError("delivery needs LUCIDIC_API_KEY and LUCIDIC_AGENT_ID")
        self._store = store
        self._base_url = settings.base_url.rstrip("/")
        self._agent_id = settings.agent_id
        self._headers = backend.api_headers(settings.api_key, settings.agent_id)
        self._blob_threshold = settings.blob_threshold
        self._workers = max(1, int(workers))
        self._timeout = float(timeout_s)
        self._connect_timeout = float(connect_timeout_s)
        self._backoff_base = float(backoff_base_s)
        self._backoff_cap = float(backoff_cap_s)
        self._idle_poll = float(idle_poll_s)
        # Longest an item can be in a worker's hands: the event, a 413 re-send and the blob,
        # each with a reconnect; a lease shorter than that would let another sender duplicate
        # work in flight, a much longer one delays recovery after a crash.
        self._lease = (
            float(lease_s)
            if lease_s is not None
            else 3 * (self._timeout + self._connect_timeout) + 5.0
        )
        self._rng = rng or random.Random()
        self._tls: Optional[ssl.SSLContext] = None  # loading CA certificates takes a while
        self._tls_lock = threading.Lock()
        self._pid = os.getpid()

        self._cond = threading.Condition()
        self._jobs: queue.SimpleQueue[Optional[_Job]] = queue.SimpleQueue()
        self._results: List[_Result] = []
        self._woken = False
        self._stopping = False
        self._started = False
        self._dispatcher: Optional[threading.Thread] = None
        self._threads: List[threading.Thread] = []
        self._drain_until: Optional[float] = None
        self._stop_deadline = 0.0
        self._drain_requests = 0
        self._settled_for = 0
        self._settled_empty = False

        # Owned by the dispatcher thread.
        self._in_flight = 0
        self._last_claim = 0.0
        self._latency = 0.0  # moving average of the seconds a delivery takes
        self._slots = threading.Condition()  # guards the two below
        self._limit = min(_MIN_ACTIVE_WORKERS, self._workers)  # workers allowed to run
        self._running = 0
        self._unmarked: List[int] = []  # delivered, not yet marked so in the store
        self._unmarked_since = 0.0
        self._unmarked_urgent = False
        self._more = True  # whether a claim may find something (reset when one comes short)
        self._failures = 0  # consecutive transient failures (items)
        self._pause_level = 0  # consecutive rounds that ended in the outage pause
        self._pause_cap = min(PAUSE_CAP_S, self._backoff_cap)
        self._pause_until = 0.0
        self._drain_seen = 0  # the drain request the counters below belong to
        self._drain_failures = 0
        self._drain_failed_rounds = 0
        self._drain_successes = 0
        self._outage_logged_at: Optional[float] = None
        self._rejects_logged = 0
        self._rejects_unlogged = 0
        self._reject_logged_at = 0.0

        self._alias_cache: Dict[str, Tuple[str, float]] = {}
        self._stats = DeliveryStats()
        self._stats_lock = threading.Lock()

    # ------------------------------------------------------------------ public

    @property
    def store(self) -> Store:
        return self._store

    @property
    def stats(self) -> DeliveryStats:
        with self._stats_lock:
            return DeliveryStats(
                delivered=dict(self._stats.delivered),
                failed=self._stats.failed,
                retried=self._stats.retried,
                blobs=self._stats.blobs,
                halted=self._stats.halted,
                last_error=self._stats.last_error,
                rejected=list(self._stats.rejected),
            )

    @property
    def halted(self) -> Optional[str]:
        """Why delivery stopped for this process (401/402/403/3xx), or None."""
        return self._stats.halted

    def start(self) -> Sender:
        """Start the dispatcher (once, in the process that built this); the workers follow
        when there is first something to send."""
        with self._cond:
            if self._started or self._pid != os.getpid():
                return self
            self._started = True
            self._dispatcher = threading.Thread(
                target=self._dispatch, name="lucidic-sender", daemon=True
            )
        self._dispatcher.start()
        return self

    def _start_workers(self) -> None:
        """On the dispatcher thread: as many workers as may run now (the pool grows when the
        backend's latency asks for more, and never beyond ``workers``)."""
        while len(self._threads) < min(self._limit, self._workers):
            thread = threading.Thread(
                target=self._work, name=f"lucidic-sender-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def wake(self) -> None:
        """New items were written: look now. Cheap; safe from any thread; never raises."""
        if self._pid != os.getpid():
            return
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def drain(
        self,
        deadline_s: float,
        progress: Optional[Callable[[DeliveryStats], None]] = None,
        progress_interval_s: float = 0.2,
    ) -> bool:
        """Deliver until nothing more can be delivered within ``deadline_s`` seconds.

        Returns True when no item is pending any more, False when some remain (scheduled
        after the deadline, held by another process's lease, the backend down, delivery
        stopped, or the deadline reached). ``progress`` is called on the calling thread.
        """
        if self._pid != os.getpid():
            return False
        self.start()
        end = time.monotonic() + max(0.0, deadline_s)
        with self._cond:
            self._drain_until = time.time() + max(0.0, deadline_s)
            self._drain_requests += 1
            wanted = self._drain_requests
            self._woken = True
            self._cond.notify_all()
        next_progress = 0.0
        try:
            while True:
                if progress is not None and time.monotonic() >= next_progress:
                    next_progress = time.monotonic() + progress_interval_s
                    self._call_progress(progress)  # never with the lock held: it may block
                with self._cond:
                    if self._settled_for >= wanted:
                        return self._settled_empty
                    left = end - time.monotonic()
                    if left <= 0 or self._dispatcher is None or not self._dispatcher.is_alive():
                        return False
                    self._cond.wait(min(left, progress_interval_s))
        finally:
            with self._cond:
                if self._drain_requests == wanted:
                    self._drain_until = None
            if progress is not None:
                self._call_progress(progress)

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop claiming, record what is in flight (waiting at most ``timeout_s``), end threads.

        Items still in a worker's hands when the time is up keep their lease and are claimed
        again after it expires, by whichever process runs a sender next.
        """
        if self._pid != os.getpid():
            return
        with self._cond:
            if not self._started or self._stopping:
                self._stopping = True
                return
            self._stopping = True
            self._stop_deadline = time.monotonic() + max(0.0, timeout_s)
            self._cond.notify_all()
        with self._slots:
            self._slots.notify_all()  # parked workers go on to take their stop sentinel
        if self._dispatcher is not None:
            self._dispatcher.join(max(0.0, timeout_s) + 0.1)
            if not self._dispatcher.is_alive():
                self._release_unstarted()
        for _ in list(self._threads):
            self._jobs.put(None)

    @_untraced
    def _release_unstarted(self) -> None:
        """After the dispatcher ended: queued items go back now rather than at lease end."""
        self._take_back_queued(time.time(), "the sender stopped")

    def _take_back_queued(self, until: float, why: str) -> int:
        """Items queued but not started go back to the outbox, due at ``until``.

        So that a pause (Retry-After, an outage) or a stop holds for them too, instead of
        them being sent anyway by the next free worker.
        """
        taken: List[_Job] = []
        sentinels = 0
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                sentinels += 1
            else:
                taken.append(job)
        for _ in range(sentinels):
            self._jobs.put(None)
        for job in taken:
            self._in_flight -= 1
            self._store.mark_retry(job.item.seq, why, until)
        return len(taken)

    # ------------------------------------------------------------------ dispatcher

    @_untraced
    def _dispatch(self) -> None:
        try:
            for attempt in range(_MAX_DISPATCH_RESTARTS + 1):
                try:
                    self._dispatch_loop()
                    return
                except Exception:  # noqa: BLE001 - a bug here must not take the program down
                    if attempt == 0:
                        logger.exception("lucidic-otel: unexpected error in the sender")
                    time.sleep(min(1.0, self._idle_poll))
            logger.error(
                "lucidic-otel: the sender stopped after repeated errors; records stay "
                "in %s for the next process or `lucidic-otel upload`",
                self._store.path,
            )
        finally:
            with self._cond:
                self._cond.notify_all()

    def _dispatch_loop(self) -> None:
        while True:
            with self._cond:
                results, self._results = self._results, []
                if results or self._woken:
                    self._more = True  # new items, or dependents of settled ones
                self._woken = False
                stopping = self._stopping
                drain_request = self._drain_requests
                drain_until = self._drain_until
            if drain_request != self._drain_seen:
                self._drain_seen = drain_request
                self._drain_failures = self._drain_failed_rounds = self._drain_successes = 0
            if results:
                self._apply(results)
            self._flush_marks(force=stopping)
            if stopping:
                if self._in_flight == 0 or time.monotonic() >= self._stop_deadline:
                    self._flush_marks(force=True)
                    return
                self._wait(min(0.05, max(0.0, self._stop_deadline - time.monotonic())))
                continue
            now = time.time()
            if self._stats.halted is None and now >= self._pause_until:
                capacity = self._capacity()
                free = capacity - self._in_flight
                # Claim in rounds of at least half the capacity (one transaction for several
                # items, not one per returning worker), unless workers are tied up by slow
                # requests: then whatever is free after a short linger.
                lingered = time.monotonic() - self._last_claim >= _CLAIM_LINGER_S
                more = self._more and (2 * free >= capacity or lingered)
                if free > 0 and (self._in_flight == 0 or more):
                    self._last_claim = time.monotonic()
                    items = self._store.claim_pending(free, now, self._lease)
                    self._more = len(items) == free
                    if items:
                        self._submit(items)
            if self._in_flight > 0:
                linger = self._more and self._in_flight < self._capacity()
                timeout = _CLAIM_LINGER_S if linger else self._idle_poll
                if self._unmarked:
                    timeout = min(timeout, _MARK_LINGER_S)
                self._wait(timeout)
                continue
            if self._flush_marks(force=True):
                continue  # their dependents (a session's end) may be claimable now
            # Idle: nothing in flight and nothing claimable right now.
            wake_at: Optional[float] = None
            if self._stats.halted is None and time.time() < self._pause_until:
                # Paused (an outage, Retry-After): nothing is claimed before the pause ends, so
                # a wake-up need not read the outbox (a scan of everything pending, which
                # grows for as long as the backend is away).
                due: Optional[float] = self._pause_until
            else:
                due = None if self._stats.halted else self._store.next_due_at()
            if due is not None:
                wake_at = max(due, self._pause_until)
            settled = (
                self._stats.halted is not None
                or wake_at is None
                or (drain_until is not None and wake_at > drain_until)
                or self._backend_looks_down()
            )
            if settled and drain_request:
                with self._cond:
                    if drain_request > self._settled_for:
                        self._settled_for = drain_request
                        self._settled_empty = due is None and self._stats.halted is None
                    self._cond.notify_all()
            timeout = self._idle_poll
            if wake_at is not None and self._stats.halted is None:
                timeout = min(max(wake_at - time.time(), 0.005), self._idle_poll)
            self._wait(timeout)

    def _wait(self, timeout: float) -> None:
        with self._cond:
            if not self._results and not self._woken and not self._stopping:
                self._cond.wait(timeout)

    def _submit(self, items: List[OutboxItem]) -> None:
        """Resolve each item's backend session id and parent event, then hand it to a worker."""
        aliases = self._backend_session_ids(items)
        events = [item for item in items if item.kind == KIND_EVENT]
        starts = [_parent_start(item.body) for item in events]
        lookups = [start for start in starts if start is not None]
        found = iter(self._store.nearest_event_ancestors(lookups) if lookups else [])
        parents: Dict[int, Optional[str]] = {}
        for item, start in zip(events, starts, strict=True):
            recorded = item.body.get("client_parent_event_id")
            resolved = next(found) if start is not None else None
            parents[item.seq] = resolved or (recorded if isinstance(recorded, str) else None)
        for item in items:
            if item.kind == KIND_SESSION_END and not self._store.session_events_delivered(
                item.session_id, item.seq
            ):
                # The claim already guarantees this; a read error must still not end early.
                self._store.mark_retry(
                    item.seq, "waiting for the session's events", time.time() + 1.0
                )
                continue
            session_id = (
                item.session_id
                if item.kind == KIND_SESSION_INIT
                else aliases.get(item.session_id, item.session_id)
            )
            self._start_workers()
            self._in_flight += 1
            self._jobs.put(_Job(item, session_id, parents.get(item.seq)))

    def _backend_session_ids(self, items: List[OutboxItem]) -> Dict[str, str]:
        """The backend's id for each session, cached for a minute.

        A session's alias is written when its ``initsession`` is delivered, which is before
        any of its events or its end can be claimed, so an answer read for a claimed event or
        end is final; the expiry only bounds memory and a re-init elsewhere.
        """
        now = time.monotonic()
        cache = self._alias_cache
        stale = {
            item.session_id
            for item in items
            if item.kind != KIND_SESSION_INIT
            and (item.session_id not in cache or now - cache[item.session_id][1] > _ALIAS_TTL_S)
        }
        if stale:
            if len(cache) > _ALIAS_CACHE_MAX:
                cache.clear()
            found = self._store.session_aliases(sorted(stale))
            for sid in stale:
                cache[sid] = (found.get(sid, sid), now)
        return {sid: cache[sid][0] for sid in {item.session_id for item in items} if sid in cache}

    def _flush_marks(self, force: bool) -> bool:
        """Mark delivered items in one transaction per batch rather than one per round.

        Held back only briefly: a session's end waits for its events' marks, and events wait
        for their session's init (whose mark is never held back). Returns whether it wrote.
        """
        if not self._unmarked:
            return False
        due = (
            force
            or self._unmarked_urgent
            or len(self._unmarked) >= _MARK_BATCH
            or time.monotonic() - self._unmarked_since >= _MARK_LINGER_S
        )
        if not due:
            return False
        self._store.mark_delivered(self._unmarked)
        self._unmarked = []
        self._unmarked_urgent = False
        self._more = True
        return True

    def _apply(self, results: List[_Result]) -> None:
        """Record the verdicts: deliveries in batches (see _flush_marks), the rest at once."""
        now = time.time()
        delivered: List[int] = []
        for result in results:
            self._in_flight -= 1
            self._latency += _LATENCY_WEIGHT * (result.seconds - self._latency)
            item = result.item
            verdict = result.verdict
            if verdict is backend.Verdict.DELIVERED:
                if result.adopted_session_id and result.adopted_session_id != item.session_id:
                    # Before the init is marked delivered: its events are claimable after that.
                    self._store.set_session_alias(item.session_id, result.adopted_session_id)
                    self._alias_cache[item.session_id] = (
                        result.adopted_session_id,
                        time.monotonic(),
                    )
                delivered.append(item.seq)
                self._count_delivered(item.kind, result.blob)
                self._recovered()
                self._drain_successes += 1
            elif verdict is backend.Verdict.RETRY:
                self._retry(result, now)
            elif verdict is backend.Verdict.REJECTED:
                self._reject(result)
            else:
                self._store.mark_retry(item.seq, result.error or verdict.value, now)
                self._halt(result)
        if delivered:
            if not self._unmarked:
                self._unmarked_since = time.monotonic()
            self._unmarked.extend(delivered)
            if any(result.item.kind != KIND_EVENT for result in results):
                self._unmarked_urgent = True  # an init or end: others wait for its mark
        elif any(r.outage for r in results):
            self._drain_failed_rounds += 1
        # The pause grows per round, not per item: eight requests failing together are one
        # sign of an outage, not eight.
        if (
            not delivered
            and self._failures >= PAUSE_AFTER_FAILURES
            and any(r.outage for r in results)
        ):
            self._pause_level += 1
            step = min(self._pause_cap, 0.25 * 2 ** min(self._pause_level - 1, 16))
            self._pause(now + self._jitter(step))
        if self._stats.halted is not None:
            self._take_back_queued(now, self._stats.halted)
        elif self._pause_until > now:
            self._take_back_queued(self._pause_until, "delivery paused")

    def _pause(self, until: float) -> None:
        """No request is sent before ``until`` (from any thread: workers see a Retry-After
        first)."""
        with self._cond:
            self._pause_until = max(self._pause_until, until)

    def _capacity(self) -> int:
        """How many items to hold (running and queued), and how many workers may run.

        Running workers: enough to cover the backend's latency. Each costs the program CPU
        and GIL time; a nearby backend answering in a millisecond is kept busy by two, a
        distant or slow one needs the whole pool. While replies are fast, a few items are
        queued per worker so that one claim transaction serves several requests.
        """
        wanted = int(self._latency / _LATENCY_PER_WORKER_S) + 1
        active = max(min(_MIN_ACTIVE_WORKERS, self._workers), min(self._workers, wanted))
        if active != self._limit:
            with self._slots:
                self._limit = active
                self._slots.notify_all()
        return active * (_QUEUE_DEPTH if self._latency < _FAST_REPLY_S else 1)

    def _backend_looks_down(self) -> bool:
        """During a drain: only transient failures since it began, in more than one round
        (so not one burst of concurrent requests hitting a blip)."""
        return (
            not self._drain_successes
            and self._drain_failures >= DRAIN_GIVE_UP_FAILURES
            and self._drain_failed_rounds >= 2
        )

    def _retry(self, result: _Result, now: float) -> None:
        item = result.item
        if result.protocol and item.attempts >= MAX_PROTOCOL_ATTEMPTS:
            self._reject(result)
            return
        if result.outage:
            self._failures += 1
            self._drain_failures += 1
        delay = self._jitter(
            min(self._backoff_cap, self._backoff_base * 2 ** min(max(item.attempts, 1) - 1, 30))
        )
        if result.retry_after is not None:
            delay = max(delay, result.retry_after)
            self._pause(now + result.retry_after)
        self._store.mark_retry(item.seq, result.error or "retry", now + delay)
        with self._stats_lock:
            self._stats.retried += 1
            self._stats.last_error = result.error
        logger.debug(
            "lucidic-otel: %s %s: %s; retry in %.2f s", item.kind, item.key, result.error, delay
        )
        if self._failures >= PAUSE_AFTER_FAILURES and result.outage:
            if (
                self._outage_logged_at is None
                or time.monotonic() - self._outage_logged_at > _OUTAGE_LOG_INTERVAL_S
            ):
                self._outage_logged_at = time.monotonic()
                logger.warning(
                    "lucidic-otel: cannot deliver to the Lucidic backend at %s (%s); records "
                    "stay in the local store %s and are retried with backoff",
                    self._base_url,
                    result.error,
                    self._store.path,
                )

    def _recovered(self) -> None:
        if self._failures and self._outage_logged_at is not None:
            logger.info(
                "lucidic-otel: delivery to the Lucidic backend at %s resumed", self._base_url
            )
            self._outage_logged_at = None
        self._failures = 0
        self._pause_level = 0

    def _reject(self, result: _Result) -> None:
        item = result.item
        reason = result.error or "rejected"
        self._store.mark_failed(item.seq, reason)
        with self._stats_lock:
            self._stats.failed += 1
            self._stats.last_error = reason
            if len(self._stats.rejected) < _REJECTED_KEPT:
                self._stats.rejected.append(
                    {
                        "seq": item.seq,
                        "kind": item.kind,
                        "session_id": item.session_id,
                        "key": item.key,
                        "reason": reason,
                    }
                )
        now = time.monotonic()
        if self._rejects_logged < _REJECTS_LOGGED_IN_FULL:
            self._rejects_logged += 1
            logger.warning(
                "lucidic-otel: the backend rejected %s %s of session %s (%s); it is kept aside "
                "in %s (see failed items) and will not be retried. If every record fails like "
                "this, check LUCIDIC_BASE_URL (%s).",
                item.kind,
                item.key,
                item.session_id,
                reason,
                self._store.path,
                self._base_url,
            )
            self._reject_logged_at = now
        else:
            self._rejects_unlogged += 1
            if now - self._reject_logged_at > _REJECT_LOG_INTERVAL_S:
                logger.warning(
                    "lucidic-otel: the backend rejected %d more records (latest: %s); they are "
                    "kept aside in %s",
                    self._rejects_unlogged,
                    reason,
                    self._store.path,
                )
                self._rejects_unlogged = 0
                self._reject_logged_at = now

    def _halt(self, result: _Result) -> None:
        if self._stats.halted is not None:
            return
        verdict = result.verdict
        if verdict is backend.Verdict.STOP_CREDITS:
            what = "the Lucidic account has no credits left"
            fix = "add credits to the account"
        elif verdict is backend.Verdict.STOP_CONFIG:
            what = "the backend redirected the request, so the base URL is wrong"
            fix = f"check LUCIDIC_BASE_URL / LUCIDIC_REGION (now {self._base_url})"
        else:
            what = "the Lucidic backend refused the API key"
            fix = "check LUCIDIC_API_KEY and LUCIDIC_AGENT_ID"
        with self._stats_lock:
            self._stats.halted = f"{what} ({result.error})"
            self._stats.last_error = result.error
        logger.error(
            "lucidic-otel: %s (%s). Delivery is stopped for this process; everything stays in "
            "the local store %s. To fix: %s, then run `lucidic-otel upload`.",
            what,
            result.error,
            self._store.path,
            fix,
        )

    def _count_delivered(self, kind: str, blob: bool) -> None:
        with self._stats_lock:
            self._stats.delivered[kind] = self._stats.delivered.get(kind, 0) + 1
            if blob:
                self._stats.blobs += 1

    def _jitter(self, seconds: float) -> float:
        return seconds * (0.5 + 0.5 * self._rng.random())

    def _call_progress(self, progress: Callable[[DeliveryStats], None]) -> None:
        try:
            progress(self.stats)
        except Exception:  # noqa: BLE001 - a display problem must not stop delivery
            logger.debug("lucidic-otel: progress callback failed", exc_info=True)

    # ------------------------------------------------------------------ workers

    @_untraced
    def _work(self) -> None:
        conns = _Connections(self._timeout, self._connect_timeout, self._tls_context)
        try:
            while True:
                # A worker over the current limit parks here; its own condition, so that the
                # notifications meant for the dispatcher do not wake every parked worker.
                with self._slots:
                    while self._running >= self._limit and not self._stopping:
                        self._slots.wait(1.0)
                    self._running += 1
                job: Optional[_Job] = None
                try:
                    job = self._jobs.get()
                finally:
                    if job is None:  # the stop sentinel (or get() failed): give the slot back
                        self._release_slot()
                if job is None:
                    return
                started = time.monotonic()
                paused = self._pause_until - time.time()
                if paused > 0:  # a Retry-After arrived after this job was queued: hold it
                    result = _Result(
                        job.item, backend.Verdict.RETRY, "delivery paused", retry_after=paused
                    )
                else:
                    try:
                        result = self._deliver(job, conns)
                    except Exception as exc:  # noqa: BLE001 - a bug must not lose the item
                        logger.debug("lucidic-otel: delivery failed unexpectedly", exc_info=True)
                        result = _Result(
                            job.item, backend.Verdict.RETRY, f"{type(exc).__name__}: {exc}"
                        )
                    if result.retry_after is not None:
                        self._pause(time.time() + result.retry_after)  # before the next job
                result.seconds = time.monotonic() - started
                self._release_slot()
                with self._cond:
                    self._results.append(result)
                    self._cond.notify_all()
        finally:
            conns.close()

    def _release_slot(self) -> None:
        with self._slots:
            self._running -= 1
            self._slots.notify()

    def _tls_context(self) -> ssl.SSLContext:
        with self._tls_lock:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            return self._tls

    def _deliver(self, job: _Job, conns: _Connections) -> _Result:
        item = job.item
        try:
            if item.kind == KIND_SESSION_INIT:
                body = backend.init_session_body(item.body, self._agent_id, backend.now_iso())
                body["session_id"] = item.session_id
                reply = self._call(conns, backend.INIT_SESSION, backend.encode_json(body))
                result = self._verdict(item, backend.INIT_SESSION, reply)
                if result.verdict is backend.Verdict.DELIVERED:
                    result.adopted_session_id = backend.adopted_session_id(
                        backend.parse_reply(reply.data), item.session_id
                    )
                return result
            if item.kind == KIND_SESSION_END:
                body = backend.update_session_body(item.body, job.session_id, backend.now_iso())
                reply = self._call(conns, backend.UPDATE_SESSION, backend.encode_json(body))
                return self._verdict(item, backend.UPDATE_SESSION, reply)
            return self._deliver_event(job, conns)
        except TransportError as exc:
            return _Result(item, backend.Verdict.RETRY, str(exc), outage=True)

    def _deliver_event(self, job: _Job, conns: _Connections) -> _Result:
        item = job.item
        force_blob = False
        while True:  # at most twice: inline, then through the blob flow after a 413
            request = backend.event_request(
                item.body,
                session_id=job.session_id,
                parent_event_id=job.parent_event_id,
                blob_threshold=self._blob_threshold,
                current_time=backend.now_iso(),
                force_blob=force_blob,
            )
            reply = self._call(conns, backend.CREATE_EVENT, request.body)
            result = self._verdict(item, backend.CREATE_EVENT, reply)
            if result.verdict is backend.Verdict.TOO_LARGE and not request.needs_blob:
                force_blob = True
                continue
            break
        if result.verdict is backend.Verdict.TOO_LARGE:
            result.verdict = backend.Verdict.REJECTED
        if result.verdict is not backend.Verdict.DELIVERED or request.blob is None:
            return result
        if reply.status == 409:
            return result  # the backend had it already (with its blob, or it would not say so)
        url = backend.blob_url(backend.parse_reply(reply.data))
        if url is None:
            return _Result(
                item,
                backend.Verdict.RETRY,
                f"{backend.CREATE_EVENT.name} answered {reply.status} without a usable blob_url",
                status=reply.status,
                protocol=True,
            )
        if url.startswith("/"):
            origin = urlsplit(self._base_url)
            url = f"{origin.scheme}://{origin.netloc}{url}"
        try:
            put = conns.request("PUT", url, request.blob, backend.blob_headers())
        except TransportError as exc:
            return _Result(item, backend.Verdict.RETRY, f"blob upload failed: {exc}", outage=True)
        if not 200 <= put.status < 300:
            return _Result(
                item,
                backend.Verdict.RETRY,
                "blob upload failed: " + backend.error_text(put.status, "PUT blob_url", put.data),
                status=put.status,
                retry_after=self._retry_after(put),
                outage=put.status >= 500,
            )
        result.blob = True
        return result

    def _call(self, conns: _Connections, endpoint: backend.Endpoint, body: bytes) -> _Reply:
        return conns.request(endpoint.method, endpoint.url(self._base_url), body, self._headers)

    def _verdict(self, item: OutboxItem, endpoint: backend.Endpoint, reply: _Reply) -> _Result:
        verdict = backend.classify(reply.status)
        if verdict is backend.Verdict.DELIVERED:
            return _Result(item, verdict, status=reply.status)
        where = f"{endpoint.method} {endpoint.url(self._base_url)}"
        error = backend.error_text(reply.status, where, reply.data)
        if verdict is backend.Verdict.STOP_CONFIG and reply.location:
            error += f" (Location: {reply.location[:200]})"
        return _Result(
            item,
            verdict,
            error,
            status=reply.status,
            retry_after=self._retry_after(reply),
            outage=verdict is backend.Verdict.RETRY and reply.status not in (425, 429),
        )

    @staticmethod
    def _retry_after(reply: _Reply) -> Optional[float]:
        if not backend.honours_retry_after(reply.status):
            return None
        return backend.retry_after_seconds(reply.retry_after, time.time())


def _parent_start(body: Mapping[str, Any]) -> Optional[Tuple[str, str]]:
    """Where the walk to an event's parent event starts: its trace and parent span."""
    metadata = body.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    trace_id, parent = metadata.get("trace_id"), metadata.get("parent_span_id")
    if isinstance(trace_id, str) and isinstance(parent, str) and trace_id and parent:
        return trace_id, parent
    return None


# ------------------------------------------------------------------------------ process


_lock = threading.Lock()
# A thread Sender, or the handle of a delivery process (delivery.helper), per store path.
_senders: Dict[str, Any] = {}
_agent_failures = 0
_AGENT_MAX_FAILURES = 3
_exited = False  # deliver_at_exit ran in this process
_owner_pid = os.getpid()
_flushes: List[Callable[[], Optional[Callable[[], Any]]]] = []
# A forked child keeps its parent's sender objects here, never using them: their threads do
# not exist in the child and their sockets belong to the parent.
_ABANDONED: List[Any] = []


def notify(store: Store, settings: Settings) -> None:
    """New outbox items were written: wake this process's sender, starting it if needed.

    The exporter calls this after every write, so the common path is a dictionary lookup and
    a condition notify. Never raises.
    """
    if not settings.delivery_enabled:
        return
    try:
        sender = _senders.get(str(store.path)) if _owner_pid == os.getpid() else None
        if sender is None:
            sender = _start_delivery(store, settings)
        elif isinstance(sender, DeliveryAgent) and (store.in_memory or not sender.alive):
            sender = _replace_agent(sender, store, settings)
        sender.wake()
    except Exception:  # noqa: BLE001 - telemetry must never break the exporter
        logger.exception("lucidic-otel: could not start the sender")


def prestart(store: Store, settings: Settings) -> None:
    """Start the delivery process now, before there is anything to deliver (the exporter
    calls this when it is built): its start-up then overlaps the application's own, instead
    of competing with the application's work on the first write. Never raises."""
    if not settings.delivery_enabled or settings.delivery != "process":
        return
    try:
        if _owner_pid != os.getpid() or str(store.path) not in _senders:
            _start_delivery(store, settings)
    except Exception:  # noqa: BLE001 - notify() tries again on the first write
        logger.debug("lucidic-otel: could not start the delivery process early", exc_info=True)


def _start_delivery(store: Store, settings: Settings) -> Any:
    """This process's delivery for ``store``: a delivery process unless threads are asked for
    (``LUCIDIC_DELIVERY=thread``), the store lives in memory (only this process can read it),
    or delivery processes keep failing to start."""
    global _agent_failures
    if settings.delivery == "process" and not store.in_memory:
        key = str(store.path)
        with _lock:
            if _owner_pid != os.getpid():
                _forget_after_fork()
            current = _senders.get(key)
            if current is not None:
                return current
            if _agent_failures < _AGENT_MAX_FAILURES:
                agent = DeliveryAgent(store, settings)
                if agent.start():
                    _senders[key] = agent
                    return agent
                _agent_failures += 1
    return process_sender(store, settings)


def _replace_agent(agent: DeliveryAgent, store: Store, settings: Settings) -> Any:
    """The delivery process died, or the store moved to memory where it cannot follow."""
    global _agent_failures
    if _exited and not store.in_memory:
        # After the exit delivery (a late span from the provider's own shutdown): the item is
        # in the outbox for the next process or `upload`; starting a helper now would outlive
        # the exit it is part of.
        return agent
    with _lock:
        if _senders.get(str(store.path)) is agent:
            del _senders[str(store.path)]
            if agent.exit_status == EXIT_STORE_UNUSABLE:
                # The file failed under it; it fails here too (or soon will), and this
                # process's store says so. Threads here can follow its memory fallback.
                _agent_failures = _AGENT_MAX_FAILURES
            elif not store.in_memory:
                _agent_failures += 1
                logger.warning(
                    "lucidic-otel: the delivery process for %s ended unexpectedly; starting "
                    "another%s", store.path,
                    "" if _agent_failures < _AGENT_MAX_FAILURES
                    else " (as threads in this process: it failed too often)",
                )
    agent.finish(0.0, stop=True)
    return _start_delivery(store, settings)


def process_sender(store: Store, settings: Settings) -> Sender:
    """This process's thread sender for ``store``, created and started on first use."""
    key = str(store.path)
    with _lock:
        if _owner_pid != os.getpid():
            _forget_after_fork()
        sender = _senders.get(key)
        if sender is None:
            sender = Sender(store, settings)
            _senders[key] = sender
    sender.start()
    return sender


def register_flush(flush: Callable[[], Any]) -> None:
    """Call ``flush`` at exit before the final delivery (the exporter's lifecycle records).

    Session ends recorded at exit may still sit in memory when the exit hook runs; flushing
    them into the outbox first lets this process deliver them. Bound methods are held weakly.
    """
    ref: Callable[[], Optional[Callable[[], Any]]]
    if hasattr(flush, "__self__"):
        ref = weakref.WeakMethod(flush)  # type: ignore[arg-type]
    else:
        ref = lambda: flush  # noqa: E731
    with _lock:
        _flushes.append(ref)


@_untraced
def deliver_at_exit(deadline_s: float) -> None:
    """The exit hook: deliver what can be delivered within ``deadline_s``, then stop.

    Whatever is left stays in the outbox (said in one line, unless delivery was stopped and
    that was said already).
    """
    # The store is written from this (main) thread here: its own sqlite3 calls must not be
    # traced by an instrumentation, at exit least of all (hence @_untraced).
    try:
        end = time.monotonic() + max(0.0, deadline_s)
        for ref in list(_flushes):
            flush = ref()
            if flush is not None:
                try:
                    flush()
                except Exception:  # noqa: BLE001
                    logger.debug("lucidic-otel: exit flush failed", exc_info=True)
        global _exited
        _exited = True
        senders = list(_senders.values()) if _owner_pid == os.getpid() else []
        threads = [sender for sender in senders if isinstance(sender, Sender)]
        last_errors: Dict[int, Optional[str]] = {}
        quiet: List[Any] = []
        for agent in senders:
            if isinstance(agent, DeliveryAgent):
                if not agent.woken:
                    # Started early but given nothing by this process: no reason to wait for
                    # it, nor to speak for what other processes left in the store.
                    agent.finish(0.0, stop=True)
                    quiet.append(agent)
                    continue
                gone = not agent.alive
                reply = agent.finish(max(0.0, end - time.monotonic()))
                last_errors[id(agent)] = (reply or {}).get("last_error")
                if reply is None and gone and not agent.store.in_memory:
                    # It died since the last write (killed, out of memory): deliver from here
                    # in what is left of the deadline.
                    fallback = Sender(agent.store, agent.settings)
                    threads.append(fallback)
                    senders.append(fallback)
                    quiet.append(agent)  # the fallback speaks for the store
        for sender in threads:
            sender.drain(max(0.0, end - time.monotonic()))
        for sender in threads:
            sender.stop(timeout_s=max(0.0, min(0.5, end - time.monotonic())))
            last_errors[id(sender)] = sender.stats.last_error
        for sender in senders:
            if sender.halted is not None or any(sender is q for q in quiet):
                continue
            pending = sender.store.outbox_counts().get("pending", 0)
            parent = _parent_that_delivers(sender.store)
            if pending and parent is not None:
                logger.debug(
                    "lucidic-otel: %d records are still pending in %s; the parent process "
                    "(pid %d) shares that store and delivers them",
                    pending, sender.store.path, parent,
                )
            elif pending:
                logger.warning(
                    "lucidic-otel: %d records were not delivered before exit (%s); they are kept "
                    "in %s and will be sent by the next process that runs with LUCIDIC_API_KEY, "
                    "or by `lucidic-otel upload`",
                    pending,
                    last_errors.get(id(sender)) or f"exit deadline {deadline_s:g} s",
                    sender.store.path,
                )
    except Exception:  # noqa: BLE001 - exit must go on
        logger.exception("lucidic-otel: delivery at exit failed")


def _parent_that_delivers(store: Any) -> Optional[int]:
    """The pid of the running multiprocessing parent of this worker, when the store is a file
    they share: what a worker leaves pending there is the parent's to deliver (and to report,
    at its own exit, if it cannot), so a worker must not warn about it."""
    if store.in_memory:
        return None
    process = sys.modules.get("multiprocessing.process")
    try:
        parent = process.parent_process() if process is not None else None
        if parent is not None and parent.is_alive():
            return parent.pid
    except Exception:  # noqa: BLE001 - unknown: warn as for any process
        logger.debug("lucidic-otel: could not check the parent process", exc_info=True)
    return None


def _forget_after_fork() -> None:
    """In a forked child: start from nothing; the parent's senders are parked, not used."""
    global _lock, _senders, _owner_pid
    for sender in _senders.values():
        if isinstance(sender, DeliveryAgent):
            sender.forget()  # the parent's delivery process stays the parent's
    _ABANDONED.extend(_senders.values())
    _senders = {}
    _lock = threading.Lock()
    _owner_pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
