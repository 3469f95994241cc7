"""The response side of an LLM span: output text, tool calls, thinking and finish reasons.

Shapes are read newest first into one :class:`Output`; the first shape that yields content
wins. Finish reasons read from a shape without content are kept (a refusal or an empty
completion still says why it stopped), so they may come from an earlier shape than the text.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Mapping, Tuple

from lucidic_otel.convert.messages import Flat
from lucidic_otel.convert.parts import Parts, flat_message
from lucidic_otel.convert.spanlike import EventLike
from lucidic_otel.convert.values import (
    Malformed,
    as_items,
    as_str,
    event_body,
    indexed,
    nest,
    parse,
)

logger = logging.getLogger(__name__)

_CHOICE_EVENT = "gen_ai.choice"


class Output:
    """The response, gathered from whichever shape has it; empty means "look further"."""

    __slots__ = ("texts", "tool_calls", "thinking", "finish_reasons")

    def __init__(self) -> None:
        self.texts: List[str] = []
        self.tool_calls: List[Dict[str, Any]] = []
        self.thinking: List[str] = []
        self.finish_reasons: List[str] = []

    def add(self, parts: Parts, finish_reason: Any = None) -> None:
        self.texts.extend(parts.texts)
        self.tool_calls.extend(parts.tool_calls)
        self.thinking.extend(parts.thinking)
        reason = as_str(finish_reason)
        if reason:
            self.finish_reasons.append(reason)

    def __bool__(self) -> bool:
        return bool(self.texts or self.tool_calls or self.thinking)


def read_output(
    events: Iterable[EventLike],
    attrs: Mapping[str, Any],
    flat: Flat,
    unparsed: List[str],
) -> Output:
    """The span's output; names of JSON attributes that did not parse go to ``unparsed``."""
    output = Output()
    _semconv_output(output, attrs.get("gen_ai.output.messages"), unparsed)
    if output:
        return output
    _choice_events(output, events)
    if output:
        return output
    _flat_output(output, flat["gen_ai.completion."], openinference=False)
    if output:
        return output
    _flat_output(output, flat["llm.output_messages."], openinference=True)
    return output


def _semconv_output(output: Output, raw: Any, unparsed: List[str]) -> None:
    """Semantic conventions >= 1.37: ``gen_ai.output.messages``, JSON with typed parts."""
    if raw is None:
        return
    parsed = parse(raw)
    if isinstance(parsed, Malformed):
        unparsed.append("gen_ai.output.messages")
        output.texts.append(parsed.raw)
        return
    if isinstance(parsed, str):
        output.texts.append(parsed)
        return
    for item in as_items(parsed):
        if isinstance(item, Mapping):
            output.add(Parts.of_message(item), item.get("finish_reason"))
        elif isinstance(item, str):
            output.texts.append(item)


def _choice_events(output: Output, events: Iterable[EventLike]) -> None:
    """Semantic conventions 1.28-1.36: ``gen_ai.choice`` span events."""
    for event in events:
        if event.name != _CHOICE_EVENT:
            continue
        body = event_body(event.attributes)
        message = body.get("message")
        if not isinstance(message, Mapping):
            message = body
        parts = Parts.of_message(message)
        parts.add_openai_tool_calls(message.get("tool_calls"))
        output.add(parts, body.get("finish_reason"))


def _flat_output(output: Output, items: List[Tuple[str, Any]], *, openinference: bool) -> None:
    """Traceloop ``gen_ai.completion.N.*`` or OpenInference ``llm.output_messages.N.*``."""
    for node in indexed(nest(items)):
        reason = node.get("finish_reason")
        found = flat_message(node, openinference=openinference)
        if found is not None:
            output.add(found[1], reason)
