from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lucidic_otel.convert.pricing import (
    BUILTIN,
    PRICES_PER_MILLION,
    Price,
    cost,
    price,
    table_from_json,
)


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
    found = price(model)
    assert found is not None and (found.input, found.output) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # (input, cached input, output) per 1M: research notes section 5 and the OpenAI pages
        ("gpt-5.5", (5.00, 0.50, 30.00)),
        ("gpt-5.4-2026-03-05", (2.50, 0.25, 15.00)),
        ("gpt-5.4-mini", (0.75, 0.075, 4.50)),
        ("gpt-5.4-nano-2026-03-17", (0.20, 0.02, 1.25)),
        ("gpt-5.2", (1.75, 0.175, 14.00)),
        ("gpt-5.1", (1.25, 0.125, 10.00)),
        ("gpt-5.1-2025-11-13", (1.25, 0.125, 10.00)),
        ("gpt-5.1-codex", (1.25, 0.125, 10.00)),
        ("gpt-5.1-codex-mini", (0.25, 0.025, 2.00)),
        ("gpt-5.1-mini", (0.25, 0.025, 2.00)),
        ("gpt-5", (1.25, 0.125, 10.00)),
        ("gpt-5-mini-2025-08-07", (0.25, 0.025, 2.00)),
        ("gpt-5-nano", (0.05, 0.005, 0.40)),
        ("gpt-4.1", (2.00, 0.50, 8.00)),
        ("gpt-4.1-mini", (0.40, 0.10, 1.60)),
        ("gpt-4.1-nano", (0.10, 0.025, 0.40)),
        ("gpt-4o-2024-08-06", (2.50, 1.25, 10.00)),
        ("gpt-4o-mini-2024-07-18", (0.15, 0.075, 0.60)),
        ("o3", (2.00, 0.50, 8.00)),
        ("o3-mini", (1.10, 0.55, 4.40)),
        ("o4-mini-2025-04-16", (1.10, 0.275, 4.40)),
        ("claude-opus-4-7", (5.00, 0.50, 25.00)),
        ("claude-opus-4-6", (5.00, 0.50, 25.00)),
        ("claude-opus-4-5-20251101", (5.00, 0.50, 25.00)),
        ("claude-opus-4-1-20250805", (15.00, 1.50, 75.00)),
        ("claude-sonnet-4-6", (3.00, 0.30, 15.00)),
        ("claude-sonnet-4-5-20250929", (3.00, 0.30, 15.00)),
        ("claude-sonnet-4-20250514", (3.00, 0.30, 15.00)),
        ("claude-haiku-4-5-20251001", (1.00, 0.10, 5.00)),
    ],
)
def test_current_models_have_their_cached_rate(model: str, expected: tuple) -> None:
    found = price(model)
    assert found is not None and (found.input, found.cached_input, found.output) == expected


def test_a_gpt_5_point_release_never_falls_back_to_gpt_5() -> None:
    assert price("gpt-5.9") is None
    assert price("gpt-5.1-2025-11-13") == PRICES_PER_MILLION["gpt-5.1"]


def test_a_dated_suffix_is_stripped_before_the_prefix_lookup() -> None:
    table = BUILTIN.merged({"acme-large": Price(1.0, 0.5, 2.0, 1.0),
                            "acme-large-v": Price(9.0, 9.0, 9.0, 9.0)})
    # "acme-large-v" is a longer prefix of the raw name, but the undated name is exact.
    assert table.lookup("acme-large_20260101") == Price(1.0, 0.5, 2.0, 1.0)
    assert table.lookup("acme-large-2026-01-01") == Price(1.0, 0.5, 2.0, 1.0)


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
        assert 0 <= rates.cached_input <= rates.input, model


def test_cost_arithmetic() -> None:
    # gpt-4o-mini: 0.15 in, 0.60 out per 1M tokens
    assert cost("gpt-4o-mini", 12, 5) == pytest.approx(4.8e-06, abs=1e-15)
    assert cost("gpt-4o", 1_000_000, 1_000_000) == 12.5
    assert cost("claude-3-opus-20240229", 2_000, 1_000) == pytest.approx(0.105)
    assert cost("gpt-4o", 0, 0) == 0.0


def test_cached_input_tokens_are_billed_at_the_cached_rate() -> None:
    # gpt-4o-mini: 0.15 in, 0.075 cached, 0.60 out; 1000 prompt tokens of which 800 cached.
    assert cost("gpt-4o-mini", 1000, 100, 800) == pytest.approx(
        (200 * 0.15 + 800 * 0.075 + 100 * 0.60) / 1e6, rel=1e-9)
    # More cached than input (a bad count) bills all input as cached, never negative.
    assert cost("gpt-4o-mini", 100, 0, 500) == pytest.approx(100 * 0.075 / 1e6, rel=1e-9)


def test_anthropic_cache_writes_are_billed_at_the_write_rate() -> None:
    # claude-sonnet-4-5: 3 in, 0.30 read, 3.75 write, 15 out; input counts reads and writes.
    assert cost("claude-sonnet-4-5", 1000, 10, 300, 500) == pytest.approx(
        (200 * 3 + 300 * 0.30 + 500 * 3.75 + 10 * 15) / 1e6, rel=1e-9)


def test_reasoning_tokens_are_output_and_not_added_again() -> None:
    # gpt-5.1, 100 output tokens of which 80 reasoning: billed as 100 output tokens.
    assert cost("gpt-5.1", 0, 100) == pytest.approx(100 * 10 / 1e6, rel=1e-9)


def test_a_price_file_is_laid_over_the_builtin_table() -> None:
    entries, problems = table_from_json({
        "my-model": {"input": 1, "output": 2},
        "GPT-4o-mini": {"input": 0.1, "cached_input": 0.01, "output": 0.2},
    })
    assert problems == []
    table = BUILTIN.merged(entries)
    assert table.lookup("my-model-2026-01-01") == Price(1, 1, 2, 1)
    assert table.lookup("gpt-4o-mini") == Price(0.1, 0.01, 0.2, 0.1)
    assert table.lookup("gpt-4o") == PRICES_PER_MILLION["gpt-4o"]
    assert cost("my-model", 1_000_000, 0, table=table) == 1.0
    assert price("my-model") is None  # the built-in table is untouched


@pytest.mark.parametrize(
    "data",
    [
        [],
        "gpt-4o",
        {"m": {"input": 1}},
        {"m": {"input": -1, "output": 1}},
        {"m": {"input": "1", "output": 1}},
        {"m": {"input": True, "output": 1}},
        {"m": {"input": 1, "output": 1, "batch": 0.5}},
        {"m": {"input": float("nan"), "output": 1}},
        {"": {"input": 1, "output": 1}},
        {"m": [1, 2]},
    ],
)
def test_a_bad_price_file_says_so_and_keeps_its_valid_entries(data: object) -> None:
    entries, problems = table_from_json(data)
    assert entries == {} and problems
    if isinstance(data, dict):
        both = table_from_json({**data, "ok": {"input": 1, "output": 1}})
        assert list(both[0]) == ["ok"] and both[1]


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


# ------------------------------------------------------------ LUCIDIC_PRICES, read by the exporter


def test_the_exporter_lays_a_price_file_over_the_builtin_table(tmp_path, caplog) -> None:
    from lucidic_otel.sdk.exporter import load_prices

    path = tmp_path / "prices.json"
    path.write_text('{"acme-1": {"input": 1, "cached_input": 0.1, "output": 2}}', "utf-8")
    table = load_prices(path)
    assert table.lookup("acme-1-20260101") == Price(1, 0.1, 2, 1)
    assert table.lookup("gpt-4o") == PRICES_PER_MILLION["gpt-4o"]
    assert load_prices(None) is BUILTIN
    assert not caplog.records


@pytest.mark.parametrize("text", [None, "not json", '["gpt-4o"]', '{"m": {"input": "x"}}'])
def test_a_bad_price_file_is_one_warning_and_the_builtin_table(tmp_path, caplog, text) -> None:
    from lucidic_otel.sdk.exporter import load_prices

    path = tmp_path / "prices.json"
    if text is not None:
        path.write_text(text, "utf-8")
    with caplog.at_level("WARNING"):
        table = load_prices(path)
    assert table.lookup("gpt-4o") == PRICES_PER_MILLION["gpt-4o"]
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    message = record.getMessage()
    assert str(path) in message and "input" in message and "built-in" in message
