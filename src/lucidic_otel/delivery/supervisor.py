"""One delivery per process and store: threads or the helper process, and the exit delivery.

The exporter calls :func:`notify` after every write (a dictionary lookup and a wake-up) and
:func:`prestart` when it is built; the exit sequence calls :func:`deliver_at_exit`. Behind
them, each store is delivered by one :class:`Delivery`: the helper process
(:class:`~lucidic_otel.delivery.helper.DeliveryAgent`, the default) or sender threads in
this process (:class:`~lucidic_otel.delivery.thread_sender.Sender`:
``LUCIDIC_DELIVERY=thread``, a store that lives in memory, or a helper that cannot be started
or keeps dying).

Processes
    A forked child never touches its parent's deliveries (threads and sockets do not survive
    ``fork``; the parent still uses them): it forgets them and starts its own on its first
    write. At exit (and on SIGTERM) :func:`deliver_at_exit` delivers what it can within
    ``LUCIDIC_EXIT_DEADLINE``; the rest stays in the outbox for the next process or
    ``lucidic-otel upload``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Protocol, Union

from lucidic_otel._diagnostics import guarded
from lucidic_otel.config import Settings
from lucidic_otel.delivery.helper import EXIT_STORE_UNUSABLE, DeliveryAgent
from lucidic_otel.delivery.thread_sender import Sender
from lucidic_otel.delivery.transport import untraced
from lucidic_otel.outbox.store import Store

logger = logging.getLogger(__name__)


class Delivery(Protocol):
    """What the supervisor needs of a store's delivery, whichever kind it is."""

    @property
    def store(self) -> Store: ...

    @property
    def halted(self) -> Optional[str]:
        """Why delivery stopped for this process (401/402/403/3xx), or None."""
        ...

    def wake(self) -> None:
        """New items were written: look now. Cheap, never raises."""
        ...


_lock = threading.Lock()
# A thread Sender, or the handle of a delivery process (delivery.helper), per store path.
_senders: Dict[str, Union[Sender, DeliveryAgent]] = {}
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
    with guarded(logger, "starting the sender"):  # telemetry must never break the exporter
        sender = _senders.get(str(store.path)) if _owner_pid == os.getpid() else None
        if sender is None:
            sender = _start_delivery(store, settings)
        elif isinstance(sender, DeliveryAgent) and (store.in_memory or not sender.alive):
            sender = _replace_agent(sender, store, settings)
        sender.wake()


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


def _start_delivery(store: Store, settings: Settings) -> Union[Sender, DeliveryAgent]:
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


def _replace_agent(
    agent: DeliveryAgent, store: Store, settings: Settings
) -> Union[Sender, DeliveryAgent]:
    """The delivery process died, or the store moved to memory where it cannot follow."""
    if _exited and not store.in_memory:
        # After the exit delivery (a late span from the provider's own shutdown): the item is
        # in the outbox for the next process or `upload`; starting a helper now would outlive
        # the exit it is part of.
        return agent
    with _lock:
        if _senders.get(str(store.path)) is agent:
            del _senders[str(store.path)]
            _count_agent_failure(agent, store)
    agent.finish(0.0, stop=True)
    return _start_delivery(store, settings)


def _count_agent_failure(agent: DeliveryAgent, store: Store) -> None:
    global _agent_failures
    if agent.exit_status == EXIT_STORE_UNUSABLE:
        # The file failed under it; it fails here too (or soon will), and this process's
        # store says so. Threads here can follow its memory fallback.
        _agent_failures = _AGENT_MAX_FAILURES
    elif not store.in_memory:
        _agent_failures += 1
        logger.warning(
            "lucidic-otel: the delivery process for %s ended unexpectedly; starting "
            "another%s", store.path,
            "" if _agent_failures < _AGENT_MAX_FAILURES
            else " (as threads in this process: it failed too often)",
        )


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
    return sender  # type: ignore[return-value]  # thread delivery: only ever a Sender here


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


# ------------------------------------------------------------------------------ exit


class _ExitRound:
    """One exit delivery: every delivery of this process, within one deadline."""

    def __init__(self, deadline_s: float, end: float, deliveries: List[Delivery]) -> None:
        self.deadline_s = deadline_s
        self.end = end
        self.deliveries = deliveries
        self.threads: List[Sender] = [d for d in deliveries if isinstance(d, Sender)]
        self.last_errors: Dict[int, Optional[str]] = {}
        self.quiet: List[Delivery] = []  # say nothing for these (see below)

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def finish_agents(self) -> None:
        """Ask each helper to deliver in what is left of the deadline, and to end."""
        for agent in list(self.deliveries):
            if not isinstance(agent, DeliveryAgent):
                continue
            if not agent.woken:
                # Started early but given nothing by this process: no reason to wait for
                # it, nor to speak for what other processes left in the store.
                agent.finish(0.0, stop=True)
                self.quiet.append(agent)
                continue
            gone = not agent.alive
            reply = agent.finish(self.left())
            self.last_errors[id(agent)] = (reply or {}).get("last_error")
            if reply is None and gone and not agent.store.in_memory:
                # It died since the last write (killed, out of memory): deliver from here
                # in what is left of the deadline.
                fallback = Sender(agent.store, agent.settings)
                self.threads.append(fallback)
                self.deliveries.append(fallback)
                self.quiet.append(agent)  # the fallback speaks for the store

    def drain_threads(self) -> None:
        for sender in self.threads:
            sender.drain(self.left())
        for sender in self.threads:
            sender.stop(timeout_s=min(0.5, self.left()))
            self.last_errors[id(sender)] = sender.stats.last_error

    def report(self) -> None:
        """One line per store that keeps records pending (unless delivery was stopped, which
        was said already, or a parent process delivers them)."""
        for delivery in self.deliveries:
            if delivery.halted is not None or any(delivery is q for q in self.quiet):
                continue
            store = delivery.store
            pending = store.outbox_counts().get("pending", 0)
            parent = _parent_that_delivers(store)
            if pending and parent is not None:
                logger.debug(
                    "lucidic-otel: %d records are still pending in %s; the parent process "
                    "(pid %d) shares that store and delivers them",
                    pending, store.path, parent,
                )
            elif pending:
                logger.warning(
                    "lucidic-otel: %d records were not delivered before exit (%s); they are kept "
                    "in %s and will be sent by the next process that runs with LUCIDIC_API_KEY, "
                    "or by `lucidic-otel upload`",
                    pending,
                    self.last_errors.get(id(delivery)) or f"exit deadline {self.deadline_s:g} s",
                    store.path,
                )


@untraced
def deliver_at_exit(deadline_s: float) -> None:
    """The exit hook: deliver what can be delivered within ``deadline_s``, then stop.

    Whatever is left stays in the outbox (said in one line, unless delivery was stopped and
    that was said already).
    """
    # The store is written from this (main) thread here: its own sqlite3 calls must not be
    # traced by an instrumentation, at exit least of all (hence @untraced).
    global _exited
    with guarded(logger, "delivery at exit"):  # exit must go on
        end = time.monotonic() + max(0.0, deadline_s)  # the flushes count too
        _run_flushes()
        _exited = True
        deliveries: List[Delivery] = list(_senders.values()) if _owner_pid == os.getpid() else []
        exit_round = _ExitRound(deadline_s, end, deliveries)
        exit_round.finish_agents()
        exit_round.drain_threads()
        exit_round.report()


def _run_flushes() -> None:
    for ref in list(_flushes):
        flush = ref()
        if flush is not None:
            try:
                flush()
            except Exception:  # noqa: BLE001 - the others and the delivery still run
                logger.debug("lucidic-otel: exit flush failed", exc_info=True)


def _parent_that_delivers(store: Store) -> Optional[int]:
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
