"""One-shot: a whole agent run is one session, started and ended around a function call.

``lucidic_otel.with_lucidic`` starts a session, runs the function inside it, flushes the
function's spans, ends the session and unbinds it. It also sets OpenTelemetry up when nothing
did, so this script records its spans both ways:

    opentelemetry-instrument python examples/one_shot.py
    python examples/one_shot.py

and then ``lucidic-otel sessions`` lists one session named "nightly eval", ended "ok" (the
function returned; had it raised, "failed" with the exception as the reason).
No API key, no server: the spans go to the local store (``LUCIDIC_STORE_PATH``).
"""

from __future__ import annotations

import json

from opentelemetry import trace

import lucidic_otel

tracer = trace.get_tracer("examples.one_shot")

KNOWLEDGE = {"capital of France": "Paris", "capital of Japan": "Tokyo"}


def lookup(question: str) -> str:
    """A tool of the agent: a GenAI tool span, which Lucidic shows as a function call."""
    with tracer.start_as_current_span("execute_tool lookup") as span:
        span.set_attribute("gen_ai.operation.name", "execute_tool")
        span.set_attribute("gen_ai.tool.name", "lookup")
        span.set_attribute("gen_ai.tool.call.arguments", json.dumps({"question": question}))
        answer = KNOWLEDGE.get(question, "unknown")
        span.set_attribute("gen_ai.tool.call.result", answer)
        return answer


def run_agent(questions: list[str]) -> dict[str, str]:
    with tracer.start_as_current_span("agent run") as span:
        span.set_attribute("agent.questions", len(questions))
        print(f"session {lucidic_otel.current_session_id()}")
        return {q: lookup(q) for q in questions}


def main() -> None:
    task_input = ["capital of France", "capital of Japan"]
    result = lucidic_otel.with_lucidic(
        run_agent, task_input, session_name="nightly eval", tags=["eval"]
    )
    # Here the session is already ended and its spans are in the store.
    print(f"answers {result}")


if __name__ == "__main__":
    main()
