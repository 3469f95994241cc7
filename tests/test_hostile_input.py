"""Hostile input: inbound headers, every ``LUCIDIC_*`` variable, the public API's arguments.

Property-based (hypothesis). The oracles are written here from the documented rules (README:
session ids are 1-128 chars of ``[A-Za-z0-9._:-]``; the configuration table), never by calling
the code under test, so a wrong rule in the code cannot confirm itself.

1. ``baggage``/``traceparent``/``tracestate`` headers go through the real W3C propagators and
   then a span is started in the extracted context on a local provider with the session
   processor: nothing raises, a session is stamped only when the inbound value is a valid id
   (in signed mode: only with the exact HMAC of that id), a traceparent never decides the
   session, and every refused value is counted in ``rejected_baggage``.
2. ``config.load_settings(env)`` never raises; an invalid value gives exactly one problem
   line, on one line, naming the variable; a valid value gives none.
3. The session API (``session``, ``with_session``, ``set_active_session``,
   ``clear_active_session``, ``end_session``) with arbitrary arguments: nothing raises into the
   application, nothing invalid is stamped or recorded, each rejection is one warning naming the
   function and the argument.
4. Under the real launcher and in a plain ``python``: invalid configuration and invalid
   ``init`` arguments each give one clear line, and the program runs to its end.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry import baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import lucidic_otel
from lucidic_otel.config import load_settings
from lucidic_otel.outbox.store import Store
from lucidic_otel.sdk.processor import PROCESS_SESSION, LucidicSpanProcessor
from lucidic_otel.sessions.context import BAGGAGE_KEY, SEMCONV_SESSION_ATTRIBUTE, SESSION_ATTRIBUTE
from lucidic_otel.sessions.lifecycle import JOURNAL, REGISTRY
from tests.support.launcher import PYTHON, clean_env, run_instrumented, write_script

VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
SECRET = b"hostile-input-secret-0123456789"
PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and VALID_ID.fullmatch(value) is not None


def inbound_value(raw: str) -> str:
    """What an inbound baggage value means: W3C properties (``;p=1``) are metadata, and
    surrounding whitespace is not part of the value."""
    return raw.partition(";")[0].strip()


def accepted(raw: object) -> Optional[str]:
    if not isinstance(raw, str):
        return None
    value = inbound_value(raw)
    return value if is_valid_id(value) else None


def signed_ok(value: str) -> Optional[str]:
    """The id inside ``value`` if it is ``id~hmac32`` under SECRET (the documented format)."""
    sid, sep, sig = inbound_value(value).rpartition("~")
    if not sep or not is_valid_id(sid):
        return None
    good = hmac.new(SECRET, sid.encode(), hashlib.sha256).hexdigest()[:32]
    return sid if hmac.compare_digest(good, sig) else None


def sign(sid: str, secret: bytes = SECRET) -> str:
    return sid + "~" + hmac.new(secret, sid.encode(), hashlib.sha256).hexdigest()[:32]


# --- 1. inbound headers --------------------------------------------------------------------

valid_ids = st.text(alphabet=ID_CHARS, min_size=1, max_size=128)
separators = st.sampled_from(
    [
        ",",
        ";",
        "=",
        "~",
        " ",
        "\t",
        "+",
        '"',
        "\\",
        "/",
        "%2C",
        "%3B",
        "%3D",
        "%20",
        "%7E",
        "%00",
        "%0A",
        "%",
        "%%",
        "%zz",
        "\u00e9",
        "\u2028",
    ]
)
hostile_values = st.one_of(
    valid_ids,
    st.text(alphabet=ID_CHARS, min_size=129, max_size=400),  # too long
    st.builds(lambda a, s, b: a + s + b, valid_ids, separators, valid_ids),
    valid_ids.map(lambda v: "".join(f"%{ord(c):02X}" for c in v)),  # percent-encoded
    valid_ids.map(lambda v: v + ";prop=1"),  # W3C properties
    valid_ids.map(lambda v: v.upper() + "\x7f"),
    st.text(max_size=60),  # any unicode, control characters included
    st.text(alphabet="\x01\x08\x1b\x1f\x7f\n\r\t", min_size=1, max_size=6),
    st.just(""),
    st.integers(130, 5000).map(lambda n: "a" * n),
)
keys = st.one_of(
    st.just(BAGGAGE_KEY),
    st.sampled_from(
        [
            "LUCIDIC.SESSION_ID",
            " lucidic.session_id",
            "lucidic%2Esession_id",
            "lucidic.session_id;p",
            "lucidic.session_id\t",
            "session.id",
            "other",
        ]
    ),
    st.text(max_size=20),
)
members = st.builds(
    lambda k, v, pad: f"{pad}{k}{pad}={pad}{v}{pad}",
    keys,
    hostile_values,
    st.sampled_from(["", " ", "\t"]),
)
baggage_headers = st.one_of(
    st.lists(members, max_size=6).map(",".join),  # duplicated keys happen here too
    st.text(max_size=300),
    st.integers(8000, 9000).map(lambda n: f"{BAGGAGE_KEY}=ok," + "x=" + "y" * n),  # oversized
    st.lists(members, min_size=170, max_size=200).map(",".join),  # too many members
)
hex32 = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
hex16 = st.text(alphabet="0123456789abcdef", min_size=16, max_size=16)
VALID_TP = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


def _mutations(tp: str) -> List[str]:
    return [
        tp.upper(),
        tp.replace("-", "--", 1),
        tp[:3] + "0" + tp[3:],  # trace id 33 hex
        tp[:36] + "0" + tp[36:],  # span id 17 hex
        tp[:10] + "," + tp[11:],  # separator inside an id
        "ff" + tp[2:],  # forbidden version
        "00-" + "0" * 32 + tp[35:],  # all-zero trace id
        tp[:36] + "0" * 16 + tp[52:],  # all-zero span id
        tp + "-extra",  # version 00 has exactly four fields
        tp[:-1],  # flags too short
    ]


valid_traceparents = st.builds(
    lambda t, s, f: f"00-{t}-{s}-{f}", hex32, hex16, st.sampled_from(["00", "01"])
)
traceparents = st.one_of(
    st.none(),
    valid_traceparents,
    valid_traceparents.flatmap(lambda tp: st.sampled_from(_mutations(tp))).map(
        lambda tp: ("invalid", tp)
    ),
    st.text(max_size=120),
)


class Local:
    """A local provider (the global one is never touched) with the session processor."""

    def __init__(self, **env: str) -> None:
        self.processor = LucidicSpanProcessor(load_settings(env))
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=ALWAYS_ON)  # unsampled parents must not hide spans
        provider.add_span_processor(self.processor)
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = provider.get_tracer("hostile")

    def start_in(self, ctx: Context):
        self.exporter.clear()
        self.tracer.start_span("inbound", context=ctx).end()
        (span,) = self.exporter.get_finished_spans()
        return span


ACCEPT = Local()
SIGNED = Local(LUCIDIC_BAGGAGE_TRUST="signed", LUCIDIC_BAGGAGE_SECRET=SECRET.decode())
IGNORE = Local(LUCIDIC_BAGGAGE_TRUST="ignore")


@pytest.fixture(autouse=True)
def _no_process_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PROCESS_SESSION, "session_id", None)


def _extract(header: Any, tp: Any, tracestate: Optional[str]) -> Context:
    carrier: Dict[str, Any] = {"baggage": header}
    if isinstance(tp, tuple):
        tp = tp[1]
    if tp is not None:
        carrier["traceparent"] = tp
    if tracestate is not None:
        carrier["tracestate"] = tracestate
    return PROPAGATOR.extract(carrier)


@EXAMPLES
@given(
    header=baggage_headers,
    tp=traceparents,
    tracestate=st.none() | st.text(max_size=80),
    repeat=st.booleans(),
)
@example(header=f"{BAGGAGE_KEY}=conv%2D1", tp=None, tracestate=None, repeat=False)
@example(header=f"{BAGGAGE_KEY}=a,{BAGGAGE_KEY}=b%20c", tp=None, tracestate=None, repeat=False)
@example(header=f"{BAGGAGE_KEY}=ok;p=1", tp=None, tracestate=None, repeat=True)
def test_inbound_headers_stamp_only_valid_sessions(header, tp, tracestate, repeat) -> None:
    ctx = _extract([header, f"{BAGGAGE_KEY}=second-header"] if repeat else header, tp, tracestate)
    raw = baggage.get_baggage(BAGGAGE_KEY, ctx)
    for local, expected in (
        (ACCEPT, accepted(raw)),
        (SIGNED, signed_ok(raw) if isinstance(raw, str) else None),
        (IGNORE, None),
    ):
        before = local.processor.rejected_baggage
        assert local.processor.session_for(ctx) == expected
        span = local.start_in(ctx)
        attributes = span.attributes or {}
        assert attributes.get(SESSION_ATTRIBUTE) == expected
        assert attributes.get(SEMCONV_SESSION_ATTRIBUTE) == expected
        refused = raw is not None and expected is None and local is not IGNORE
        assert local.processor.rejected_baggage - before == (2 if refused else 0)

    span = ACCEPT.start_in(ctx)
    match = VALID_TP.fullmatch(tp) if isinstance(tp, str) else None
    if match and int(match.group(1), 16) and int(match.group(2), 16):
        assert span.context.trace_id == int(match.group(1), 16)
        assert span.parent is not None and span.parent.span_id == int(match.group(2), 16)
    if isinstance(tp, tuple) or tp is None:  # a known-bad traceparent starts a new trace
        assert span.parent is None


@EXAMPLES
@given(
    sid=valid_ids,
    other=valid_ids,
    tamper=st.sampled_from(
        ["none", "replay", "foreign", "upper", "truncate", "extend", "double", "strip-id", "flip"]
    ),
)
def test_signed_mode_accepts_exactly_the_signature_of_that_id(sid, other, tamper) -> None:
    good = sign(sid)
    value = {
        "none": good,
        "replay": other + "~" + good.rpartition("~")[2],
        "foreign": sign(sid, b"some-other-secret-of-16-bytes"),
        "upper": sid + "~" + good.rpartition("~")[2].upper(),
        "truncate": good[:-1],
        "extend": good + "0",
        "double": good + "~" + good.rpartition("~")[2],
        "strip-id": "~" + good.rpartition("~")[2],
        "flip": good[:-1] + ("0" if good[-1] != "0" else "1"),
    }[tamper]
    ctx = _extract(f"{BAGGAGE_KEY}={value}", None, None)
    stamped = (SIGNED.start_in(ctx).attributes or {}).get(SESSION_ATTRIBUTE)
    assert stamped == signed_ok(value)
    signature = good.rpartition("~")[2]
    if (
        tamper == "none"
        or (tamper == "replay" and other == sid)
        or (tamper == "upper" and signature.upper() == signature)
    ):
        assert stamped == sid
    else:
        assert stamped is None


@EXAMPLES
@given(
    value=st.one_of(
        st.integers(),
        st.binary(max_size=10),
        st.lists(st.integers()),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.floats(allow_nan=True),
        st.booleans(),
    )
)
def test_in_process_baggage_of_another_type_is_refused(value) -> None:
    ctx = baggage.set_baggage(BAGGAGE_KEY, value, Context())
    before = ACCEPT.processor.rejected_baggage
    assert (ACCEPT.start_in(ctx).attributes or {}).get(SESSION_ATTRIBUTE) is None
    assert ACCEPT.processor.rejected_baggage - before == 1


# --- 2. LUCIDIC_* variables ----------------------------------------------------------------

BOOLEAN_WORDS = {"1", "true", "yes", "on", "0", "false", "no", "off"}


def _number_ok(text: str, parse, lo: float, hi: float) -> bool:
    try:
        value = parse(text)
    except ValueError:
        return False
    return lo <= value <= hi


def _printable(text: str, limit: int) -> bool:
    return len(text) <= limit and text.isprintable()


#: variable -> is this (stripped, non-empty) value valid? Written from the README's table.
def _expandable(value: str) -> bool:
    try:
        Path(value).expanduser()
    except (RuntimeError, ValueError):
        return False
    return True


ORACLE = {
    "LUCIDIC_API_KEY": lambda v: v.isascii() and v.isprintable() and " " not in v,
    "LUCIDIC_AGENT_ID": lambda v: _printable(v, 256),
    "LUCIDIC_BASE_URL": lambda v: v.startswith(("http://", "https://")),
    "LUCIDIC_REGION": lambda v: v.lower() in ("us", "india"),
    "LUCIDIC_SESSION_NAME": lambda v: _printable(v, 1024),
    "LUCIDIC_SESSION_ID": lambda v: is_valid_id(v),
    "LUCIDIC_AUTO_END": lambda v: v.lower() in BOOLEAN_WORDS,
    "LUCIDIC_BAGGAGE_TRUST": lambda v: v.lower() in ("accept", "ignore"),  # signed needs a secret
    "LUCIDIC_BAGGAGE_SECRET": lambda v: True,
    "LUCIDIC_PROPAGATE": lambda v: v.lower() in BOOLEAN_WORDS,
    "LUCIDIC_CAPTURE_CONTENT": lambda v: v.lower() in BOOLEAN_WORDS,
    "LUCIDIC_FLUSH_ON_SIGTERM": lambda v: v.lower() in BOOLEAN_WORDS,
    "LUCIDIC_FLUSH_ON_FORK_EXIT": lambda v: v.lower() in BOOLEAN_WORDS,
    "LUCIDIC_EXIT_DEADLINE": lambda v: _number_ok(v, float, 0, 600),
    "LUCIDIC_DELIVERY": lambda v: v.lower() in ("process", "thread"),
    "LUCIDIC_STORE_PATH": _expandable,
    "LUCIDIC_STORE_MAX_MB": lambda v: _number_ok(v, int, 1, 1_000_000),
    "LUCIDIC_BLOB_THRESHOLD": lambda v: _number_ok(v, int, 1024, 64 * 1024 * 1024),
    "LUCIDIC_STRICT": lambda v: v.lower() in BOOLEAN_WORDS,
}

# Environment values are str without NUL; undecodable bytes arrive as lone surrogates
# (surrogateescape), so those are generated too.
env_text = st.text(
    alphabet=st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
    | st.sampled_from(["\udc80", "\udcff"]),
    max_size=40,
)
near_misses = st.sampled_from(
    [
        "true",
        "FALSE",
        " yes ",
        "y",
        "2",
        "-1",
        "0",
        "600",
        "600.1",
        "1e3",
        "nan",
        "inf",
        "0x10",
        "1_000",
        "１２",
        "us",
        "INDIA",
        "eu",
        "signed",
        "http://x",
        "ftp://x",
        "a b",
        "x" * 129,
        "ok-id",
        "1023",
        "1024",
        "67108865",
        "1000000",
        "1000001",
        "\t\n",
    ]
)


@settings(max_examples=600, deadline=None)
@given(name=st.sampled_from(sorted(ORACLE)), value=st.one_of(env_text, near_misses))
def test_every_variable_never_raises_and_names_itself_once(name: str, value: str) -> None:
    problems = load_settings({name: value}).problems
    stripped = value.strip()
    valid = not stripped or ORACLE[name](stripped)
    mentioning = [p for p in problems if name in p]
    if valid:
        assert problems == (), problems
    else:
        assert len(problems) == 1 and len(mentioning) == 1, problems
        assert "\n" not in problems[0] and "\r" not in problems[0]


@settings(max_examples=100, deadline=None)
@given(values=st.fixed_dictionaries({name: near_misses | env_text for name in ORACLE}))
def test_all_variables_at_once_one_line_each(values: Dict[str, str]) -> None:
    env = dict(values)
    problems = load_settings(env).problems
    invalid = [k for k, v in env.items() if v.strip() and not ORACLE[k](v.strip())]
    if env.get("LUCIDIC_BAGGAGE_TRUST", "").strip().lower() == "signed":
        secret = env.get("LUCIDIC_BAGGAGE_SECRET", "").strip()
        if len(secret.encode("utf-8", "surrogateescape")) >= 16:
            invalid.remove("LUCIDIC_BAGGAGE_TRUST")  # signed with a usable secret is valid
    named = sorted(re.match(r"[A-Z_]+", p).group(0) for p in problems)  # type: ignore[union-attr]
    assert named == sorted(invalid), problems


def test_unusual_but_legal_values_do_not_crash_load_settings() -> None:
    problems = load_settings({"LUCIDIC_STORE_PATH": "~no-such-user-here/store.db"}).problems
    assert len(problems) == 1 and "LUCIDIC_STORE_PATH" in problems[0]
    # A secret that is not UTF-8 (undecodable env bytes) keeps its exact bytes.
    settings = load_settings(
        {"LUCIDIC_BAGGAGE_TRUST": "signed", "LUCIDIC_BAGGAGE_SECRET": "sixteen-bytes-and-\udcff"}
    )
    assert settings.problems == ()
    assert settings.baggage_secret == b"sixteen-bytes-and-\xff"


# --- 3. the session API ----------------------------------------------------------------------

arguments = st.one_of(
    st.none(),
    valid_ids,
    hostile_values,
    st.integers(),
    st.floats(),
    st.binary(max_size=20),
    st.lists(st.text(max_size=4), max_size=3),
    st.builds(object),
)


@contextmanager
def api_warnings() -> Iterator[List[str]]:
    records: List[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("lucidic_otel")
    handler = Collect(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def clean_api(lucidic_state: None) -> None:
    """Fresh package state (tests/conftest.py)."""


_IDS = itertools.count(1)


def _journal_ids() -> List[str]:
    REGISTRY.drain()
    return [record[1] for record in JOURNAL.drain()]


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(arg=arguments)
def test_session_api_with_any_argument(clean_api, arg) -> None:
    valid = is_valid_id(arg)
    expected = arg if valid else None
    local = Local()
    seen: Dict[str, Optional[str]] = {}

    def work(name: str) -> str:
        local.tracer.start_span(name).end()
        seen[name] = (local.exporter.get_finished_spans()[-1].attributes or {}).get(
            SESSION_ATTRIBUTE
        )
        return name

    with api_warnings() as warned:
        with lucidic_otel.session(arg) as bound:
            assert bound == expected
            work("block")
        assert lucidic_otel.with_session(arg, work, "call") == "call"
        token = lucidic_otel.set_active_session(arg)
        work("manual")
        lucidic_otel.clear_active_session(token)
        assert lucidic_otel.current_session_id() is None
        if arg is not None:
            assert lucidic_otel.end_session(arg) is valid

    assert seen == {"block": expected, "call": expected, "manual": expected}
    if valid:
        assert warned == []
    else:
        assert len(warned) == 3 + (arg is not None), warned
        for function, message in zip(
            ["session", "with_session", "set_active_session", "end_session"], warned, strict=False
        ):
            assert message.startswith(f"lucidic-otel: {function}: session_id"), message
            assert "\n" not in message
    assert all(is_valid_id(sid) for sid in _journal_ids())


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    successful=st.one_of(st.booleans(), st.none(), st.text(max_size=5), st.integers()),
    score=st.one_of(st.none(), st.floats(), st.integers(-5, 5), st.text(max_size=3)),
)
def test_end_session_fields_with_any_value(clean_api, successful, score) -> None:
    sid = f"fields-{next(_IDS)}"
    with lucidic_otel.session(sid):  # a session this process started: its end returns True
        pass
    with api_warnings() as warned:
        assert lucidic_otel.end_session(sid, is_successful=successful, session_eval=score)
    bad = [
        name
        for name, ok in (
            ("is_successful", successful is None or isinstance(successful, bool)),
            (
                "session_eval",
                score is None
                or (
                    isinstance(score, (int, float))
                    and not isinstance(score, bool)
                    and 0 <= score <= 1
                ),
            ),
        )
        if not ok
    ]
    assert len(warned) == len(bad), warned
    for name, message in zip(bad, warned, strict=True):
        assert f"end_session: {name}=" in message
    REGISTRY.drain()
    ends = [body for _, record_sid, body in JOURNAL.drain() if record_sid == sid]
    assert ends and all(k not in ends[-1] for k in bad)


# --- 4. real processes ---------------------------------------------------------------------

APP = """
    import lucidic_otel
    from opentelemetry import trace

    with lucidic_otel.session("hostile-app"):
        trace.get_tracer("app").start_span("work").end()
    print("APP DONE", flush=True)
"""

INVALID_ENV = {
    "LUCIDIC_AUTO_END": "maybe",
    "LUCIDIC_REGION": "mars",
    "LUCIDIC_EXIT_DEADLINE": "-1",
    "LUCIDIC_SESSION_ID": "has space",
    "LUCIDIC_STORE_MAX_MB": "lots",
    "LUCIDIC_BAGGAGE_TRUST": "paranoid",
    "LUCIDIC_BASE_URL": "ftp://example.invalid",
    "LUCIDIC_AGENT_ID": "tab\there",
    "LUCIDIC_PROPAGATE": "sometimes",
    "LUCIDIC_DELIVERY": "carrier-pigeon",
}


def _lucidic_lines(text: str) -> List[str]:
    return [line for line in text.splitlines() if line.startswith("lucidic-otel")]


def test_invalid_configuration_under_the_launcher_is_one_line_each(tmp_path: Path) -> None:
    app = write_script(tmp_path, "app.py", APP)
    store = tmp_path / "store.db"
    proc = run_instrumented([app], clean_env(LUCIDIC_STORE_PATH=str(store), **INVALID_ENV))
    assert proc.returncode == 0, proc.stderr
    assert "APP DONE" in proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = _lucidic_lines(proc.stderr)
    assert len(lines) == len(INVALID_ENV), lines
    for name in INVALID_ENV:
        assert sum(name in line for line in lines) == 1, (name, lines)
    with Store(store) as s:  # telemetry kept working with the defaults
        assert [x.name for x in s.session_spans("hostile-app")] == ["work"]


INIT_APP = """
    import lucidic_otel
    from opentelemetry import trace

    sid = lucidic_otel.init(session_id="not a valid id!", tags="not-a-list", task=5,
                            instrument=["no-such-instrumentation"], bogus=1)
    trace.get_tracer("app").start_span("work").end()
    print("SESSION", sid, flush=True)
"""


def test_init_with_bad_arguments_warns_once_each_and_runs(tmp_path: Path) -> None:
    app = write_script(tmp_path, "app.py", INIT_APP)
    store = tmp_path / "store.db"
    proc = subprocess.run(
        [str(PYTHON), str(app)],
        env=clean_env(LUCIDIC_STORE_PATH=str(store)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    sid = proc.stdout.split("SESSION", 1)[1].split()[0]
    assert is_valid_id(sid) and sid != "not a valid id!"
    lines = _lucidic_lines(proc.stderr)
    for needle in ("session_id", "tags=", "task=", "no-such-instrumentation", "bogus"):
        assert sum(needle in line for line in lines) == 1, (needle, lines)
    assert len(lines) == 5, lines
    with Store(store) as s:
        assert [x.name for x in s.session_spans(sid)] == ["work"]


def test_strict_mode_names_the_variable_and_stops_the_program(tmp_path: Path) -> None:
    """Strict mode means strict: the launcher would print our error and run the program
    uninstrumented with status 0, so the program is not started at all (status 2)."""
    app = write_script(tmp_path, "app.py", APP)
    proc = run_instrumented(
        [app],
        clean_env(
            LUCIDIC_STORE_PATH=str(tmp_path / "store.db"),
            LUCIDIC_STRICT="true",
            LUCIDIC_AUTO_END="maybe",
        ),
    )
    assert proc.returncode == 2, proc.stderr
    assert "APP DONE" not in proc.stdout
    assert "LUCIDIC_AUTO_END='maybe' is not valid" in proc.stderr, proc.stderr
    assert "the program was not started (exit status 2)" in proc.stderr
    assert "Traceback" not in proc.stderr
