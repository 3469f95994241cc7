"""The package version, in one place (User-Agent, resource attributes, CLI)."""

__version__ = "0.1.0"
