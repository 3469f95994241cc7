"""Offline pieces for ``lucidic-otel demo``: they run with nothing but this package installed."""
