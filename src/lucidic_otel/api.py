"""The public session API (names fixed by DESIGN.md section 4, mirroring the Lucidic TS SDK).

Every call validates its arguments and reports a bad one with a message naming it and what is
allowed. Nothing here raises into the application except in strict mode (``LUCIDIC_STRICT``):
a bad session id makes the work run without that session, never fail.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import os
from contextvars import ContextVar
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    MutableMapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context

from lucidic_otel.config import ConfigError, Settings, get_settings, set_overrides
from lucidic_otel.ids import new_session_id, session_id_error
from lucidic_otel.launcher import bootstrap
from lucidic_otel.launcher import origin as launch
from lucidic_otel.launcher.exit import take_sigterm_in_worker
from lucidic_otel.sdk.processor import PROCESS_SESSION, adopt
from lucidic_otel.sessions.context import (
    BAGGAGE_KEY,
    active_session,
    context_with_session,
    context_without_session,
)
from lucidic_otel.sessions.lifecycle import REGISTRY, flush_spans
from lucidic_otel.sessions.propagation import extract_env as _extract_env
from lucidic_otel.sessions.propagation import inject_env as _inject_env

logger = logging.getLogger("lucidic_otel")

R = TypeVar("R")
Token = object

_INIT_FIELDS = (
    "task",
    "tags",
    "experiment_id",
    "datasetitem_id",
    "evaluators",
    "production_monitoring",
)


def _invalid(message: str) -> None:
    """Report a bad argument: an error in strict mode, one warning line otherwise."""
    if get_settings().strict:
        raise ConfigError(message)
    logger.warning("lucidic-otel: %s", message)


def _checked_session_id(
    session_id: object, where: str, consequence: str = "running without this session"
) -> Optional[str]:
    """``session_id`` if valid; else None after one message naming ``where`` and what happens
    instead (``consequence``), which differs by call: ``init`` starts a new session."""
    reason = session_id_error(session_id)
    if reason is None:
        return session_id  # type: ignore[return-value]
    _invalid(f"{where}: session_id {str(session_id)[:80]!r} {reason}; {consequence}")
    return None


_NEW_SESSION = "starting a new session with a random id instead"


def _checked_fields(where: str, fields: Dict[str, Any]) -> Dict[str, Any]:
    """Drop (and report) init/end fields whose type the backend would reject."""
    clean: Dict[str, Any] = {}
    for key, value in fields.items():
        if value is None:
            continue
        ok = True
        if key in ("tags", "evaluators"):
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
            value = list(value) if ok else value
        elif key in ("is_successful", "production_monitoring"):
            ok = isinstance(value, bool)
        elif key == "session_eval":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
            value = float(value) if ok else value
        elif key in (
            "session_name",
            "task",
            "is_successful_reason",
            "session_eval_reason",
            "experiment_id",
            "datasetitem_id",
        ):
            ok = isinstance(value, str)
        if ok:
            clean[key] = value
        else:
            allowed = {
                "tags": "a list of str",
                "evaluators": "a list of str",
                "is_successful": "a bool",
                "production_monitoring": "a bool",
                "session_eval": "a number from 0.0 to 1.0",
            }.get(key, "a str")
            _invalid(f"{where}: {key}={value!r} is not valid: expected {allowed}; ignored")
    return clean


# --- configuration -----------------------------------------------------------------------


def _configure_sdk(instrument: Optional[Iterable[str]]) -> None:
    """Make a plain ``python app.py`` look as if it ran under ``opentelemetry-instrument``.

    Uses the same distro and configurator with the same variables, and only where no provider
    is set yet: a provider the application built (SDK or not) is never replaced; an SDK one
    gets the session processor and the lucidic pipeline added, each once (``bootstrap``).
    """
    from lucidic_otel.launcher.distro import LucidicConfigurator, LucidicDistro

    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        launch.RAN.by_init = True
        take_sigterm_in_worker()  # before the SDK starts its threads
        LucidicDistro().configure()
        LucidicConfigurator().configure()
    bootstrap.after_sdk_ready()
    if instrument:
        _instrument(instrument)


# Names users know, mapped to instrumentor entry points: a library name can stand for a
# family (openai 3.x talks HTTP through ``httpx2``, openai 2.x and most others through
# ``httpx``), and a distribution name for the instrumentation it ships.
_INSTRUMENT_ALIASES: Dict[str, Tuple[str, ...]] = {
    "httpx": ("httpx", "httpx2"),
    "genai-openai": ("openai",),
    "openai-v2": ("openai",),
}
_DIST_PREFIX = "opentelemetry-instrumentation-"
# Entry-point names init() instrumented, so a carried worker can apply the same set.
_instrumented: list = []


def _entry_names(name: str) -> Tuple[str, ...]:
    key = name.strip().lower().replace("_", "-")
    key = key[len(_DIST_PREFIX) :] if key.startswith(_DIST_PREFIX) else key
    return _INSTRUMENT_ALIASES.get(key, (key,))


def _apply_instrumentor(ep: Any) -> Optional[str]:
    """Instrument with ``ep``; the reason it could not, or None when it is applied."""
    try:
        from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

        instrumentor = ep.load()()
        conflict = get_dependency_conflicts(instrumentor.instrumentation_dependencies())
        if conflict is not None:
            return str(conflict)
        if not getattr(instrumentor, "is_instrumented_by_opentelemetry", False):
            instrumentor.instrument()
    except Exception as exc:  # noqa: BLE001 - one instrumentation must not stop the others
        return f"{type(exc).__name__}: {exc}"
    if ep.name not in _instrumented:
        _instrumented.append(ep.name)
    return None


def _instrument(names: Iterable[str]) -> None:
    """Apply the instrumentations ``names`` asks for, by library or entry-point name."""
    from opentelemetry.util._importlib_metadata import entry_points

    wanted = [names] if isinstance(names, str) else list(names)
    installed = {ep.name: ep for ep in entry_points(group="opentelemetry_instrumentor")}
    for name in wanted:
        if not isinstance(name, str):
            _invalid(f"init: instrument entry {name!r} is not a str; ignored")
            continue
        candidates = [c for c in _entry_names(name) if c in installed]
        if not candidates:
            _invalid(
                f"init: instrument={name!r} names no installed instrumentation; installed: "
                f"{sorted(installed)}; install the matching opentelemetry-instrumentation-* "
                "package"
            )
            continue
        reasons = {c: _apply_instrumentor(installed[c]) for c in candidates}
        if all(reasons.values()):
            _invalid(
                f"init: instrument={name!r} could not be applied ("
                + "; ".join(f"{c}: {r}" for c, r in reasons.items())
                + "); its spans will not be recorded"
            )


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
    """Start (or continue) a session and make it this process's session. Returns its id.

    The session becomes the process default (spans with no other session get it) and is bound
    in the caller's context, so work started from here, including calls to other services,
    carries it. With ``auto_end`` (default ``LUCIDIC_AUTO_END``) it is ended at exit after its
    spans. Outside the launcher this also configures the SDK from the usual variables.
    """
    if api_key is not None or agent_id is not None:
        # In memory only: os.environ would hand the key to every child process.
        set_overrides(LUCIDIC_API_KEY=api_key, LUCIDIC_AGENT_ID=agent_id)
    settings = get_settings()
    try:
        _configure_sdk(instrument)
    except ConfigError:
        raise
    except Exception:
        logger.exception("lucidic-otel: init could not configure OpenTelemetry")
    sid = None if session_id is None else _checked_session_id(session_id, "init", _NEW_SESSION)
    sid = sid or new_session_id()
    unknown = set(session_fields) - set(_INIT_FIELDS)
    if unknown:
        _invalid(f"init: unknown arguments {sorted(unknown)!r}; allowed: {list(_INIT_FIELDS)}")
    fields = _checked_fields(
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


def _start_process_session(settings: Settings) -> None:
    """Zero-code start from ``LUCIDIC_SESSION_NAME``; children inherit the id and join."""
    sid = settings.session_id or new_session_id()
    REGISTRY.open(sid, name=settings.session_name, auto_end=settings.auto_end)
    PROCESS_SESSION.session_id = sid
    otel_context.attach(context_with_session(sid))
    os.environ["LUCIDIC_SESSION_ID"] = sid
    os.environ.pop("LUCIDIC_SESSION_NAME", None)


def _adopt_current_span(session_id: str) -> None:
    """The span a scope opens inside (a server span) joins the scope's session if it has none."""
    try:
        adopt(trace.get_current_span(), session_id)
    except Exception:  # telemetry must never stop the work itself
        logger.debug("lucidic-otel: could not stamp the enclosing span", exc_info=True)


# The tokens of entered ``session`` blocks, per context: a token can only be detached in the
# context (thread or task) that attached it, and one ``session`` object may be entered by
# several threads or tasks at once. Only tokens live here; the session itself lives in the
# OTel context.
_open_scopes: ContextVar[Tuple[Tuple[object, object], ...]] = ContextVar(
    "lucidic_otel_open_scopes", default=()
)


class session:  # noqa: N801 - a context manager named like a function, as contextlib's are
    """Bind ``session_id`` as the active session for a block, a function or a coroutine.

    ``with session(sid):`` / ``async with session(sid):`` / ``@session(sid)`` on sync,
    async, generator and async-generator functions. Each entry attaches one OTel context and
    each exit detaches exactly that one, so scopes nest and never leak across requests.
    Spans that were already open when the scope started keep their own session.
    """

    def __init__(self, session_id: str, *, _where: str = "session") -> None:
        self.session_id = _checked_session_id(session_id, _where)
        self._opened = False

    def _context(self) -> Context:
        if self.session_id is None:
            return otel_context.get_current()
        if not self._opened:  # on first use, so a decorator at import time records nothing
            self._opened = True
            REGISTRY.open(self.session_id)
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
        scope = self._context

        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
                # Like ``yield from``: values, athrow() and aclose() all reach ``agen``.
                agen = fn(*args, **kwargs)
                resume: Callable[[Any], Awaitable[Any]] = agen.asend
                arg: Any = None
                while True:
                    token = otel_context.attach(scope())
                    try:
                        item = await resume(arg)
                    except StopAsyncIteration:
                        return
                    finally:
                        otel_context.detach(token)
                    try:
                        arg = yield item
                        resume = agen.asend
                    except GeneratorExit:
                        token = otel_context.attach(scope())
                        try:
                            await agen.aclose()
                        finally:
                            otel_context.detach(token)
                        raise
                    except BaseException as exc:
                        resume, arg = agen.athrow, exc

            return agen_wrapper

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                token = otel_context.attach(scope())
                try:
                    return await fn(*args, **kwargs)
                finally:
                    otel_context.detach(token)

            return async_wrapper

        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                # Like ``yield from``: values, throw() and close() all reach ``gen``.
                gen = fn(*args, **kwargs)
                resume: Callable[[Any], Any] = gen.send
                arg: Any = None
                while True:
                    token = otel_context.attach(scope())
                    try:
                        item = resume(arg)
                    except StopIteration as stop:
                        return stop.value
                    finally:
                        otel_context.detach(token)
                    try:
                        arg = yield item
                        resume = gen.send
                    except GeneratorExit:
                        token = otel_context.attach(scope())
                        try:
                            gen.close()
                        finally:
                            otel_context.detach(token)
                        raise
                    except BaseException as exc:
                        resume, arg = gen.throw, exc

            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = otel_context.attach(scope())
            try:
                return fn(*args, **kwargs)
            finally:
                otel_context.detach(token)

        return wrapper


def with_session(
    session_id: str, fn: Callable[..., R], *args: Any, **kwargs: Any
) -> Union[R, Awaitable[R]]:
    """Run ``fn(*args, **kwargs)`` with ``session_id`` active and return its result.

    For a coroutine function the result is an awaitable that runs it inside the session. The
    session is started (recorded) on first use and never ended here: a conversation spans many
    requests. End it with :func:`end_session` when it is over, or use :func:`with_lucidic` for
    work that is the whole session.
    """
    if not callable(fn):
        _invalid(f"with_session: fn={fn!r} is not callable; nothing was run")
        return None  # type: ignore[return-value]
    return session(session_id, _where="with_session")(fn)(*args, **kwargs)


def with_lucidic(
    fn: Callable[..., R],
    *args: Any,
    session_name: Optional[str] = None,
    session_id: Optional[str] = None,
    **kwargs: Any,
) -> Union[R, Awaitable[R]]:
    """One-shot session: start it, run ``fn`` in it, flush its spans, end it, unbind it.

    Keyword arguments named like ``init`` fields (``task``, ``tags``, ...) configure the
    session; the rest go to ``fn``. ``auto_end`` is ignored: the session always ends here.
    """
    init_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _INIT_FIELDS}
    kwargs.pop("auto_end", None)
    if not callable(fn):
        _invalid(f"with_lucidic: fn={fn!r} is not callable; nothing was run and no session started")
        return None  # type: ignore[return-value]
    sid = None
    if session_id is not None:
        sid = _checked_session_id(session_id, "with_lucidic", _NEW_SESSION)
    sid = sid or new_session_id()
    fields = _checked_fields("with_lucidic", {"session_name": session_name, **init_kwargs})
    name = fields.pop("session_name", None)
    try:
        _configure_sdk(None)  # also adds the processor to a provider the user set up
    except ConfigError:
        raise
    except Exception:
        logger.exception("lucidic-otel: with_lucidic could not configure OpenTelemetry")
    REGISTRY.open(sid, name=name, auto_end=False, **fields)
    REGISTRY.store_now()
    scoped = session(sid)(fn)

    if inspect.iscoroutinefunction(fn):

        async def run_async() -> Any:
            try:
                return await scoped(*args, **kwargs)
            finally:
                REGISTRY.end(sid, {}, wait=True)

        return run_async()

    try:
        return scoped(*args, **kwargs)
    finally:
        REGISTRY.end(sid, {}, wait=True)


def set_active_session(session_id: str) -> Token:
    """Bind ``session_id`` for the rest of the current context (thread, task or callback).

    For detached roots (threads, timers, queue consumers) where no block encloses the work.
    Pass the returned token to :func:`clear_active_session` to restore what was there before.
    """
    sid = _checked_session_id(session_id, "set_active_session")
    if sid is None:
        return otel_context.attach(otel_context.get_current())
    REGISTRY.open(sid)
    _adopt_current_span(sid)
    return otel_context.attach(context_with_session(sid))


def clear_active_session(token: Optional[Token] = None) -> None:
    """Undo :func:`set_active_session`; without a token, unbind any session in this context.

    A token that is not one of ours, or that belongs to another thread or task, cannot be
    undone here: one message says so and the session is unbound in this context instead (what
    the caller wanted), rather than OpenTelemetry's "Failed to detach context" traceback.
    """
    if token is None:
        otel_context.attach(context_without_session())
        return
    problem = _detach(token)
    if problem is not None:
        _invalid(
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


def end_session(
    session_id: Optional[str] = None,
    *,
    is_successful: Optional[bool] = None,
    is_successful_reason: Optional[str] = None,
    session_eval: Optional[float] = None,
    session_eval_reason: Optional[str] = None,
) -> bool:
    """End a session (default: the current one) after its finished spans. Idempotent.

    Returns True the first time for a session started or joined here; False when it was
    already ended, when there is no such session, and for a session this process never
    started or joined (its end is still recorded, once: it may be another worker's or
    service's session). Safe from any thread or task; the flush happens on a background thread.
    """
    sid = (
        current_session_id()
        if session_id is None
        else _checked_session_id(session_id, "end_session")
    )
    if sid is None:
        if session_id is None:
            _invalid("end_session: there is no current session to end; pass session_id")
        return False
    if session_id is None and not REGISTRY.knows(sid):
        _invalid(
            f"end_session: the current session {sid!r} was joined from upstream (baggage or "
            "environment); the service that started it ends it; pass session_id to end it here"
        )
        return False
    known_here = session_id is None or REGISTRY.knows(sid) or sid == current_session_id()
    if not known_here:
        _unknown_end(sid)
    fields = _checked_fields(
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


_warned_unknown_end = False


def _unknown_end(session_id: str) -> None:
    """Ending a session this process never started or joined: the end is still recorded (the
    session may belong to another worker or service), and the first time one message says so."""
    global _warned_unknown_end
    if _warned_unknown_end:
        return
    _warned_unknown_end = True
    logger.warning(
        "lucidic-otel: end_session: session %r was not started or joined in this process; its "
        "end is recorded anyway, for a session another process or service started (Lucidic "
        "rejects it if none did, and `lucidic-otel doctor` lists the rejection); returning "
        "False. Later such ends are not reported.",
        session_id[:80],
    )


def current_session_id() -> Optional[str]:
    """The session a span started here and now would be stamped with."""
    try:
        return bootstrap.session_processor().session_for(None)
    except Exception:
        return None


def flush(timeout_millis: int = 30000) -> bool:
    """Export every finished span and record pending session ends; True if all went through.

    Call it at the end of work that exits without ``atexit`` (serverless handlers) or before a
    deliberate ``os._exit``.
    """
    REGISTRY.drain()
    return flush_spans(timeout_millis)


def inject_env(env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Put the current session and trace into ``env`` for a child process; returns ``env``.

    ``subprocess.run(cmd, env=lucidic_otel.inject_env())``: a child started under the
    launcher joins the session. The process default session is carried too when no scope is
    active, so a child of an ``init()`` script joins from any thread.
    """
    if env is not None and not isinstance(env, MutableMapping):
        _invalid(
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
    """The context (trace and session) a parent left in ``env`` (default ``os.environ``)."""
    return _extract_env(env)


def _recording_setup() -> Optional[Dict[str, Any]]:
    """What a worker needs to record like this process, or None when this process does not
    record through lucidic (no SDK provider with the session processor)."""
    provider = bootstrap.sdk_provider()
    if provider is None or not bootstrap.has_session_processor(provider):
        return None
    return {"instrument": list(_instrumented)}


def _record_here(setup: Dict[str, Any]) -> None:
    """In a worker nobody set OpenTelemetry up in (spawn and forkserver children of a plain
    ``python`` program that called ``init()``): set it up as ``init`` would, without a session
    of its own, so the carried spans are recorded into the same store. Under the launcher, or
    where the application built a provider, there is nothing to do."""
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return
    instrument = setup.get("instrument") if isinstance(setup, dict) else None
    _configure_sdk([n for n in instrument or () if isinstance(n, str)] or None)


class _CarriedContext:
    """``fn`` bound to the trace and session that were current when it was made.

    A plain object of four fields so that it pickles (by reference to ``fn``) into spawn and
    forkserver children, which inherit no context at all, and into pool workers forked before
    the session began. The session is carried as the active session, not only as baggage: the
    carrier comes from this application, not from a caller, so the inbound baggage trust policy
    (``LUCIDIC_BAGGAGE_TRUST=ignore`` at an edge) must not drop it. ``setup`` says how the
    parent records, for a worker with no telemetry of its own (no credentials: the worker
    writes to the shared store and the parent, which has them, delivers).
    """

    __slots__ = ("fn", "carrier", "session_id", "setup")

    def __init__(
        self,
        fn: Callable[..., Any],
        carrier: Dict[str, str],
        session_id: Optional[str],
        setup: Optional[Dict[str, Any]] = None,
    ):
        self.fn = fn
        self.carrier = carrier
        self.session_id = session_id
        self.setup = setup

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        token = None
        try:
            if self.setup is not None:
                _record_here(self.setup)
            ctx = propagate.extract(self.carrier)
            if self.session_id is not None:
                ctx = context_with_session(self.session_id, ctx)
            token = otel_context.attach(ctx)
        except Exception:  # telemetry must never stop the work itself
            logger.debug("lucidic-otel: could not restore a carried context", exc_info=True)
        try:
            return self.fn(*args, **kwargs)
        finally:
            if token is not None:
                otel_context.detach(token)

    def __getstate__(self) -> tuple:
        return (self.fn, self.carrier, self.session_id, self.setup)

    def __setstate__(self, state: tuple) -> None:
        self.fn, self.carrier, self.session_id = state[:3]
        self.setup = state[3] if len(state) > 3 else None

    def __repr__(self) -> str:
        return f"carry_context({self.fn!r}, session_id={self.session_id!r})"


def carry_context(fn: Callable[..., R]) -> Callable[..., R]:
    """``fn`` wrapped to run in the current trace and session, wherever it is called.

    For work handed to other processes: ``Process(target=carry_context(work))``,
    ``pool.map(carry_context(work), items)``, ``executor.submit(carry_context(work), x)``.
    Fork children inherit the context of the thread that forked them, but spawn and
    forkserver children, and pool workers started before the session, do not; the wrapper
    is picklable (when ``fn`` is) and re-attaches the captured context around each call.
    A worker with no telemetry set up (spawn/forkserver under a plain ``python`` that called
    ``init()``) is set up on the first call, as the parent was, so its spans are recorded.
    The child never starts or ends the session: it only stamps its spans with it.
    """
    if not callable(fn):
        _invalid(f"carry_context: fn={fn!r} is not callable; returned unchanged")
        return fn
    carrier: Dict[str, str] = {}
    sid = None
    setup = None
    try:
        propagate.inject(carrier)
        sid = current_session_id()
        setup = _recording_setup()
        REGISTRY.store_now()  # the workers' events must not be stored ahead of the init
    except Exception:
        logger.debug("lucidic-otel: could not capture the current context", exc_info=True)
    return _CarriedContext(fn, carrier, sid, setup)
