"""The sender: delivers one store's outbox to the Lucidic backend, on its own threads.

The exporter only writes to the outbox and then wakes the sender, which costs a dictionary
lookup and a condition notify; every network call happens here, so a slow or dead backend can
never slow the program down or overflow the span queue.

How it works
    One dispatcher thread owns the outbox: it claims deliverable items with a lease
    (:meth:`Store.claim_pending`, which also enforces the order: ``initsession`` before the
    session's events, ``updatesession`` only once every earlier item of the session is
    settled), resolves each item (:mod:`~lucidic_otel.delivery.resolve`), and queues the jobs
    for a bounded pool of worker threads (:mod:`~lucidic_otel.delivery.pool`). Workers only do
    HTTP (:mod:`~lucidic_otel.delivery.attempt`) and report a result; the dispatcher marks
    items delivered (batched: one transaction for many) and leaves every other verdict to the
    :class:`~lucidic_otel.delivery.policy.Policy` (retries, pauses, rejects, stopping).

    The pool runs only as many workers as the backend's latency needs, and while replies are
    fast the dispatcher claims several items per worker so that one claim transaction serves
    many requests.

Processes
    A sender belongs to the process that built it: in a forked child its methods do nothing
    (threads and sockets do not survive ``fork``; the parent still uses them). Several
    processes may share a store: leases keep them off each other's items, and an item whose
    process died is claimed again when its lease expires.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Callable, List, Optional, Tuple

from lucidic_otel._diagnostics import guarded, swallow
from lucidic_otel.config import Settings
from lucidic_otel.delivery import contract as backend
from lucidic_otel.delivery.attempt import Attempts, Job, Result
from lucidic_otel.delivery.policy import (
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_CAP_S,
    DeliveryStats,
    Policy,
)
from lucidic_otel.delivery.pool import MIN_ACTIVE_WORKERS, WorkerPool
from lucidic_otel.delivery.resolve import Resolver
from lucidic_otel.delivery.transport import (
    Connections,
    SharedTLS,
    Transport,
    TransportFactory,
    untraced,
)
from lucidic_otel.outbox.store import KIND_EVENT, OutboxItem, Store

logger = logging.getLogger(__name__)

DEFAULT_WORKERS = 8
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_CONNECT_TIMEOUT_S = 3.0
DEFAULT_IDLE_POLL_S = 10.0
_MAX_DISPATCH_RESTARTS = 10
_CLAIM_LINGER_S = 0.02
_MARK_BATCH = 64
_QUEUE_DEPTH = 8
_FAST_REPLY_S = 0.05
_MARK_LINGER_S = 0.05
_LATENCY_PER_WORKER_S = 0.005
_LATENCY_WEIGHT = 0.2


class _Marks:
    """Delivered items not yet marked so in the store: marked in one transaction per batch
    rather than one per round.

    Held back only briefly: a session's end waits for its events' marks, and events wait for
    their session's init (whose mark is never held back).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._seqs: List[int] = []
        self._since = 0.0
        self._urgent = False

    @property
    def pending(self) -> bool:
        return bool(self._seqs)

    def add(self, seqs: List[int], urgent: bool) -> None:
        if not self._seqs:
            self._since = time.monotonic()
        self._seqs.extend(seqs)
        if urgent:
            self._urgent = True  # an init or end: others wait for its mark

    def flush(self, force: bool) -> bool:
        """Write the marks if they are due; returns whether it wrote."""
        if not self._seqs:
            return False
        due = (
            force
            or self._urgent
            or len(self._seqs) >= _MARK_BATCH
            or time.monotonic() - self._since >= _MARK_LINGER_S
        )
        if not due:
            return False
        self._store.mark_delivered(self._seqs)
        self._seqs = []
        self._urgent = False
        return True


class Sender:
    """Delivers one store's outbox to the backend named by ``settings``.

    Use :func:`~lucidic_otel.delivery.sender.notify` from the exporter; construct one directly
    for a one-off job such as ``lucidic-otel upload`` (``start``, ``drain``, ``stop``). Threads
    are created by :meth:`start` and are daemons: a stuck request can never hold the process
    open. ``transport`` makes each worker's HTTP transport (default: keep-alive
    connections with the given timeouts).
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
        transport: Optional[TransportFactory] = None,
    ) -> None:
        if not settings.api_key or not settings.agent_id:
            raise ValueError("delivery needs LUCIDIC_API_KEY and LUCIDIC_AGENT_ID")
        self._store = store
        base_url = settings.base_url.rstrip("/")
        self._attempts = Attempts(
            base_url,
            settings.agent_id,
            backend.api_headers(settings.api_key, settings.agent_id),
            settings.blob_threshold,
        )
        self._policy = Policy(
            store, base_url, backoff_base_s=backoff_base_s, backoff_cap_s=backoff_cap_s, rng=rng
        )
        self._resolver = Resolver(store)
        self._marks = _Marks(store)
        self._workers = max(1, int(workers))
        timeout, connect_timeout = float(timeout_s), float(connect_timeout_s)
        if transport is None:
            tls = SharedTLS()  # loading CA certificates takes a while: once, on first use
            transport = lambda: Connections(timeout, connect_timeout, tls)  # noqa: E731
        self._pool = WorkerPool(self._workers, self._run, self._report, transport)
        self._idle_poll = float(idle_poll_s)
        # Longest an item can be in a worker's hands: the event, a 413 re-send and the blob,
        # each with a reconnect; a lease shorter than that would let another sender duplicate
        # work in flight, a much longer one delays recovery after a crash.
        self._lease = (
            float(lease_s) if lease_s is not None else 3 * (timeout + connect_timeout) + 5.0
        )
        self._pid = os.getpid()

        self._cond = threading.Condition()  # guards the state the callers and workers share
        self._results: List[Result] = []
        self._woken = False
        self._stopping = False
        self._started = False
        self._dispatcher: Optional[threading.Thread] = None
        self._drain_until: Optional[float] = None
        self._stop_deadline = 0.0
        self._drain_requests = 0
        self._settled_for = 0
        self._settled_empty = False

        # Owned by the dispatcher thread.
        self._in_flight = 0
        self._last_claim = 0.0
        self._latency = 0.0  # moving average of the seconds a delivery takes
        self._more = True  # whether a claim may find something (reset when one comes short)

    # ------------------------------------------------------------------ public

    @property
    def store(self) -> Store:
        return self._store

    @property
    def stats(self) -> DeliveryStats:
        return self._policy.snapshot()

    @property
    def halted(self) -> Optional[str]:
        """Why delivery stopped for this process (401/402/403/3xx), or None."""
        return self._policy.halted

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
        wanted = self._request_drain(deadline_s)
        next_progress = 0.0
        try:
            while True:
                if progress is not None and time.monotonic() >= next_progress:
                    next_progress = time.monotonic() + progress_interval_s
                    self._call_progress(progress)  # never with the lock held: it may block
                with self._cond:
                    settled = self._drained(wanted, end)
                    if settled is not None:
                        return settled
                    self._cond.wait(max(0.0, min(end - time.monotonic(), progress_interval_s)))
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
        self._pool.stop_parking()
        if self._dispatcher is not None:
            self._dispatcher.join(max(0.0, timeout_s) + 0.1)
            if not self._dispatcher.is_alive():
                self._release_unstarted()
        self._pool.send_stop()

    # ------------------------------------------------------------------ callers' side

    def _request_drain(self, deadline_s: float) -> int:
        with self._cond:
            self._drain_until = time.time() + max(0.0, deadline_s)
            self._drain_requests += 1
            self._woken = True
            self._cond.notify_all()
            return self._drain_requests

    def _drained(self, wanted: int, end: float) -> Optional[bool]:
        """With the lock held: the drain's answer once it is known, else None (wait on)."""
        if self._settled_for >= wanted:
            return self._settled_empty
        if end - time.monotonic() <= 0 or self._dispatcher is None:
            return False
        return None if self._dispatcher.is_alive() else False

    def _call_progress(self, progress: Callable[[DeliveryStats], None]) -> None:
        try:
            progress(self.stats)
        except Exception:  # noqa: BLE001 - a display problem must not stop delivery
            logger.debug("lucidic-otel: progress callback failed", exc_info=True)

    @untraced
    def _release_unstarted(self) -> None:
        """After the dispatcher ended: queued items go back now rather than at lease end."""
        self._take_back_queued(time.time(), "the sender stopped")

    def _take_back_queued(self, until: float, why: str) -> int:
        """Items queued but not started go back to the outbox, due at ``until``.

        So that a pause (Retry-After, an outage) or a stop holds for them too, instead of
        them being sent anyway by the next free worker.
        """
        taken = self._pool.take_back()
        for job in taken:
            self._in_flight -= 1
            self._store.mark_retry(job.item.seq, why, until)
        return len(taken)

    # ------------------------------------------------------------------ workers' side

    def _run(self, job: Job, transport: Transport) -> Result:
        """On a worker: send one job, unless a pause arrived after it was queued."""
        started = time.monotonic()
        paused = self._policy.pause_until - time.time()
        if paused > 0:  # a Retry-After arrived after this job was queued: hold it
            result = Result(job.item, backend.Verdict.RETRY, "delivery paused", retry_after=paused)
        else:
            try:
                result = self._attempts.deliver(job, transport)
            except Exception as exc:  # noqa: BLE001 - a bug must not lose the item
                swallow(logger, "delivering an outbox item", exc)
                result = Result(job.item, backend.Verdict.RETRY, f"{type(exc).__name__}: {exc}")
            if result.retry_after is not None:
                self._policy.pause(time.time() + result.retry_after)  # before the next job
        result.seconds = time.monotonic() - started
        return result

    def _report(self, result: Result) -> None:
        with self._cond:
            self._results.append(result)
            self._cond.notify_all()

    # ------------------------------------------------------------------ dispatcher

    @untraced
    def _dispatch(self) -> None:
        try:
            for _ in range(_MAX_DISPATCH_RESTARTS + 1):
                with guarded(logger, "the sender's dispatcher"):  # a bug must not stop the app
                    self._dispatch_loop()
                    return
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
            results, stopping, drain_request, drain_until = self._take_results()
            self._policy.new_drain(drain_request)
            if results:
                self._apply(results)
            self._flush_marks(force=stopping)
            if stopping:
                if self._in_flight == 0 or time.monotonic() >= self._stop_deadline:
                    self._flush_marks(force=True)
                    return
                self._wait(min(0.05, max(0.0, self._stop_deadline - time.monotonic())))
                continue
            self._claim()
            if self._in_flight > 0:
                self._wait(self._busy_timeout())
                continue
            if self._flush_marks(force=True):
                continue  # their dependents (a session's end) may be claimable now
            self._idle(drain_request, drain_until)

    def _take_results(self) -> Tuple[List[Result], bool, int, Optional[float]]:
        with self._cond:
            results, self._results = self._results, []
            if results or self._woken:
                self._more = True  # new items, or dependents of settled ones
            self._woken = False
            return results, self._stopping, self._drain_requests, self._drain_until

    def _wait(self, timeout: float) -> None:
        with self._cond:
            if not self._results and not self._woken and not self._stopping:
                self._cond.wait(timeout)

    def _claim(self) -> None:
        """Claim what the workers can take now, unless delivery is stopped or paused."""
        now = time.time()
        if self._policy.halted is not None or now < self._policy.pause_until:
            return
        capacity = self._capacity()
        free = capacity - self._in_flight
        # Claim in rounds of at least half the capacity (one transaction for several items,
        # not one per returning worker), unless workers are tied up by slow requests: then
        # whatever is free after a short linger.
        lingered = time.monotonic() - self._last_claim >= _CLAIM_LINGER_S
        more = self._more and (2 * free >= capacity or lingered)
        if free > 0 and (self._in_flight == 0 or more):
            self._last_claim = time.monotonic()
            items = self._store.claim_pending(free, now, self._lease)
            self._more = len(items) == free
            if items:
                self._submit(items)

    def _submit(self, items: List[OutboxItem]) -> None:
        for job in self._resolver.jobs(items):
            self._pool.grow()
            self._in_flight += 1
            self._pool.put(job)

    def _busy_timeout(self) -> float:
        linger = self._more and self._in_flight < self._capacity()
        timeout = _CLAIM_LINGER_S if linger else self._idle_poll
        if self._marks.pending:
            timeout = min(timeout, _MARK_LINGER_S)
        return timeout

    def _idle(self, drain_request: int, drain_until: Optional[float]) -> None:
        """Nothing in flight and nothing claimable right now: settle a drain, or sleep until
        the next item is due."""
        halted = self._policy.halted
        due, wake_at = self._next_due(halted)
        settled = (
            halted is not None
            or wake_at is None
            or (drain_until is not None and wake_at > drain_until)
            or self._policy.drain.looks_down()
        )
        if settled and drain_request:
            with self._cond:
                if drain_request > self._settled_for:
                    self._settled_for = drain_request
                    self._settled_empty = due is None and halted is None
                self._cond.notify_all()
        timeout = self._idle_poll
        if wake_at is not None and halted is None:
            timeout = min(max(wake_at - time.time(), 0.005), self._idle_poll)
        self._wait(timeout)

    def _next_due(self, halted: Optional[str]) -> Tuple[Optional[float], Optional[float]]:
        """When the next item is due, and when to look again (not before a pause ends)."""
        pause_until = self._policy.pause_until
        if halted is None and time.time() < pause_until:
            # Paused (an outage, Retry-After): nothing is claimed before the pause ends, so a
            # wake-up need not read the outbox (a scan of everything pending, which grows for
            # as long as the backend is away).
            due: Optional[float] = pause_until
        else:
            due = None if halted else self._store.next_due_at()
        return due, (max(due, pause_until) if due is not None else None)

    def _flush_marks(self, force: bool) -> bool:
        if self._marks.flush(force):
            self._more = True
            return True
        return False

    def _apply(self, results: List[Result]) -> None:
        """Record the verdicts: deliveries in batches (see :class:`_Marks`), the rest at once."""
        now = time.time()
        delivered: List[int] = []
        for result in results:
            self._in_flight -= 1
            self._latency += _LATENCY_WEIGHT * (result.seconds - self._latency)
            if self._record(result, now):
                delivered.append(result.item.seq)
        if delivered:
            self._marks.add(delivered, urgent=any(r.item.kind != KIND_EVENT for r in results))
        self._policy.end_round(bool(delivered), results, now)
        if self._policy.halted is not None:
            self._take_back_queued(now, self._policy.halted)
        elif self._policy.pause_until > now:
            self._take_back_queued(self._policy.pause_until, "delivery paused")

    def _record(self, result: Result, now: float) -> bool:
        """One verdict; True if the item was delivered (its mark is batched)."""
        item, verdict = result.item, result.verdict
        if verdict is backend.Verdict.DELIVERED:
            if result.adopted_session_id and result.adopted_session_id != item.session_id:
                self._resolver.adopt(item.session_id, result.adopted_session_id)
            self._policy.delivered(item.kind, result.blob)
            return True
        if verdict is backend.Verdict.RETRY:
            self._policy.retry(result, now)
        elif verdict is backend.Verdict.REJECTED:
            self._policy.reject(result)
        else:
            self._policy.halt(result, now)
        return False

    def _capacity(self) -> int:
        """How many items to hold (running and queued), and how many workers may run.

        Running workers: enough to cover the backend's latency. Each costs the program CPU
        and GIL time; a nearby backend answering in a millisecond is kept busy by two, a
        distant or slow one needs the whole pool. While replies are fast, a few items are
        queued per worker so that one claim transaction serves several requests.
        """
        wanted = int(self._latency / _LATENCY_PER_WORKER_S) + 1
        active = max(min(MIN_ACTIVE_WORKERS, self._workers), min(self._workers, wanted))
        self._pool.set_limit(active)
        return active * (_QUEUE_DEPTH if self._latency < _FAST_REPLY_S else 1)
