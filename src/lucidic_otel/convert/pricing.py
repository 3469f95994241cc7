"""Client-side LLM cost estimates.

The Lucidic backend expects ``usage.cost`` (USD) on every ``llm_generation`` event and does not
compute it itself, so the client has to. Prices are list prices for standard (non-batch,
non-cached, short-context) usage, in USD per one million tokens, as published by each vendor at
the time of writing. They drift; the table is deliberately a plain dict so that an update is a
one-line change.

Model names reach us in many spellings: dated snapshots (``gpt-4o-2024-08-06``), vendor or
router prefixes (``openai/gpt-4o``, ``models/gemini-1.5-pro``), Bedrock ids
(``us.anthropic.claude-3-5-sonnet-20240620-v1:0``) and Vertex ids
(``claude-3-5-sonnet-v2@20241022``). :func:`price` reduces a name to a table key by exact match
first, then by the longest key that is a prefix *ending at a name boundary* (``-``, ``:``, ``@``
or ``/``), so ``gpt-4o-mini`` never falls back to ``gpt-4o`` and ``gpt-4o`` never to ``gpt-4``.
A model that matches nothing has no price: :func:`cost` returns None rather than guessing,
because a wrong number on a dashboard is worse than a missing one.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple

logger = logging.getLogger(__name__)

# model -> (input USD per 1M tokens, output USD per 1M tokens)
PRICES_PER_MILLION: Dict[str, Tuple[float, float]] = {
    # OpenAI
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-chat-latest": (1.25, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.5-preview": (75.00, 150.00),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-2024-05-13": (5.00, 15.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o-audio-preview": (2.50, 10.00),
    "gpt-4o-mini-audio-preview": (0.15, 0.60),
    "gpt-4o-realtime-preview": (5.00, 20.00),
    "gpt-4o-mini-realtime-preview": (0.60, 2.40),
    "gpt-4o-search-preview": (2.50, 10.00),
    "gpt-4o-mini-search-preview": (0.15, 0.60),
    "chatgpt-4o-latest": (5.00, 15.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4-1106-preview": (10.00, 30.00),
    "gpt-4-0125-preview": (10.00, 30.00),
    "gpt-4-vision-preview": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-4-32k": (60.00, 120.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-3.5-turbo-instruct": (1.50, 2.00),
    "gpt-3.5-turbo-16k": (3.00, 4.00),
    "o1": (15.00, 60.00),
    "o1-preview": (15.00, 60.00),
    "o1-mini": (1.10, 4.40),
    "o1-pro": (150.00, 600.00),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o3-pro": (20.00, 80.00),
    "o4-mini": (1.10, 4.40),
    "text-embedding-3-small": (0.02, 0.0),
    "text-embedding-3-large": (0.13, 0.0),
    "text-embedding-ada-002": (0.10, 0.0),
    # Anthropic
    "claude-opus-4-5": (5.00, 25.00),
    "claude-opus-4-1": (15.00, 75.00),
    "claude-opus-4": (15.00, 75.00),
    "claude-sonnet-4-6": (3.00, 15.00),
    "claude-sonnet-4-5": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-haiku-4-5": (1.00, 5.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-opus": (15.00, 75.00),
    "claude-3-sonnet": (3.00, 15.00),
    "claude-3-haiku": (0.25, 1.25),
    "claude-2.1": (8.00, 24.00),
    "claude-2.0": (8.00, 24.00),
    "claude-2": (8.00, 24.00),
    "claude-instant-1.2": (0.80, 2.40),
    # Google
    "gemini-3-pro-preview": (2.00, 12.00),
    "gemini-2.5-pro": (1.25, 10.00),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.0-flash-lite": (0.075, 0.30),
    "gemini-1.5-pro": (1.25, 5.00),
    "gemini-1.5-flash": (0.075, 0.30),
    "gemini-1.5-flash-8b": (0.0375, 0.15),
    "gemini-1.0-pro": (0.50, 1.50),
    "gemini-pro": (0.50, 1.50),
    "text-embedding-004": (0.0, 0.0),
    # Mistral
    "mistral-large": (2.00, 6.00),
    "mistral-medium": (0.40, 2.00),
    "mistral-small": (0.10, 0.30),
    "magistral-medium": (2.00, 5.00),
    "magistral-small": (0.50, 1.50),
    "codestral": (0.30, 0.90),
    "devstral-small": (0.10, 0.30),
    "devstral-medium": (0.40, 2.00),
    "pixtral-large": (2.00, 6.00),
    "pixtral-12b": (0.15, 0.15),
    "ministral-8b": (0.10, 0.10),
    "ministral-3b": (0.04, 0.04),
    "open-mistral-nemo": (0.15, 0.15),
    "open-mistral-7b": (0.25, 0.25),
    "open-mixtral-8x7b": (0.70, 0.70),
    "open-mixtral-8x22b": (2.00, 6.00),
    "mistral-embed": (0.10, 0.0),
    # DeepSeek
    "deepseek-chat": (0.27, 1.10),
    "deepseek-reasoner": (0.55, 2.19),
    # xAI
    "grok-4": (3.00, 15.00),
    "grok-3": (3.00, 15.00),
    "grok-3-mini": (0.30, 0.50),
    "grok-2": (2.00, 10.00),
    # Cohere
    "command-a": (2.50, 10.00),
    "command-r-plus": (2.50, 10.00),
    "command-r": (0.15, 0.60),
    "command-r7b": (0.0375, 0.15),
}

_BOUNDARIES = frozenset("-:@/")
# Prefixes that routers and clouds put in front of a vendor's own model name.
_ROUTE_PREFIXES = (
    "us.", "eu.", "apac.", "global.",
    "anthropic.", "mistral.", "cohere.", "meta.", "amazon.", "deepseek.",
)
_KEYS_LONGEST_FIRST = sorted(PRICES_PER_MILLION, key=len, reverse=True)


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


def price(model: object) -> Optional[Tuple[float, float]]:
    """(input, output) USD per 1M tokens for ``model``, or None when it is not in the table."""
    if not isinstance(model, str) or not model.strip():
        return None
    name = _normalise(model)
    exact = PRICES_PER_MILLION.get(name)
    if exact is not None:
        return exact
    for key in _KEYS_LONGEST_FIRST:
        if name.startswith(key) and name[len(key)] in _BOUNDARIES:
            return PRICES_PER_MILLION[key]
    return None


# No single call comes near this; larger counts are corrupt data, not usage.
_MAX_TOKENS = 10**12


def _tokens(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if not 0 < value <= _MAX_TOKENS:  # also rejects NaN and infinities
        return 0
    return int(value)


def cost(model: object, input_tokens: object, output_tokens: object) -> Optional[float]:
    """Estimated USD cost of one call, or None when the model has no known price.

    Missing or nonsensical token counts (None, negative, non-numeric, absurdly large) count as
    zero, so a call whose usage was not reported costs 0.0 for a known model rather than
    failing. Cache, batch and long-context discounts or surcharges are not modelled.
    """
    rates = price(model)
    if rates is None:
        return None
    usd = (_tokens(input_tokens) * rates[0] + _tokens(output_tokens) * rates[1]) / 1_000_000
    return round(usd, 10)
