"""Shared fixtures: the package keeps process-wide state (settings, the process session, the
processor, the lifecycle journal), and unit tests that touch the API need it fresh."""

from __future__ import annotations

import os
from typing import Iterator

import pytest
from opentelemetry.context import Context, attach, detach

from lucidic_otel import _diagnostics
from lucidic_otel.config import reset_settings
from lucidic_otel.launcher import bootstrap
from lucidic_otel.sdk.processor import PROCESS_SESSION
from lucidic_otel.sessions.lifecycle import JOURNAL, REGISTRY


@pytest.fixture
def lucidic_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No LUCIDIC_* variables, fresh settings and processor, no process session, an empty
    journal and an empty context; pending ends are drained afterwards."""
    for name in list(os.environ):
        if name.startswith("LUCIDIC_"):
            monkeypatch.delenv(name)
    reset_settings()
    monkeypatch.setattr(PROCESS_SESSION, "session_id", None)
    monkeypatch.setattr(bootstrap, "_processor", None)
    REGISTRY.drain()
    JOURNAL.drain()
    token = attach(Context())
    try:
        yield
    finally:
        detach(token)
        REGISTRY.drain()
        JOURNAL.drain()
        reset_settings()


@pytest.fixture(autouse=True)
def _swallowed_bugs_fail_the_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """The never-raise boundary (``lucidic_otel._diagnostics``) keeps the application running
    whatever we get wrong; under the suite, a programming error it swallowed fails the test
    instead of hiding in a log line. Tests that provoke one on purpose are marked ``swallows``."""
    _diagnostics.reset()
    _diagnostics.record_swallowed(True)
    try:
        yield
    finally:
        caught = [(what, exc) for what, exc in _diagnostics.swallowed
                  if isinstance(exc, _diagnostics.PROGRAMMING_ERRORS)]
        _diagnostics.record_swallowed(False)
        if caught and request.node.get_closest_marker("swallows") is None:
            what, exc = caught[0]
            pytest.fail(f"lucidic-otel swallowed a programming error while {what}: {exc!r}",
                        pytrace=False)


@pytest.fixture(autouse=True)
def _journal_flusher_restored() -> Iterator[None]:
    """An exporter built in a test with the process journal becomes its flusher; the next test
    must not have its records drained into that test's store."""
    saved = JOURNAL.flusher
    try:
        yield
    finally:
        JOURNAL.flusher = saved
