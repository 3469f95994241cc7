"""Plugging into ``opentelemetry-instrument`` and ``init()``: distro, configurator, set-up, exit."""
