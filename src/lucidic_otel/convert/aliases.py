"""Other conventions' names for facts the semantic conventions name, mapped onto those names.

OpenInference (Arize) and OpenLLMetry (Traceloop) record some facts of an LLM call under their
own attribute names. :func:`llm_attributes` adds the semantic-conventions name for each of them
(never replacing one the span has), so :mod:`.payloads` reads one set of names:

* OpenInference: ``llm.model_name`` / ``embedding.model_name`` is the model that answered (the
  dated one when the response said so); the model asked for is in the JSON
  ``llm.invocation_parameters`` / ``embedding.invocation_parameters``, as is ``stream``;
  ``llm.token_count.prompt_details.cache_read`` / ``cache_write`` and
  ``llm.token_count.completion_details.reasoning`` are the cached and reasoning counts;
  ``llm.finish_reason`` the finish reason;
  OpenInference records no response id, but its JSON ``output.value`` holds the response
  (OpenAI's ``{"id": "chatcmpl-..."}``, LangChain's result with that id in its
  ``response_metadata``): the first provider response id in it is ``gen_ai.response.id``, so
  a framework's span and the client's span of one call join as layers of one call (see
  :mod:`.layers`) even where the framework's span is in another trace;
* OpenLLMetry: ``gen_ai.usage.reasoning_tokens`` and ``gen_ai.is_streaming``.

:func:`tool_attributes` does the same for a tool span: OpenInference's LangChain
instrumentation records a tool's result as the serialised LangChain ``ToolMessage``
(``{"type": "tool", "data": {"content": ..., "tool_call_id": ...}}``), whose content is the
result (``gen_ai.tool.call.result``) and whose ``tool_call_id`` the call's id.

Pure and cheap: a few dict lookups, one JSON parse of the invocation parameters when present.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Tuple

from lucidic_otel.convert.values import as_str, parse, plain

# (semantic-conventions name, other names in order of preference) for values copied as-is.
_SAME_VALUE: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("gen_ai.response.model", ("llm.model_name", "embedding.model_name")),
    ("gen_ai.usage.cache_read.input_tokens", ("llm.token_count.prompt_details.cache_read",)),
    ("gen_ai.usage.cache_creation.input_tokens",
     ("llm.token_count.prompt_details.cache_write",)),
    ("gen_ai.usage.reasoning.output_tokens",
     ("llm.token_count.completion_details.reasoning", "gen_ai.usage.reasoning_tokens")),
    ("gen_ai.request.stream", ("gen_ai.is_streaming", "llm.is_streaming")),
)
_INVOCATION_KEYS = ("llm.invocation_parameters", "embedding.invocation_parameters")
# A provider's response id as a JSON member: OpenAI chat / responses, Anthropic messages.
# Escaped quotes inside a JSON string (model output quoting such text) cannot match.
_RESPONSE_ID = re.compile(r'"id":\s*"((?:chatcmpl-|resp_|msg_)[A-Za-z0-9_-]{1,200})"')


def llm_attributes(attrs: Mapping[str, Any]) -> Dict[str, Any]:
    """``attrs`` as a plain dict (:func:`~lucidic_otel.convert.values.plain`) plus the
    semantic-conventions names of facts only spelled otherwise."""
    attrs = plain(attrs)
    added: Dict[str, Any] = {}
    for name, others in _SAME_VALUE:
        if name in attrs:
            continue
        for other in others:
            value = attrs.get(other)
            if value is not None:
                added[name] = value
                break
    _add_invocation(attrs, added)
    if "gen_ai.response.id" not in attrs and "openinference.span.kind" in attrs:
        _add_response_id(attrs.get("output.value"), added)
    reason = as_str(attrs.get("llm.finish_reason"))
    if reason and "gen_ai.response.finish_reasons" not in attrs:
        added["gen_ai.response.finish_reasons"] = (reason,)
    attrs.update(added)  # our own copy
    return attrs


def _add_invocation(attrs: Mapping[str, Any], added: Dict[str, Any]) -> None:
    """The requested model and ``stream`` from OpenInference's invocation parameters."""
    for key in _INVOCATION_KEYS:
        raw = attrs.get(key)
        if raw is None:
            continue
        invocation = parse(raw)
        if not isinstance(invocation, Mapping):
            return
        model = as_str(invocation.get("model"))
        if model and "gen_ai.request.model" not in attrs:
            added["gen_ai.request.model"] = model
        stream = invocation.get("stream")
        if isinstance(stream, bool) and "gen_ai.request.stream" not in attrs:
            added.setdefault("gen_ai.request.stream", stream)
        return


def _add_response_id(output: Any, added: Dict[str, Any]) -> None:
    """The first provider response id in OpenInference's JSON ``output.value``."""
    if isinstance(output, str):
        found = _RESPONSE_ID.search(output)
        if found is not None:
            added["gen_ai.response.id"] = found.group(1)


def tool_attributes(attrs: Mapping[str, Any]) -> Dict[str, Any]:
    """``attrs`` as a plain dict plus the result and call id of a LangChain ``ToolMessage``
    output."""
    attrs = plain(attrs)
    if "gen_ai.tool.call.result" in attrs or "openinference.span.kind" not in attrs:
        return attrs
    message = parse(attrs.get("output.value"))
    data = message.get("data") if isinstance(message, Mapping) else None
    if not isinstance(data, Mapping) or message.get("type") != "tool" or "content" not in data:
        return attrs
    call_id = as_str(data.get("tool_call_id"))
    if call_id and "gen_ai.tool.call.id" not in attrs:
        attrs["gen_ai.tool.call.id"] = call_id
    attrs["gen_ai.tool.call.result"] = data["content"]  # our own copy
    return attrs
