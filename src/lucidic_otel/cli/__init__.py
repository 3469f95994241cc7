"""The ``lucidic-otel`` command: sessions, show, doctor, upload, ui, demo."""

from lucidic_otel.cli.main import main

__all__ = ["main"]
