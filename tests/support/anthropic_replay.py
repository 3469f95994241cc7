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


#: The body of a replay program (indented as the programs of the tests that use it are, which
#: ``write_script`` dedents): the real client pointed at ``argv[1]``, the recordings of the file
#: ``argv[2]``, and ``call(name, recording)`` sending one recording's request as recorded;
#: fields this client version has no argument for (anthropic 2.x dropped some) go in
#: ``extra_body``, so the request body is the same. The caller imports ``inspect``, ``json``,
#: ``sys``, ``anthropic`` and ``lucidic_otel`` first.
CLIENT_CALL = """
    base_url, recordings = sys.argv[1], json.loads(open(sys.argv[2]).read())
    client = anthropic.Anthropic(base_url=base_url, api_key="test", max_retries=0)
    accepted = inspect.signature(anthropic.resources.Messages.create).parameters

    def call(name, recording):
        params = {k: v for k, v in recording["request"]["body"].items() if k in accepted}
        extra = {k: v for k, v in recording["request"]["body"].items() if k not in accepted}
        if extra:
            params["extra_body"] = extra
        try:
            if params.pop("stream", False):
                with client.messages.create(stream=True, **params) as stream:
                    for _ in stream:
                        pass
            else:
                client.messages.create(**params)
        except anthropic.APIStatusError as exc:
            print("api error", name, exc.status_code)
"""
