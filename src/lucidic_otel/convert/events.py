"""Finished OpenTelemetry spans -> Lucidic event bodies.

The backend knows four event types, all derived from spans:

* ``llm_generation`` from GenAI inference spans (chat, completions, embeddings);
* ``function_call`` from tool spans (``gen_ai.operation.name == "execute_tool"`` and the
  OpenInference / Traceloop equivalents);
* ``generic`` from GenAI agent and workflow spans (``invoke_agent``, ``invoke_workflow``), so
  the model and tool calls inside them have them as parent and an agent run is a tree;
* ``error_traceback`` from any other span that recorded an ``exception`` event.

Everything else (HTTP, database and user spans) maps to None: those spans are kept locally by
the caller, not sent as events.

GenAI instrumentations disagree on where they put things, and the same program may run with
either OpenAI instrumentation, so each field is read from every known shape, newest first:

1. semantic conventions >= 1.37 (``opentelemetry-instrumentation-genai-openai``, and
   ``-openai-v2`` on util-genai >= 1.0): JSON string attributes ``gen_ai.input.messages``,
   ``gen_ai.output.messages`` and ``gen_ai.system_instructions`` whose messages hold typed
   ``parts``; ``gen_ai.provider.name``; ``gen_ai.usage.input_tokens``;
2. the event form of semantic conventions 1.28-1.36 (older ``-openai-v2``): ``gen_ai.system``
   plus span events ``gen_ai.{system,user,assistant,tool}.message`` and ``gen_ai.choice``
   carrying a ``body``; ``gen_ai.usage.prompt_tokens``;
3. the flat Traceloop / OpenLLMetry form ``gen_ai.prompt.N.*`` / ``gen_ai.completion.N.*``;
4. the flat OpenInference form ``llm.input_messages.N.message.*``.

Conversion runs on the export thread for every span, so it must be cheap for the common case
(a span that is not GenAI is rejected after a handful of dict lookups) and must never raise:
attributes may be absent, of the wrong type, malformed JSON, or megabytes long.

This module is the entry point; the work is done by one module per step, all pure (no I/O,
no SDK globals): :mod:`.classify` (which event, if any), :mod:`.envelope` (ids, timing,
metadata), :mod:`.payloads` (one payload per event type), :mod:`.messages` and
:mod:`.output` (the request and response sides of an LLM call), :mod:`.parts` (message
content), :mod:`.values` (attribute values) and :mod:`.pricing` (cost). Spans are read
through :class:`~lucidic_otel.convert.spanlike.SpanLike`, which the SDK's ``ReadableSpan``
satisfies and :class:`~lucidic_otel.convert.spanlike.PlainSpan` implements for callers that
rebuild a span from storage.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional

from lucidic_otel._diagnostics import never_raises, swallow
from lucidic_otel.convert.aliases import llm_attributes
from lucidic_otel.convert.classify import (
    AGENT,
    ERROR_TRACEBACK,
    FUNCTION_CALL,
    GENERIC,
    LLM,
    LLM_GENERATION,
    TOOL,
    classify,
    last_exception,
)
from lucidic_otel.convert.envelope import envelope
from lucidic_otel.convert.payloads import error_payload as _error_payload
from lucidic_otel.convert.payloads import fallback_payload, provider, request_model, usage
from lucidic_otel.convert.payloads import function_payload as _function_payload
from lucidic_otel.convert.payloads import generic_payload as _generic_payload
from lucidic_otel.convert.payloads import llm_payload as _llm_payload
from lucidic_otel.convert.pricing import PriceTable
from lucidic_otel.convert.spanlike import PlainEvent, PlainSpan, SpanIds, SpanLike
from lucidic_otel.convert.values import UNKNOWN

logger = logging.getLogger(__name__)

__all__ = [
    "ERROR_TRACEBACK",
    "FUNCTION_CALL",
    "GENERIC",
    "LLM_GENERATION",
    "UNKNOWN",
    "PlainEvent",
    "PlainSpan",
    "SpanIds",
    "SpanLike",
    "is_llm_span",
    "llm_summary",
    "span_to_event",
]


@never_raises(logger, "classifying a span", default=False)
def is_llm_span(span: SpanLike) -> bool:
    """True for spans that :func:`span_to_event` turns into ``llm_generation`` events.

    Never raises: classification must never break an export.
    """
    return classify(span.attributes or {}) == LLM


@never_raises(logger, "summarising an LLM span", default=None)
def llm_summary(span: SpanLike, prices: Optional[PriceTable] = None) -> Optional[Dict[str, Any]]:
    """Model, provider, tokens and cost of an LLM span, or None for any other span.

    Reads only scalar attributes (no message parsing), so a CLI can list the LLM calls of
    spans that were stored locally without paying for a full conversion. Best-effort: a span
    that cannot be summarised has no summary (None), it never raises.
    """
    attrs = span.attributes or {}
    if classify(attrs) != LLM:
        return None
    attrs = llm_attributes(attrs)
    counts = usage(attrs, prices)
    return {
        "model": request_model(attrs),
        "provider": provider(attrs),
        "input_tokens": counts["input_tokens"],
        "output_tokens": counts["output_tokens"],
        "cost": counts["cost"],
    }


def span_to_event(
    span: SpanLike,
    session_id: str,
    parent_event_id: Optional[str],
    *,
    capture_content: bool = True,
    prices: Optional[PriceTable] = None,
) -> Optional[Dict[str, Any]]:
    """The Lucidic event body for a finished span, or None if the span is not an event.

    The result holds every field of ``POST events`` except ``current_time`` (stamped at send
    time) and the blob fields (decided by the sender from the serialised size). With
    ``capture_content=False`` no prompt, completion, tool-argument or tool-result text is
    kept anywhere; roles, tool names, token counts, cost and model stay, so usage and cost
    dashboards keep working when content capture is switched off.

    Never raises. A span that cannot even be identified gives None; a span whose payload
    cannot be built still gives its event, with a minimal payload whose
    ``misc.conversion_error`` names the failure, rather than losing it.

    Args:
        span: a finished span: an SDK ``ReadableSpan`` or any :class:`SpanLike`.
        session_id: the Lucidic session the event belongs to.
        parent_event_id: the event id of the nearest ancestor span that is an event.
        capture_content: keep message, output and tool argument/result text.
        prices: the price table for ``usage.cost`` (the built-in one when None), loaded once
            by the caller, e.g. the built-in table merged with a ``LUCIDIC_PRICES`` file.

    Examples:
        >>> span_to_event(span, "sess-1", None)["type"]
        'llm_generation'
    """
    # Inline, not split into helpers: this runs for every exported span, and most spans
    # (HTTP, database) leave here after the few dict lookups of classify().
    try:
        attrs = span.attributes or {}
        kind = classify(attrs, span.name)
        exception = None
        if kind is None:
            exception = last_exception(span)
            if exception is None:
                return None
        if span.context is None:
            return None
        event_type = _EVENT_TYPES[kind]
        body = envelope(span, event_type, session_id, parent_event_id)
    except Exception as exc:  # noqa: BLE001 - a span we cannot identify cannot be an event
        swallow(logger, "identifying a span for conversion", exc)
        return None
    try:
        body["payload"] = _payload(span, event_type, attrs, exception, capture_content,
                                   prices)
    except Exception as exc:  # noqa: BLE001 - degrade to a minimal, valid payload
        swallow(logger, "converting a span's payload", exc)
        body["payload"] = fallback_payload(event_type, exc)
    return body


_EVENT_TYPES = {
    LLM: LLM_GENERATION, TOOL: FUNCTION_CALL, AGENT: GENERIC, None: ERROR_TRACEBACK,
}


def _payload(
    span: SpanLike,
    kind: str,
    attrs: Mapping[str, Any],
    exception: Optional[Mapping[str, Any]],
    capture: bool,
    prices: Optional[PriceTable],
) -> Dict[str, Any]:
    # Looked up as module globals at call time, so a test can replace one builder.
    if kind == LLM_GENERATION:
        return _llm_payload(span, attrs, capture, prices)
    if kind == FUNCTION_CALL:
        return _function_payload(span, attrs, capture)
    if kind == GENERIC:
        return _generic_payload(span, attrs, capture)
    return _error_payload(exception or {})
