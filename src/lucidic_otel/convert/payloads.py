"""The ``payload`` of each event type the backend knows, built from a classified span.

With ``capture=False`` no prompt, completion, tool-argument or tool-result text is kept
anywhere; roles, tool names, token counts, cost and model stay, so usage and cost dashboards
keep working when content capture is switched off.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

from opentelemetry.trace import StatusCode

from lucidic_otel.convert.aliases import llm_attributes, tool_attributes
from lucidic_otel.convert.classify import (
    FUNCTION_CALL,
    GENERIC,
    LLM_GENERATION,
    exception_text,
    last_exception,
)
from lucidic_otel.convert.messages import input_messages
from lucidic_otel.convert.output import Output, read_output
from lucidic_otel.convert.pricing import PriceTable, price
from lucidic_otel.convert.pricing import cost as price_cost
from lucidic_otel.convert.spanlike import SpanLike
from lucidic_otel.convert.values import (
    UNKNOWN,
    as_items,
    as_str,
    first_int,
    first_present,
    first_str,
    jsonable,
    parse,
    structured,
    to_text,
)

logger = logging.getLogger(__name__)

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
_CACHE_READ_KEYS = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "llm.token_count.prompt_details.cache_read",
)
_CACHE_WRITE_KEYS = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_write.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "llm.token_count.prompt_details.cache_write",
)
_REQUEST_MODEL_KEYS = ("gen_ai.request.model", "llm.request.model", "llm.model_name")
_RESPONSE_MODEL_KEYS = ("gen_ai.response.model", "llm.response.model", "llm.model_name")
_PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
_TOOL_NAME_KEYS = ("gen_ai.tool.name", "tool.name", "traceloop.entity.name")
_TOOL_ARGUMENT_KEYS = ("gen_ai.tool.call.arguments", "input.value", "traceloop.entity.input")
_TOOL_RESULT_KEYS = ("gen_ai.tool.call.result", "output.value", "traceloop.entity.output")
_TOOL_MISC_KEYS = (
    ("gen_ai.tool.call.id", "tool_call_id"),
    ("gen_ai.tool.type", "tool_type"),
    ("error.type", "error_type"),
)
_EXECUTE_TOOL = "execute_tool "
_REQUEST_PREFIX = "gen_ai.request."
_PARAMS_SKIP = frozenset({"gen_ai.request.model", "gen_ai.request.stream"})
# The model and stream flag are request.model and misc.streaming, as for the gen_ai names.
_INVOCATION_SKIP = frozenset({"messages", "input", "prompt", "model", "stream"})
# Flat message attributes (shapes 3-4), gathered by prefix in one pass over the attributes.
_FLAT_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.", "llm.input_messages.",
                  "llm.output_messages.")
_FLAT_STARTS = ("gen_ai.prompt.", "gen_ai.completion.", "llm.")
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


# --------------------------------------------------------------------------- llm_generation


def llm_payload(
    span: SpanLike,
    attrs: Mapping[str, Any],
    capture: bool,
    prices: Optional[PriceTable] = None,
) -> Dict[str, Any]:
    """The ``llm_generation`` payload: request, response, usage, status and misc.

    A failed call with no reported usage counts 0 tokens (not null), as the official SDK
    sends it; its cost stays null.
    """
    attrs = llm_attributes(attrs)
    params, flat = scan(attrs)
    unparsed: List[str] = []
    messages = input_messages(span.events, attrs, flat, unparsed)
    output = read_output(span.events, attrs, flat, unparsed)
    definitions = tool_definitions(attrs.get("gen_ai.tool.definitions"), capture)
    if definitions:
        params["tools"] = definitions
    if not capture:
        messages = [without_content(m) for m in messages]
    payload: Dict[str, Any] = {
        "request": {
            "provider": provider(attrs),
            "model": request_model(attrs),
            "messages": messages,
            "params": params,
        },
        "response": _response(output, capture),
        "usage": usage(attrs, prices),
    }
    error = error_text(span, attrs)
    if error is not None:
        payload["status"] = "error"
        payload["error"] = error
        counts = payload["usage"]
        for key in ("input_tokens", "output_tokens"):
            if counts[key] is None:
                counts[key] = 0
    misc = _llm_misc(attrs, output.finish_reasons)
    if unparsed:
        misc["unparsed_attributes"] = unparsed
    payload["misc"] = misc
    return payload


def _response(output: Output, capture: bool) -> Dict[str, Any]:
    if not capture:
        return {"output": None, "tool_calls": [without_arguments(c) for c in output.tool_calls]}
    text = None
    texts = output.texts
    if output.tool_calls:  # an empty text part next to tool calls says nothing
        texts = [t for t in texts if t]
    if texts:
        text = "\n".join(texts)
    elif output.tool_calls:
        text = tool_calls_text(output.tool_calls)
    response: Dict[str, Any] = {"output": text, "tool_calls": output.tool_calls}
    if output.thinking:
        response["thinking"] = output.thinking
    return response


def tool_calls_text(calls: List[Dict[str, Any]]) -> str:
    """The readable output of an answer that is only tool calls, as the official SDK writes
    it: each call's ``{"name", "arguments"}`` as indented JSON, one after the other."""
    return "\n".join(
        json.dumps({"name": call.get("name"), "arguments": call.get("arguments")},
                   indent=4, ensure_ascii=False, default=str)
        for call in calls
    )


def provider(attrs: Mapping[str, Any]) -> str:
    """The provider, lower-cased (``openai``, ``anthropic``...), or ``unknown``."""
    value = first_str(attrs, _PROVIDER_KEYS)
    return value.strip().lower() if value and value.strip() else UNKNOWN


def request_model(attrs: Mapping[str, Any]) -> str:
    """``request.model``: the model that answered (the dated ``gen_ai.response.model``, as the
    official SDK reports it) when the span has it, else the model asked for.

    The model asked for, when it differs, is in ``misc.request_model``.
    """
    return (
        first_str(attrs, _RESPONSE_MODEL_KEYS)
        or first_str(attrs, _REQUEST_MODEL_KEYS)
        or UNKNOWN
    )


def usage(attrs: Mapping[str, Any], prices: Optional[PriceTable] = None) -> Dict[str, Any]:
    """Token counts and their estimated cost (None when no count or no price is known).

    Cached input tokens (cache reads and writes, part of the input count) are billed at their
    own rates; reasoning tokens are part of the output count and billed as output.
    """
    input_tokens = first_int(attrs, _INPUT_TOKEN_KEYS)
    output_tokens = first_int(attrs, _OUTPUT_TOKEN_KEYS)
    usd = None
    if input_tokens is not None or output_tokens is not None:
        # The response model names the snapshot that was billed; fall back to the request.
        model = first_str(attrs, _RESPONSE_MODEL_KEYS)
        if price(model, prices) is None:
            model = first_str(attrs, _REQUEST_MODEL_KEYS)
        usd = price_cost(model, input_tokens, output_tokens,
                         first_int(attrs, _CACHE_READ_KEYS),
                         first_int(attrs, _CACHE_WRITE_KEYS), table=prices)
    return {"input_tokens": input_tokens, "output_tokens": output_tokens, "cost": usd}


def _llm_misc(attrs: Mapping[str, Any], finish_from_messages: List[str]) -> Dict[str, Any]:
    misc: Dict[str, Any] = {}
    operation = attrs.get("gen_ai.operation.name")
    if isinstance(operation, str):
        misc["operation"] = operation
    for key, name in _MISC_KEYS:
        value = attrs.get(key)
        if value is not None:
            misc[name] = jsonable(value)
    asked = first_str(attrs, _REQUEST_MODEL_KEYS)
    if asked and asked != misc.get("response_model", asked):
        misc["request_model"] = asked
    finish = _finish_reasons(attrs.get("gen_ai.response.finish_reasons"), finish_from_messages)
    if finish is not None:
        misc["finish_reasons"] = finish
    stream = attrs.get("gen_ai.request.stream", attrs.get("llm.is_streaming"))
    misc["streaming"] = bool(stream is True or "gen_ai.response.time_to_first_chunk" in attrs)
    return misc


def _finish_reasons(attribute: Any, from_messages: List[str]) -> Optional[List[str]]:
    """The span attribute when it is set (even to an empty list), else the messages'."""
    if isinstance(attribute, str):
        return [attribute]
    if isinstance(attribute, (list, tuple)):
        return [str(f) for f in attribute]
    return from_messages or None


def scan(attrs: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, List[Tuple[str, Any]]]]:
    """One pass over the attributes: request params, and the flat message keys of shapes 3-4."""
    params: Dict[str, Any] = {}
    flat: Dict[str, List[Tuple[str, Any]]] = {prefix: [] for prefix in _FLAT_PREFIXES}
    for key, value in attrs.items():
        if key.startswith(_REQUEST_PREFIX):
            if key not in _PARAMS_SKIP:
                params[key[len(_REQUEST_PREFIX):]] = jsonable(value)
        elif key.startswith(_FLAT_STARTS):
            _add_flat(flat, key, value)
    _add_invocation_params(params, attrs.get("llm.invocation_parameters"))
    return params, flat


def _add_flat(flat: Dict[str, List[Tuple[str, Any]]], key: str, value: Any) -> None:
    for prefix, bucket in flat.items():
        if key.startswith(prefix) and key[len(prefix):len(prefix) + 1].isdigit():
            bucket.append((key[len(prefix):], value))
            return


def _add_invocation_params(params: Dict[str, Any], raw: Any) -> None:
    """OpenInference's ``llm.invocation_parameters`` (JSON): scalar params not already set."""
    invocation = parse(raw)
    if not isinstance(invocation, Mapping):
        return
    for key, value in invocation.items():
        if (
            isinstance(key, str)
            and key not in params
            and key not in _INVOCATION_SKIP
            and isinstance(value, (str, int, float, bool))
        ):
            params[key] = jsonable(value)


def tool_definitions(raw: Any, capture: bool) -> List[Dict[str, Any]]:
    """``gen_ai.tool.definitions``: name and type always, description and schema with content."""
    return [
        _tool_definition(item, capture)
        for item in as_items(parse(raw))
        if isinstance(item, Mapping)
    ]


def _tool_definition(item: Mapping[str, Any], capture: bool) -> Dict[str, Any]:
    function = item.get("function") if isinstance(item.get("function"), Mapping) else item
    tool: Dict[str, Any] = {
        "name": as_str(function.get("name")) or UNKNOWN,
        "type": as_str(item.get("type")) or "function",
    }
    if capture:
        for key in ("description", "parameters"):
            value = function.get(key)
            if value is not None:
                tool[key] = jsonable(value)
    return tool


def without_content(message: Dict[str, Any]) -> Dict[str, Any]:
    """A message with its text and its tool calls' arguments removed."""
    stripped = dict(message)
    stripped["content"] = None
    if "tool_calls" in stripped:
        stripped["tool_calls"] = [without_arguments(c) for c in stripped["tool_calls"]]
    return stripped


def without_arguments(call: Dict[str, Any]) -> Dict[str, Any]:
    """A tool call without its arguments."""
    return {key: value for key, value in call.items() if key != "arguments"}


# ---------------------------------------------------------------------------- function_call


def function_payload(span: SpanLike, attrs: Mapping[str, Any], capture: bool) -> Dict[str, Any]:
    """The ``function_call`` payload: tool name, arguments and result (with content), error."""
    attrs = tool_attributes(attrs)
    payload: Dict[str, Any] = {
        "function_name": _function_name(span, attrs),
        "arguments": None,
        "return_value": None,
    }
    if capture:
        payload["arguments"] = structured(first_present(attrs, _TOOL_ARGUMENT_KEYS))
        payload["return_value"] = structured(first_present(attrs, _TOOL_RESULT_KEYS))
    error = error_text(span, attrs)
    if error is not None:
        payload["error"] = error
    misc = _function_misc(attrs, capture)
    if misc:
        payload["misc"] = misc
    return payload


def _function_name(span: SpanLike, attrs: Mapping[str, Any]) -> str:
    name = first_str(attrs, _TOOL_NAME_KEYS)
    if not name:
        span_name = span.name or ""
        name = span_name[len(_EXECUTE_TOOL):] if span_name.startswith(_EXECUTE_TOOL) else ""
    return name or UNKNOWN


def _function_misc(attrs: Mapping[str, Any], capture: bool) -> Dict[str, Any]:
    misc: Dict[str, Any] = {}
    for key, misc_key in _TOOL_MISC_KEYS:
        value = as_str(attrs.get(key))
        if value:
            misc[misc_key] = value
    if capture:
        description = as_str(attrs.get("gen_ai.tool.description", attrs.get("tool.description")))
        if description:
            misc["description"] = description
    return misc


# ---------------------------------------------------------------------------------- generic

# (attribute, misc key) of an agent or workflow span; none of them carries content.
_AGENT_MISC_KEYS = (
    ("gen_ai.agent.name", "agent_name"),
    ("gen_ai.agent.id", "agent_id"),
    ("gen_ai.workflow.name", "workflow_name"),
    ("gen_ai.conversation.id", "conversation_id"),
    ("gen_ai.provider.name", "provider"),
    ("gen_ai.request.model", "request_model"),
    ("error.type", "error_type"),
)
_AGENT_NAMES = {"invoke_agent": ("Agent", "gen_ai.agent.name"),
                "invoke_workflow": ("Workflow", "gen_ai.workflow.name")}
# OpenInference and Traceloop span kinds of agent steps: the label, and the attribute naming it.
_KIND_KEYS = ("openinference.span.kind", "traceloop.span.kind")
_KIND_LABELS = {"agent": "Agent", "chain": "Chain", "workflow": "Workflow", "task": "Task"}


def generic_payload(span: SpanLike, attrs: Mapping[str, Any], capture: bool) -> Dict[str, Any]:
    """The ``generic`` payload of an agent or workflow span: ``details`` names it (``Agent
    weather_agent``, ``Workflow Agent workflow``), ``misc`` keeps its ``gen_ai.*`` identity
    (agent and workflow name, ids, conversation) and, when it failed, the error."""
    operation = as_str(attrs.get("gen_ai.operation.name")) or ""
    kind = None if operation else first_str(attrs, _KIND_KEYS)
    details = _step_details(span, attrs, operation, kind)
    misc: Dict[str, Any] = {"operation": operation} if operation else {}
    if kind is not None:
        misc["span_kind"] = kind
    for key, misc_key in _AGENT_MISC_KEYS:
        value = as_str(attrs.get(key))
        if value:
            misc[misc_key] = value
    if capture:
        description = as_str(attrs.get("gen_ai.agent.description"))
        if description:
            misc["description"] = description
    error = _generic_error(span, attrs, misc)
    if error is not None:
        details = f"{details} failed: {error}"
    return {"details": details, "misc": misc}


def _step_details(
    span: SpanLike, attrs: Mapping[str, Any], operation: str, kind: Optional[str]
) -> str:
    """``Agent planner``: the step's label (from its operation or span kind) and name."""
    label, name_key = _AGENT_NAMES.get(operation, ("Step", "gen_ai.agent.name"))
    if kind is not None:
        label, name_key = _KIND_LABELS.get(kind.lower(), "Step"), "traceloop.entity.name"
    name = as_str(attrs.get(name_key)) or _name_after_operation(span.name or "", operation)
    return f"{label} {name}" if name else label


def _generic_error(span: SpanLike, attrs: Mapping[str, Any], misc: Dict[str, Any]) -> Optional[str]:
    """Why an agent or workflow span failed (also put in ``misc`` with its traceback)."""
    error = error_text(span, attrs)
    if error is None:
        return None
    misc["error"] = error
    exception = last_exception(span)
    trace = to_text(exception.get("exception.stacktrace")) if exception else None
    if trace:
        misc["traceback"] = trace
    return error


def _name_after_operation(span_name: str, operation: str) -> str:
    """``invoke_agent planner`` -> ``planner``; a span name without the prefix as it is."""
    prefix = operation + " "
    return span_name[len(prefix):] if operation and span_name.startswith(prefix) else span_name


# ------------------------------------------------------------------------------------ errors


def error_text(span: SpanLike, attrs: Mapping[str, Any]) -> Optional[str]:
    """Why the span failed, or None if it did not."""
    exception = last_exception(span)
    if exception is None and span.status.status_code is not StatusCode.ERROR:
        return None
    return (
        as_str(span.status.description)
        or (exception_text(exception) if exception is not None else None)
        or as_str(attrs.get("error.type"))
        or "error"
    )


def error_payload(exception: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``error_traceback`` payload of a span that recorded an exception."""
    return {
        "error": exception_text(exception) or "error",
        "traceback": to_text(exception.get("exception.stacktrace")) or "",
    }


def fallback_payload(event_type: str, exc: Exception) -> Dict[str, Any]:
    """A minimal valid payload for a span whose conversion failed: the event is kept, and
    ``misc.conversion_error`` says it is incomplete."""
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
    if event_type == GENERIC:
        return {"details": UNKNOWN, "misc": note}
    return {"error": "error", "traceback": "", "misc": note}
