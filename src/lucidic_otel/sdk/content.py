"""The one definition of content attributes: the span attributes that carry prompt,
completion or tool text.

Why one list: ``LUCIDIC_CAPTURE_CONTENT=false`` promises that no such text is stored or sent,
and a second, drifting copy of the list would quietly break that promise for the names it
lacks. Matching is by prefix, so indexed forms (``gen_ai.prompt.0.content``,
``llm.input_messages.0.message.content``) are covered too.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping

logger = logging.getLogger(__name__)

CONTENT_ATTRIBUTE_PREFIXES = (
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.prompt",
    "gen_ai.completion",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
    "gen_ai.tool.definitions",
    "input.value",
    "output.value",
    "llm.input_messages",
    "llm.output_messages",
    "llm.prompts",
)


def strip_content(attributes: Mapping[str, Any]) -> Dict[str, Any]:
    """``attributes`` without any prompt/completion/tool text.

    Args:
        attributes: span or span-event attributes.

    Returns:
        A new dict without the keys that start with :data:`CONTENT_ATTRIBUTE_PREFIXES`.
    """
    return {k: v for k, v in attributes.items() if not k.startswith(CONTENT_ATTRIBUTE_PREFIXES)}
