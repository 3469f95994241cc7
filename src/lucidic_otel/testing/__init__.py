"""Offline stand-ins shared by the demo and the tests (the fake OpenAI server)."""
