"""Cross-service end ordering: does a session end after the events of the services it called?

Two real services under the launcher, each delivering to a loopback backend that checks the
wire contract (tests/support/contract_server.py). The gateway opens a session with ``init()``,
calls the agent service over HTTP (the session travels as baggage), and ends the session as
soon as the last reply is in. The agent makes one LLM call per request (the offline OpenAI
server), which is one ``llm_generation`` event delivered by the agent's own process.

Per round it reports when the backend received the gateway's ``updatesession`` (the end)
and the agent's last event, and how many events arrived after the end (the backend's own SDK
never sends those; a strict backend may drop them). Target: 0 events after the end, and a
lag from the last downstream event to the end that is positive and bounded by the grace.

    python bench/end_ordering.py            # 5 rounds of 4 requests
    python bench/end_ordering.py --quick    # 2 rounds (CI)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

from _machine import machine_lines

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for _name in [n for n in os.environ if n.startswith(("LUCIDIC_", "OTEL_"))]:
    del os.environ[_name]

from lucidic_otel.testing.fake_openai import FakeOpenAIServer  # noqa: E402
from tests.support.contract_server import ContractServer  # noqa: E402
from tests.support.launcher import (  # noqa: E402
    clean_env,
    run_instrumented,
    spawn_instrumented,
    stop,
    wait_ready,
    write_script,
)

AGENT = """
import os

from flask import Flask
from openai import OpenAI

app = Flask(__name__)
llm = OpenAI(base_url=os.environ["FAKE_OPENAI_URL"], api_key="test", max_retries=0)


@app.route("/work/<tag>")
def work(tag):
    reply = llm.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"work {tag}"}]
    )
    return reply.choices[0].message.content or ""


if __name__ == "__main__":
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    print("READY", server.server_port, flush=True)
    server.serve_forever()
"""

GATEWAY = """
import sys
import urllib.request

import lucidic_otel

port, sid, requests = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
lucidic_otel.init(session_name="end ordering", session_id=sid)
for i in range(requests):
    urllib.request.urlopen(f"http://127.0.0.1:{port}/work/{i}", timeout=30).read()
lucidic_otel.end_session(is_successful=True)
print("APP DONE", flush=True)
"""

KEY, AGENT_ID = "lk-end-ordering", "agent-end-ordering"


def one_round(
    backend: ContractServer, port: int, env: dict, workdir: Path, sid: str, requests: int
) -> Tuple[int, int, Optional[float]]:
    """(events delivered, events after the end, end minus last event in seconds)."""
    gateway = write_script(workdir, "gateway.py", GATEWAY)
    done = run_instrumented(
        [gateway, str(port), sid, str(requests)],
        {**env, "OTEL_SERVICE_NAME": "gateway"}, timeout=120, cwd=workdir,
    )
    if done.returncode != 0:
        raise SystemExit(f"gateway failed ({done.returncode}):\n{done.stderr[-3000:]}")
    backend.wait_for(lambda: len(backend.session_event_ids(sid)) >= requests, timeout=30)
    with backend._lock:  # the server's own record of arrivals
        seen = list(backend.seen)
    events = set(backend.session_event_ids(sid))
    ends = [s.at for s in seen if s.endpoint == "updatesession" and s.key == sid]
    arrivals = [s.at for s in seen if s.endpoint == "events" and s.key in events
                and s.status is not None and s.status < 300]
    if not ends or not arrivals:
        return len(events), 0, None
    end = min(ends)
    return len(events), sum(1 for a in arrivals if a > end), end - max(arrivals)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds (the CI size)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--requests", type=int, default=4)
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    for line in machine_lines("flask"):
        print(line)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp, \
            ContractServer(api_key=KEY, agent_id=AGENT_ID) as backend, \
            FakeOpenAIServer() as llm:
        workdir = Path(tmp)
        env = clean_env(
            LUCIDIC_STORE_PATH=str(workdir / "store.db"), LUCIDIC_API_KEY=KEY,
            LUCIDIC_AGENT_ID=AGENT_ID, LUCIDIC_BASE_URL=backend.base_url,
            FAKE_OPENAI_URL=llm.base_url,
        )
        agent = spawn_instrumented(
            [write_script(workdir, "agent.py", AGENT)], {**env, "OTEL_SERVICE_NAME": "agent"},
            workdir,
        )
        try:
            port = int(wait_ready(agent, timeout=60).split()[0])
            print(f"{'round':>5} {'events':>7} {'after end':>10} {'end - last event':>17}")
            for r in range(rounds):
                delivered, late, lag = one_round(
                    backend, port, env, workdir, f"end-order-{r}", args.requests
                )
                shown = "-" if lag is None else f"{lag * 1000:+.0f} ms"
                print(f"{r:>5} {delivered:>7} {late:>10} {shown:>17}", flush=True)
                failures += late > 0 or delivered < args.requests
        finally:
            stop(agent)
        violations = [v for v in backend.violations if "after the session was finished" in v]
        print(f"backend: {len(violations)} events after the end flagged by the contract check")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
