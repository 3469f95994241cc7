"""The sender: delivers one store's outbox to the Lucidic backend, on its own threads.

The exporter only writes to the outbox and then wakes the sender, which costs a dictionary
lookup and a condition notify; every network call happens here, so a slow or dead backend can
never slow the program down or overflow the span queue.

How it works
    One dispatcher thread (:mod:`~lucidic_otel.delivery.dispatcher`) owns the outbox: it
    claims deliverable items with a lease (:meth:`Store.claim_pending`, which also enforces
    the order: ``initsession`` before the session's events, ``updatesession`` only once every
    earlier item of the session is settled), resolves each item
    (:mod:`~lucidic_otel.delivery.resolve`), and queues the jobs for a bounded pool of worker
    threads (:mod:`~lucidic_otel.delivery.pool`). Workers only do
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
from typing import Callable, Optional

from lucidic_otel._diagnostics import guarded, swallow
from lucidic_otel.config import Settings
from lucidic_otel.delivery import contract as backend
from lucidic_otel.delivery.attempt import Attempts, Job, Result
from lucidic_otel.delivery.dispatcher import Dispatcher, Mailbox
from lucidic_otel.delivery.policy import (
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_CAP_S,
    DeliveryStats,
    Policy,
)
from lucidic_otel.delivery.pool import WorkerPool
from lucidic_otel.delivery.transport import (
    Connections,
    SharedTLS,
    Transport,
    TransportFactory,
    untraced,
)
from lucidic_otel.outbox.store import Store

logger = logging.getLogger(__name__)

DEFAULT_WORKERS = 8
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_CONNECT_TIMEOUT_S = 3.0
DEFAULT_IDLE_POLL_S = 10.0
_MAX_DISPATCH_RESTARTS = 10


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

        self._mail = Mailbox()
        self._cond = self._mail.cond
        self._loop = Dispatcher(
            store,
            self._policy,
            self._pool,
            self._mail,
            workers=self._workers,
            idle_poll_s=self._idle_poll,
            lease_s=self._lease,
        )
        self._started = False
        self._dispatcher: Optional[threading.Thread] = None

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
            self._mail.woken = True
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
                if self._mail.drain_requests == wanted:
                    self._mail.drain_until = None
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
            if not self._started or self._mail.stopping:
                self._mail.stopping = True
                return
            self._mail.stopping = True
            self._mail.stop_deadline = time.monotonic() + max(0.0, timeout_s)
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
            self._mail.drain_until = time.time() + max(0.0, deadline_s)
            self._mail.drain_requests += 1
            self._mail.woken = True
            self._cond.notify_all()
            return self._mail.drain_requests

    def _drained(self, wanted: int, end: float) -> Optional[bool]:
        """With the lock held: the drain's answer once it is known, else None (wait on)."""
        if self._mail.settled_for >= wanted:
            return self._mail.settled_empty
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
        self._loop.take_back_queued(time.time(), "the sender stopped")

    # ------------------------------------------------------------------ workers' side

    def _run(self, job: Job, transport: Transport) -> Result:
        """On a worker: send one job, unless a pause arrived after it was queued."""
        started = time.monotonic()
        drain = self._mail.drain_requests  # an int read: no lock needed
        paused = self._policy.pause_until - time.time()
        if paused > 0:  # a Retry-After arrived after this job was queued: hold it
            result = Result(
                job.item, backend.Verdict.RETRY, "delivery paused", retry_after=paused,
                unattempted=True,
            )
        else:
            try:
                result = self._attempts.deliver(job, transport)
            except Exception as exc:  # noqa: BLE001 - a bug must not lose the item
                swallow(logger, "delivering an outbox item", exc)
                result = Result(job.item, backend.Verdict.RETRY, f"{type(exc).__name__}: {exc}")
            if result.retry_after is not None:
                self._policy.pause(time.time() + result.retry_after)  # before the next job
        result.seconds = time.monotonic() - started
        result.drain = drain
        return result

    def _report(self, result: Result) -> None:
        with self._cond:
            self._mail.results.append(result)
            self._cond.notify_all()

    # ------------------------------------------------------------------ dispatcher

    @untraced
    def _dispatch(self) -> None:
        try:
            for _ in range(_MAX_DISPATCH_RESTARTS + 1):
                with guarded(logger, "the sender's dispatcher"):  # a bug must not stop the app
                    self._loop.run()
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

