"""A loopback Anthropic Messages API that answers with recorded exchanges.

The recordings (``tests/data/anthropic/*.json``, see the README there) were made against the
real API by the GenAI instrumentation's own test suite. The server is the generic
:class:`tests.support.replay.ReplayServer` (exact body match, recorded status, content type and
body verbatim, unmatched requests answered 400 and counted); this module keeps the Anthropic
names and default recordings. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from tests.support.replay import DATA as _DATA
from tests.support.replay import ReplayServer
from tests.support.replay import load_recordings as _load

DATA = _DATA / "anthropic"


def load_recordings(names: Optional[List[str]] = None) -> Dict[str, Dict[str, Any]]:
    """Recorded exchanges by name (the file name without ``.json``)."""
    return _load("anthropic", names)


class AnthropicReplayServer(ReplayServer):
    """``with AnthropicReplayServer() as server:``, then
    ``anthropic.Anthropic(base_url=server.base_url)``."""

    def __init__(self, recordings: Optional[Dict[str, Dict[str, Any]]] = None) -> None:
        super().__init__(recordings if recordings is not None else load_recordings())
