"""Finished OpenTelemetry spans -> Lucidic event bodies.

The backend knows four event types; three of them can be derived from spans:

* ``llm_generation`` from GenAI inference spans (chat, completions, embeddings);
* ``function_call`` from tool spans (``gen_ai.operation.name == "execute_tool"`` and the
  OpenInference / Traceloop equivalents);
* ``error_traceback`` from any other span that recorded an ``exception`` event.

Everything else (HTTP, database, agent and user spans) maps to None: those spans are kept
locally by the caller, not sent as events.

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
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from lucidic_otel.convert.pricing import cost as _price_cost
from lucidic_otel.convert.pricing import price as _price
from lucidic_otel.ids import event_id

logger = logging.getLogger(__name__)

LLM_GENERATION = "llm_generation"
FUNCTION_CALL = "function_call"
ERROR_TRACEBACK = "error_traceback"
UNKNOWN = "unknown"

_LLM = "llm"
_TOOL = "tool"
# gen_ai.operation.name values that are one model call. Agent, workflow and retrieval spans
# carry gen_ai.* attributes too but are not generations.
_LLM_OPERATIONS = frozenset(
    {"chat", "text_completion", "generate_content", "embeddings", "completion", "embedding"}
)
_OPENINFERENCE_LLM_KINDS = frozenset({"LLM", "EMBEDDING"})
_EXCEPTION_EVENT = "exception"
_CHOICE_EVENT = "gen_ai.choice"
_MESSAGE_EVENT_ROLES = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
_INPUT_TOKEN_KEYS = (
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.prompt_tokens",
    "llm.usage.prompt_tokens",
    "llm.token_count.prompt",
)
_OUTPUT_TOKEN_KEYS = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.usage.completion_tokens",
    "llm.token_count.completion",
)
_REQUEST_MODEL_KEYS = ("gen_ai.request.model", "llm.request.model", "llm.model_name")
_RESPONSE_MODEL_KEYS = ("gen_ai.response.model", "llm.response.model", "llm.model_name")
_PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
_TOOL_NAME_KEYS = ("gen_ai.tool.name", "tool.name", "traceloop.entity.name")
_TOOL_ARGUMENT_KEYS = ("gen_ai.tool.call.arguments", "input.value", "traceloop.entity.input")
_TOOL_RESULT_KEYS = ("gen_ai.tool.call.result", "output.value", "traceloop.entity.output")
_REQUEST_PREFIX = "gen_ai.request."
_PARAMS_SKIP = frozenset({"gen_ai.request.model", "gen_ai.request.stream"})
# (attribute, misc key) copied as-is when present; none of them carries content.
_MISC_KEYS = (
    ("gen_ai.response.id", "response_id"),
    ("gen_ai.response.model", "response_model"),
    ("gen_ai.response.time_to_first_chunk", "time_to_first_chunk"),
    ("gen_ai.usage.cache_read.input_tokens", "cache_read_input_tokens"),
    ("gen_ai.usage.cache_creation.input_tokens", "cache_creation_input_tokens"),
    # The same count as semantic conventions >= 1.38 and anthropic's own tracing spell it.
    ("gen_ai.usage.cache_write.input_tokens", "cache_creation_input_tokens"),
    ("gen_ai.usage.reasoning.output_tokens", "reasoning_output_tokens"),
    ("gen_ai.conversation.id", "conversation_id"),
    ("gen_ai.output.type", "output_type"),
    ("openai.api.type", "api_type"),
    ("server.address", "server_address"),
    ("error.type", "error_type"),
)
_MAX_DEPTH = 64
_MISSING = object()


class _Malformed:
    """A JSON attribute that did not parse; keeps the raw text so nothing is silently lost."""

    __slots__ = ("raw",)

    def __init__(self, raw: str) -> None:
        self.raw = raw


# --------------------------------------------------------------------------- public API


def is_llm_span(span: ReadableSpan) -> bool:
    """True for spans that :func:`span_to_event` turns into ``llm_generation`` events."""
    try:
        return _classify(span.attributes or {}) == _LLM
    except Exception:  # classification must never break an export
        return False


def llm_summary(span: ReadableSpan) -> Optional[Dict[str, Any]]:
    """Model, provider, tokens and cost of an LLM span, or None for any other span.

    Reads only scalar attributes (no message parsing), so a CLI can list the LLM calls of
    spans that were stored locally without paying for a full conversion.
    """
    try:
        attrs = span.attributes or {}
        if _classify(attrs) != _LLM:
            return None
        usage = _usage(attrs)
        return {
            "model": _request_model(attrs),
            "provider": _provider(attrs),
            "input_tokens": usage["input_tokens"],
            "output_tokens": usage["output_tokens"],
            "cost": usage["cost"],
        }
    except Exception:  # the summary is best-effort; a broken span just has none
        logger.debug("llm_summary failed for span %r", getattr(span, "name", None), exc_info=True)
        return None


def span_to_event(
    span: ReadableSpan,
    session_id: str,
    parent_event_id: Optional[str],
    *,
    capture_content: bool = True,
) -> Optional[Dict[str, Any]]:
    """The Lucidic event body for a finished span, or None if the span is not an event.

    The result holds every field of ``POST events`` except ``current_time`` (stamped at send
    time) and the blob fields (decided by the sender from the serialised size). With
    ``capture_content=False`` no prompt, completion, tool-argument or tool-result text is
    kept anywhere; roles, tool names, token counts, cost and model stay, so usage and cost
    dashboards keep working when content capture is switched off.
    """
    try:
        attrs = span.attributes or {}
        kind = _classify(attrs)
        if kind is None:
            exception = _last_exception(span)
            if exception is None:
                return None
            event_type = ERROR_TRACEBACK
        else:
            event_type = LLM_GENERATION if kind == _LLM else FUNCTION_CALL
        if span.context is None:
            return None
        body = _base(span, event_type, session_id, parent_event_id)
    except Exception:  # a span we cannot even identify cannot become an event
        logger.debug("cannot convert span %r", getattr(span, "name", None), exc_info=True)
        return None
    try:
        if event_type == LLM_GENERATION:
            body["payload"] = _llm_payload(span, attrs, capture_content)
        elif event_type == FUNCTION_CALL:
            body["payload"] = _function_payload(span, attrs, capture_content)
        else:
            body["payload"] = _error_payload(exception)
    except Exception as exc:  # degrade to a minimal, valid payload rather than lose it
        logger.debug("partial conversion of span %r", getattr(span, "name", None), exc_info=True)
        body["payload"] = _fallback_payload(event_type, attrs, exc)
    return body


# ------------------------------------------------------------------------ classification


def _classify(attrs: Mapping[str, Any]) -> Optional[str]:
    operation = attrs.get("gen_ai.operation.name")
    if isinstance(operation, str):
        if operation == "execute_tool":
            return _TOOL
        return _LLM if operation in _LLM_OPERATIONS else None
    openinference_kind = attrs.get("openinference.span.kind")
    if openinference_kind is not None:
        kind = str(openinference_kind).upper()
        if kind == "TOOL":
            return _TOOL
        return _LLM if kind in _OPENINFERENCE_LLM_KINDS else None
    traceloop_kind = attrs.get("traceloop.span.kind")
    if traceloop_kind is not None:
        return _TOOL if traceloop_kind == "tool" else None
    if "gen_ai.tool.name" in attrs:
        return _TOOL
    if (
        "gen_ai.provider.name" in attrs
        or "gen_ai.system" in attrs
        or "llm.request.type" in attrs
    ):
        return _LLM
    return None


# ---------------------------------------------------------------------------- envelope


def _base(
    span: ReadableSpan, event_type: str, session_id: str, parent_event_id: Optional[str]
) -> Dict[str, Any]:
    trace_id, span_id = span.context.trace_id, span.context.span_id
    start, end = span.start_time, span.end_time
    duration = None
    if isinstance(start, int) and isinstance(end, int) and end >= start:
        duration = (end - start) / 1e9
    return {
        "client_event_id": event_id(trace_id, span_id),
        "client_parent_event_id": parent_event_id,
        "session_id": session_id,
        "type": event_type,
        "occurred_at": _iso(start if isinstance(start, int) else end),
        "duration": duration,
        "tags": [],
        "metadata": _metadata(span, trace_id, span_id),
        "payload": {},
    }


def _iso(ns: Optional[int]) -> str:
    moment = None
    if isinstance(ns, int):
        seconds, rest = divmod(ns, 1_000_000_000)
        try:
            moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            moment = None
        else:
            moment = moment.replace(microsecond=rest // 1000)
    if moment is None:
        moment = datetime.now(timezone.utc)
    return moment.isoformat(timespec="microseconds")


def _metadata(span: ReadableSpan, trace_id: int, span_id: int) -> Dict[str, Any]:
    meta: Dict[str, Any] = {
        "trace_id": f"{trace_id:032x}",
        "span_id": f"{span_id:016x}",
        "span_name": span.name,
    }
    parent = span.parent
    if parent is not None:
        meta["parent_span_id"] = f"{parent.span_id:016x}"
    resource = span.resource
    if resource is not None:
        service = resource.attributes.get("service.name")
        if service is not None:
            meta["service_name"] = str(service)
    scope = span.instrumentation_scope
    if scope is not None:
        meta["scope_name"] = scope.name
        if scope.version:
            meta["scope_version"] = scope.version
    return meta


# -------------------------------------------------------------------------- llm payload


def _llm_payload(span: ReadableSpan, attrs: Mapping[str, Any], capture: bool) -> Dict[str, Any]:
    params, flat = _scan(attrs)
    unparsed: List[str] = []
    messages = _input_messages(span, attrs, flat, unparsed)
    output = _output(span, attrs, flat, unparsed)
    definitions = _tool_definitions(attrs.get("gen_ai.tool.definitions"), capture)
    if definitions:
        params["tools"] = definitions

    tool_calls = output.tool_calls
    response: Dict[str, Any] = {
        "output": "\n".join(output.texts) if output.texts else None,
        "tool_calls": tool_calls,
    }
    if output.thinking:
        response["thinking"] = output.thinking
    if not capture:
        messages = [_without_content(m) for m in messages]
        response = {"output": None, "tool_calls": [_without_arguments(c) for c in tool_calls]}

    payload: Dict[str, Any] = {
        "request": {
            "provider": _provider(attrs),
            "model": _request_model(attrs),
            "messages": messages,
            "params": params,
        },
        "response": response,
        "usage": _usage(attrs),
    }
    error = _error_text(span, attrs)
    if error is not None:
        payload["status"] = "error"
        payload["error"] = error
    misc = _llm_misc(attrs, output.finish_reasons)
    if unparsed:
        misc["unparsed_attributes"] = unparsed
    payload["misc"] = misc
    return payload


def _provider(attrs: Mapping[str, Any]) -> str:
    value = _first_str(attrs, _PROVIDER_KEYS)
    return value.strip().lower() if value and value.strip() else UNKNOWN


def _request_model(attrs: Mapping[str, Any]) -> str:
    return (
        _first_str(attrs, _REQUEST_MODEL_KEYS)
        or _first_str(attrs, _RESPONSE_MODEL_KEYS)
        or UNKNOWN
    )


def _usage(attrs: Mapping[str, Any]) -> Dict[str, Any]:
    input_tokens = _first_int(attrs, _INPUT_TOKEN_KEYS)
    output_tokens = _first_int(attrs, _OUTPUT_TOKEN_KEYS)
    usd = None
    if input_tokens is not None or output_tokens is not None:
        # The response model names the snapshot that was billed; fall back to the request.
        model = _first_str(attrs, _RESPONSE_MODEL_KEYS)
        if _price(model) is None:
            model = _first_str(attrs, _REQUEST_MODEL_KEYS)
        usd = _price_cost(model, input_tokens, output_tokens)
    return {"input_tokens": input_tokens, "output_tokens": output_tokens, "cost": usd}


def _llm_misc(attrs: Mapping[str, Any], finish_from_messages: List[str]) -> Dict[str, Any]:
    misc: Dict[str, Any] = {}
    operation = attrs.get("gen_ai.operation.name")
    if isinstance(operation, str):
        misc["operation"] = operation
    for key, name in _MISC_KEYS:
        value = attrs.get(key)
        if value is not None:
            misc[name] = _jsonable(value)
    finish = attrs.get("gen_ai.response.finish_reasons")
    if isinstance(finish, str):
        misc["finish_reasons"] = [finish]
    elif isinstance(finish, (list, tuple)):
        misc["finish_reasons"] = [str(f) for f in finish]
    elif finish_from_messages:
        misc["finish_reasons"] = finish_from_messages
    stream = attrs.get("gen_ai.request.stream", attrs.get("llm.is_streaming"))
    misc["streaming"] = bool(stream is True or "gen_ai.response.time_to_first_chunk" in attrs)
    return misc


def _scan(attrs: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, List[Tuple[str, Any]]]]:
    """One pass over the attributes: request params, and the flat message keys of shapes 3-4."""
    params: Dict[str, Any] = {}
    flat: Dict[str, List[Tuple[str, Any]]] = {
        "gen_ai.prompt.": [],
        "gen_ai.completion.": [],
        "llm.input_messages.": [],
        "llm.output_messages.": [],
    }
    for key, value in attrs.items():
        if key.startswith(_REQUEST_PREFIX):
            if key not in _PARAMS_SKIP:
                params[key[len(_REQUEST_PREFIX):]] = _jsonable(value)
        elif key.startswith(("gen_ai.prompt.", "gen_ai.completion.", "llm.")):
            for prefix, bucket in flat.items():
                if key.startswith(prefix) and key[len(prefix):len(prefix) + 1].isdigit():
                    bucket.append((key[len(prefix):], value))
                    break
    invocation = _parse(attrs.get("llm.invocation_parameters"))
    if isinstance(invocation, Mapping):
        for key, value in invocation.items():
            if (
                isinstance(key, str)
                and key not in params
                and key not in ("messages", "input", "prompt")
                and isinstance(value, (str, int, float, bool))
            ):
                params[key] = _jsonable(value)
    return params, flat


def _tool_definitions(raw: Any, capture: bool) -> List[Dict[str, Any]]:
    parsed = _parse(raw)
    if isinstance(parsed, Mapping):
        parsed = [parsed]
    if not isinstance(parsed, (list, tuple)):
        return []
    tools = []
    for item in parsed:
        if not isinstance(item, Mapping):
            continue
        function = item.get("function") if isinstance(item.get("function"), Mapping) else item
        tool: Dict[str, Any] = {
            "name": _as_str(function.get("name")) or UNKNOWN,
            "type": _as_str(item.get("type")) or "function",
        }
        if capture:
            if function.get("description") is not None:
                tool["description"] = _jsonable(function.get("description"))
            if function.get("parameters") is not None:
                tool["parameters"] = _jsonable(function.get("parameters"))
        tools.append(tool)
    return tools


# ------------------------------------------------------------------------ input messages


def _input_messages(
    span: ReadableSpan,
    attrs: Mapping[str, Any],
    flat: Mapping[str, List[Tuple[str, Any]]],
    unparsed: List[str],
) -> List[Dict[str, Any]]:
    raw_system = attrs.get("gen_ai.system_instructions")
    raw_messages = attrs.get("gen_ai.input.messages")
    if raw_system is not None or raw_messages is not None:
        messages = _semconv_system(raw_system, unparsed)
        messages.extend(_semconv_input(raw_messages, unparsed))
        if messages:
            return messages
    messages = _event_input(span)
    if messages:
        return messages
    if flat["gen_ai.prompt."]:
        messages = _flat_messages(_nest(flat["gen_ai.prompt."]), openinference=False)
        if messages:
            return messages
    if flat["llm.input_messages."]:
        return _flat_messages(_nest(flat["llm.input_messages."]), openinference=True)
    return []


def _semconv_system(raw: Any, unparsed: List[str]) -> List[Dict[str, Any]]:
    if raw is None:
        return []
    parsed = _parse(raw)
    if isinstance(parsed, _Malformed):
        unparsed.append("gen_ai.system_instructions")
        return [{"role": "system", "content": parsed.raw}]
    if isinstance(parsed, str):
        return [{"role": "system", "content": parsed}]
    texts = _Parts(parsed).texts
    return [{"role": "system", "content": "\n".join(texts)}] if texts else []


def _semconv_input(raw: Any, unparsed: List[str]) -> List[Dict[str, Any]]:
    if raw is None:
        return []
    parsed = _parse(raw)
    if isinstance(parsed, _Malformed):
        unparsed.append("gen_ai.input.messages")
        return [{"role": UNKNOWN, "content": parsed.raw}]
    if isinstance(parsed, str):
        return [{"role": "user", "content": parsed}]
    if isinstance(parsed, Mapping):
        parsed = [parsed]
    if not isinstance(parsed, (list, tuple)):
        return []
    messages: List[Dict[str, Any]] = []
    for item in parsed:
        if isinstance(item, str):
            messages.append({"role": "user", "content": item})
        elif isinstance(item, Mapping):
            parts = item.get("parts")
            if parts is None:
                parts = item.get("content")
            messages.extend(_message(item.get("role"), _Parts(parts), item.get("name")))
    return messages


def _message(
    role: Any, parts: _Parts, name: Any = None, tool_call_id: Any = None
) -> List[Dict[str, Any]]:
    """Lucidic messages for one source message: tool results each become a ``tool`` message."""
    messages: List[Dict[str, Any]] = []
    role_text = _as_str(role) or UNKNOWN
    if parts.texts or parts.tool_calls or not parts.responses:
        message: Dict[str, Any] = {
            "role": role_text,
            "content": "\n".join(parts.texts) if parts.texts else None,
        }
        name_text = _as_str(name)
        if name_text:
            message["name"] = name_text
        call_id = _as_str(tool_call_id)
        if call_id:
            message["tool_call_id"] = call_id
        if parts.tool_calls:
            message["tool_calls"] = parts.tool_calls
        messages.append(message)
    for call_id, content in parts.responses:
        response: Dict[str, Any] = {"role": "tool", "content": content}
        if call_id:
            response["tool_call_id"] = call_id
        messages.append(response)
    return messages


def _event_input(span: ReadableSpan) -> List[Dict[str, Any]]:
    messages: List[Dict[str, Any]] = []
    for event in span.events:
        role = _MESSAGE_EVENT_ROLES.get(event.name)
        if role is None:
            continue
        body = _event_body(event.attributes)
        role = _as_str(body.get("role")) or role
        parts = _Parts(body.get("content"))
        parts.add_openai_tool_calls(body.get("tool_calls"))
        call_id = body.get("id", body.get("tool_call_id")) if role == "tool" else None
        messages.extend(_message(role, parts, body.get("name"), call_id))
    return messages


def _event_body(attributes: Optional[Mapping[str, Any]]) -> Mapping[str, Any]:
    attributes = attributes or {}
    body = attributes.get("body", _MISSING)
    if body is _MISSING:
        return attributes
    parsed = _parse(body)
    if isinstance(parsed, Mapping):
        return parsed
    if isinstance(parsed, _Malformed):
        return {"content": parsed.raw}
    if isinstance(parsed, str):
        return {"content": parsed}
    return {}


def _flat_messages(tree: Mapping[str, Any], *, openinference: bool) -> List[Dict[str, Any]]:
    messages: List[Dict[str, Any]] = []
    for node in _indexed(tree):
        if openinference:
            node = node.get("message")
            if not isinstance(node, Mapping):
                continue
        parts = _Parts(node.get("content"))
        if openinference:
            for content in _indexed(node.get("contents")):
                parts.add(content.get("message_content"))
        parts.add_flat_tool_calls(node.get("tool_calls"), openinference=openinference)
        messages.extend(
            _message(node.get("role"), parts, node.get("name"), node.get("tool_call_id"))
        )
    return messages


# ------------------------------------------------------------------------------- output


class _Output:
    """The response side, gathered from whichever shape has it; empty means "look further"."""

    __slots__ = ("texts", "tool_calls", "thinking", "finish_reasons")

    def __init__(self) -> None:
        self.texts: List[str] = []
        self.tool_calls: List[Dict[str, Any]] = []
        self.thinking: List[str] = []
        self.finish_reasons: List[str] = []

    def add(self, parts: _Parts, finish_reason: Any = None) -> None:
        self.texts.extend(parts.texts)
        self.tool_calls.extend(parts.tool_calls)
        self.thinking.extend(parts.thinking)
        reason = _as_str(finish_reason)
        if reason:
            self.finish_reasons.append(reason)

    def __bool__(self) -> bool:
        return bool(self.texts or self.tool_calls or self.thinking)


def _output(
    span: ReadableSpan,
    attrs: Mapping[str, Any],
    flat: Mapping[str, List[Tuple[str, Any]]],
    unparsed: List[str],
) -> _Output:
    output = _Output()
    raw = attrs.get("gen_ai.output.messages")
    if raw is not None:
        parsed = _parse(raw)
        if isinstance(parsed, _Malformed):
            unparsed.append("gen_ai.output.messages")
            output.texts.append(parsed.raw)
            return output
        if isinstance(parsed, str):
            output.texts.append(parsed)
            return output
        if isinstance(parsed, Mapping):
            parsed = [parsed]
        if isinstance(parsed, (list, tuple)):
            for item in parsed:
                if isinstance(item, Mapping):
                    parts = item.get("parts")
                    if parts is None:
                        parts = item.get("content")
                    output.add(_Parts(parts), item.get("finish_reason"))
                elif isinstance(item, str):
                    output.texts.append(item)
        if output:
            return output
    for event in span.events:
        if event.name != _CHOICE_EVENT:
            continue
        body = _event_body(event.attributes)
        message = body.get("message")
        if not isinstance(message, Mapping):
            message = body
        parts = message.get("parts")
        parts = _Parts(parts if parts is not None else message.get("content"))
        parts.add_openai_tool_calls(message.get("tool_calls"))
        output.add(parts, body.get("finish_reason"))
    if output:
        return output
    for prefix, openinference in (("gen_ai.completion.", False), ("llm.output_messages.", True)):
        if not flat[prefix]:
            continue
        for node in _indexed(_nest(flat[prefix])):
            reason = node.get("finish_reason")
            if openinference:
                node = node.get("message")
                if not isinstance(node, Mapping):
                    continue
            parts = _Parts(node.get("content"))
            if openinference:
                for content in _indexed(node.get("contents")):
                    parts.add(content.get("message_content"))
            parts.add_flat_tool_calls(node.get("tool_calls"), openinference=openinference)
            output.add(parts, reason)
        if output:
            return output
    return output


# -------------------------------------------------------------------------------- parts


class _Parts:
    """Message content in any of the known spellings, reduced to text, tool calls and results.

    Accepts a semconv ``parts`` list, an OpenAI ``content`` (string or list of typed
    items), a single part, or a JSON string of any of those. Non-text parts (images, audio,
    files) become short placeholders such as ``[image blob image/png]``: their bytes are
    never copied into an event.
    """

    __slots__ = ("texts", "tool_calls", "responses", "thinking")

    def __init__(self, content: Any = None) -> None:
        self.texts: List[str] = []
        self.tool_calls: List[Dict[str, Any]] = []
        self.responses: List[Tuple[Optional[str], Optional[str]]] = []
        self.thinking: List[str] = []
        if isinstance(content, str):
            if _head(content).startswith("[{"):
                parsed = _parse(content)
                if isinstance(parsed, list):
                    content = parsed
        if isinstance(content, (list, tuple)):
            for part in content:
                self.add(part)
        elif content is not None:
            self.add(content)

    def add(self, part: Any) -> None:
        if isinstance(part, str):
            self.texts.append(part)
            return
        if not isinstance(part, Mapping):
            if part is not None:
                self.texts.append(_to_text(part) or "")
            return
        kind = part.get("type")
        if kind == "text" or (kind is None and ("content" in part or "text" in part)):
            text = part.get("content", part.get("text"))
            if text is not None:
                self.texts.append(_to_text(text) or "")
        elif kind in ("reasoning", "thinking"):
            text = _to_text(part.get("content", part.get("thinking", part.get("text"))))
            if text:
                self.thinking.append(text)
        elif kind == "tool_call":
            self.tool_calls.append(
                _tool_call(part.get("id"), part.get("name"), part.get("arguments"))
            )
        elif kind == "tool_call_response":
            self.responses.append((_as_str(part.get("id")), _to_text(part.get("response"))))
        elif kind == "output_text" or kind == "input_text":
            self.texts.append(_to_text(part.get("text")) or "")
        else:
            self.texts.append(_placeholder(part, kind))

    def add_openai_tool_calls(self, raw: Any) -> None:
        """``tool_calls`` as OpenAI writes them: ``[{id, type, function: {name, arguments}}]``."""
        calls = _parse(raw)
        if isinstance(calls, Mapping):
            calls = [calls]
        if not isinstance(calls, (list, tuple)):
            return
        for call in calls:
            if not isinstance(call, Mapping):
                continue
            function = call.get("function")
            if not isinstance(function, Mapping):
                function = call
            self.tool_calls.append(
                _tool_call(
                    call.get("id"),
                    function.get("name"),
                    function.get("arguments"),
                    call.get("type"),
                )
            )

    def add_flat_tool_calls(self, tree: Any, *, openinference: bool) -> None:
        for node in _indexed(tree):
            call, function = node, node
            if openinference:
                call = node.get("tool_call")
                if not isinstance(call, Mapping):
                    continue
                function = call.get("function")
                function = function if isinstance(function, Mapping) else {}
            self.tool_calls.append(
                _tool_call(call.get("id"), function.get("name"), function.get("arguments"))
            )


def _placeholder(part: Mapping[str, Any], kind: Any) -> str:
    words = [_as_str(part.get("modality")), _as_str(kind) or "part"]
    detail = part.get("mime_type")
    if kind == "uri":
        detail = part.get("uri")
    elif kind == "file":
        detail = part.get("file_id")
    words.append(_as_str(detail))
    return "[" + " ".join(w for w in words if w) + "]"


def _tool_call(call_id: Any, name: Any, arguments: Any, kind: Any = None) -> Dict[str, Any]:
    return {
        "id": _as_str(call_id),
        "type": _as_str(kind) or "function",
        "name": _as_str(name) or UNKNOWN,
        "arguments": _structured(arguments),
    }


def _without_content(message: Dict[str, Any]) -> Dict[str, Any]:
    stripped = dict(message)
    stripped["content"] = None
    if "tool_calls" in stripped:
        stripped["tool_calls"] = [_without_arguments(c) for c in stripped["tool_calls"]]
    return stripped


def _without_arguments(call: Dict[str, Any]) -> Dict[str, Any]:
    return {key: value for key, value in call.items() if key != "arguments"}


# --------------------------------------------------------------------- function payload


def _function_payload(
    span: ReadableSpan, attrs: Mapping[str, Any], capture: bool
) -> Dict[str, Any]:
    name = _first_str(attrs, _TOOL_NAME_KEYS)
    if not name:
        span_name = span.name or ""
        name = span_name[len("execute_tool "):] if span_name.startswith("execute_tool ") else ""
    payload: Dict[str, Any] = {
        "function_name": name or UNKNOWN,
        "arguments": None,
        "return_value": None,
    }
    if capture:
        payload["arguments"] = _structured(_first_present(attrs, _TOOL_ARGUMENT_KEYS))
        payload["return_value"] = _structured(_first_present(attrs, _TOOL_RESULT_KEYS))
    error = _error_text(span, attrs)
    if error is not None:
        payload["error"] = error
    misc: Dict[str, Any] = {}
    for key, misc_key in (
        ("gen_ai.tool.call.id", "tool_call_id"),
        ("gen_ai.tool.type", "tool_type"),
        ("error.type", "error_type"),
    ):
        value = _as_str(attrs.get(key))
        if value:
            misc[misc_key] = value
    if capture:
        description = _as_str(attrs.get("gen_ai.tool.description", attrs.get("tool.description")))
        if description:
            misc["description"] = description
    if misc:
        payload["misc"] = misc
    return payload


# ------------------------------------------------------------------------ error payloads


def _last_exception(span: ReadableSpan) -> Optional[Mapping[str, Any]]:
    """Attributes of the span's last ``exception`` event, unless the span ended OK anyway."""
    found = None
    for event in span.events:
        if event.name == _EXCEPTION_EVENT:
            found = event.attributes or {}
    if found is None or span.status.status_code is StatusCode.OK:
        return None
    return found


def _exception_text(attributes: Mapping[str, Any]) -> Optional[str]:
    kind = _as_str(attributes.get("exception.type"))
    message = _as_str(attributes.get("exception.message"))
    if kind and message:
        return f"{kind}: {message}"
    return kind or message


def _error_text(span: ReadableSpan, attrs: Mapping[str, Any]) -> Optional[str]:
    """Why the span failed, or None if it did not."""
    exception = _last_exception(span)
    if exception is None and span.status.status_code is not StatusCode.ERROR:
        return None
    return (
        _as_str(span.status.description)
        or (_exception_text(exception) if exception is not None else None)
        or _as_str(attrs.get("error.type"))
        or "error"
    )


def _error_payload(exception: Mapping[str, Any]) -> Dict[str, Any]:
    return {
        "error": _exception_text(exception) or "error",
        "traceback": _to_text(exception.get("exception.stacktrace")) or "",
    }


def _fallback_payload(event_type: str, attrs: Mapping[str, Any], exc: Exception) -> Dict[str, Any]:
    note = {"conversion_error": type(exc).__name__}
    if event_type == LLM_GENERATION:
        return {
            "request": {"provider": UNKNOWN, "model": UNKNOWN, "messages": [], "params": {}},
            "response": {"output": None, "tool_calls": []},
            "usage": {"input_tokens": None, "output_tokens": None, "cost": None},
            "misc": note,
        }
    if event_type == FUNCTION_CALL:
        return {"function_name": UNKNOWN, "arguments": None, "return_value": None, "misc": note}
    return {"error": "error", "traceback": "", "misc": note}


# ---------------------------------------------------------------------- value helpers


def _parse(value: Any) -> Any:
    """JSON text -> Python value; other values pass through; bad JSON -> :class:`_Malformed`."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return _Malformed(value.decode("utf-8", "replace"))
    if not isinstance(value, str):
        return value
    if _head(value)[:1] not in ("[", "{", '"'):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return _Malformed(value)


def _head(text: str) -> str:
    """The start of ``text`` without leading blanks, without copying a multi-megabyte string."""
    return text[:256].lstrip()


def _structured(value: Any) -> Any:
    """Tool arguments and results: JSON objects/arrays decoded, anything else kept as is."""
    if value is None:
        return None
    parsed = _parse(value)
    if isinstance(parsed, _Malformed):
        return parsed.raw
    if isinstance(parsed, (Mapping, list, tuple)):
        return _jsonable(parsed)
    if isinstance(value, str):
        return value
    return _jsonable(value)


def _jsonable(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if depth >= _MAX_DEPTH:
        return "[nested too deep]"
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _to_text(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        return json.dumps(_jsonable(value), ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return str(value)


def _as_str(value: Any) -> Optional[str]:
    if isinstance(value, str):
        return value or None
    if value is None or isinstance(value, (bool, Mapping, list, tuple)):
        return None
    return str(value)


def _first_str(attrs: Mapping[str, Any], keys: Sequence[str]) -> Optional[str]:
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _first_present(attrs: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        value = attrs.get(key)
        if value is not None:
            return value
    return None


def _first_int(attrs: Mapping[str, Any], keys: Sequence[str]) -> Optional[int]:
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            return value if value >= 0 else None
        if isinstance(value, float) and value == value and 0 <= value < float("inf"):
            return int(value)
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
    return None


def _nest(items: Iterable[Tuple[str, Any]]) -> Dict[str, Any]:
    """``[("0.role", "user"), ("0.tool_calls.1.name", "f")]`` -> nested dicts keyed by segment."""
    root: Dict[str, Any] = {}
    for path, value in items:
        node = root
        segments = path.split(".")
        for segment in segments[:-1]:
            child = node.get(segment)
            if not isinstance(child, dict):
                child = {}
                node[segment] = child
            node = child
        if not isinstance(node.get(segments[-1]), dict):
            node[segments[-1]] = value
    return root


def _indexed(tree: Any) -> List[Mapping[str, Any]]:
    """The mapping children of a :func:`_nest` node whose keys are indexes, in index order."""
    if not isinstance(tree, Mapping):
        return []
    keys = sorted((int(k), k) for k in tree if isinstance(k, str) and k.isdigit())
    return [tree[k] for _, k in keys if isinstance(tree[k], Mapping)]
