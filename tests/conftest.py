"""Shared fixtures: the package keeps process-wide state (settings, the process session, the
processor, the lifecycle journal), and unit tests that touch the API need it fresh."""

from __future__ import annotations

import os
from typing import Iterator

import pytest
from opentelemetry.context import Context, attach, detach

from lucidic_otel import api
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
    monkeypatch.setattr(api, "_warned_unknown_end", False)
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
