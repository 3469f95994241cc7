"""Client-side LLM cost estimates.

The Lucidic backend expects ``usage.cost`` (USD) on every ``llm_generation`` event and does not
compute it itself, so the client has to. Prices are list prices for standard (non-batch,
short-context) usage, in USD per one million tokens: input, cached input (a prompt-cache read),
output, and for Anthropic the 5-minute cache write.

Where the table comes from: the providers' own pricing pages (developers.openai.com/api/docs/pricing
and the per-model pages, platform.claude.com/docs/en/about-claude/pricing, ai.google.dev pricing,
docs.mistral.ai, api-docs.deepseek.com, docs.x.ai, cohere.com/pricing), cross-checked with the
``pydantic/genai-prices`` data (``prices/providers/*.yml``); OpenAI and Anthropic rows checked
2026-08. Prices drift: **re-check before billing** anyone from these numbers. Models whose
provider publishes no cached rate (or where none was checked) bill cached tokens at the input
rate. ``docs/pricing.md`` lists the sources and how to override the table with a
``LUCIDIC_PRICES`` file, whose decoded JSON :func:`table_from_json` validates and
:meth:`PriceTable.merged` lays over the built-in table (the file itself is read by the caller:
this module does no I/O).

How tokens are billed (as the providers do):

* cached input tokens are part of the input count (OpenAI's ``prompt_tokens`` include
  ``cached_tokens``; the semantic conventions count Anthropic's cache reads and writes in
  ``gen_ai.usage.input_tokens`` too), so they are taken out of it and billed at the cached
  rate, cache writes at the write rate;
* reasoning (thinking) tokens are already inside the output count and are billed as output:
  they are never added again.

Model names reach us in many spellings: dated snapshots (``gpt-4o-2024-08-06``), vendor or
router prefixes (``openai/gpt-4o``, ``models/gemini-1.5-pro``), Bedrock ids
(``us.anthropic.claude-3-5-sonnet-20240620-v1:0``) and Vertex ids
(``claude-3-5-sonnet-v2@20241022``). :func:`price` reduces a name to a table key by exact match
first, then with a dated suffix (``-2024-08-06``, ``-20241022``, ``@20241022``) stripped, then by
the longest key that is a prefix *ending at a name boundary* (``-``, ``:``, ``@`` or ``/``), so
``gpt-4o-mini`` never falls back to ``gpt-4o``, ``gpt-4o`` never to ``gpt-4`` and ``gpt-5.1``
never to ``gpt-5``. A model that matches nothing has no price: :func:`cost` returns None rather
than guessing, because a wrong number on a dashboard is worse than a missing one.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple

logger = logging.getLogger(__name__)


class Price(NamedTuple):
    """USD per 1M tokens."""

    input: float
    cached_input: float
    output: float
    cache_write: float


def _price(input_rate: float, cached: Optional[float], output: float,
           write: Optional[float] = None) -> Price:
    return Price(input_rate, input_rate if cached is None else cached, output,
                 input_rate if write is None else write)


# model -> (input, cached input or None = the input rate, output[, cache write]) per 1M tokens
_TABLE: Dict[str, Tuple[Any, ...]] = {
    # OpenAI (developers.openai.com pricing, 2026-08)
    "gpt-5.5": (5.00, 0.50, 30.00),
    "gpt-5.5-pro": (30.00, None, 180.00),
    "gpt-5.4": (2.50, 0.25, 15.00),
    "gpt-5.4-mini": (0.75, 0.075, 4.50),
    "gpt-5.4-nano": (0.20, 0.02, 1.25),
    "gpt-5.4-pro": (30.00, None, 180.00),
    "gpt-5.2": (1.75, 0.175, 14.00),
    "gpt-5.2-pro": (21.00, None, 168.00),
    "gpt-5.1": (1.25, 0.125, 10.00),
    "gpt-5.1-mini": (0.25, 0.025, 2.00),
    "gpt-5.1-codex-mini": (0.25, 0.025, 2.00),
    "gpt-5": (1.25, 0.125, 10.00),
    "gpt-5-mini": (0.25, 0.025, 2.00),
    "gpt-5-nano": (0.05, 0.005, 0.40),
    "gpt-5-pro": (15.00, None, 120.00),
    "gpt-5-chat-latest": (1.25, 0.125, 10.00),
    "gpt-4.1": (2.00, 0.50, 8.00),
    "gpt-4.1-mini": (0.40, 0.10, 1.60),
    "gpt-4.1-nano": (0.10, 0.025, 0.40),
    "gpt-4.5-preview": (75.00, 37.50, 150.00),
    "gpt-4o": (2.50, 1.25, 10.00),
    "gpt-4o-2024-05-13": (5.00, None, 15.00),
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "gpt-4o-audio-preview": (2.50, None, 10.00),
    "gpt-4o-mini-audio-preview": (0.15, None, 0.60),
    "gpt-4o-realtime-preview": (5.00, 2.50, 20.00),
    "gpt-4o-mini-realtime-preview": (0.60, 0.30, 2.40),
    "gpt-4o-search-preview": (2.50, None, 10.00),
    "gpt-4o-mini-search-preview": (0.15, None, 0.60),
    "chatgpt-4o-latest": (5.00, None, 15.00),
    "gpt-4-turbo": (10.00, None, 30.00),
    "gpt-4-1106-preview": (10.00, None, 30.00),
    "gpt-4-0125-preview": (10.00, None, 30.00),
    "gpt-4-vision-preview": (10.00, None, 30.00),
    "gpt-4": (30.00, None, 60.00),
    "gpt-4-32k": (60.00, None, 120.00),
    "gpt-3.5-turbo": (0.50, None, 1.50),
    "gpt-3.5-turbo-instruct": (1.50, None, 2.00),
    "gpt-3.5-turbo-16k": (3.00, None, 4.00),
    "o1": (15.00, 7.50, 60.00),
    "o1-preview": (15.00, 7.50, 60.00),
    "o1-mini": (1.10, 0.55, 4.40),
    "o1-pro": (150.00, None, 600.00),
    "o3": (2.00, 0.50, 8.00),
    "o3-mini": (1.10, 0.55, 4.40),
    "o3-pro": (20.00, None, 80.00),
    "o4-mini": (1.10, 0.275, 4.40),
    "text-embedding-3-small": (0.02, None, 0.0),
    "text-embedding-3-large": (0.13, None, 0.0),
    "text-embedding-ada-002": (0.10, None, 0.0),
    # Anthropic (platform.claude.com pricing, 2026-08): cache read 0.1x, 5-minute write 1.25x
    "claude-opus-4-7": (5.00, 0.50, 25.00, 6.25),
    "claude-opus-4-6": (5.00, 0.50, 25.00, 6.25),
    "claude-opus-4-5": (5.00, 0.50, 25.00, 6.25),
    "claude-opus-4-1": (15.00, 1.50, 75.00, 18.75),
    "claude-opus-4": (15.00, 1.50, 75.00, 18.75),
    "claude-sonnet-4-6": (3.00, 0.30, 15.00, 3.75),
    "claude-sonnet-4-5": (3.00, 0.30, 15.00, 3.75),
    "claude-sonnet-4": (3.00, 0.30, 15.00, 3.75),
    "claude-haiku-4-5": (1.00, 0.10, 5.00, 1.25),
    "claude-3-7-sonnet": (3.00, 0.30, 15.00, 3.75),
    "claude-3-5-sonnet": (3.00, 0.30, 15.00, 3.75),
    "claude-3-5-haiku": (0.80, 0.08, 4.00, 1.00),
    "claude-3-opus": (15.00, 1.50, 75.00, 18.75),
    "claude-3-sonnet": (3.00, None, 15.00),
    "claude-3-haiku": (0.25, 0.03, 1.25, 0.30),
    "claude-2.1": (8.00, None, 24.00),
    "claude-2.0": (8.00, None, 24.00),
    "claude-2": (8.00, None, 24.00),
    "claude-instant-1.2": (0.80, None, 2.40),
    # Google (cached rates not modelled: billed at the input rate)
    "gemini-3-pro-preview": (2.00, None, 12.00),
    "gemini-2.5-pro": (1.25, None, 10.00),
    "gemini-2.5-flash": (0.30, None, 2.50),
    "gemini-2.5-flash-lite": (0.10, None, 0.40),
    "gemini-2.0-flash": (0.10, None, 0.40),
    "gemini-2.0-flash-lite": (0.075, None, 0.30),
    "gemini-1.5-pro": (1.25, None, 5.00),
    "gemini-1.5-flash": (0.075, None, 0.30),
    "gemini-1.5-flash-8b": (0.0375, None, 0.15),
    "gemini-1.0-pro": (0.50, None, 1.50),
    "gemini-pro": (0.50, None, 1.50),
    "text-embedding-004": (0.0, None, 0.0),
    # Mistral
    "mistral-large": (2.00, None, 6.00),
    "mistral-medium": (0.40, None, 2.00),
    "mistral-small": (0.10, None, 0.30),
    "magistral-medium": (2.00, None, 5.00),
    "magistral-small": (0.50, None, 1.50),
    "codestral": (0.30, None, 0.90),
    "devstral-small": (0.10, None, 0.30),
    "devstral-medium": (0.40, None, 2.00),
    "pixtral-large": (2.00, None, 6.00),
    "pixtral-12b": (0.15, None, 0.15),
    "ministral-8b": (0.10, None, 0.10),
    "ministral-3b": (0.04, None, 0.04),
    "open-mistral-nemo": (0.15, None, 0.15),
    "open-mistral-7b": (0.25, None, 0.25),
    "open-mixtral-8x7b": (0.70, None, 0.70),
    "open-mixtral-8x22b": (2.00, None, 6.00),
    "mistral-embed": (0.10, None, 0.0),
    # DeepSeek
    "deepseek-chat": (0.27, None, 1.10),
    "deepseek-reasoner": (0.55, None, 2.19),
    # xAI
    "grok-4": (3.00, None, 15.00),
    "grok-3": (3.00, None, 15.00),
    "grok-3-mini": (0.30, None, 0.50),
    "grok-2": (2.00, None, 10.00),
    # Cohere
    "command-a": (2.50, None, 10.00),
    "command-r-plus": (2.50, None, 10.00),
    "command-r": (0.15, None, 0.60),
    "command-r7b": (0.0375, None, 0.15),
}

#: The built-in table, model -> :class:`Price`.
PRICES_PER_MILLION: Dict[str, Price] = {
    model: _price(*rates) for model, rates in _TABLE.items()
}

_BOUNDARIES = frozenset("-:@/")
# Prefixes that routers and clouds put in front of a vendor's own model name.
_ROUTE_PREFIXES = (
    "us.", "eu.", "apac.", "global.",
    "anthropic.", "mistral.", "cohere.", "meta.", "amazon.", "deepseek.",
)
# A snapshot date at the end of a name: -2024-08-06, -20241022, _20241022, @20241022.
_DATED = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|[-_@]\d{8})$")
#: What a ``LUCIDIC_PRICES`` entry may hold (USD per 1M tokens, numbers >= 0).
RATE_FIELDS = ("input", "cached_input", "output", "cache_write")


def _normalise(model: str) -> str:
    name = model.strip().lower()
    # "openai/gpt-4o", "models/gemini-1.5-pro", "openrouter/anthropic/claude-3-opus"
    if "/" in name:
        name = name.rsplit("/", 1)[1]
    changed = True
    while changed:
        changed = False
        for prefix in _ROUTE_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                changed = True
    return name


class PriceTable(Mapping[str, Price]):
    """A read-only price table with its keys sorted once for the longest-prefix lookup."""

    __slots__ = ("_prices", "_longest_first")

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices: Dict[str, Price] = {k.strip().lower(): v for k, v in prices.items()}
        self._longest_first = sorted(self._prices, key=len, reverse=True)

    def __getitem__(self, key: str) -> Price:
        return self._prices[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def merged(self, overrides: Mapping[str, Price]) -> PriceTable:
        """This table with ``overrides`` laid over it (an override wins for its key)."""
        return PriceTable({**self._prices, **overrides})

    def lookup(self, model: object) -> Optional[Price]:
        """See :func:`price`."""
        if not isinstance(model, str) or not model.strip():
            return None
        name = _normalise(model)
        found = self._prices.get(name)
        if found is None:
            found = self._prices.get(_DATED.sub("", name))
        if found is not None:
            return found
        for key in self._longest_first:
            if name.startswith(key) and name[len(key):len(key) + 1] in _BOUNDARIES:
                return self._prices[key]
        return None


#: The built-in table as a :class:`PriceTable`: what every conversion uses unless given another.
BUILTIN = PriceTable(PRICES_PER_MILLION)


def price(model: object, table: Optional[PriceTable] = None) -> Optional[Price]:
    """The :class:`Price` of ``model``, or None when it is not in the table.

    Exact name first, then the name without a dated suffix, then the longest key that is a
    prefix ending at a name boundary.
    """
    return (table or BUILTIN).lookup(model)


# No single call comes near this; larger counts are corrupt data, not usage.
_MAX_TOKENS = 10**12


def _tokens(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if not 0 < value <= _MAX_TOKENS:  # also rejects NaN and infinities
        return 0
    return int(value)


def cost(
    model: object,
    input_tokens: object,
    output_tokens: object,
    cached_input_tokens: object = None,
    cache_write_tokens: object = None,
    *,
    table: Optional[PriceTable] = None,
) -> Optional[float]:
    """Estimated USD cost of one call, or None when the model has no known price.

    ``input_tokens`` counts every prompt token, cached ones included (as OpenAI reports them
    and the semantic conventions count them); ``cached_input_tokens`` (cache reads) and
    ``cache_write_tokens`` are the parts of it billed at the cached and cache-write rates, the
    rest at the input rate. Reasoning tokens are part of ``output_tokens`` and billed as output.
    Missing or nonsensical token counts (None, negative, non-numeric, absurdly large) count as
    zero, so a call whose usage was not reported costs 0.0 for a known model rather than
    failing. Batch and long-context discounts or surcharges are not modelled.
    """
    rates = price(model, table)
    if rates is None:
        return None
    total_in = _tokens(input_tokens)
    cached = min(_tokens(cached_input_tokens), total_in)
    written = min(_tokens(cache_write_tokens), total_in - cached)
    usd = (
        (total_in - cached - written) * rates.input
        + cached * rates.cached_input
        + written * rates.cache_write
        + _tokens(output_tokens) * rates.output
    ) / 1_000_000
    return round(usd, 10)


# ------------------------------------------------------------------------ LUCIDIC_PRICES


def table_from_json(data: Any) -> Tuple[Dict[str, Price], List[str]]:
    """The entries of a decoded ``LUCIDIC_PRICES`` file, and what was wrong with it.

    The file is one JSON object ``{"model-prefix": {"input": usd_per_1M, "cached_input": ...,
    "output": ...}}``; ``input`` and ``output`` are required, ``cached_input`` and
    ``cache_write`` default to ``input``. A malformed entry is skipped and named in the
    problems; anything but an object gives no entries.
    """
    if not isinstance(data, Mapping):
        return {}, ["the file must hold one JSON object of model prefix -> rates"]
    entries: Dict[str, Price] = {}
    problems: List[str] = []
    for model, rates in data.items():
        entry = _entry(rates) if isinstance(model, str) and model.strip() else None
        if entry is None:
            problems.append(f"entry {model!r} is not valid")
        else:
            entries[model.strip().lower()] = entry
    return entries, problems


def _entry(rates: Any) -> Optional[Price]:
    if not isinstance(rates, Mapping) or set(rates) - set(RATE_FIELDS):
        return None
    values = {key: rates.get(key) for key in RATE_FIELDS}
    if any(v is not None and not _is_rate(v) for v in values.values()):
        return None
    if values["input"] is None or values["output"] is None:
        return None
    return _price(values["input"], values["cached_input"], values["output"],
                  values["cache_write"])


def _is_rate(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)
