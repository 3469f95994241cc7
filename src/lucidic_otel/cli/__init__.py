"""The ``lucidic-otel`` command (``cli.main``): sessions, show, doctor, upload, ui, demo."""
