"""Binding a session to a piece of work: ``session``, ``with_session``, ``set_active_session``.

A scope is one attached OTel context (:mod:`.context`); entering attaches it and leaving
detaches exactly that one, so scopes nest and never leak from one request into the next. A
decorated generator or async generator holds its scope only while its own code runs (each step
between two ``yield``), never while the consumer runs between steps: one driver,
:func:`_relay`, does that for both kinds, and a sync and an async runner only perform what it
asks (the async one awaits).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
from contextlib import contextmanager
from contextvars import ContextVar
from typing import (
    Any,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Optional,
    Tuple,
    TypeVar,
    Union,
)

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

from lucidic_otel import _diagnostics
from lucidic_otel.sessions.arguments import checked_session_id, report_invalid
from lucidic_otel.sessions.context import context_with_session, context_without_session
from lucidic_otel.sessions.lifecycle import REGISTRY

logger = logging.getLogger(__name__)

R = TypeVar("R")
Token = object

#: How a scope stamps the span it opens inside (a framework's server span, started before the
#: handler opened the request's session), so the root of the request's trace joins the
#: session. The SDK layer provides it (``sdk.processor.adopt``) through :func:`set_span_adopter`:
#: stamping is the SDK's business, and this package stays below it.
_adopter: Optional[Callable[[object, str], Any]] = None


def set_span_adopter(adopter: Optional[Callable[[object, str], Any]]) -> None:
    """Install ``adopter(span, session_id)``, called with the current span when a scope opens."""
    global _adopter
    _adopter = adopter


def _adopt_current_span(session_id: str) -> None:
    adopter = _adopter
    if adopter is None:
        return
    with _diagnostics.guarded(logger, "stamping the enclosing span"):
        adopter(trace.get_current_span(), session_id)


# The tokens of entered ``session`` blocks, per context: a token can only be detached in the
# context (thread or task) that attached it, and one ``session`` object may be entered by
# several threads or tasks at once. Only tokens live here; the session itself lives in the
# OTel context.
_open_scopes: ContextVar[Tuple[Tuple[object, object], ...]] = ContextVar(
    "lucidic_otel_open_scopes", default=()
)

_CALL, _OUT = 0, 1
_Step = Tuple[int, Any, Any]


def _relay(
    scope: Callable[[], Context], send: Any, throw: Any, close: Any, stop: type
) -> Generator[_Step, Any, Any]:
    """``yield from`` a wrapped generator, sync or async, with ``scope`` bound around its steps.

    The one driver of both generator wrappers. It yields what to do next and is resumed with
    the outcome (the result sent in, or the exception thrown in):

    - ``(_CALL, method, arg)``: call ``method(arg)`` on the wrapped generator (and await it, for
      an async generator); the scope is attached while that runs;
    - ``(_OUT, item, None)``: yield ``item`` to the consumer, with the scope detached.

    Values, ``throw()``/``athrow()`` and ``close()``/``aclose()`` all reach the wrapped
    generator, as with ``yield from``. It returns the wrapped generator's return value when
    ``method`` raises ``stop`` (``StopIteration``, or ``StopAsyncIteration``).
    """
    resume, arg = send, None
    while True:
        token = otel_context.attach(scope())
        try:
            item = yield _CALL, resume, arg
        except stop as stopped:
            return getattr(stopped, "value", None)
        finally:
            otel_context.detach(token)
        try:
            arg = yield _OUT, item, None
            resume = send
        except GeneratorExit:
            token = otel_context.attach(scope())
            try:
                yield _CALL, close, None
            finally:
                otel_context.detach(token)
            raise
        except BaseException as exc:
            resume, arg = throw, exc


def _scoped_generator(fn: Callable[..., Any], scope: Callable[[], Context]) -> Callable[..., Any]:
    """``fn`` (a generator function) with ``scope`` bound around each of its steps."""

    @functools.wraps(fn)
    def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
        gen = fn(*args, **kwargs)
        relay = _relay(scope, gen.send, gen.throw, lambda _: gen.close(), StopIteration)
        step = next(relay)
        while True:  # perform what the relay asks
            kind, target, arg = step
            try:
                outcome = target(arg) if kind is _CALL else (yield target)
            except BaseException as exc:
                try:
                    step = relay.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    step = relay.send(outcome)
                except StopIteration as stop:
                    return stop.value

    return gen_wrapper


def _scoped_async_generator(
    fn: Callable[..., Any], scope: Callable[[], Context]
) -> Callable[..., Any]:
    """``fn`` (an async generator function) with ``scope`` bound around each of its steps."""

    @functools.wraps(fn)
    async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
        agen = fn(*args, **kwargs)
        relay = _relay(scope, agen.asend, agen.athrow, lambda _: agen.aclose(), StopAsyncIteration)
        step = next(relay)
        while True:  # perform what the relay asks, awaiting each call
            kind, target, arg = step
            try:
                outcome = (await target(arg)) if kind is _CALL else (yield target)
            except BaseException as exc:
                try:
                    step = relay.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    step = relay.send(outcome)
                except StopIteration:
                    return

    return agen_wrapper


def _scoped_coroutine(fn: Callable[..., Any], scope: Callable[[], Context]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
        with _attached(scope):
            return await fn(*args, **kwargs)

    return async_wrapper


def _scoped_function(fn: Callable[..., Any], scope: Callable[[], Context]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _attached(scope):
            return fn(*args, **kwargs)

    return wrapper


@contextmanager
def _attached(scope: Callable[[], Context]) -> Iterator[None]:
    token = otel_context.attach(scope())
    try:
        yield
    finally:
        otel_context.detach(token)


class session:  # noqa: N801 - a context manager named like a function, as contextlib's are
    """Bind a session as the active session for a block, a function or a coroutine.

    Spans started inside get this session (unless a nested scope binds another); spans that
    were already open when the scope started keep their own, except the one it opens inside,
    which joins it if it has none. The session is recorded as started on first use and never
    ended here: end it with :func:`~lucidic_otel.end_session`, or let
    ``LUCIDIC_SESSION_IDLE_END`` end it once it is quiet (:mod:`.idle`).

    Args:
        session_id: the session to bind (1-128 chars of ``[A-Za-z0-9._:-]``). An invalid one
            is reported once and the work runs without a session (strict mode: raises).

    Examples:
        >>> with lucidic_otel.session("conv-42"):
        ...     answer = client.chat.completions.create(...)

        >>> @lucidic_otel.session("nightly-eval")
        ... async def evaluate(item): ...

    Works as ``with``, ``async with`` and as a decorator of sync, async, generator and
    async-generator functions.
    """

    def __init__(self, session_id: str, *, _where: str = "session") -> None:
        self.session_id = checked_session_id(session_id, _where)
        self._opened = False

    def _context(self) -> Context:
        if self.session_id is None:
            return otel_context.get_current()
        # On first use, so a decorator at import time records nothing; again after an idle end.
        if not self._opened or REGISTRY.idle_ended(self.session_id):
            self._opened = True
            REGISTRY.open(self.session_id, idle_end=True)
        _adopt_current_span(self.session_id)
        return context_with_session(self.session_id)

    def __enter__(self) -> Optional[str]:
        token = otel_context.attach(self._context())
        _open_scopes.set(_open_scopes.get() + ((self, token),))
        return self.session_id

    def __exit__(self, *exc: Any) -> None:
        scopes = _open_scopes.get()
        for i in range(len(scopes) - 1, -1, -1):
            if scopes[i][0] is self:
                _open_scopes.set(scopes[:i] + scopes[i + 1 :])
                otel_context.detach(scopes[i][1])
                return

    async def __aenter__(self) -> Optional[str]:
        return self.__enter__()

    async def __aexit__(self, *exc: Any) -> None:
        self.__exit__(*exc)

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(fn):
            return _scoped_async_generator(fn, self._context)
        if inspect.isgeneratorfunction(fn):
            return _scoped_generator(fn, self._context)
        if inspect.iscoroutinefunction(fn):
            return _scoped_coroutine(fn, self._context)
        return _scoped_function(fn, self._context)


def with_session(
    session_id: str, fn: Callable[..., R], *args: Any, **kwargs: Any
) -> Union[R, Awaitable[R]]:
    """Run ``fn(*args, **kwargs)`` with ``session_id`` active and return its result.

    The session is started (recorded) on first use and never ended here: a conversation spans
    many requests. End it with :func:`~lucidic_otel.end_session` when it is over, or use
    :func:`~lucidic_otel.with_lucidic` for work that is the whole session.

    Args:
        session_id: the session to bind (see :class:`session`).
        fn: what to run; a coroutine function gives an awaitable that runs inside the session.
        *args: positional arguments for ``fn``.
        **kwargs: keyword arguments for ``fn``.

    Returns:
        What ``fn`` returns (an awaitable for a coroutine function); None, after one message,
        when ``fn`` is not callable.

    Examples:
        >>> reply = lucidic_otel.with_session(request.session_id, handle, request)
    """
    if not callable(fn):
        report_invalid(f"with_session: fn={fn!r} is not callable; nothing was run")
        return None  # type: ignore[return-value]
    return session(session_id, _where="with_session")(fn)(*args, **kwargs)


def set_active_session(session_id: str) -> Token:
    """Bind ``session_id`` for the rest of the current context (thread, task or callback).

    For detached roots (threads, timers, queue consumers) where no block encloses the work.

    Args:
        session_id: the session to bind (see :class:`session`); an invalid one binds nothing.

    Returns:
        A token for :func:`clear_active_session`, which restores what was there before.

    Examples:
        >>> token = lucidic_otel.set_active_session(job.session_id)
        >>> try:
        ...     run(job)
        ... finally:
        ...     lucidic_otel.clear_active_session(token)
    """
    sid = checked_session_id(session_id, "set_active_session")
    if sid is None:
        return otel_context.attach(otel_context.get_current())
    REGISTRY.open(sid, idle_end=True)
    _adopt_current_span(sid)
    return otel_context.attach(context_with_session(sid))


def clear_active_session(token: Optional[Token] = None) -> None:
    """Undo :func:`set_active_session`; without a token, unbind any session in this context.

    A token that is not one of ours, or that belongs to another thread or task, cannot be
    undone here: one message says so and the session is unbound in this context instead (what
    the caller wanted), rather than OpenTelemetry's "Failed to detach context" traceback.

    Args:
        token: what :func:`set_active_session` returned, or None.
    """
    if token is None:
        otel_context.attach(context_without_session())
        return
    problem = _detach(token)
    if problem is not None:
        report_invalid(
            f"clear_active_session: token={str(token)[:80]!r} {problem}; unbinding any "
            "session in this context instead"
        )
        otel_context.attach(context_without_session())


def _detach(token: object) -> Optional[str]:
    """Detach ``token``; the reason it cannot be, or None when it was."""
    if not isinstance(token, contextvars.Token):
        return "is not a token returned by set_active_session"
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    try:
        if runtime is None:
            otel_context.detach(token)
        else:  # its own errors, instead of the public detach's logged traceback
            runtime.detach(token)
    except (ValueError, RuntimeError):
        return "was made in another thread or task, or was already used"
    return None
