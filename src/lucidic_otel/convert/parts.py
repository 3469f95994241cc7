"""Message content in any of its spellings, reduced to text, tool calls, tool results, thinking.

The same message reaches us as a semantic-conventions ``parts`` list, an OpenAI ``content``
(a string or a list of typed items), a single part, a JSON string of any of those, or the flat
``...N.content`` / ``...N.tool_calls.M.*`` attributes of Traceloop and OpenInference. Requests
and responses hold the same kinds of content, so :mod:`.messages` and :mod:`.output` both read
it through :class:`Parts`.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from lucidic_otel.convert.values import (
    UNKNOWN,
    as_items,
    as_str,
    first_present,
    head,
    indexed,
    parse,
    structured,
    to_text,
)

logger = logging.getLogger(__name__)


class Parts:
    """The content of one message.

    Non-text parts (images, audio, files) become short placeholders such as
    ``[image blob image/png]``: their bytes are never copied into an event.
    """

    __slots__ = ("texts", "tool_calls", "responses", "thinking")

    def __init__(self, content: Any = None) -> None:
        self.texts: List[str] = []
        self.tool_calls: List[Dict[str, Any]] = []
        self.responses: List[Tuple[Optional[str], Optional[str]]] = []
        self.thinking: List[str] = []
        for part in _content_items(content):
            self.add(part)

    @classmethod
    def of_message(cls, message: Mapping[str, Any]) -> Parts:
        """The parts of a message object: its semconv ``parts``, else its ``content``."""
        parts = message.get("parts")
        return cls(parts if parts is not None else message.get("content"))

    def add(self, part: Any) -> None:
        """One part: a string, a typed mapping, or any other value (kept as JSON text)."""
        if isinstance(part, Mapping):
            self._add_typed(part)
        elif isinstance(part, str):
            self.texts.append(part)
        elif part is not None:
            self.texts.append(to_text(part) or "")

    def _add_typed(self, part: Mapping[str, Any]) -> None:
        kind = part.get("type")
        dispatch = kind
        if kind is None and ("content" in part or "text" in part):
            dispatch = "text"  # an untyped part with text is text
        add = _BY_TYPE.get(dispatch) if isinstance(dispatch, str) else None
        if add is None:
            self.texts.append(placeholder(part, kind))
        else:
            add(self, part)

    def _add_text(self, part: Mapping[str, Any]) -> None:
        text = first_present(part, ("content", "text"))
        if text is not None:
            self.texts.append(to_text(text) or "")

    def _add_refusal(self, part: Mapping[str, Any]) -> None:
        """A refusal is the answer's text (OpenAI's ``refusal`` part, OpenLLMetry's too)."""
        text = to_text(first_present(part, ("content", "refusal", "text")))
        if text:
            self.texts.append(text)

    def _add_typed_text(self, part: Mapping[str, Any]) -> None:
        self.texts.append(to_text(part.get("text")) or "")

    def _add_thinking(self, part: Mapping[str, Any]) -> None:
        text = to_text(first_present(part, ("content", "thinking", "text")))
        if text:
            self.thinking.append(text)

    def _add_tool_call(self, part: Mapping[str, Any]) -> None:
        self.tool_calls.append(tool_call(part.get("id"), part.get("name"), part.get("arguments")))

    def _add_tool_response(self, part: Mapping[str, Any]) -> None:
        self.responses.append((as_str(part.get("id")), to_text(part.get("response"))))

    def add_openai_tool_calls(self, raw: Any) -> None:
        """``tool_calls`` as OpenAI writes them: ``[{id, type, function: {name, arguments}}]``."""
        for call in as_items(parse(raw)):
            if not isinstance(call, Mapping):
                continue
            function = call.get("function")
            if not isinstance(function, Mapping):
                function = call
            self.tool_calls.append(
                tool_call(
                    call.get("id"),
                    function.get("name"),
                    function.get("arguments"),
                    call.get("type"),
                )
            )

    def add_flat_tool_calls(self, tree: Any, *, openinference: bool) -> None:
        """Tool calls from flat attributes, nested by index (see :func:`.values.nest`)."""
        for node in indexed(tree):
            call, function = node, node
            if openinference:
                call = node.get("tool_call")
                if not isinstance(call, Mapping):
                    continue
                function = call.get("function")
                function = function if isinstance(function, Mapping) else {}
            self.tool_calls.append(
                tool_call(call.get("id"), function.get("name"), function.get("arguments"))
            )


_BY_TYPE: Dict[str, Callable[[Parts, Mapping[str, Any]], None]] = {
    "text": Parts._add_text,
    "reasoning": Parts._add_thinking,
    "thinking": Parts._add_thinking,
    "tool_call": Parts._add_tool_call,
    "tool_call_response": Parts._add_tool_response,
    "refusal": Parts._add_refusal,
    "output_text": Parts._add_typed_text,
    "input_text": Parts._add_typed_text,
}


def _content_items(content: Any) -> Sequence[Any]:
    """The parts of a ``content`` value; a string holding a JSON list of parts is decoded."""
    if isinstance(content, str) and head(content).startswith("[{"):
        parsed = parse(content)
        if isinstance(parsed, list):
            return parsed
    if isinstance(content, (list, tuple)):
        return content
    return () if content is None else (content,)


def flat_message(
    node: Mapping[str, Any], *, openinference: bool
) -> Optional[Tuple[Mapping[str, Any], Parts]]:
    """One message of the flat forms, nested by index: the message and its parts.

    Traceloop writes ``gen_ai.prompt.N.{role,content,tool_calls...}``; OpenInference nests one
    level deeper (``llm.input_messages.N.message.{role,content,contents,tool_calls}``). None
    when an OpenInference node holds no message.
    """
    if openinference:
        message = node.get("message")
        if not isinstance(message, Mapping):
            return None
        node = message
    parts = Parts(node.get("content"))
    if openinference:
        for content in indexed(node.get("contents")):
            parts.add(content.get("message_content"))
    parts.add_flat_tool_calls(node.get("tool_calls"), openinference=openinference)
    return node, parts


def placeholder(part: Mapping[str, Any], kind: Any) -> str:
    """A short stand-in for a non-text part: modality, type and mime type, uri or file id."""
    words = [as_str(part.get("modality")), as_str(kind) or "part"]
    detail = part.get("mime_type")
    if kind == "uri":
        detail = part.get("uri")
    elif kind == "file":
        detail = part.get("file_id")
    words.append(as_str(detail))
    return "[" + " ".join(w for w in words if w) + "]"


def tool_call(call_id: Any, name: Any, arguments: Any, kind: Any = None) -> Dict[str, Any]:
    """A Lucidic tool call; arguments decoded from JSON when they are JSON."""
    return {
        "id": as_str(call_id),
        "type": as_str(kind) or "function",
        "name": as_str(name) or UNKNOWN,
        "arguments": structured(arguments),
    }
