"""Checking the arguments of the public session API, one message per bad argument.

Why here: a bad session id or field must never fail the user's work (it runs without that
session, or without that field), but it must not pass silently either. Every public call reports
a bad argument through :func:`report_invalid`, which raises only in strict mode
(``LUCIDIC_STRICT``), where the user asked for mistakes to stop the program.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional

from lucidic_otel.config import ConfigError, get_settings
from lucidic_otel.ids import session_id_error

logger = logging.getLogger(__name__)

#: What ``init`` and ``with_lucidic`` do instead of using an invalid session id.
NEW_SESSION = "starting a new session with a random id instead"

_STR_FIELDS = frozenset(
    (
        "session_name",
        "task",
        "is_successful_reason",
        "session_eval_reason",
        "experiment_id",
        "datasetitem_id",
    )
)
_EXPECTED = {
    "tags": "a list of str",
    "evaluators": "a list of str",
    "is_successful": "a bool",
    "production_monitoring": "a bool",
    "session_eval": "a number from 0.0 to 1.0",
}


def report_invalid(message: str) -> None:
    """Report a bad argument: a :class:`~lucidic_otel.config.ConfigError` in strict mode, one
    warning line otherwise."""
    if get_settings().strict:
        raise ConfigError(message)
    logger.warning("lucidic-otel: %s", message)


def checked_session_id(
    session_id: object, where: str, consequence: str = "running without this session"
) -> Optional[str]:
    """``session_id`` if valid; else None after one message naming ``where`` and what happens
    instead (``consequence``), which differs by call: ``init`` starts a new session."""
    reason = session_id_error(session_id)
    if reason is None:
        return session_id  # type: ignore[return-value]
    report_invalid(f"{where}: session_id {str(session_id)[:80]!r} {reason}; {consequence}")
    return None


_INVALID = object()


def _str_list(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return _INVALID


def _bool(value: Any) -> Any:
    return value if isinstance(value, bool) else _INVALID


def _score(value: Any) -> Any:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if number and 0 <= value <= 1 else _INVALID


def _str(value: Any) -> Any:
    return value if isinstance(value, str) else _INVALID


#: Each known field's check: the value in the form the backend takes, or ``_INVALID``.
_NORMALISE: Dict[str, Callable[[Any], Any]] = {
    "tags": _str_list,
    "evaluators": _str_list,
    "is_successful": _bool,
    "production_monitoring": _bool,
    "session_eval": _score,
    **{key: _str for key in _STR_FIELDS},
}


def checked_fields(where: str, fields: Dict[str, Any]) -> Dict[str, Any]:
    """The session fields of ``fields`` the backend would accept; the others are reported and
    dropped, and None values are left out (not given)."""
    clean: Dict[str, Any] = {}
    for key, value in fields.items():
        if value is None:
            continue
        check = _NORMALISE.get(key)
        normalised = value if check is None else check(value)
        if normalised is _INVALID:
            expected = _EXPECTED.get(key, "a str")
            report_invalid(f"{where}: {key}={value!r} is not valid: expected {expected}; ignored")
        else:
            clean[key] = normalised
    return clean
