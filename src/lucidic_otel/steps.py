"""The user's own tool functions and steps as OpenTelemetry GenAI tool spans.

An agent's session in Lucidic is more than its model calls: the functions the model asked for
(search, a database lookup, a calculator) and the application's own steps between them are what
a reader of the session needs to see. This module records them as the GenAI semantic
conventions' tool execution spans, the same shape the GenAI instrumentations (OpenAI Agents,
LangChain) emit for tools they run::

    name  execute_tool {name}          kind INTERNAL
    gen_ai.operation.name = execute_tool
    gen_ai.tool.name      = {name}
    gen_ai.tool.type      = function
    gen_ai.tool.call.arguments = JSON of the bound arguments (content capture only)
    gen_ai.tool.call.result    = JSON of the result (content capture only)

so :func:`lucidic_otel.convert.events.span_to_event` makes them ``function_call`` events, and any
other OTLP backend (Phoenix, Langfuse, Grafana) shows them as tool calls too.

Two spellings of one mechanism:

* :func:`tool` decorates a function the model calls (``@tool``, ``@tool("search")``,
  ``@tool(name="search")``); the tool name defaults to the function's ``__name__``, which is the
  name the model used.
* :func:`step` scopes a block (``with step("plan") as s: s.set_result(plan)``, also
  ``async with``) and decorates like :func:`tool`.

What it does better than the official Lucidic SDK's ``@client.event``: generators and async
generators are traced without being consumed (the caller still gets every item; the span covers
the iteration); ``self``/``cls`` are not recorded as arguments; ``BaseException``
(KeyboardInterrupt, CancelledError, GeneratorExit) still ends the span; arguments are recorded
before the function can mutate them; odd objects never break the call; and with content capture
off (``LUCIDIC_CAPTURE_CONTENT=false``) no argument or result is recorded at all.

Nothing here raises into the user's program: the user's exception is re-raised unchanged, and
a failure of our own (an argument whose ``__repr__`` raises, a serialiser bug) only costs the
recorded value.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import decimal
import enum
import functools
import inspect
import json
import logging
import pathlib
import uuid
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
    Union,
    overload,
)

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode, TracerProvider

from lucidic_otel._diagnostics import guarded, log_once
from lucidic_otel.config import get_settings
from lucidic_otel.version import __version__

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_ITEMS",
    "MAX_VALUE_CHARS",
    "Step",
    "step",
    "tool",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Upper bound (characters) of one recorded arguments or result JSON value. Tool results can be
#: whole documents; a span attribute (and the event built from it) should show what happened,
#: not copy a multi-megabyte payload into every exporter's queue.
MAX_VALUE_CHARS = 32 * 1024
#: How many yielded items of a generator are recorded as its result (the rest are counted).
MAX_ITEMS = 100

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
_MAX_DEPTH = 16
_NOT_RECORDED_PARAMETERS = ("self", "cls")

_global_tracer: Optional[trace.Tracer] = None
#: "not given" (None is a value a step may have as its arguments).
_NOTHING = object()


# ------------------------------------------------------------------------------ values


class _Budget:
    """What is left of :data:`MAX_VALUE_CHARS` while one value is converted.

    Spending as we go (instead of serialising everything and cutting the text) keeps the JSON
    valid and the cost proportional to what is kept, even for a list of a million rows.
    """

    __slots__ = ("left",)

    def __init__(self, chars: int) -> None:
        self.left = chars

    def spend(self, chars: int) -> None:
        self.left -= chars


def _safe_repr(value: Any, budget: _Budget) -> str:
    """``repr`` of a user object, bounded; a ``__repr__`` that raises is the object's problem."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - user code; the value is shown by its type instead
        text = f"<{type(value).__qualname__} object>"
    return _bounded_text(text, budget)


def _bounded_text(text: str, budget: _Budget) -> str:
    keep = max(budget.left, 0)
    budget.spend(len(text) + 2)
    if len(text) <= keep:
        return text
    return f"{text[:keep]}...[{len(text) - keep} more chars]"


def _plain(value: Any, budget: _Budget, depth: int, seen: Tuple[int, ...]) -> Any:
    """``value`` as JSON-ready data of bounded size; never iterates anything lazy.

    Only real containers (dict, list, tuple, set, frozenset) are walked: iterating an
    arbitrary iterable could consume it (a generator argument, a file, a cursor), which is the
    bug the official SDK has. Everything else is described: a pydantic model by its dump, a
    dataclass by its fields, an enum by its value, well-known scalars by ``str``, the rest by
    ``repr``.
    """
    if value is None or isinstance(value, (bool, int)):
        budget.spend(6)
        return value
    if isinstance(value, float):
        budget.spend(24)
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, str):
        return _bounded_text(value, budget)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _bounded_text(bytes(value[:max(budget.left, 0) + 1]).decode("utf-8", "replace"),
                             budget)
    if depth >= _MAX_DEPTH:
        return "[nested too deep]"
    if id(value) in seen:
        return "[circular reference]"
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        return _container(value, budget, depth, (*seen, id(value)))
    return _described(value, budget, depth, (*seen, id(value)))


def _container(value: Any, budget: _Budget, depth: int, seen: Tuple[int, ...]) -> Any:
    if isinstance(value, dict):
        out: Dict[str, Any] = {}
        for index, (key, item) in enumerate(value.items()):
            if budget.left <= 0:
                out["..."] = f"[{len(value) - index} more keys]"
                break
            name = key if isinstance(key, str) else str(_plain(key, budget, depth + 1, seen))
            budget.spend(len(name) + 4)
            out[name] = _plain(item, budget, depth + 1, seen)
        return out
    items: List[Any] = []
    for index, item in enumerate(value):
        if budget.left <= 0:
            items.append(f"[{len(value) - index} more items]")
            break
        budget.spend(2)
        items.append(_plain(item, budget, depth + 1, seen))
    return items


def _described(value: Any, budget: _Budget, depth: int, seen: Tuple[int, ...]) -> Any:
    """A non-container object: the most faithful cheap description, else its bounded repr."""
    if isinstance(value, enum.Enum):
        return _plain(value.value, budget, depth + 1, seen)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return _bounded_text(value.isoformat(), budget)
    if isinstance(value, (uuid.UUID, decimal.Decimal, pathlib.PurePath)):
        return _bounded_text(str(value), budget)
    dumped = _model_dump(value)
    if dumped is not _NOTHING:
        return _plain(dumped, budget, depth + 1, seen)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = _dataclass_fields(value)
        if fields is not None:
            return _plain(fields, budget, depth + 1, seen)
    return _safe_repr(value, budget)



def _model_dump(value: Any) -> Any:
    """A pydantic (v2, else v1) model's JSON-mode dump, or ``_NOTHING``."""
    dump = getattr(type(value), "model_dump", None)
    try:
        if callable(dump) and hasattr(type(value), "model_fields"):
            return value.model_dump(mode="json")
        legacy = getattr(type(value), "dict", None)
        if callable(legacy) and hasattr(type(value), "__fields__"):
            return value.dict()
    except Exception:  # noqa: BLE001 - user code (validators, properties); fall back to repr
        return _NOTHING
    return _NOTHING


def _dataclass_fields(value: Any) -> Optional[Dict[str, Any]]:
    """The fields of a dataclass instance, shallow (``asdict`` deep-copies, and may raise)."""
    try:
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    except Exception:  # noqa: BLE001 - user code (a property-backed field); fall back to repr
        return None


def _to_json(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """``value`` as a span attribute: JSON text of about ``limit`` characters at most.

    A string is kept as it is rather than quoted, as the GenAI instrumentations record a tool
    result that is already text (util-genai's ToolInvocation); readers show it without quotes.
    Never raises for any input: what cannot be represented is replaced by a description.
    """
    budget = _Budget(limit)
    if isinstance(value, str):
        return _bounded_text(value, budget)
    text = json.dumps(_plain(value, budget, 0, ()), ensure_ascii=False, allow_nan=False)
    if len(text) > 2 * limit:  # keys and quoting are estimated; keep a hard ceiling anyway
        text = f"{text[:limit]}...[{len(text) - limit} more chars]"
    return text


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


# ------------------------------------------------------------------------- public API


class Step:
    """A tool span around a block (``with``/``async with``), or a decorator like :func:`tool`.

    ``__enter__`` returns the step itself; :meth:`set_result` and :meth:`set_arguments` record
    on the innermost open block of this object. Make one ``step(...)`` per ``with`` statement:
    as a decorator, every call gets its own span.
    """

    __slots__ = ("_spec", "_arguments", "_open")

    def __init__(self, spec: _Spec, arguments: Any = _NOTHING) -> None:
        self._spec = spec
        self._arguments = arguments
        self._open: List[Tuple[_Call, Optional[object]]] = []

    @property
    def name(self) -> str:
        """The tool name (``gen_ai.tool.name``); empty until known (``@tool()`` names it after
        the function it decorates)."""
        return self._spec.name

    @property
    def span(self) -> Span:
        """The open block's span (an invalid, non-recording span outside the block)."""
        return self._open[-1][0].span if self._open else INVALID_SPAN

    def set_result(self, result: Any) -> None:
        """Record the step's result (``gen_ai.tool.call.result``); the last call wins.

        The value is converted now, so later changes to the object are not recorded. With
        content capture off, nothing is recorded.
        """
        if self._open:
            self._open[-1][0].set_result(result)
        else:
            log_once(logger, "step-closed", "lucidic-otel: step %r: set_result() outside its "
                     "with block is ignored", self._spec.name)

    def set_arguments(self, arguments: Any) -> None:
        """Record the step's inputs (``gen_ai.tool.call.arguments``), e.g. a model's tool call
        arguments; replaces ``arguments=`` given to :func:`step`."""
        if self._open:
            self._open[-1][0].set_arguments(arguments)

    def __enter__(self) -> Step:
        given = self._arguments
        call = _Call(self._spec.for_block(), None if given is _NOTHING else lambda: given)
        self._open.append((call, call.attach()))
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        if not self._open:
            return
        call, token = self._open.pop()
        call.detach(token)
        call.finish(exc)

    async def __aenter__(self) -> Step:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, fn: F) -> F:
        return _decorate(fn, self._spec)

    def __repr__(self) -> str:
        return f"Step({self._spec.name!r})"


NameOrFunction = Union[str, Callable[..., Any], None]


def _spec_for(
    name_or_fn: NameOrFunction,
    name: Optional[str],
    description: Optional[str],
    call_id: Optional[str],
    tracer_provider: Optional[TracerProvider],
) -> Tuple[Optional[Callable[..., Any]], _Spec]:
    fn = None
    if callable(name_or_fn):
        fn, name_or_fn = name_or_fn, None
    elif name_or_fn is not None and not isinstance(name_or_fn, str):
        raise TypeError(
            f"expected a tool name (str) or a function, got {type(name_or_fn).__name__}"
        )
    return fn, _Spec(name or name_or_fn, description, call_id, tracer_provider)


@overload
def tool(name_or_fn: F, /) -> F: ...
@overload
def tool(
    name_or_fn: Optional[str] = None,
    /,
    *,
    name: Optional[str] = None,
    description: Optional[str] = None,
    tracer_provider: Optional[TracerProvider] = None,
) -> Step: ...
def tool(
    name_or_fn: NameOrFunction = None,
    /,
    *,
    name: Optional[str] = None,
    description: Optional[str] = None,
    tracer_provider: Optional[TracerProvider] = None,
) -> Any:
    """Trace a tool function: each call becomes an ``execute_tool {name}`` span.

    Use bare (``@tool``), with a name (``@tool("search")``, ``@tool(name="search")``), on
    sync and async functions, generators and async generators, and methods (``self``/``cls``
    are not recorded). The tool name defaults to the function's ``__name__``: it is the name
    the model called the tool by. ``description`` is recorded as ``gen_ai.tool.description``.
    ``tracer_provider`` overrides the global provider (as instrumentors' ``tracer_provider=``).

    Args:
        name_or_fn: the function (bare use) or the tool name.
        name: the tool name, if not given positionally.
        description: what the tool does, as the model was told.
        tracer_provider: the provider to create spans with; the global one by default.

    Returns:
        The traced function (bare use), else a decorator (a :class:`Step`, which also works
        as ``with tool("name") as t:``).

    Examples:
        >>> @tool
        ... def get_weather(city: str) -> dict:
        ...     return {"city": city, "sky": "clear"}
    """
    fn, spec = _spec_for(name_or_fn, name, description, None, tracer_provider)
    if fn is not None:
        return _decorate(fn, spec)
    return Step(spec)


@overload
def step(name_or_fn: F, /) -> F: ...
@overload
def step(
    name_or_fn: Optional[str] = None,
    /,
    *,
    name: Optional[str] = None,
    arguments: Any = ...,
    description: Optional[str] = None,
    call_id: Optional[str] = None,
    tracer_provider: Optional[TracerProvider] = None,
) -> Step: ...
def step(
    name_or_fn: NameOrFunction = None,
    /,
    *,
    name: Optional[str] = None,
    arguments: Any = _NOTHING,
    description: Optional[str] = None,
    call_id: Optional[str] = None,
    tracer_provider: Optional[TracerProvider] = None,
) -> Any:
    """Trace a block of the application as a step (a tool span); also a decorator.

    ``with step("plan", arguments={"goal": goal}) as s: ... s.set_result(plan)`` (or
    ``async with``). An exception leaving the block marks the step failed and propagates
    unchanged. Executing a model's tool call by hand is the typical use::

        with step(call.function.name, arguments=json.loads(call.function.arguments),
                  call_id=call.id) as s:
            s.set_result(run(call))

    Args:
        name_or_fn: the step name, or a function (bare ``@step``).
        name: the step name, if not given positionally.
        arguments: the step's inputs, recorded like a tool's arguments (content capture only);
            ignored when decorating (the call's bound arguments are recorded).
        description: recorded as ``gen_ai.tool.description``.
        call_id: the model's tool call id (``gen_ai.tool.call.id``), linking the step to the
            LLM call that asked for it.
        tracer_provider: the provider to create spans with; the global one by default.

    Returns:
        A :class:`Step` (context manager and decorator), or the traced function (bare use).
    """
    fn, spec = _spec_for(name_or_fn, name, description, call_id, tracer_provider)
    if fn is not None:
        return _decorate(fn, spec)
    return Step(spec, arguments)
