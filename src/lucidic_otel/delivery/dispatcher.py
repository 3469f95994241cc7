"""The sender's dispatcher: the one thread that reads and writes the outbox for a sender.

Each round it takes the workers' results and records them (deliveries batched into one
transaction, every other verdict through the :class:`~lucidic_otel.delivery.policy.Policy`),
claims what the workers can take now with a lease, and hands the resolved jobs to the pool;
with nothing in flight it settles a waiting drain, or sleeps until the next item is due, a
pause ends, or it is woken.

Claims come in rounds of at least half the capacity (one transaction for several items, not
one per returning worker), and while replies are fast a few items are queued per worker.

Parents before children: the claim orders a batch parents first, and a job whose parent event
is in a worker's hands waits in :class:`~lucidic_otel.delivery.holds.Holds` until the parent's
result is in.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import List, Optional, Tuple

from lucidic_otel.delivery import contract as backend
from lucidic_otel.delivery.attempt import Job, Result
from lucidic_otel.delivery.holds import Holds
from lucidic_otel.delivery.policy import Policy
from lucidic_otel.delivery.pool import MIN_ACTIVE_WORKERS, WorkerPool
from lucidic_otel.delivery.resolve import Resolver
from lucidic_otel.outbox.store import KIND_EVENT, OutboxItem, Store

logger = logging.getLogger(__name__)

_CLAIM_LINGER_S = 0.02
_MARK_BATCH = 64
_QUEUE_DEPTH = 8
_FAST_REPLY_S = 0.05
_MARK_LINGER_S = 0.05
_LATENCY_PER_WORKER_S = 0.005
_LATENCY_WEIGHT = 0.2


class Mailbox:
    """What the callers, the workers and the dispatcher share, under one condition."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.results: List[Result] = []  # from the workers, not yet recorded
        self.woken = False
        self.stopping = False
        self.stop_deadline = 0.0
        self.drain_until: Optional[float] = None  # epoch seconds
        self.drain_requests = 0
        self.settled_for = 0  # the latest drain request the dispatcher answered
        self.settled_empty = False  # ... and whether nothing was left pending


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


class Dispatcher:
    """The dispatcher thread's state and rounds; :meth:`run` is its whole life."""

    def __init__(
        self,
        store: Store,
        policy: Policy,
        pool: WorkerPool,
        mail: Mailbox,
        *,
        workers: int,
        idle_poll_s: float,
        lease_s: float,
    ) -> None:
        self._store = store
        self._policy = policy
        self._pool = pool
        self._mail = mail
        self._workers = workers
        self._idle_poll = idle_poll_s
        self._lease = lease_s
        self._resolver = Resolver(store)
        self._marks = _Marks(store)
        self._holds = Holds()
        self._in_flight = 0
        self._last_claim = 0.0
        self._latency = 0.0  # moving average of the seconds a delivery takes
        self._more = True  # whether a claim may find something (reset when one comes short)

    def take_back_queued(self, until: float, why: str) -> int:
        """Items queued but not started go back to the outbox, due at ``until``.

        So that a pause (Retry-After, an outage) or a stop holds for them too, instead of
        them being sent anyway by the next free worker. They were never sent: their claim's
        attempt is undone (:meth:`Store.release_unattempted`), so no backoff grows for them.
        """
        taken = self._pool.take_back()
        for job in list(taken):  # their children, held here, go back too
            taken.extend(self._holds.done(job.item))
        taken.extend(self._holds.take_all())
        self._in_flight -= len(taken)
        self._store.release_unattempted([job.item for job in taken], until, why)
        return len(taken)

    def run(self) -> None:
        """The loop, until the sender stops (an exception is the caller's to handle)."""
        while True:
            results, stopping, drain_request, drain_until = self._take_results()
            self._policy.new_drain(drain_request)
            if results:
                self._apply(results)
            self._flush_marks(force=stopping)
            if stopping:
                if self._in_flight == 0 or time.monotonic() >= self._mail.stop_deadline:
                    self._flush_marks(force=True)
                    return
                self._wait(min(0.05, max(0.0, self._mail.stop_deadline - time.monotonic())))
                continue
            self._claim()
            if self._in_flight > 0:
                self._wait(self._busy_timeout())
                continue
            if self._flush_marks(force=True):
                continue  # their dependents (a session's end) may be claimable now
            self._idle(drain_request, drain_until)

    def _take_results(self) -> Tuple[List[Result], bool, int, Optional[float]]:
        with self._mail.cond:
            results, self._mail.results = self._mail.results, []
            if results or self._mail.woken:
                self._more = True  # new items, or dependents of settled ones
            self._mail.woken = False
            return results, self._mail.stopping, self._mail.drain_requests, self._mail.drain_until

    def _wait(self, timeout: float) -> None:
        with self._mail.cond:
            if not self._mail.results and not self._mail.woken and not self._mail.stopping:
                self._mail.cond.wait(timeout)

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
            self._more = len(items) >= free
            if items:
                self._submit(items)

    def _submit(self, items: List[OutboxItem]) -> None:
        for job in self._resolver.jobs(items):
            self._in_flight += 1
            if not self._holds.hold(job):
                self._send(job)

    def _send(self, job: Job) -> None:
        self._pool.grow()
        self._holds.sent(job)
        self._pool.put(job)

    def _release(self, result: Result, now: float) -> None:
        """The jobs that waited for ``result``'s item: sent if it was delivered or rejected
        for good, else back to the outbox (where the claim holds them behind it, bounded)."""
        waiting = self._holds.done(result.item)
        if not waiting:
            return
        if result.verdict in (backend.Verdict.DELIVERED, backend.Verdict.REJECTED):
            for job in waiting:
                self._send(job)
            return
        back = waiting + self._holds.dependents(waiting)
        self._in_flight -= len(back)
        self._store.release_unattempted(
            [job.item for job in back], now, "waiting for its parent event"
        )

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
            with self._mail.cond:
                if drain_request > self._mail.settled_for:
                    self._mail.settled_for = drain_request
                    self._mail.settled_empty = due is None and halted is None
                self._mail.cond.notify_all()
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
            self._release(result, now)
        if delivered:
            self._marks.add(delivered, urgent=any(r.item.kind != KIND_EVENT for r in results))
        self._policy.end_round(bool(delivered), results, now)
        if self._policy.halted is not None:
            self.take_back_queued(now, self._policy.halted)
        elif self._policy.pause_until > now:
            self.take_back_queued(self._policy.pause_until, "delivery paused")

    def _record(self, result: Result, now: float) -> bool:
        """One verdict; True if the item was delivered (its mark is batched)."""
        item, verdict = result.item, result.verdict
        if result.unattempted:  # it met a pause, not the backend: back unsent, no backoff
            until = max(now, self._policy.pause_until)
            self._store.release_unattempted([item], until, result.error)
            return False
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
