from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lucidic_otel.convert.pricing import PRICES_PER_MILLION, cost, price


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", (2.50, 10.00)),
        ("gpt-4o-2024-08-06", (2.50, 10.00)),
        ("gpt-4o-2024-05-13", (5.00, 15.00)),  # a dated snapshot with its own price wins
        ("gpt-4o-mini", (0.15, 0.60)),
        ("gpt-4o-mini-2024-07-18", (0.15, 0.60)),
        ("GPT-4o-Mini", (0.15, 0.60)),
        ("gpt-4-0613", (30.00, 60.00)),
        ("gpt-4-turbo-2024-04-09", (10.00, 30.00)),
        ("gpt-4.1-2025-04-14", (2.00, 8.00)),
        ("gpt-4.1-mini-2025-04-14", (0.40, 1.60)),
        ("gpt-3.5-turbo-0125", (0.50, 1.50)),
        ("o1-2024-12-17", (15.00, 60.00)),
        ("o3-mini-2025-01-31", (1.10, 4.40)),
        ("text-embedding-3-small", (0.02, 0.0)),
        ("openai/gpt-4o", (2.50, 10.00)),
        ("claude-3-5-sonnet-20241022", (3.00, 15.00)),
        ("claude-3-5-sonnet-latest", (3.00, 15.00)),
        ("claude-sonnet-4-5-20250929", (3.00, 15.00)),
        ("claude-opus-4-20250514", (15.00, 75.00)),
        ("claude-opus-4-1-20250805", (15.00, 75.00)),
        ("anthropic.claude-3-haiku-20240307-v1:0", (0.25, 1.25)),
        ("us.anthropic.claude-3-7-sonnet-20250219-v1:0", (3.00, 15.00)),
        ("claude-3-5-sonnet-v2@20241022", (3.00, 15.00)),
        ("models/gemini-1.5-pro-002", (1.25, 5.00)),
        ("gemini-2.0-flash-001", (0.10, 0.40)),
        ("gemini-2.0-flash-lite-001", (0.075, 0.30)),
        ("gemini-2.5-flash-lite", (0.10, 0.40)),
        ("mistral-large-latest", (2.00, 6.00)),
        ("mistral-small-2503", (0.10, 0.30)),
        ("deepseek-chat", (0.27, 1.10)),
        ("grok-3-mini", (0.30, 0.50)),
        ("command-r-plus-08-2024", (2.50, 10.00)),
    ],
)
def test_price_normalises_model_names(model: str, expected: tuple) -> None:
    assert price(model) == expected


@pytest.mark.parametrize(
    "model",
    [
        "unknown",
        "",
        "   ",
        "my-azure-deployment",
        "gpt-4o1",  # not a boundary after "gpt-4o"
        "o1x",
        "gpt-4.7",  # "." is not a boundary: no fallback to gpt-4's price
        "ft:gpt-4o-mini-2024-07-18:org::abc",  # fine-tunes are priced differently
        "llama-3.1-70b",
    ],
)
def test_price_is_none_for_unknown_models(model: str) -> None:
    assert price(model) is None
    assert cost(model, 1000, 1000) is None


@pytest.mark.parametrize("model", [None, 42, 1.5, b"gpt-4o", ["gpt-4o"], {"m": "gpt-4o"}])
def test_non_string_model_has_no_price(model: object) -> None:
    assert price(model) is None
    assert cost(model, 10, 10) is None


def test_every_table_key_prices_itself() -> None:
    for model, rates in PRICES_PER_MILLION.items():
        assert price(model) == rates, model


def test_cost_arithmetic() -> None:
    # gpt-4o-mini: 0.15 in, 0.60 out per 1M tokens
    assert cost("gpt-4o-mini", 12, 5) == pytest.approx(4.8e-06, abs=1e-15)
    assert cost("gpt-4o", 1_000_000, 1_000_000) == 12.5
    assert cost("claude-3-opus-20240229", 2_000, 1_000) == pytest.approx(0.105)
    assert cost("gpt-4o", 0, 0) == 0.0


@pytest.mark.parametrize(
    ("input_tokens", "output_tokens", "expected"),
    [
        (None, 1_000_000, 10.0),
        (1_000_000, None, 2.5),
        (None, None, 0.0),
        (-5, 1_000_000, 10.0),
        (True, 1_000_000, 10.0),
        ("100", 1_000_000, 10.0),
        (float("nan"), 1_000_000, 10.0),
        (float("inf"), 1_000_000, 10.0),
        (1_000_000.0, 0, 2.5),
    ],
)
def test_cost_treats_missing_or_invalid_counts_as_zero(
    input_tokens: object, output_tokens: object, expected: float
) -> None:
    assert cost("gpt-4o", input_tokens, output_tokens) == pytest.approx(expected)


@given(
    model=st.one_of(st.text(max_size=80), st.sampled_from(sorted(PRICES_PER_MILLION))),
    input_tokens=st.one_of(st.none(), st.integers(), st.floats(allow_nan=True)),
    output_tokens=st.one_of(st.none(), st.integers(), st.floats(allow_nan=True)),
)
def test_cost_never_raises(model: str, input_tokens: object, output_tokens: object) -> None:
    result = cost(model, input_tokens, output_tokens)
    assert result is None or (math.isfinite(result) and result >= 0)
