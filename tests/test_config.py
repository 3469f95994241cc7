"""Every ``LUCIDIC_*`` variable: defaults, valid values, and the one message per invalid value."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Iterator, Optional

import pytest

from lucidic_otel import config
from lucidic_otel.config import (
    DEFAULT_BASE_URL,
    REGION_BASE_URLS,
    ConfigError,
    Settings,
    get_settings,
    load_settings,
    reset_settings,
)

SECRET = "0123456789abcdef-shared"


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No developer ``LUCIDIC_*`` variable leaks in, and the module cache starts empty."""
    for name in list(os.environ):
        if name.startswith("LUCIDIC_"):
            monkeypatch.delenv(name)
    reset_settings()
    yield
    reset_settings()


def only_problem(settings: Settings) -> str:
    assert len(settings.problems) == 1, settings.problems
    return settings.problems[0]


# --- defaults ------------------------------------------------------------------------------


def test_defaults_with_an_empty_environment() -> None:
    s = load_settings({})
    assert s == Settings()
    assert s.problems == ()
    assert s.api_key is None and s.agent_id is None
    assert s.session_id is None and s.session_name is None
    assert s.auto_end is True
    assert s.baggage_trust == "accept" and s.baggage_secret is None
    assert s.propagate and s.flush_on_sigterm and s.flush_on_fork_exit and s.capture_content
    assert s.store_path is None
    assert s.store_max_bytes == 512 * 1024 * 1024
    assert s.base_url == DEFAULT_BASE_URL
    assert s.blob_threshold == 65536
    assert s.exit_deadline_s == 5.0
    assert s.delivery == "process"
    assert s.strict is False
    assert s.delivery_enabled is False


def test_blank_values_mean_unset() -> None:
    env = {name: "   " for name in _ALL_VARIABLES}
    s = load_settings(env)
    assert s.problems == ()
    assert s == Settings()


def test_load_settings_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCIDIC_AGENT_ID", "agent-from-env")
    assert load_settings().agent_id == "agent-from-env"


# --- valid values --------------------------------------------------------------------------


def test_every_variable_valid(tmp_path: Path) -> None:
    env = {
        "LUCIDIC_API_KEY": "  key-123  ",
        "LUCIDIC_AGENT_ID": "agent-7",
        "LUCIDIC_SESSION_ID": "sess:1",
        "LUCIDIC_SESSION_NAME": "Nightly run",
        "LUCIDIC_AUTO_END": "false",
        "LUCIDIC_BAGGAGE_TRUST": "SIGNED",
        "LUCIDIC_BAGGAGE_SECRET": SECRET,
        "LUCIDIC_PROPAGATE": "no",
        "LUCIDIC_FLUSH_ON_SIGTERM": "0",
        "LUCIDIC_FLUSH_ON_FORK_EXIT": "off",
        "LUCIDIC_CAPTURE_CONTENT": "False",
        "LUCIDIC_STORE_PATH": str(tmp_path / "store.db"),
        "LUCIDIC_STORE_MAX_MB": "64",
        "LUCIDIC_BASE_URL": "http://127.0.0.1:9/api/",
        "LUCIDIC_BLOB_THRESHOLD": "2048",
        "LUCIDIC_EXIT_DEADLINE": "2.5",
        "LUCIDIC_DELIVERY": "Thread",
        "LUCIDIC_STRICT": "yes",
    }
    s = load_settings(env)
    assert s.problems == ()
    assert s.api_key == "key-123"
    assert s.agent_id == "agent-7"
    assert s.delivery_enabled is True
    assert s.session_id == "sess:1"
    assert s.session_name == "Nightly run"
    assert s.auto_end is False
    assert s.baggage_trust == "signed"
    assert s.baggage_secret == SECRET.encode()
    assert s.propagate is False
    assert s.flush_on_sigterm is False
    assert s.flush_on_fork_exit is False
    assert s.capture_content is False
    assert s.store_path == tmp_path / "store.db"
    assert s.store_max_bytes == 64 * 1024 * 1024
    assert s.base_url == "http://127.0.0.1:9/api"
    assert s.blob_threshold == 2048
    assert s.exit_deadline_s == 2.5
    assert s.delivery == "thread"
    assert s.strict is True


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "On", " on "])
def test_true_spellings(text: str) -> None:
    assert load_settings({"LUCIDIC_STRICT": text}).strict is True


@pytest.mark.parametrize("text", ["0", "false", "FALSE", "no", "Off"])
def test_false_spellings(text: str) -> None:
    assert load_settings({"LUCIDIC_AUTO_END": text}).auto_end is False


def test_store_path_expands_user() -> None:
    s = load_settings({"LUCIDIC_STORE_PATH": "~/lucidic.db"})
    assert s.store_path == Path("~/lucidic.db").expanduser()
    assert "~" not in str(s.store_path)


@pytest.mark.parametrize("mode", ["accept", "ignore", "Ignore", "ACCEPT"])
def test_trust_modes(mode: str) -> None:
    s = load_settings({"LUCIDIC_BAGGAGE_TRUST": mode})
    assert s.baggage_trust == mode.lower()
    assert s.problems == ()


@pytest.mark.parametrize(
    ("name", "text", "attribute", "expected"),
    [
        ("LUCIDIC_STORE_MAX_MB", "1", "store_max_bytes", 1024 * 1024),
        ("LUCIDIC_STORE_MAX_MB", "1000000", "store_max_bytes", 1_000_000 * 1024 * 1024),
        ("LUCIDIC_BLOB_THRESHOLD", "1024", "blob_threshold", 1024),
        ("LUCIDIC_BLOB_THRESHOLD", str(64 * 1024 * 1024), "blob_threshold", 64 * 1024 * 1024),
        ("LUCIDIC_EXIT_DEADLINE", "0", "exit_deadline_s", 0.0),
        ("LUCIDIC_EXIT_DEADLINE", "600", "exit_deadline_s", 600.0),
    ],
)
def test_number_bounds_are_inclusive(name: str, text: str, attribute: str, expected: float) -> None:
    s = load_settings({name: text})
    assert s.problems == ()
    assert getattr(s, attribute) == expected


# --- invalid values: one message naming the variable, the value, what is allowed, default ---


_ALL_VARIABLES = (
    "LUCIDIC_API_KEY",
    "LUCIDIC_AGENT_ID",
    "LUCIDIC_SESSION_ID",
    "LUCIDIC_SESSION_NAME",
    "LUCIDIC_AUTO_END",
    "LUCIDIC_BAGGAGE_TRUST",
    "LUCIDIC_BAGGAGE_SECRET",
    "LUCIDIC_PROPAGATE",
    "LUCIDIC_FLUSH_ON_SIGTERM",
    "LUCIDIC_FLUSH_ON_FORK_EXIT",
    "LUCIDIC_CAPTURE_CONTENT",
    "LUCIDIC_STORE_PATH",
    "LUCIDIC_STORE_MAX_MB",
    "LUCIDIC_BASE_URL",
    "LUCIDIC_REGION",
    "LUCIDIC_BLOB_THRESHOLD",
    "LUCIDIC_EXIT_DEADLINE",
    "LUCIDIC_DELIVERY",
    "LUCIDIC_STRICT",
)

_BOOLEANS = {
    "LUCIDIC_AUTO_END": ("auto_end", True),
    "LUCIDIC_PROPAGATE": ("propagate", True),
    "LUCIDIC_FLUSH_ON_SIGTERM": ("flush_on_sigterm", True),
    "LUCIDIC_FLUSH_ON_FORK_EXIT": ("flush_on_fork_exit", True),
    "LUCIDIC_CAPTURE_CONTENT": ("capture_content", True),
    "LUCIDIC_STRICT": ("strict", False),
}


@pytest.mark.parametrize("name", sorted(_BOOLEANS))
@pytest.mark.parametrize("text", ["maybe", "2", "truthy", "y"])
def test_invalid_boolean(name: str, text: str) -> None:
    attribute, default = _BOOLEANS[name]
    s = load_settings({name: text})
    assert getattr(s, attribute) is default
    problem = only_problem(s)
    assert problem.startswith(f"{name}={text!r} is not valid")
    assert "true or false" in problem
    assert f"using the default {default!r}" in problem


@pytest.mark.parametrize(
    ("name", "text", "attribute", "default", "allowed"),
    [
        ("LUCIDIC_STORE_MAX_MB", "lots", "store_max_bytes", 512 * 1024 * 1024, "megabytes"),
        ("LUCIDIC_STORE_MAX_MB", "0", "store_max_bytes", 512 * 1024 * 1024, "from 1 to"),
        ("LUCIDIC_STORE_MAX_MB", "1.5", "store_max_bytes", 512 * 1024 * 1024, "megabytes"),
        ("LUCIDIC_STORE_MAX_MB", "1000001", "store_max_bytes", 512 * 1024 * 1024, "1e+06"),
        ("LUCIDIC_BLOB_THRESHOLD", "1023", "blob_threshold", 65536, "from 1024 to"),
        ("LUCIDIC_BLOB_THRESHOLD", "-5", "blob_threshold", 65536, "bytes"),
        ("LUCIDIC_EXIT_DEADLINE", "-1", "exit_deadline_s", 5.0, "seconds from 0 to 600"),
        ("LUCIDIC_EXIT_DEADLINE", "601", "exit_deadline_s", 5.0, "seconds from 0 to 600"),
        ("LUCIDIC_EXIT_DEADLINE", "nan", "exit_deadline_s", 5.0, "seconds"),
        ("LUCIDIC_EXIT_DEADLINE", "inf", "exit_deadline_s", 5.0, "seconds"),
        ("LUCIDIC_EXIT_DEADLINE", "5s", "exit_deadline_s", 5.0, "seconds"),
    ],
)
def test_invalid_numbers(
    name: str, text: str, attribute: str, default: float, allowed: str
) -> None:
    s = load_settings({name: text})
    assert getattr(s, attribute) == default
    problem = only_problem(s)
    assert problem.startswith(f"{name}={text!r} is not valid: expected a number of")
    assert allowed in problem
    assert "using the default" in problem


def test_huge_integer_text_is_a_problem_not_a_crash() -> None:
    s = load_settings({"LUCIDIC_STORE_MAX_MB": "9" * 5000})
    assert s.store_max_bytes == 512 * 1024 * 1024
    problem = only_problem(s)
    assert "LUCIDIC_STORE_MAX_MB=" in problem and "..." in problem
    assert len(problem) < 300


def test_invalid_trust_mode() -> None:
    s = load_settings({"LUCIDIC_BAGGAGE_TRUST": "trust-me"})
    assert s.baggage_trust == "accept"
    problem = only_problem(s)
    assert "LUCIDIC_BAGGAGE_TRUST='trust-me'" in problem
    assert "one of accept, ignore, signed" in problem
    assert "using the default 'accept'" in problem


@pytest.mark.parametrize("secret", [None, "", "too-short"])
def test_signed_mode_without_a_usable_secret(secret: Optional[str]) -> None:
    env: Dict[str, str] = {"LUCIDIC_BAGGAGE_TRUST": "signed"}
    if secret is not None:
        env["LUCIDIC_BAGGAGE_SECRET"] = secret
    s = load_settings(env)
    assert s.baggage_trust == "signed"  # stays signed: inbound sessions are refused, not trusted
    assert s.baggage_secret is None
    problem = only_problem(s)
    assert "LUCIDIC_BAGGAGE_TRUST=signed" in problem
    assert "LUCIDIC_BAGGAGE_SECRET" in problem and "16 bytes" in problem
    if secret:
        assert secret not in problem  # never echo a secret, even a bad one


def test_secret_is_kept_outside_signed_mode() -> None:
    s = load_settings({"LUCIDIC_BAGGAGE_SECRET": "short"})
    assert s.problems == ()
    assert s.baggage_secret == b"short"


@pytest.mark.parametrize(
    ("text", "reason"),
    [("has space", "outside"), ("x" * 129, "at most 128"), ("semi;colon", "outside")],
)
def test_invalid_session_id(text: str, reason: str) -> None:
    s = load_settings({"LUCIDIC_SESSION_ID": text})
    assert s.session_id is None
    problem = only_problem(s)
    assert problem.startswith("LUCIDIC_SESSION_ID=")
    assert repr(text[:80]) in problem
    assert "not a valid session id" in problem and reason in problem
    assert problem.endswith("ignored")


@pytest.mark.parametrize(
    ("name", "text", "limit"),
    [
        ("LUCIDIC_AGENT_ID", "a" * 257, "256"),
        ("LUCIDIC_AGENT_ID", "agent\x00id", "256"),
        ("LUCIDIC_SESSION_NAME", "n" * 1025, "1024"),
        ("LUCIDIC_SESSION_NAME", "line\nbreak", "1024"),
    ],
)
def test_invalid_text(name: str, text: str, limit: str) -> None:
    s = load_settings({name: text})
    assert getattr(s, "agent_id" if name == "LUCIDIC_AGENT_ID" else "session_name") is None
    problem = only_problem(s)
    assert problem.startswith(f"{name}=")
    assert repr(text[:77])[:-1] in problem  # the value is shown (escaped, truncated)
    assert f"printable text of at most {limit} chars" in problem
    assert problem.endswith("ignored")


def test_text_at_its_limit_is_valid() -> None:
    s = load_settings({"LUCIDIC_AGENT_ID": "a" * 256, "LUCIDIC_SESSION_NAME": "n" * 1024})
    assert s.problems == ()
    assert s.agent_id == "a" * 256 and s.session_name == "n" * 1024


def test_several_problems_are_all_reported_in_order() -> None:
    s = load_settings(
        {"LUCIDIC_STRICT": "perhaps", "LUCIDIC_AUTO_END": "later", "LUCIDIC_REGION": "mars"}
    )
    assert len(s.problems) == 3
    assert [p.split("=", 1)[0] for p in s.problems] == [
        "LUCIDIC_STRICT",
        "LUCIDIC_REGION",
        "LUCIDIC_AUTO_END",
    ]


# --- region and base URL -------------------------------------------------------------------


@pytest.mark.parametrize(("region", "url"), sorted(REGION_BASE_URLS.items()))
def test_region_selects_the_base_url(region: str, url: str) -> None:
    s = load_settings({"LUCIDIC_REGION": region.upper()})
    assert s.problems == ()
    assert s.base_url == url


def test_base_url_wins_over_region() -> None:
    s = load_settings({"LUCIDIC_REGION": "india", "LUCIDIC_BASE_URL": "https://example.test/api//"})
    assert s.problems == ()
    assert s.base_url == "https://example.test/api"


def test_unknown_region_is_a_problem() -> None:
    s = load_settings({"LUCIDIC_REGION": "eu-west"})
    assert s.base_url == DEFAULT_BASE_URL
    problem = only_problem(s)
    assert "LUCIDIC_REGION='eu-west'" in problem
    for region in REGION_BASE_URLS:
        assert region in problem
    assert "using the default 'us'" in problem


@pytest.mark.parametrize("url", ["ftp://example.test", "example.test/api", "localhost:8080"])
def test_base_url_must_be_http(url: str) -> None:
    s = load_settings({"LUCIDIC_BASE_URL": url, "LUCIDIC_REGION": "india"})
    assert s.base_url == REGION_BASE_URLS["india"]  # the region still applies
    problem = only_problem(s)
    assert f"LUCIDIC_BASE_URL={url!r}" in problem
    assert "http:// or https:// URL" in problem


# --- get_settings, strict mode, secrets ----------------------------------------------------


def test_get_settings_caches_and_logs_problems_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LUCIDIC_AUTO_END", "sometimes")
    with caplog.at_level(logging.WARNING, logger="lucidic_otel"):
        first = get_settings()
        second = get_settings()
    assert first is second
    assert first.auto_end is True
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("lucidic_otel")]
    assert len(messages) == 1
    assert "LUCIDIC_AUTO_END='sometimes'" in messages[0]


def test_reset_settings_rereads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCIDIC_AGENT_ID", "one")
    assert get_settings().agent_id == "one"
    monkeypatch.setenv("LUCIDIC_AGENT_ID", "two")
    assert get_settings().agent_id == "one"
    reset_settings()
    assert get_settings().agent_id == "two"


def test_strict_mode_raises_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCIDIC_STRICT", "1")
    monkeypatch.setenv("LUCIDIC_EXIT_DEADLINE", "forever")
    monkeypatch.setenv("LUCIDIC_REGION", "mars")
    with pytest.raises(ConfigError) as raised:
        get_settings()
    message = str(raised.value)
    assert "LUCIDIC_EXIT_DEADLINE='forever'" in message
    assert "LUCIDIC_REGION='mars'" in message
    assert isinstance(raised.value, ValueError)
    # Strict mode falls back to nothing, so the message must not claim a default is used.
    assert message.startswith("LUCIDIC_STRICT=true and the configuration is invalid: ")
    assert "using the default" not in message


def test_strict_mode_without_problems_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCIDIC_STRICT", "true")
    assert get_settings().strict is True


def test_invalid_strict_value_is_not_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCIDIC_STRICT", "very")
    settings = get_settings()  # not strict, so the problem is only logged
    assert settings.strict is False
    assert len(settings.problems) == 1


def test_repr_never_shows_the_api_key_or_secret() -> None:
    s = load_settings(
        {
            "LUCIDIC_API_KEY": "sk-very-secret-key",
            "LUCIDIC_BAGGAGE_TRUST": "signed",
            "LUCIDIC_BAGGAGE_SECRET": "hmac-secret-0123456789",
            "LUCIDIC_AGENT_ID": "agent-1",
        }
    )
    assert s.baggage_secret is not None
    for text in (repr(s), str(s), f"{s}", f"{s!r}"):
        assert "sk-very-secret-key" not in text
        assert "hmac-secret" not in text
        assert "api_key=set" in text
        assert "agent-1" in text
    assert "api_key=unset" in repr(load_settings({}))


def test_settings_are_immutable() -> None:
    s = load_settings({})
    with pytest.raises(AttributeError):
        s.api_key = "x"  # type: ignore[misc]


def test_module_cache_is_what_get_settings_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = get_settings()
    assert config._settings is loaded


def test_every_variable_is_named_once_read_by_the_reader_and_documented() -> None:
    """environment_variables lists each LUCIDIC_* name once; config reads each through it; the
    README's table documents exactly that list."""
    import inspect
    import re
    from pathlib import Path

    from lucidic_otel import config, environment_variables

    names = environment_variables.ALL
    assert len(set(names)) == len(names)
    assert all(getattr(environment_variables, n) == n for n in names)
    reader = inspect.getsource(config.load_settings)
    assert not re.search(r'r\.\w+\("LUCIDIC_', reader), "the reader spells a name literally"
    assert {n for n in names if f"ev.{n}" in reader} == set(names)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    documented = re.findall(r"^\| `(LUCIDIC_[A-Z_]+)` \|", readme, flags=re.M)
    assert documented == list(names)
