"""The request messages of an LLM span, from whichever attribute shape holds them.

Shapes are read newest first and the first that yields messages wins (see the list in
:mod:`lucidic_otel.convert.events`): semantic conventions >= 1.37 JSON attributes, then the span
events of 1.28-1.36, then the flat Traceloop and OpenInference attributes.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from lucidic_otel.convert.parts import Parts, flat_message
from lucidic_otel.convert.spanlike import EventLike
from lucidic_otel.convert.values import (
    UNKNOWN,
    Malformed,
    as_items,
    as_str,
    event_body,
    indexed,
    nest,
    parse,
)

logger = logging.getLogger(__name__)

#: Flat attributes by prefix: ``(key after the prefix, value)`` pairs (see ``payloads.scan``).
Flat = Mapping[str, List[Tuple[str, Any]]]

_MESSAGE_EVENT_ROLES = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}


def input_messages(
    events: Iterable[EventLike],
    attrs: Mapping[str, Any],
    flat: Flat,
    unparsed: List[str],
) -> List[Dict[str, Any]]:
    """Lucidic messages of the request; names of JSON attributes that did not parse are
    appended to ``unparsed`` (their raw text is kept as content)."""
    return (
        _semconv_messages(attrs, unparsed)
        or _event_messages(events)
        or _flat_messages(flat["gen_ai.prompt."], openinference=False)
        or _flat_messages(flat["llm.input_messages."], openinference=True)
    )


def message(
    role: Any, parts: Parts, name: Any = None, tool_call_id: Any = None
) -> List[Dict[str, Any]]:
    """Lucidic messages for one source message: tool results each become a ``tool`` message."""
    messages: List[Dict[str, Any]] = []
    if parts.texts or parts.tool_calls or not parts.responses:
        messages.append(_main_message(as_str(role) or UNKNOWN, parts, name, tool_call_id))
    for call_id, content in parts.responses:
        response: Dict[str, Any] = {"role": "tool", "content": content}
        if call_id:
            response["tool_call_id"] = call_id
        messages.append(response)
    return messages


def _main_message(role: str, parts: Parts, name: Any, tool_call_id: Any) -> Dict[str, Any]:
    result: Dict[str, Any] = {
        "role": role,
        "content": "\n".join(parts.texts) if parts.texts else None,
    }
    name_text = as_str(name)
    if name_text:
        result["name"] = name_text
    call_id = as_str(tool_call_id)
    if call_id:
        result["tool_call_id"] = call_id
    if parts.tool_calls:
        result["tool_calls"] = parts.tool_calls
    return result


# ------------------------------------------------------- semantic conventions >= 1.37


def _semconv_messages(attrs: Mapping[str, Any], unparsed: List[str]) -> List[Dict[str, Any]]:
    messages = _semconv_system(attrs.get("gen_ai.system_instructions"), unparsed)
    messages.extend(_semconv_input(attrs.get("gen_ai.input.messages"), unparsed))
    return messages


def _semconv_system(raw: Any, unparsed: List[str]) -> List[Dict[str, Any]]:
    if raw is None:
        return []
    parsed = parse(raw)
    if isinstance(parsed, Malformed):
        unparsed.append("gen_ai.system_instructions")
        return [{"role": "system", "content": parsed.raw}]
    if isinstance(parsed, str):
        return [{"role": "system", "content": parsed}]
    texts = Parts(parsed).texts
    return [{"role": "system", "content": "\n".join(texts)}] if texts else []


def _semconv_input(raw: Any, unparsed: List[str]) -> List[Dict[str, Any]]:
    if raw is None:
        return []
    parsed = parse(raw)
    if isinstance(parsed, Malformed):
        unparsed.append("gen_ai.input.messages")
        return [{"role": UNKNOWN, "content": parsed.raw}]
    if isinstance(parsed, str):
        return [{"role": "user", "content": parsed}]
    messages: List[Dict[str, Any]] = []
    for item in as_items(parsed):
        if isinstance(item, str):
            messages.append({"role": "user", "content": item})
        elif isinstance(item, Mapping):
            messages.extend(message(item.get("role"), Parts.of_message(item), item.get("name")))
    return messages


# -------------------------------------------------- span events (semconv 1.28-1.36)


def _event_messages(events: Iterable[EventLike]) -> List[Dict[str, Any]]:
    messages: List[Dict[str, Any]] = []
    for event in events:
        role = _MESSAGE_EVENT_ROLES.get(event.name)
        if role is None:
            continue
        body = event_body(event.attributes)
        role = as_str(body.get("role")) or role
        parts = Parts(body.get("content"))
        parts.add_openai_tool_calls(body.get("tool_calls"))
        call_id = body.get("id", body.get("tool_call_id")) if role == "tool" else None
        messages.extend(message(role, parts, body.get("name"), call_id))
    return messages


# ------------------------------------------------------ flat Traceloop / OpenInference


def _flat_messages(items: List[Tuple[str, Any]], *, openinference: bool) -> List[Dict[str, Any]]:
    messages: List[Dict[str, Any]] = []
    for node in indexed(nest(items)):
        found: Optional[Tuple[Mapping[str, Any], Parts]] = flat_message(
            node, openinference=openinference
        )
        if found is None:
            continue
        source, parts = found
        messages.extend(
            message(source.get("role"), parts, source.get("name"), source.get("tool_call_id"))
        )
    return messages
