"""The public API of lucidic-otel: the thin facade over :mod:`lucidic_otel.sessions`.

Names mirror the Lucidic TypeScript SDK. What is here is what needs the whole stack: ``init``
and ``with_lucidic`` configure OpenTelemetry (the launcher's distro and configurator) and
record sessions; ``end_session``, ``flush``, ``inject_env`` and ``carry_context`` reach the span
pipeline. Scoping work into a session (``session``, ``with_session``, ``set_active_session``,
``clear_active_session``) lives in :mod:`lucidic_otel.sessions.scope` and is re-exported here.

Every call validates its arguments and reports a bad one with a message naming it and what is
allowed. Nothing here raises into the application except in strict mode (``LUCIDIC_STRICT``):
a bad session id makes the work run without that session, never fail.
"""

from __future__ import annotations

import inspect
import logging
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    MutableMapping,
    Optional,
    Sequence,
    TypeVar,
    Union,
)

from opentelemetry import baggage, propagate
from opentelemetry import context as otel_context
from opentelemetry.context import Context

from lucidic_otel import _diagnostics
from lucidic_otel.config import get_settings, set_overrides
from lucidic_otel.ids import new_session_id
from lucidic_otel.launcher import bootstrap
from lucidic_otel.launcher.plain import configure_sdk_or_log, recording_setup
from lucidic_otel.sdk.processor import PROCESS_SESSION, adopt
from lucidic_otel.sessions.arguments import (
    NEW_SESSION,
    checked_fields,
    checked_session_id,
    report_invalid,
)
from lucidic_otel.sessions.context import BAGGAGE_KEY, active_session, context_with_session
from lucidic_otel.sessions.lifecycle import REGISTRY, flush_spans
from lucidic_otel.sessions.propagation import CarriedContext
from lucidic_otel.sessions.propagation import extract_env as _extract_env
from lucidic_otel.sessions.propagation import inject_env as _inject_env
from lucidic_otel.sessions.scope import (
    clear_active_session,
    session,
    set_active_session,
    set_span_adopter,
    with_session,
)

__all__ = [
    "carry_context",
    "clear_active_session",
    "current_session_id",
    "end_session",
    "extract_env",
    "flush",
    "init",
    "inject_env",
    "session",
    "set_active_session",
    "with_lucidic",
    "with_session",
]

logger = logging.getLogger(__name__)

R = TypeVar("R")

# A scope stamps the span it opens inside through the SDK's adopt (sessions/ knows no SDK).
set_span_adopter(adopt)

_INIT_FIELDS = (
    "task",
    "tags",
    "experiment_id",
    "datasetitem_id",
    "evaluators",
    "production_monitoring",
)

#: ``with_lucidic`` keywords that set the outcome its end records instead of the inferred one.
_OUTCOME_FIELDS = ("is_successful", "is_successful_reason")

# --- sessions ------------------------------------------------------------------------------


def init(
    session_name: Optional[str] = None,
    session_id: Optional[str] = None,
    *,
    auto_end: Optional[bool] = None,
    tags: Optional[Sequence[str]] = None,
    task: Optional[str] = None,
    instrument: Optional[Iterable[str]] = None,
    api_key: Optional[str] = None,
    agent_id: Optional[str] = None,
    **session_fields: Any,
) -> str:
    """Start (or continue) a session and make it this process's session.

    The session becomes the process default (spans with no other session get it) and is bound
    in the caller's context, so work started from here, including calls to other services,
    carries it. Outside the launcher this also configures the SDK from the usual variables.

    Args:
        session_name: the name shown in Lucidic.
        session_id: continue this session (1-128 chars of ``[A-Za-z0-9._:-]``); default, or
            when invalid (reported), a new random id.
        auto_end: end the session at exit, after its spans (default ``LUCIDIC_AUTO_END``).
        tags: session tags, a list of str.
        task: the session's task description.
        instrument: instrumentations to apply, by library or entry-point name
            (``["openai", "httpx"]``).
        api_key: the Lucidic API key, kept in memory only (never written to ``os.environ``,
            which every child process would inherit); default ``LUCIDIC_API_KEY``.
        agent_id: the Lucidic agent id; default ``LUCIDIC_AGENT_ID``.
        **session_fields: ``experiment_id``, ``datasetitem_id``, ``evaluators``,
            ``production_monitoring``; any other name is reported and ignored.

    Returns:
        The session id.

    Examples:
        >>> import lucidic_otel
        >>> sid = lucidic_otel.init("nightly-eval", tags=["batch"], instrument=["openai"])
    """
    if api_key is not None or agent_id is not None:
        # In memory only: os.environ would hand the key to every child process.
        set_overrides(LUCIDIC_API_KEY=api_key, LUCIDIC_AGENT_ID=agent_id)
    settings = get_settings()
    configure_sdk_or_log(instrument, "init")
    sid = None if session_id is None else checked_session_id(session_id, "init", NEW_SESSION)
    sid = sid or new_session_id()
    unknown = set(session_fields) - set(_INIT_FIELDS)
    if unknown:
        report_invalid(
            f"init: unknown arguments {sorted(unknown)!r}; allowed: {list(_INIT_FIELDS)}"
        )
    fields = checked_fields(
        "init",
        {
            "session_name": session_name,
            "task": task,
            "tags": tags,
            **{k: v for k, v in session_fields.items() if k in _INIT_FIELDS},
        },
    )
    name = fields.pop("session_name", None)
    REGISTRY.open(
        sid, name=name, auto_end=settings.auto_end if auto_end is None else bool(auto_end), **fields
    )
    PROCESS_SESSION.session_id = sid
    otel_context.attach(context_with_session(sid))
    REGISTRY.store_now()  # before any worker or child can store an event of this session
    return sid


#: How much of an exception ``with_lucidic`` sends as ``is_successful_reason``.
_REASON_LIMIT = 500


def _failure_reason(exc: BaseException) -> str:
    """``"ValueError: boom"``, at most :data:`_REASON_LIMIT` chars, whatever ``str(exc)`` does."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not replace the user's exception
        text = ""
    reason = f"{name}: {text}" if text else name
    return reason if len(reason) <= _REASON_LIMIT else reason[: _REASON_LIMIT - 3] + "..."


def _outcome(exc: Optional[BaseException], given: Dict[str, Any]) -> Dict[str, Any]:
    """The end fields of a ``with_lucidic`` run: what the caller gave wins, field by field;
    otherwise success unless ``fn`` raised (``sys.exit(0)`` counts as success), and the
    exception as the reason when the outcome is ours to tell."""
    failed = exc is not None and not (isinstance(exc, SystemExit) and exc.code in (0, None))
    fields = dict(given)
    if "is_successful" not in given:
        fields["is_successful"] = not failed
        if failed and "is_successful_reason" not in given:
            fields["is_successful_reason"] = _failure_reason(exc)  # type: ignore[arg-type]
    return fields


def _end_with_outcome(sid: str, exc: Optional[BaseException], given: Dict[str, Any]) -> None:
    fields: Dict[str, Any] = {}
    with _diagnostics.guarded(logger, "recording the outcome of with_lucidic"):
        fields = _outcome(exc, given)
    REGISTRY.end(sid, fields, wait=True)


def with_lucidic(
    fn: Callable[..., R],
    *args: Any,
    session_name: Optional[str] = None,
    session_id: Optional[str] = None,
    **kwargs: Any,
) -> Union[R, Awaitable[R]]:
    """One-shot session: start it, run ``fn`` in it, flush its spans, end it, unbind it.

    The end records the outcome: ``is_successful=False`` with the exception
    (``"ValueError: boom"``) as ``is_successful_reason`` when ``fn`` raised (the exception
    propagates unchanged), ``is_successful=True`` otherwise. An ``is_successful`` or
    ``is_successful_reason`` passed here is sent instead of what would be inferred.

    Args:
        fn: the work that is the whole session; a coroutine function gives an awaitable.
        *args: positional arguments for ``fn``.
        session_name: the name shown in Lucidic.
        session_id: the session's id (default, or when invalid: a new random one).
        **kwargs: keyword arguments named like ``init`` fields (``task``, ``tags``, ...)
            configure the session, and ``is_successful``/``is_successful_reason`` its outcome;
            ``auto_end`` is ignored (the session always ends here); the rest go to ``fn``.

    Returns:
        What ``fn`` returns (an awaitable for a coroutine function); None, after one message,
        when ``fn`` is not callable.

    Examples:
        >>> result = lucidic_otel.with_lucidic(evaluate, item, session_name="eval", task="qa")
    """
    init_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _INIT_FIELDS}
    end_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _OUTCOME_FIELDS}
    kwargs.pop("auto_end", None)
    if not callable(fn):
        report_invalid(
            f"with_lucidic: fn={fn!r} is not callable; nothing was run and no session started"
        )
        return None  # type: ignore[return-value]
    sid = None
    if session_id is not None:
        sid = checked_session_id(session_id, "with_lucidic", NEW_SESSION)
    sid = sid or new_session_id()
    fields = checked_fields("with_lucidic", {"session_name": session_name, **init_kwargs})
    given = checked_fields("with_lucidic", end_kwargs)
    name = fields.pop("session_name", None)
    configure_sdk_or_log(None, "with_lucidic")  # also adds the processor to the user's provider
    REGISTRY.open(sid, name=name, auto_end=False, **fields)
    REGISTRY.store_now()
    scoped = session(sid)(fn)

    if inspect.iscoroutinefunction(fn):

        async def run_async() -> Any:
            try:
                result = await scoped(*args, **kwargs)
            except BaseException as exc:
                _end_with_outcome(sid, exc, given)
                raise
            _end_with_outcome(sid, None, given)
            return result

        return run_async()

    try:
        result = scoped(*args, **kwargs)
    except BaseException as exc:
        _end_with_outcome(sid, exc, given)
        raise
    _end_with_outcome(sid, None, given)
    return result


def end_session(
    session_id: Optional[str] = None,
    *,
    is_successful: Optional[bool] = None,
    is_successful_reason: Optional[str] = None,
    session_eval: Optional[float] = None,
    session_eval_reason: Optional[str] = None,
) -> bool:
    """End a session after its finished spans. Idempotent; safe from any thread or task.

    The flush that puts the end after the session's spans happens on a background thread.

    Args:
        session_id: the session to end; default the current one, which must have been
            started here (a session joined from upstream is ended by the service that started
            it).
        is_successful: the outcome.
        is_successful_reason: why.
        session_eval: a score from 0.0 to 1.0.
        session_eval_reason: why that score.

    Returns:
        True the first time for a session started or joined here; False when it was already
        ended, when there is no such session, and for a session this process never started or
        joined (its end is still recorded, once: it may be another worker's or service's).

    Examples:
        >>> lucidic_otel.end_session(sid, is_successful=True, session_eval=0.9)
        True
    """
    if session_id is None:
        sid = current_session_id()
    else:
        sid = checked_session_id(session_id, "end_session")
    if sid is None:
        if session_id is None:
            report_invalid("end_session: there is no current session to end; pass session_id")
        return False
    if session_id is None and not REGISTRY.knows(sid):
        report_invalid(
            f"end_session: the current session {sid!r} was joined from upstream (baggage or "
            "environment); the service that started it ends it; pass session_id to end it here"
        )
        return False
    known_here = session_id is None or REGISTRY.knows(sid) or sid == current_session_id()
    if not known_here:
        _unknown_end(sid)
    fields = checked_fields(
        "end_session",
        {
            "is_successful": is_successful,
            "is_successful_reason": is_successful_reason,
            "session_eval": session_eval,
            "session_eval_reason": session_eval_reason,
        },
    )
    ended = REGISTRY.end(sid, fields)
    if PROCESS_SESSION.session_id == sid:
        PROCESS_SESSION.session_id = None
    return ended and known_here


def _unknown_end(session_id: str) -> None:
    """Ending a session this process never started or joined: the end is still recorded (the
    session may belong to another worker or service), and the first time one message says so."""
    _diagnostics.log_once(
        logger,
        "end_session:unknown",
        "lucidic-otel: end_session: session %r was not started or joined in this process; its "
        "end is recorded anyway, for a session another process or service started (Lucidic "
        "rejects it if none did, and `lucidic-otel doctor` lists the rejection); returning "
        "False. Later such ends are not reported.",
        session_id[:80],
    )


def current_session_id() -> Optional[str]:
    """The session a span started here and now would be stamped with.

    Returns:
        The session id by the precedence rule (:mod:`lucidic_otel.sessions.resolve`), or None.

    Examples:
        >>> with lucidic_otel.session("conv-42"):
        ...     lucidic_otel.current_session_id()
        'conv-42'
    """
    try:
        return bootstrap.session_processor().session_for(None)
    except Exception:
        return None


def flush(timeout_millis: int = 30000) -> bool:
    """Export every finished span and record pending session ends.

    Call it at the end of work that exits without ``atexit`` (serverless handlers) or before a
    deliberate ``os._exit``.

    Args:
        timeout_millis: how long the span pipeline may take.

    Returns:
        True if everything went through in time.

    Examples:
        >>> def handler(event, context):
        ...     try:
        ...         return work(event)
        ...     finally:
        ...         lucidic_otel.flush()
    """
    REGISTRY.drain()
    return flush_spans(timeout_millis)


def inject_env(env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Put the current session and trace into ``env`` for a child process.

    A child started under the launcher joins the session. The process default session is
    carried too when no scope is active, so a child of an ``init()`` script joins from any
    thread.

    Args:
        env: the child's environment, changed in place; default a copy of ``os.environ``.

    Returns:
        ``env`` (or the copy) with ``TRACEPARENT``/``TRACESTATE``/``BAGGAGE`` set.

    Examples:
        >>> subprocess.run(cmd, env=lucidic_otel.inject_env())
    """
    if env is not None and not isinstance(env, MutableMapping):
        report_invalid(
            f"inject_env: env={str(env)[:80]!r} is not valid: expected a dict of str to str, or "
            "None; returning a copy of os.environ with the context instead"
        )
        env = None
    ctx = otel_context.get_current()
    if active_session(ctx) is None and baggage.get_baggage(BAGGAGE_KEY, ctx) is None:
        sid = current_session_id()
        if sid is not None:
            ctx = context_with_session(sid, ctx)
    REGISTRY.store_now()  # the child may deliver its events before this process exports
    return _inject_env(env, ctx)  # type: ignore[return-value]


def extract_env(env: Optional[Dict[str, str]] = None) -> Context:
    """The context (trace and session) a parent process left in ``env``.

    Args:
        env: the environment to read; default ``os.environ``.

    Returns:
        An OTel context; attach it (``opentelemetry.context.attach``) to join.

    Examples:
        >>> token = opentelemetry.context.attach(lucidic_otel.extract_env())
    """
    return _extract_env(env)


# --- other processes ------------------------------------------------------------------------


def carry_context(fn: Callable[..., R]) -> Callable[..., R]:
    """``fn`` wrapped to run in the current trace and session, wherever it is called.

    Fork children inherit the context of the thread that forked them, but spawn and
    forkserver children, and pool workers started before the session, do not; the wrapper
    is picklable (when ``fn`` is) and re-attaches the captured context around each call.
    A worker with no telemetry set up (spawn/forkserver under a plain ``python`` that called
    ``init()``) is set up on the first call, as the parent was, so its spans are recorded.
    The child never starts or ends the session: it only stamps its spans with it.

    Args:
        fn: the work to hand to another process or thread.

    Returns:
        A picklable callable that runs ``fn`` in the captured context; ``fn`` itself, after
        one message, when it is not callable.

    Examples:
        >>> Process(target=lucidic_otel.carry_context(work)).start()
        >>> pool.map(lucidic_otel.carry_context(work), items)
        >>> executor.submit(lucidic_otel.carry_context(work), x)
    """
    if not callable(fn):
        report_invalid(f"carry_context: fn={fn!r} is not callable; returned unchanged")
        return fn
    carrier: Dict[str, str] = {}
    sid = None
    setup = None
    try:
        propagate.inject(carrier)
        sid = current_session_id()
        setup = recording_setup()
        REGISTRY.store_now()  # the workers' events must not be stored ahead of the init
    except Exception:
        logger.debug("lucidic-otel: could not capture the current context", exc_info=True)
    return CarriedContext(fn, carrier, sid, setup)
