"""Every ``LUCIDIC_*`` variable, read in one place into one immutable settings object.

Configuration is read once (lazily) because the hot paths must not touch ``os.environ``. An
invalid value never stops the user's program: it produces one warning line that names the
variable, the value and what is allowed, and the default is used instead, unless
``LUCIDIC_STRICT`` is on, in which case the error is raised where the settings are loaded.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, Tuple, TypeVar

from lucidic_otel import environment_variables as ev
from lucidic_otel.ids import session_id_error

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://backend.lucidic.ai/api"
REGION_BASE_URLS = {
    "us": DEFAULT_BASE_URL,
    "india": "https://in.backend.lucidic.ai/api",
}
TRUST_MODES = ("accept", "ignore", "signed")
DELIVERY_MODES = ("process", "thread")
#: How long ``lucidic-otel upload`` keeps trying, unless ``--deadline`` says otherwise.
DEFAULT_UPLOAD_DEADLINE_S = 30.0

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_BOOL_ALLOWED = "true or false (also 1/0, yes/no, on/off)"

T = TypeVar("T")


class ConfigError(ValueError):
    """An explicit, invalid setting (raised only in strict mode)."""


@dataclass(frozen=True)
class Settings:
    """The effective configuration. Build it with :func:`load_settings`."""

    api_key: Optional[str] = None
    agent_id: Optional[str] = None
    session_id: Optional[str] = None
    session_name: Optional[str] = None
    auto_end: bool = True
    #: Seconds without a span after which a scope-bound session is ended; None: never.
    session_idle_end: Optional[float] = None
    baggage_trust: str = "accept"
    baggage_secret: Optional[bytes] = field(default=None, repr=False)
    propagate: bool = True
    #: Host patterns that get session baggage (None: no allow-list), and ones that never do.
    propagate_to: Optional[Tuple[str, ...]] = None
    propagate_deny: Tuple[str, ...] = ()
    flush_on_sigterm: bool = True
    flush_on_fork_exit: bool = True
    capture_content: bool = True
    #: A ``LUCIDIC_PRICES`` JSON file laid over the built-in price table; None: built-in only.
    prices_path: Optional[Path] = None
    store_path: Optional[Path] = None
    store_max_bytes: int = 512 * 1024 * 1024
    base_url: str = DEFAULT_BASE_URL
    blob_threshold: int = 65536
    exit_deadline_s: float = 5.0
    end_grace_s: float = 1.0
    delivery: str = "process"
    strict: bool = False
    problems: Tuple[str, ...] = ()

    @property
    def delivery_enabled(self) -> bool:
        """Delivery to the backend needs both the key and the agent id (contract)."""
        return bool(self.api_key and self.agent_id)

    def __repr__(self) -> str:  # never print the API key or the secret
        key = "set" if self.api_key else "unset"
        return (
            f"Settings(api_key={key}, agent_id={self.agent_id!r}, session_id={self.session_id!r}, "
            f"session_name={self.session_name!r}, auto_end={self.auto_end}, "
            f"baggage_trust={self.baggage_trust!r}, propagate={self.propagate}, "
            f"flush_on_sigterm={self.flush_on_sigterm}, capture_content={self.capture_content}, "
            f"store_path={self.store_path and str(self.store_path)!r}, base_url={self.base_url!r})"
        )


def host_pattern_error(pattern: str) -> Optional[str]:
    """Why ``pattern`` is not a host pattern (``api.example.com``, ``*.internal``), or None."""
    if any(ch.isspace() for ch in pattern):
        return "contains spaces"
    if "/" in pattern or "@" in pattern:
        return "is a URL or path, not a host name"
    if not all(ch.isalnum() or ch in "-._*:[]?" for ch in pattern):
        return "contains characters other than letters, digits and - . _ * : [ ] ?"
    return None


class _Reader:
    """Parses variables and collects one message per invalid one."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: List[str] = []
        self.strict = False  # then a problem stops telemetry: no fallback is ever used

    def problem(self, what: str, consequence: str) -> None:
        """Record one problem: what is wrong and, unless strict, what happens instead."""
        self.problems.append(what if self.strict else f"{what}; {consequence}")

    def raw(self, name: str) -> Optional[str]:
        value = self.env.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def bad(self, name: str, value: str, allowed: str, default: object) -> None:
        shown = value if len(value) <= 80 else value[:77] + "..."
        self.problem(f"{name}={shown!r} is not valid: expected {allowed}",
                     f"using the default {default!r}")

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        low = value.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        self.bad(name, value, _BOOL_ALLOWED, default)
        return default

    def number(
        self, name: str, default: T, parse: Callable[[str], T], lo: float, hi: float, unit: str
    ) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            parsed = parse(value)
        except ValueError:
            parsed = None
        if parsed is None or not (lo <= parsed <= hi):  # type: ignore[operator]
            self.bad(name, value, f"a number of {unit} from {lo:g} to {hi:g}", default)
            return default
        return parsed

    def choice(self, name: str, default: str, allowed: Tuple[str, ...]) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in allowed:
            return value.lower()
        self.bad(name, value, "one of " + ", ".join(allowed), default)
        return default

    def path(self, name: str, default: str) -> Optional[Path]:
        """A file path, ``~`` expanded; None (and ``default`` named) when unset or unusable."""
        value = self.raw(name)
        if not value:
            return None
        try:
            return Path(value).expanduser()
        except (RuntimeError, ValueError):  # "~unknown-user/..." or a NUL byte
            self.bad(name, value, "a file path", default)
            return None

    def session_id(self, name: str) -> Optional[str]:
        value = self.raw(name)
        if value is None:
            return None
        reason = session_id_error(value)
        if reason:
            self.problem(f"{name}={value[:80]!r} is not a valid session id: it {reason}", "ignored")
            return None
        return value

    def secret(self, name: str) -> Optional[str]:
        """A credential: printable ASCII with no spaces, else refused without showing it."""
        value = self.raw(name)
        if value is not None and not (value.isascii() and value.isprintable() and " " not in value):
            self.problem(
                f"{name} is not valid: it contains spaces, line breaks or non-ASCII characters "
                "(the value is not shown)",
                "delivery to Lucidic is disabled",
            )
            return None
        return value

    def host_patterns(self, name: str) -> Optional[Tuple[str, ...]]:
        """A comma list of host patterns (``api.example.com``, ``*.internal``), lower-cased;
        None when unset. Invalid entries are reported and left out."""
        value = self.raw(name)
        if value is None:
            return None
        valid = []
        for raw in value.split(","):
            pattern = raw.strip().lower()
            if not pattern:
                continue
            reason = host_pattern_error(pattern)
            if reason is None:
                valid.append(pattern.strip("[]"))
            else:
                self.problem(
                    f"{name}: {raw.strip()[:80]!r} {reason}: expected a comma list of host names "
                    "or patterns such as api.example.com, *.internal, 127.0.0.1",
                    "that entry is ignored",
                )
        return tuple(valid)

    def text(self, name: str, max_len: int = 1024) -> Optional[str]:
        value = self.raw(name)
        if value is not None and (len(value) > max_len or not value.isprintable()):
            shown = value if len(value) <= 80 else value[:77] + "..."
            self.problem(
                f"{name}={shown!r} is not valid: expected printable text of at most {max_len} "
                "chars",
                "ignored",
            )
            return None
        return value


_MB = 1024 * 1024
# Each default is written once, on the Settings fields; the reader takes them from here.
_DEFAULTS = Settings()


def load_settings(env: Optional[Mapping[str, str]] = None) -> Settings:
    """Read every ``LUCIDIC_*`` variable from ``env`` (default: ``os.environ``).

    Problems are collected in ``Settings.problems``; :func:`get_settings` logs them once.
    """
    r = _Reader(os.environ if env is None else env)
    strict = r.strict = r.boolean(ev.LUCIDIC_STRICT, _DEFAULTS.strict)
    trust = r.choice(ev.LUCIDIC_BAGGAGE_TRUST, _DEFAULTS.baggage_trust, TRUST_MODES)
    secret_text = r.raw(ev.LUCIDIC_BAGGAGE_SECRET)
    # surrogateescape gives back the exact bytes of a secret that is not valid UTF-8.
    secret = secret_text.encode("utf-8", "surrogateescape") if secret_text else None
    if trust == "signed" and (secret is None or len(secret) < 16):
        r.problem(
            "LUCIDIC_BAGGAGE_TRUST=signed needs LUCIDIC_BAGGAGE_SECRET set to a shared secret of "
            "at least 16 bytes",
            "inbound baggage sessions are ignored until it is",
        )
        secret = None

    base_url = r.raw(ev.LUCIDIC_BASE_URL)
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        r.bad(ev.LUCIDIC_BASE_URL, base_url, "an http:// or https:// URL", DEFAULT_BASE_URL)
        base_url = None
    region = r.choice(ev.LUCIDIC_REGION, "us", tuple(REGION_BASE_URLS))
    resolved_url = (base_url or REGION_BASE_URLS[region]).rstrip("/")

    prices_path = r.path(ev.LUCIDIC_PRICES, "the built-in price table")
    store_path = r.path(ev.LUCIDIC_STORE_PATH, "the default location")
    settings = Settings(
        api_key=r.secret(ev.LUCIDIC_API_KEY),
        agent_id=r.text(ev.LUCIDIC_AGENT_ID, 256),
        session_id=r.session_id(ev.LUCIDIC_SESSION_ID),
        session_name=r.text(ev.LUCIDIC_SESSION_NAME, 1024),
        auto_end=r.boolean(ev.LUCIDIC_AUTO_END, _DEFAULTS.auto_end),
        session_idle_end=r.number(
            ev.LUCIDIC_SESSION_IDLE_END, _DEFAULTS.session_idle_end, float, 1, 86400, "seconds"
        ),
        baggage_trust=trust,
        baggage_secret=secret,
        propagate=r.boolean(ev.LUCIDIC_PROPAGATE, _DEFAULTS.propagate),
        propagate_to=r.host_patterns(ev.LUCIDIC_PROPAGATE_TO),
        propagate_deny=r.host_patterns(ev.LUCIDIC_PROPAGATE_DENY) or (),
        flush_on_sigterm=r.boolean(ev.LUCIDIC_FLUSH_ON_SIGTERM, _DEFAULTS.flush_on_sigterm),
        flush_on_fork_exit=r.boolean(ev.LUCIDIC_FLUSH_ON_FORK_EXIT, _DEFAULTS.flush_on_fork_exit),
        capture_content=r.boolean(ev.LUCIDIC_CAPTURE_CONTENT, _DEFAULTS.capture_content),
        prices_path=prices_path,
        store_path=store_path,
        store_max_bytes=r.number(
            ev.LUCIDIC_STORE_MAX_MB, _DEFAULTS.store_max_bytes // _MB, int, 1, 1_000_000,
            "megabytes",
        ) * _MB,
        base_url=resolved_url,
        blob_threshold=r.number(
            ev.LUCIDIC_BLOB_THRESHOLD, _DEFAULTS.blob_threshold, int, 1024, 64 * _MB, "bytes"
        ),
        exit_deadline_s=r.number(
            ev.LUCIDIC_EXIT_DEADLINE, _DEFAULTS.exit_deadline_s, float, 0, 600, "seconds"
        ),
        end_grace_s=r.number(
            ev.LUCIDIC_END_GRACE, _DEFAULTS.end_grace_s, float, 0, 60, "seconds"
        ),
        delivery=r.choice(ev.LUCIDIC_DELIVERY, _DEFAULTS.delivery, DELIVERY_MODES),
        strict=strict,
        problems=tuple(r.problems),
    )
    return settings


_lock = threading.Lock()
_settings: Optional[Settings] = None
# Values given in code (``init(api_key=...)``): read as if they were variables, kept in this
# process's memory only, so child processes never inherit a credential through os.environ.
_overrides: dict[str, str] = {}


def set_overrides(**values: Optional[str]) -> None:
    """Use ``values`` (``LUCIDIC_*`` names) over the environment; settings are read anew."""
    global _settings
    with _lock:
        for name, value in values.items():
            if value is None:
                _overrides.pop(name, None)
            else:
                _overrides[name] = value
        _settings = None


def strict_message(problems: Sequence[str]) -> str:
    """The error of strict mode: what is wrong, and that nothing falls back."""
    return (
        "LUCIDIC_STRICT=true and the configuration is invalid: " + "; ".join(problems)
        + " (strict mode uses no default in place of an invalid value)"
    )


def get_settings() -> Settings:
    """The process settings, loaded on first use; problems are logged once, here."""
    global _settings
    current = _settings
    if current is not None:
        return current
    with _lock:
        if _settings is None:
            loaded = load_settings({**os.environ, **_overrides} if _overrides else None)
            for problem in () if loaded.strict else loaded.problems:  # strict: one error
                logger.warning("lucidic-otel configuration: %s", problem)
            if loaded.strict and loaded.problems:
                _settings = loaded
                raise ConfigError(strict_message(loaded.problems))
            _settings = loaded
        return _settings


def reset_settings() -> None:
    """Forget the loaded settings and any in-code overrides (tests, a changed environment)."""
    global _settings
    with _lock:
        _settings = None
        _overrides.clear()
