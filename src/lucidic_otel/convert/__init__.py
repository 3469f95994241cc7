"""Span to Lucidic event: pure functions, no I/O."""
