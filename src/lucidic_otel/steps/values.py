"""Tool arguments and results as bounded JSON: what a span attribute can carry without
copying a document into every exporter's queue, and without ever raising on an odd object."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import json
import logging
import pathlib
import uuid
from typing import (
    Any,
    Dict,
    List,
    Optional,
    Tuple,
)

logger = logging.getLogger(__name__)

#: Upper bound (characters) of one recorded arguments or result JSON value. Tool results can be
#: whole documents; a span attribute (and the event built from it) should show what happened,
#: not copy a multi-megabyte payload into every exporter's queue.
MAX_VALUE_CHARS = 32 * 1024
#: How many yielded items of a generator are recorded as its result (the rest are counted).
MAX_ITEMS = 100
_MAX_DEPTH = 16
#: "not given" (None is a value a step may have as its arguments).
_NOTHING = object()


# ------------------------------------------------------------------------------ values


class _Budget:
    """What is left of :data:`MAX_VALUE_CHARS` while one value is converted.

    Spending as we go (instead of serialising everything and cutting the text) keeps the JSON
    valid and the cost proportional to what is kept, even for a list of a million rows.
    """

    __slots__ = ("left",)

    def __init__(self, chars: int) -> None:
        self.left = chars

    def spend(self, chars: int) -> None:
        self.left -= chars


def _safe_repr(value: Any, budget: _Budget) -> str:
    """``repr`` of a user object, bounded; a ``__repr__`` that raises is the object's problem."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - user code; the value is shown by its type instead
        text = f"<{type(value).__qualname__} object>"
    return _bounded_text(text, budget)


def _bounded_text(text: str, budget: _Budget) -> str:
    keep = max(budget.left, 0)
    budget.spend(len(text) + 2)
    if len(text) <= keep:
        return text
    return f"{text[:keep]}...[{len(text) - keep} more chars]"


def _plain(value: Any, budget: _Budget, depth: int, seen: Tuple[int, ...]) -> Any:
    """``value`` as JSON-ready data of bounded size; never iterates anything lazy.

    Only real containers (dict, list, tuple, set, frozenset) are walked: iterating an
    arbitrary iterable could consume it (a generator argument, a file, a cursor), which is the
    bug the official SDK has. Everything else is described: a pydantic model by its dump, a
    dataclass by its fields, an enum by its value, well-known scalars by ``str``, the rest by
    ``repr``.
    """
    if value is None or isinstance(value, (bool, int)):
        budget.spend(6)
        return value
    if isinstance(value, float):
        budget.spend(24)
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, str):
        return _bounded_text(value, budget)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _bounded_text(bytes(value[:max(budget.left, 0) + 1]).decode("utf-8", "replace"),
                             budget)
    if depth >= _MAX_DEPTH:
        return "[nested too deep]"
    if id(value) in seen:
        return "[circular reference]"
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        return _container(value, budget, depth, (*seen, id(value)))
    return _described(value, budget, depth, (*seen, id(value)))


def _container(value: Any, budget: _Budget, depth: int, seen: Tuple[int, ...]) -> Any:
    if isinstance(value, dict):
        out: Dict[str, Any] = {}
        for index, (key, item) in enumerate(value.items()):
            if budget.left <= 0:
                out["..."] = f"[{len(value) - index} more keys]"
                break
            name = key if isinstance(key, str) else str(_plain(key, budget, depth + 1, seen))
            budget.spend(len(name) + 4)
            out[name] = _plain(item, budget, depth + 1, seen)
        return out
    items: List[Any] = []
    for index, item in enumerate(value):
        if budget.left <= 0:
            items.append(f"[{len(value) - index} more items]")
            break
        budget.spend(2)
        items.append(_plain(item, budget, depth + 1, seen))
    return items


def _described(value: Any, budget: _Budget, depth: int, seen: Tuple[int, ...]) -> Any:
    """A non-container object: the most faithful cheap description, else its bounded repr."""
    if isinstance(value, enum.Enum):
        return _plain(value.value, budget, depth + 1, seen)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return _bounded_text(value.isoformat(), budget)
    if isinstance(value, (uuid.UUID, decimal.Decimal, pathlib.PurePath)):
        return _bounded_text(str(value), budget)
    dumped = _model_dump(value)
    if dumped is not _NOTHING:
        return _plain(dumped, budget, depth + 1, seen)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = _dataclass_fields(value)
        if fields is not None:
            return _plain(fields, budget, depth + 1, seen)
    return _safe_repr(value, budget)



def _model_dump(value: Any) -> Any:
    """A pydantic (v2, else v1) model's JSON-mode dump, or ``_NOTHING``."""
    dump = getattr(type(value), "model_dump", None)
    try:
        if callable(dump) and hasattr(type(value), "model_fields"):
            return value.model_dump(mode="json")
        legacy = getattr(type(value), "dict", None)
        if callable(legacy) and hasattr(type(value), "__fields__"):
            return value.dict()
    except Exception:  # noqa: BLE001 - user code (validators, properties); fall back to repr
        return _NOTHING
    return _NOTHING


def _dataclass_fields(value: Any) -> Optional[Dict[str, Any]]:
    """The fields of a dataclass instance, shallow (``asdict`` deep-copies, and may raise)."""
    try:
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    except Exception:  # noqa: BLE001 - user code (a property-backed field); fall back to repr
        return None


def _to_json(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """``value`` as a span attribute: JSON text of about ``limit`` characters at most.

    A string is kept as it is rather than quoted, as the GenAI instrumentations record a tool
    result that is already text (util-genai's ToolInvocation); readers show it without quotes.
    Never raises for any input: what cannot be represented is replaced by a description.
    """
    budget = _Budget(limit)
    if isinstance(value, str):
        return _bounded_text(value, budget)
    text = json.dumps(_plain(value, budget, 0, ()), ensure_ascii=False, allow_nan=False)
    if len(text) > 2 * limit:  # keys and quoting are estimated; keep a hard ceiling anyway
        text = f"{text[:limit]}...[{len(text) - limit} more chars]"
    return text


