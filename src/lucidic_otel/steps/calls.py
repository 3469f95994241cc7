"""One call of a tool or step: its span, its arguments and result, and the wrappers that keep
each function kind (sync, async, generator, async generator) what it was."""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
from typing import (
    Any,
    AsyncGenerator,
    Callable,
    Dict,
    Generator,
    List,
    Mapping,
    Optional,
    Tuple,
    TypeVar,
)

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode, TracerProvider

from lucidic_otel._diagnostics import guarded, log_once
from lucidic_otel.config import get_settings
from lucidic_otel.steps.values import (
    MAX_ITEMS,
    MAX_VALUE_CHARS,
    _Budget,
    _plain,
    _to_json,
)
from lucidic_otel.version import __version__

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


OPERATION = "execute_tool"
TOOL_TYPE = "function"
_OPERATION_NAME = "gen_ai.operation.name"
_TOOL_NAME = "gen_ai.tool.name"
_TOOL_TYPE = "gen_ai.tool.type"
_TOOL_DESCRIPTION = "gen_ai.tool.description"
_TOOL_CALL_ID = "gen_ai.tool.call.id"
_ARGUMENTS = "gen_ai.tool.call.arguments"
_RESULT = "gen_ai.tool.call.result"
_ERROR_TYPE = "error.type"
_TRACER_NAME = "lucidic_otel.steps"
_DEFAULT_STEP_NAME = "step"
_NOT_RECORDED_PARAMETERS = ("self", "cls")

_global_tracer: Optional[trace.Tracer] = None



# ------------------------------------------------------------------------------- calls


def _capture_content() -> bool:
    """The content-capture setting, read per call (it may be loaded after the decoration).

    If it cannot be read, nothing is recorded: privacy is the safe side of a failure.
    """
    capture = False
    with guarded(logger, "reading the content-capture setting"):
        capture = bool(get_settings().capture_content)
    return capture


def _tracer(provider: Optional[TracerProvider]) -> trace.Tracer:
    """Our tracer, from ``provider`` or the global provider (a proxy until one is set)."""
    global _global_tracer
    if provider is not None:
        return provider.get_tracer(_TRACER_NAME, __version__)
    if _global_tracer is None:
        _global_tracer = trace.get_tracer(_TRACER_NAME, __version__)
    return _global_tracer


def _is_failure(exc: BaseException) -> bool:
    """Whether ``exc`` ending a tool means the tool failed.

    A consumer that stops iterating a generator early closes it (GeneratorExit): that is the
    consumer's choice, not a failure. A ``sys.exit(0)`` is a normal end. Everything else,
    KeyboardInterrupt and CancelledError included, means the tool did not complete.
    """
    if isinstance(exc, GeneratorExit):
        return False
    if isinstance(exc, SystemExit):
        return exc.code not in (None, 0)
    return True


class _Spec:
    """What does not change between calls of one tool: its name and its start attributes.

    The name may be unknown until the decorated function is seen (``@tool()``); :meth:`for_function`
    and :meth:`for_block` settle it.
    """

    __slots__ = ("name", "description", "call_id", "provider", "signature", "attributes")

    def __init__(
        self,
        name: Optional[str],
        description: Optional[str],
        call_id: Optional[str],
        provider: Optional[TracerProvider],
    ) -> None:
        self.name = name or ""
        self.description = description
        self.call_id = call_id
        self.provider = provider
        self.signature: Optional[inspect.Signature] = None
        self.attributes = self._attributes()

    def _attributes(self) -> Dict[str, Any]:
        attributes: Dict[str, Any] = {
            _OPERATION_NAME: OPERATION,
            _TOOL_NAME: self.name,
            _TOOL_TYPE: TOOL_TYPE,
        }
        if self.description:
            attributes[_TOOL_DESCRIPTION] = self.description
        if self.call_id:
            attributes[_TOOL_CALL_ID] = self.call_id
        return attributes

    def _named(self, name: str) -> _Spec:
        spec = copy.copy(self)
        spec.name = name
        spec.attributes = spec._attributes()
        return spec

    def for_function(self, fn: Callable[..., Any]) -> _Spec:
        """This spec for decorating ``fn``: named after it unless named, its signature computed
        once here rather than on every call."""
        spec = self._named(self.name or str(getattr(fn, "__name__", "") or _DEFAULT_STEP_NAME))
        spec.signature = _signature(fn)
        return spec

    def for_block(self) -> _Spec:
        """This spec for a ``with`` block, which has no function to take a name from."""
        if self.name:
            return self
        log_once(logger, "step-unnamed", "lucidic-otel: a step without a name is recorded as "
                 "%r; pass a name", _DEFAULT_STEP_NAME, level=logging.INFO)
        return self._named(_DEFAULT_STEP_NAME)


def _signature(fn: Callable[..., Any]) -> Optional[inspect.Signature]:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C callables have none
        return None


def _bound_arguments(
    signature: Optional[inspect.Signature], args: Tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Dict[str, Any]:
    """The call's arguments by parameter name, defaults applied, ``self``/``cls`` left out.

    ``**kwargs`` are merged in by name (they are named arguments to the reader). A call that
    does not fit the signature (the function will raise TypeError itself) is recorded as
    ``{"args": [...], "kwargs": {...}}``.
    """
    if signature is None:
        return {"args": list(args), "kwargs": dict(kwargs)}
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return {"args": list(args), "kwargs": dict(kwargs)}
    bound.apply_defaults()
    out: Dict[str, Any] = {}
    for index, (name, value) in enumerate(bound.arguments.items()):
        kind = signature.parameters[name].kind
        if index == 0 and name in _NOT_RECORDED_PARAMETERS:
            continue
        if kind is inspect.Parameter.VAR_KEYWORD and not set(value) & set(out):
            out.update(value)
        else:
            out[name] = value
    return out


class _Call:
    """One execution of a tool or step: its span and what it recorded.

    The span is made current only while the tool's own code runs (around each generator step,
    not across a ``yield``), so spans the consumer makes between items are not misparented and
    every attach is detached in the context it was attached in.
    """

    __slots__ = ("span", "capture", "_items", "_count", "_budget")

    def __init__(self, spec: _Spec, arguments: Optional[Callable[[], Any]] = None) -> None:
        """Start the span; ``arguments`` gives the inputs, called only with content capture
        on (binding and converting them is work a content-free call does not pay for)."""
        self.span: Span = INVALID_SPAN
        self.capture = _capture_content()
        self._items: Optional[List[Any]] = None
        self._count = 0
        self._budget = _Budget(MAX_VALUE_CHARS)
        with guarded(logger, "starting a tool span"):
            attributes = dict(spec.attributes)
            if self.capture and arguments is not None:
                attributes[_ARGUMENTS] = _to_json(arguments())
            self.span = _tracer(spec.provider).start_span(
                f"{OPERATION} {spec.name}", kind=SpanKind.INTERNAL, attributes=attributes
            )

    @property
    def recording(self) -> bool:
        return self.capture and self.span.is_recording()

    def attach(self) -> Optional[object]:
        token = None
        with guarded(logger, "making a tool span current"):
            token = otel_context.attach(trace.set_span_in_context(self.span))
        return token

    def detach(self, token: Optional[object]) -> None:
        if token is not None:
            otel_context.detach(token)  # logs, never raises

    def set_arguments(self, arguments: Any) -> None:
        if self.recording:
            with guarded(logger, "recording tool arguments"):
                self.span.set_attribute(_ARGUMENTS, _to_json(arguments))

    def set_result(self, result: Any) -> None:
        if self.recording:
            with guarded(logger, "recording a tool result"):
                self.span.set_attribute(_RESULT, _to_json(result))

    def add_item(self, item: Any) -> None:
        """Keep a yielded item (converted now: the generator may reuse or mutate the object)."""
        self._count += 1
        if not self.recording or self._count > MAX_ITEMS or self._budget.left <= 0:
            return
        with guarded(logger, "recording a yielded item"):
            if self._items is None:
                self._items = []
            self._items.append(_plain(item, self._budget, 1, ()))

    def finish(self, exc: Optional[BaseException] = None) -> None:
        """End the span: the yielded items as the result, the failure if ``exc`` is one."""
        with guarded(logger, "ending a tool span"):
            if self._count and self.recording:
                items: List[Any] = list(self._items or [])
                if self._count > len(items):
                    items.append(f"[{self._count - len(items)} more items]")
                self.span.set_attribute(_RESULT, json.dumps(items, ensure_ascii=False))
            if exc is not None and _is_failure(exc):
                self._fail(exc)
        with guarded(logger, "ending a tool span"):
            self.span.end()

    def _fail(self, exc: BaseException) -> None:
        kind = type(exc).__qualname__
        message = _exception_message(exc)
        self.span.set_attribute(_ERROR_TYPE, kind)
        self.span.set_status(Status(StatusCode.ERROR, f"{kind}: {message}" if message else kind))
        self.span.record_exception(exc, escaped=True)


def _exception_message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - a user exception whose __str__ raises
        return ""


# ---------------------------------------------------------------------------- wrappers


def _start(spec: _Spec, args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> _Call:
    """A started call, its arguments recorded before the function can change them."""
    return _Call(spec, lambda: _bound_arguments(spec.signature, args, kwargs))


def _wrap_sync(fn: Callable[..., Any], spec: _Spec) -> Callable[..., Any]:
    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        call = _start(spec, args, kwargs)
        token = call.attach()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            call.detach(token)
            call.finish(exc)
            raise
        call.detach(token)
        call.set_result(result)
        call.finish()
        return result

    return traced


def _wrap_coroutine(fn: Callable[..., Any], spec: _Spec) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def traced(*args: Any, **kwargs: Any) -> Any:
        call = _start(spec, args, kwargs)
        token = call.attach()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            call.detach(token)
            call.finish(exc)
            raise
        call.detach(token)
        call.set_result(result)
        call.finish()
        return result

    return traced


class _Stepper:
    """Forwards the generator protocol to the user's generator with the tool span current.

    ``yield from`` an object with ``send``/``throw``/``close`` gives the full PEP 380
    semantics (sent values, thrown exceptions, close, the return value) without re-implementing
    them; this object only adds the context around each step and keeps each item.
    """

    __slots__ = ("_gen", "_call")

    def __init__(self, gen: Generator[Any, Any, Any], call: _Call) -> None:
        self._gen = gen
        self._call = call

    def __iter__(self) -> _Stepper:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def _step(self, method: Callable[..., Any], *args: Any) -> Any:
        token = self._call.attach()
        try:
            item = method(*args)
        finally:
            self._call.detach(token)
        self._call.add_item(item)
        return item

    def send(self, value: Any) -> Any:
        return self._step(self._gen.send, value)

    def throw(self, *exc_info: Any) -> Any:
        # Python < 3.12 passes (type, value, traceback); the value is the exception itself.
        exc = exc_info[1] if len(exc_info) > 1 and exc_info[1] is not None else exc_info[0]
        return self._step(self._gen.throw, exc)

    def close(self) -> None:
        token = self._call.attach()
        try:
            self._gen.close()
        finally:
            self._call.detach(token)


def _wrap_generator(fn: Callable[..., Any], spec: _Spec) -> Callable[..., Any]:
    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        call = _start(spec, args, kwargs)
        try:
            token = call.attach()
            try:
                gen = fn(*args, **kwargs)
            finally:
                call.detach(token)
            result = yield from _Stepper(gen, call)
        except BaseException as exc:
            call.finish(exc)
            raise
        call.finish()
        return result

    return traced


def _wrap_async_generator(fn: Callable[..., Any], spec: _Spec) -> Callable[..., Any]:
    # No ``yield from`` for async generators: the protocol (asend/athrow/aclose) is forwarded
    # by hand, with the span current only while the user's code runs.
    @functools.wraps(fn)
    async def traced(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        call = _start(spec, args, kwargs)
        try:
            agen = fn(*args, **kwargs)
            sent: Any = None
            thrown: Optional[BaseException] = None
            while True:
                token = call.attach()
                try:
                    if thrown is not None:
                        pending, thrown = thrown, None
                        item = await agen.athrow(pending)
                    else:
                        item = await agen.asend(sent)
                except StopAsyncIteration:
                    break
                finally:
                    call.detach(token)
                call.add_item(item)
                try:
                    sent = yield item
                except GeneratorExit:
                    await _aclose(agen, call)
                    raise
                except BaseException as exc:  # athrow() into us: hand it to the user's code
                    thrown = exc
        except BaseException as exc:
            call.finish(exc)
            raise
        call.finish()

    return traced


async def _aclose(agen: AsyncGenerator[Any, Any], call: _Call) -> None:
    token = call.attach()
    try:
        await agen.aclose()
    finally:
        call.detach(token)


def _function_kind(fn: Callable[..., Any]) -> str:
    """``async_generator``, ``generator``, ``coroutine`` or ``sync`` (a callable object is
    judged by its ``__call__``)."""
    for candidate in (fn, getattr(fn, "__call__", None)):  # noqa: B004 - the method itself
        if candidate is None:
            continue
        if inspect.isasyncgenfunction(candidate):
            return "async_generator"
        if inspect.isgeneratorfunction(candidate):
            return "generator"
        if inspect.iscoroutinefunction(candidate):
            return "coroutine"
    return "sync"


_WRAPPERS = {
    "sync": _wrap_sync,
    "coroutine": _wrap_coroutine,
    "generator": _wrap_generator,
    "async_generator": _wrap_async_generator,
}


def _decorate(fn: F, spec: _Spec) -> F:
    """``fn`` traced by kind; the wrapper is the same kind (``inspect`` and frameworks such as
    FastAPI and pytest dispatch on it), so a generator function stays a generator function."""
    wrapper = _WRAPPERS[_function_kind(fn)]
    return wrapper(fn, spec.for_function(fn))  # type: ignore[return-value]


