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

import logging
from typing import (
    Any,
    Callable,
    List,
    Optional,
    Tuple,
    Union,
    overload,
)

from opentelemetry.trace import INVALID_SPAN, Span, TracerProvider

from lucidic_otel._diagnostics import log_once
from lucidic_otel.steps.calls import F, _Call, _decorate, _Spec
from lucidic_otel.steps.values import _NOTHING, MAX_ITEMS, MAX_VALUE_CHARS

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_ITEMS",
    "MAX_VALUE_CHARS",
    "Step",
    "step",
    "tool",
]

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

