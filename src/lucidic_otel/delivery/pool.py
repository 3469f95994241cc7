"""The sender's worker threads: a bounded pool that runs only as many workers as it needs.

Every request costs the program CPU and GIL time, so the dispatcher sets how many workers may
run at once (:meth:`WorkerPool.set_limit`: two for a backend that answers in a millisecond,
the whole pool for a distant or struggling one); workers over the limit park on their own
condition, so that the notifications meant for the dispatcher do not wake every parked
worker. Each worker has its own transport (keep-alive connections are never shared between
threads), does only HTTP, and hands its result back; it never writes the outbox.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, List, Optional

from lucidic_otel.delivery.attempt import Job, Result
from lucidic_otel.delivery.transport import Transport, TransportFactory, untraced

logger = logging.getLogger(__name__)

MIN_ACTIVE_WORKERS = 2


class WorkerPool:
    """Up to ``size`` daemon threads taking jobs from one queue.

    ``run`` sends one job on the worker's transport and returns its result; ``report`` hands
    the result to the dispatcher. Threads start on :meth:`grow`, when there is first
    something to send, and end on the stop sentinel (:meth:`send_stop`).
    """

    def __init__(
        self,
        size: int,
        run: Callable[[Job, Transport], Result],
        report: Callable[[Result], None],
        transport: TransportFactory,
    ) -> None:
        self._size = size
        self._run = run
        self._report = report
        self._transport = transport
        self._jobs: queue.SimpleQueue[Optional[Job]] = queue.SimpleQueue()
        self._threads: List[threading.Thread] = []
        self._slots = threading.Condition()  # guards the three below
        self._limit = min(MIN_ACTIVE_WORKERS, size)  # workers allowed to run
        self._running = 0
        self._stopping = False

    def set_limit(self, active: int) -> None:
        """Let ``active`` workers run at once (parked ones wake when it grows)."""
        if active != self._limit:
            with self._slots:
                self._limit = active
                self._slots.notify_all()

    def grow(self) -> None:
        """On the dispatcher thread: as many workers as may run now (the pool grows when the
        backend's latency asks for more, and never beyond ``size``)."""
        while len(self._threads) < min(self._limit, self._size):
            thread = threading.Thread(
                target=self._work, name=f"lucidic-sender-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def put(self, job: Job) -> None:
        self._jobs.put(job)

    def take_back(self) -> List[Job]:
        """The jobs queued but not started (stop sentinels stay queued)."""
        taken: List[Job] = []
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
        return taken

    def stop_parking(self) -> None:
        """Parked workers go on, to take their stop sentinel."""
        with self._slots:
            self._stopping = True
            self._slots.notify_all()

    def send_stop(self) -> None:
        """One stop sentinel per worker: each ends after the job in its hands."""
        for _ in list(self._threads):
            self._jobs.put(None)

    @untraced
    def _work(self) -> None:
        transport = self._transport()
        try:
            while True:
                self._take_slot()
                job: Optional[Job] = None
                try:
                    job = self._jobs.get()
                finally:
                    if job is None:  # the stop sentinel (or get() failed): give the slot back
                        self._release_slot()
                if job is None:
                    return
                result = self._run(job, transport)
                self._release_slot()
                self._report(result)
        finally:
            transport.close()

    def _take_slot(self) -> None:
        with self._slots:
            while self._running >= self._limit and not self._stopping:
                self._slots.wait(1.0)
            self._running += 1

    def _release_slot(self) -> None:
        with self._slots:
            self._running -= 1
            self._slots.notify()
