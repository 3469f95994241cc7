"""Attribute value helpers: whatever an instrumentation wrote -> the few shapes an event holds.

Every helper here is total. Attribute values may be absent, of the wrong type, malformed JSON,
nested without end or megabytes long, and conversion runs on the export thread for every span,
so nothing here raises on odd input, recurses without a bound, or copies a long string just to
look at its first character.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
#: Nesting kept by :func:`jsonable`; deeper values become a marker instead of a recursion error.
MAX_DEPTH = 64
#: "No value" where None is a value.
MISSING: Any = object()
_INF = float("inf")
# A JSON number exactly as RFC 8259 spells it (no NaN, Infinity, leading "+" or zeros).
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_JSON_LITERALS = {"true": True, "false": False, "null": None}
# Longer text is not a number anyone meant (and is not worth the regex).
_MAX_NUMBER_CHARS = 64


class Malformed:
    """A JSON attribute that did not parse; keeps the raw text so nothing is silently lost."""

    __slots__ = ("raw",)

    def __init__(self, raw: str) -> None:
        self.raw = raw


def parse(value: Any) -> Any:
    """JSON text -> Python value; other values pass through; bad JSON -> :class:`Malformed`.

    Only text that looks like JSON (starts with ``[``, ``{`` or ``"``) is decoded, so a plain
    prompt is never mistaken for a number or a boolean.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return Malformed(value.decode("utf-8", "replace"))
    if not isinstance(value, str):
        return value
    if head(value)[:1] not in ("[", "{", '"'):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return Malformed(value)


def head(text: str) -> str:
    """The start of ``text`` without leading blanks, without copying a multi-megabyte string."""
    return text[:256].lstrip()


def as_items(value: Any) -> Sequence[Any]:
    """A JSON value that should be a list: an object counts as a list of one, anything else
    (a scalar, :class:`Malformed`) as an empty list."""
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, (list, tuple)):
        return value
    return ()


def structured(value: Any) -> Any:
    """Tool arguments and results: JSON text decoded (objects, arrays, and text that is
    wholly a JSON number, ``true``, ``false`` or ``null``), anything else kept as is."""
    if value is None:
        return None
    parsed = parse(value)
    if isinstance(parsed, Malformed):
        return parsed.raw
    if isinstance(parsed, (Mapping, list, tuple)):
        return jsonable(parsed)
    if isinstance(value, str):
        return json_scalar(value)
    return jsonable(value)


def json_scalar(text: str) -> Any:
    """``text`` decoded when all of it (blanks aside) is a JSON number, ``true``, ``false``
    or ``null``; otherwise ``text`` itself."""
    if len(text) > _MAX_NUMBER_CHARS:
        return text
    stripped = text.strip()
    if stripped in _JSON_LITERALS:
        return _JSON_LITERALS[stripped]
    if not _JSON_NUMBER.fullmatch(stripped):
        return text
    number = json.loads(stripped)
    return number if not isinstance(number, float) or number not in (_INF, -_INF) else text


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as something ``json.dumps`` accepts: non-finite floats become None, unknown
    objects their ``str``, and nesting deeper than :data:`MAX_DEPTH` a marker."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (_INF, -_INF) else None
    if depth >= MAX_DEPTH:
        return "[nested too deep]"
    return _jsonable_other(value, depth)


def _jsonable_other(value: Any, depth: int) -> Any:
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def to_text(value: Any) -> Optional[str]:
    """Text for a message: strings as they are, bytes decoded, anything else as compact JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        return json.dumps(jsonable(value), ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return str(value)


def as_str(value: Any) -> Optional[str]:
    """A scalar as a non-empty string, or None (for None, "", booleans and containers)."""
    if isinstance(value, str):
        return value or None
    if value is None or isinstance(value, (bool, Mapping, list, tuple)):
        return None
    return str(value)


def plain(attrs: Mapping[str, Any]) -> Dict[str, Any]:
    """A new plain dict of a span's attributes: a copy the caller owns, cheap to read.

    ``get`` on the SDK's read-only view is two Python-level calls (``Mapping.get``, then
    ``__getitem__``); its ``copy`` is one C-level dict copy. An LLM span's conversion reads
    some seventy attributes, so copying first makes it several microseconds cheaper.
    """
    copy = getattr(attrs, "copy", None)
    result = copy() if copy is not None else None
    return result if type(result) is dict else dict(attrs)


def first_str(attrs: Mapping[str, Any], keys: Sequence[str]) -> Optional[str]:
    """The first non-empty string among ``keys`` (conventions listed newest first)."""
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def first_present(attrs: Mapping[str, Any], keys: Sequence[str]) -> Any:
    """The first value among ``keys`` that is not None."""
    for key in keys:
        value = attrs.get(key)
        if value is not None:
            return value
    return None


def first_int(attrs: Mapping[str, Any], keys: Sequence[str]) -> Optional[int]:
    """The first token count among ``keys``; a negative integer stops the search with None."""
    for key in keys:
        count = _count(attrs.get(key))
        if count is not MISSING:
            return count
    return None


def _count(value: Any) -> Any:
    """One attribute as a count: an int >= 0, None for a negative int (a count known to be
    bad), or :data:`MISSING` when the value says nothing and the next key should be read."""
    if isinstance(value, bool) or value is None:
        return MISSING
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value == value and 0 <= value < _INF:
        return int(value)
    if isinstance(value, str):
        # isdigit() accepts "²" and other digits int() rejects: ASCII decimal digits only.
        # A count has at most 20 digits; int() refuses strings of thousands.
        text = value.strip()
        if len(text) <= 20 and text.isascii() and text.isdecimal():
            return int(text)
    return MISSING


def nest(items: Iterable[Tuple[str, Any]]) -> Dict[str, Any]:
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


def indexed(tree: Any) -> List[Mapping[str, Any]]:
    """The mapping children of a :func:`nest` node whose keys are indexes, in index order."""
    if not isinstance(tree, Mapping):
        return []
    keys = sorted((int(k), k) for k in tree if isinstance(k, str) and k.isdigit())
    return [tree[k] for _, k in keys if isinstance(tree[k], Mapping)]


def event_body(attributes: Optional[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The message a span event carries: its ``body`` (semantic conventions 1.28-1.36, JSON or
    plain text) when it has one, else its attributes themselves."""
    attributes = attributes or {}
    body = attributes.get("body", MISSING)
    if body is MISSING:
        return attributes
    parsed = parse(body)
    if isinstance(parsed, Mapping):
        return parsed
    if isinstance(parsed, Malformed):
        return {"content": parsed.raw}
    if isinstance(parsed, str):
        return {"content": parsed}
    return {}
