"""What conversion reads of a span: a small protocol, and a plain implementation of it.

The exporter converts the SDK's finished ``ReadableSpan``; the CLI and the viewer rebuild an
event from a span row stored in the outbox. Conversion only reads a few properties, so it is
typed against :class:`SpanLike` rather than the SDK class: a ``ReadableSpan`` satisfies it as
it is, and a caller holding a stored row builds a :class:`PlainSpan` instead of faking an SDK
span (whose constructor also builds a default ``Resource``).

Every member is a read-only property in the protocols, so both plain attributes (dataclasses)
and the SDK's properties satisfy them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Protocol, Sequence, runtime_checkable

from opentelemetry.trace import StatusCode

logger = logging.getLogger(__name__)


class SpanIdsLike(Protocol):
    """A span's identity (``SpanContext`` satisfies it)."""

    @property
    def trace_id(self) -> int: ...

    @property
    def span_id(self) -> int: ...


class EventLike(Protocol):
    """A span event (``opentelemetry.sdk.trace.Event`` satisfies it)."""

    @property
    def name(self) -> str: ...

    @property
    def attributes(self) -> Optional[Mapping[str, Any]]: ...


class StatusLike(Protocol):
    """A span status (``opentelemetry.trace.Status`` satisfies it)."""

    @property
    def status_code(self) -> StatusCode: ...

    @property
    def description(self) -> Optional[str]: ...


class ResourceLike(Protocol):
    """The resource a span came from; only ``service.name`` is read."""

    @property
    def attributes(self) -> Mapping[str, Any]: ...


class ScopeLike(Protocol):
    """The instrumentation scope that recorded a span."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> Optional[str]: ...


@runtime_checkable
class SpanLike(Protocol):
    """Everything :func:`lucidic_otel.convert.events.span_to_event` reads of a span.

    ``context`` None means the span cannot be identified (no event is made); ``parent``,
    ``resource`` and ``instrumentation_scope`` may be None (the metadata then omits them).
    Times are nanoseconds since the epoch.
    """

    @property
    def name(self) -> str: ...

    @property
    def context(self) -> Optional[SpanIdsLike]: ...

    @property
    def parent(self) -> Optional[SpanIdsLike]: ...

    @property
    def attributes(self) -> Optional[Mapping[str, Any]]: ...

    @property
    def events(self) -> Sequence[EventLike]: ...

    @property
    def status(self) -> StatusLike: ...

    @property
    def start_time(self) -> Optional[int]: ...

    @property
    def end_time(self) -> Optional[int]: ...

    @property
    def resource(self) -> Optional[ResourceLike]: ...

    @property
    def instrumentation_scope(self) -> Optional[ScopeLike]: ...


@dataclass(frozen=True)
class SpanIds:
    """Trace and span id as integers (stored rows hold them as hex: ``int(hex_id, 16)``)."""

    trace_id: int
    span_id: int


@dataclass(frozen=True)
class PlainEvent:
    """A span event rebuilt from storage."""

    name: str
    attributes: Optional[Mapping[str, Any]] = None


@dataclass(frozen=True)
class PlainStatus:
    """A status without the SDK's checks (``opentelemetry.trace.Status`` drops a description
    unless the code is ERROR; pass that class instead to keep its behaviour)."""

    status_code: StatusCode = StatusCode.UNSET
    description: Optional[str] = None


@dataclass(frozen=True)
class PlainSpan:
    """A :class:`SpanLike` made of plain values, for callers that hold no SDK span.

    Examples:
        >>> span = PlainSpan(name="chat gpt-4o", context=SpanIds(0x1, 0x2),
        ...                  attributes={"gen_ai.operation.name": "chat"})
    """

    name: str
    context: Optional[SpanIds]
    attributes: Optional[Mapping[str, Any]] = None
    events: Sequence[EventLike] = ()
    status: StatusLike = PlainStatus()
    start_time: Optional[int] = None
    end_time: Optional[int] = None
    parent: Optional[SpanIds] = None
    resource: Optional[ResourceLike] = None
    instrumentation_scope: Optional[ScopeLike] = None
