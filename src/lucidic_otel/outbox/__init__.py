"""The SQLite outbox: what was recorded and what is still to deliver."""
