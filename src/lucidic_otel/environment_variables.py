"""Every ``LUCIDIC_*`` environment variable, once: its name, what it does, its default.

Why a module of names: a variable spelled in two places can drift (one reader renamed, the
other not) and nobody notices until a setting silently stops working. Code reads settings only
through :func:`lucidic_otel.config.get_settings`, which reads these names; the README's table
documents the same list (``tests/test_config.py`` checks the two agree).
"""

from __future__ import annotations

LUCIDIC_API_KEY = "LUCIDIC_API_KEY"
"""backend key; with ``LUCIDIC_AGENT_ID``, enables delivery (default unset; text)"""

LUCIDIC_AGENT_ID = "LUCIDIC_AGENT_ID"
"""the agent the sessions belong to (default unset; text)"""

LUCIDIC_BASE_URL = "LUCIDIC_BASE_URL"
"""backend URL; wins over the region (default ``https://backend.lucidic.ai/api``; http(s) URL)"""

LUCIDIC_REGION = "LUCIDIC_REGION"
"""backend region (default ``us``; ``us``, ``india``)"""

LUCIDIC_SESSION_NAME = "LUCIDIC_SESSION_NAME"
"""zero-code: start a session with this name at start-up (default unset; text)"""

LUCIDIC_SESSION_ID = "LUCIDIC_SESSION_ID"
"""the id for that session; alone, join a session started elsewhere (default unset;
``[A-Za-z0-9._:-]{1,128}``)
"""

LUCIDIC_AUTO_END = "LUCIDIC_AUTO_END"
"""end ``init``/zero-code sessions at exit, after their spans (default ``true``; bool)"""

LUCIDIC_SESSION_IDLE_END = "LUCIDIC_SESSION_IDLE_END"
"""end a session bound with ``session``/``with_session``/``set_active_session`` after this long
with no span of it here; a later binding re-opens it (default unset: never; 1-86400 seconds)
"""

LUCIDIC_BAGGAGE_TRUST = "LUCIDIC_BAGGAGE_TRUST"
"""which inbound baggage session ids are stamped (default ``accept``; ``accept``, ``ignore``,
``signed``)
"""

LUCIDIC_BAGGAGE_SECRET = "LUCIDIC_BAGGAGE_SECRET"
"""HMAC secret for ``signed`` (outbound ids are signed too) (default unset; 16+ bytes)"""

LUCIDIC_PROPAGATE = "LUCIDIC_PROPAGATE"
"""``false``: no outbound carrier gets the session, not even one this service joined (default
``true``; bool)
"""

LUCIDIC_PROPAGATE_TO = "LUCIDIC_PROPAGATE_TO"
"""only these hosts get the session (even inside LLM calls); e.g. ``*.internal,10.*`` (default
unset; host patterns)
"""

LUCIDIC_PROPAGATE_DENY = "LUCIDIC_PROPAGATE_DENY"
"""these hosts never get the session (on top of the built-in LLM provider list) (default unset;
host patterns)
"""

LUCIDIC_CAPTURE_CONTENT = "LUCIDIC_CAPTURE_CONTENT"
"""``false``: no prompt/completion/tool text is stored or sent anywhere (default ``true``; bool)"""

LUCIDIC_PRICES = "LUCIDIC_PRICES"
"""a JSON file of model prices laid over the built-in table, see ``docs/pricing.md`` (default
unset; path)"""

LUCIDIC_FLUSH_ON_SIGTERM = "LUCIDIC_FLUSH_ON_SIGTERM"
"""install the SIGTERM flush handler (default ``true``; bool)"""

LUCIDIC_FLUSH_ON_FORK_EXIT = "LUCIDIC_FLUSH_ON_FORK_EXIT"
"""flush in forked children's ``os._exit`` (default ``true``; bool)"""

LUCIDIC_EXIT_DEADLINE = "LUCIDIC_EXIT_DEADLINE"
"""how long exit may spend flushing and delivering (default ``5``; 0-600 seconds)"""

LUCIDIC_END_GRACE = "LUCIDIC_END_GRACE"
"""how long the end of a session whose baggage went to another service waits for that
service's events (default ``1``; 0-60 seconds)
"""

LUCIDIC_DELIVERY = "LUCIDIC_DELIVERY"
"""where the sender runs: a helper process off the application's GIL, or threads in the
application (default ``process``; ``process``, ``thread``)
"""

LUCIDIC_STORE_PATH = "LUCIDIC_STORE_PATH"
"""the local store / outbox (default ``$XDG_DATA_HOME/lucidic-otel/store.db``
(``~/.local/share/...``); path)
"""

LUCIDIC_STORE_MAX_MB = "LUCIDIC_STORE_MAX_MB"
"""store size cap; oldest delivered data is evicted first (default ``512``; 1-1000000)"""

LUCIDIC_BLOB_THRESHOLD = "LUCIDIC_BLOB_THRESHOLD"
"""payloads larger than this go through the blob upload (default ``65536``; bytes)"""

LUCIDIC_STRICT = "LUCIDIC_STRICT"
"""raise on invalid settings and arguments instead of warning (default ``false``; bool)"""


#: All of them, in the README's order.
ALL = (
    LUCIDIC_API_KEY,
    LUCIDIC_AGENT_ID,
    LUCIDIC_BASE_URL,
    LUCIDIC_REGION,
    LUCIDIC_SESSION_NAME,
    LUCIDIC_SESSION_ID,
    LUCIDIC_AUTO_END,
    LUCIDIC_SESSION_IDLE_END,
    LUCIDIC_BAGGAGE_TRUST,
    LUCIDIC_BAGGAGE_SECRET,
    LUCIDIC_PROPAGATE,
    LUCIDIC_PROPAGATE_TO,
    LUCIDIC_PROPAGATE_DENY,
    LUCIDIC_CAPTURE_CONTENT,
    LUCIDIC_PRICES,
    LUCIDIC_FLUSH_ON_SIGTERM,
    LUCIDIC_FLUSH_ON_FORK_EXIT,
    LUCIDIC_EXIT_DEADLINE,
    LUCIDIC_END_GRACE,
    LUCIDIC_DELIVERY,
    LUCIDIC_STORE_PATH,
    LUCIDIC_STORE_MAX_MB,
    LUCIDIC_BLOB_THRESHOLD,
    LUCIDIC_STRICT,
)
