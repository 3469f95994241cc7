"""The one never-raise boundary and the one log-once mechanism."""

from __future__ import annotations

import logging

import pytest

from lucidic_otel import _diagnostics
from lucidic_otel.config import ConfigError

logger = logging.getLogger("lucidic_otel.test")


def test_guarded_swallows_logs_once_with_traceback_then_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="lucidic_otel"):
        for _ in range(3):
            with _diagnostics.guarded(logger, "reading the moon"):
                raise OSError("no moon")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "reading the moon failed (OSError: no moon)" in warnings[0].getMessage()
    assert "application is not affected" in warnings[0].getMessage()
    assert warnings[0].exc_info is not None
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 2


def test_config_errors_pass_through_the_boundary() -> None:
    with pytest.raises(ConfigError):
        with _diagnostics.guarded(logger, "strict"):
            raise ConfigError("strict mode")

    @_diagnostics.never_raises(logger, "strict call")
    def strict() -> None:
        raise ConfigError("strict mode")

    with pytest.raises(ConfigError):
        strict()


def test_never_raises_returns_the_default() -> None:
    @_diagnostics.never_raises(logger, "dividing", default=-1)
    def divide(a: int, b: int) -> float:
        return a / b

    assert divide(4, 2) == 2
    assert divide(1, 0) == -1


@pytest.mark.swallows
def test_a_swallowed_programming_error_is_recorded_for_the_suite() -> None:
    with _diagnostics.guarded(logger, "typing"):
        raise TypeError("a bug of ours")
    assert [(w, type(e)) for w, e in _diagnostics.swallowed] == [("typing", TypeError)]


def test_log_once_and_log_every(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lucidic_otel"):
        assert _diagnostics.log_once(logger, "k", "first %s", 1) is True
        assert _diagnostics.log_once(logger, "k", "first %s", 2) is False
        assert _diagnostics.log_every(logger, "e", 3600, "every") is True
        assert _diagnostics.log_every(logger, "e", 3600, "every") is False
        _diagnostics.reset()
        assert _diagnostics.log_once(logger, "k", "again") is True
    assert [r.getMessage() for r in caplog.records] == ["first 1", "every", "again"]
