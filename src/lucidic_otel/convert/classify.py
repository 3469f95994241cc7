"""What kind of span this is: an LLM call, a tool call, a failure, or none of our business.

Runs for every exported span, so the common case (HTTP, database, user spans) is rejected
after a handful of dict lookups. Agent and workflow spans of the GenAI semantic conventions
(``invoke_agent``, ``invoke_workflow``) classify as :data:`AGENT`: they become ``generic``
events, so what ran inside them has them as parent and an agent run shows as a tree. Other
``gen_ai.*`` spans that are not generations (retrieval, ``create_agent``) classify as None.
OpenInference ``AGENT`` spans and Traceloop ``workflow`` / ``agent`` / ``task`` spans are
:data:`AGENT` too, for the same reason. Of OpenInference's ``CHAIN`` spans only a graph's nodes
are (a LangGraph node: the span named as its ``metadata``'s ``langgraph_node``): every other
LangChain runnable (prompt templates, parsers, lambdas) is a ``CHAIN`` span as well, and one
event for each would bury the run's steps and multiply what is sent.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping, Optional

from opentelemetry.trace import StatusCode

from lucidic_otel.convert.spanlike import SpanLike
from lucidic_otel.convert.values import as_str

logger = logging.getLogger(__name__)

# Event types of the Lucidic backend.
LLM_GENERATION = "llm_generation"
FUNCTION_CALL = "function_call"
ERROR_TRACEBACK = "error_traceback"
GENERIC = "generic"

# Span kinds, as classify() returns them.
LLM = "llm"
TOOL = "tool"
AGENT = "agent"

# gen_ai.operation.name values that are one model call.
_LLM_OPERATIONS = frozenset(
    {"chat", "text_completion", "generate_content", "embeddings", "completion", "embedding"}
)
_AGENT_OPERATIONS = frozenset({"invoke_agent", "invoke_workflow"})
_OPENINFERENCE_LLM_KINDS = frozenset({"LLM", "EMBEDDING"})
# Traceloop's workflows, agents and tasks: steps of a run, so what ran inside has a parent.
_TRACELOOP_AGENT_KINDS = frozenset({"workflow", "agent", "task"})
_EXCEPTION_EVENT = "exception"


def classify(attrs: Mapping[str, Any], name: Optional[str] = None) -> Optional[str]:
    """:data:`LLM`, :data:`TOOL`, :data:`AGENT` or None, from the first convention the span
    speaks. ``name`` (the span's) tells a graph node among OpenInference ``CHAIN`` spans; a
    caller that only asks "is this an LLM call" may leave it out."""
    operation = attrs.get("gen_ai.operation.name")
    if isinstance(operation, str):
        if operation == "execute_tool":
            return TOOL
        if operation in _LLM_OPERATIONS:
            return LLM
        return AGENT if operation in _AGENT_OPERATIONS else None
    openinference_kind = attrs.get("openinference.span.kind")
    if openinference_kind is not None:
        return _openinference(openinference_kind, attrs, name)
    traceloop_kind = attrs.get("traceloop.span.kind")
    if traceloop_kind is not None:
        if traceloop_kind == "tool":
            return TOOL
        return AGENT if traceloop_kind in _TRACELOOP_AGENT_KINDS else None
    return _by_presence(attrs)


def _openinference(value: Any, attrs: Mapping[str, Any], name: Optional[str]) -> Optional[str]:
    kind = str(value).upper()
    if kind == "TOOL":
        return TOOL
    if kind == "AGENT" or (kind == "CHAIN" and _is_graph_node(attrs, name)):
        return AGENT
    return LLM if kind in _OPENINFERENCE_LLM_KINDS else None


def _is_graph_node(attrs: Mapping[str, Any], name: Optional[str]) -> bool:
    """A LangGraph node: OpenInference copies the run's metadata, whose ``langgraph_node`` is
    the node's name. Runnables inside the node inherit that metadata under their own names."""
    metadata = attrs.get("metadata")
    if not name or not isinstance(metadata, str) or "langgraph_node" not in metadata:
        return False
    try:
        parsed = json.loads(metadata)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("langgraph_node") == name


def _by_presence(attrs: Mapping[str, Any]) -> Optional[str]:
    """No kind attribute: older instrumentations only say which system they talked to."""
    if "gen_ai.tool.name" in attrs:
        return TOOL
    if (
        "gen_ai.provider.name" in attrs
        or "gen_ai.system" in attrs
        or "llm.request.type" in attrs
    ):
        return LLM
    return None


def last_exception(span: SpanLike) -> Optional[Mapping[str, Any]]:
    """Attributes of the span's last ``exception`` event, unless the span ended OK anyway."""
    found = None
    for event in span.events:
        if event.name == _EXCEPTION_EVENT:
            found = event.attributes or {}
    if found is None or span.status.status_code is StatusCode.OK:
        return None
    return found


def exception_text(attributes: Mapping[str, Any]) -> Optional[str]:
    """``"Type: message"`` of a recorded exception, or whichever of the two is known."""
    kind = as_str(attributes.get("exception.type"))
    message = as_str(attributes.get("exception.message"))
    if kind and message:
        return f"{kind}: {message}"
    return kind or message
