"""Constrained decoding on SmolLM2's real tokenizer: masked greedy picks make valid documents,
bad schemas are 4xx errors naming their field, grammars are cached, rows are independent."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import torch

from adalora_core.errors import ConfigError
from adalora_core.serving.constraints import (
    JSON_SCHEMA_FIELD,
    GrammarCompiler,
    GrammarViolation,
    RowConstraint,
)

NEG = float("-inf")
MAX_STEPS = 400
ORDER = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 9999},
        "status": {"enum": ["open", "paid", "void"]},
        "customer": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 20},
                "vip": {"type": "boolean"},
            },
            "required": ["name", "vip"],
            "additionalProperties": False,
        },
        "lines": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "maxLength": 10},
                    "qty": {"type": "integer", "minimum": 1, "maximum": 50},
                },
                "required": ["sku", "qty"],
                "additionalProperties": False,
            },
        },
        "note": {"type": ["string", "null"], "maxLength": 30},
    },
    "required": ["id", "status", "customer", "lines"],
    "additionalProperties": False,
}
# A tool's "parameters": a plain JSON Schema for the arguments of a call.
WEATHER_ARGUMENTS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def compiler(smollm2_tokenizer: Any) -> GrammarCompiler:
    return GrammarCompiler(smollm2_tokenizer, [smollm2_tokenizer.eos_token_id])


def eos(tokenizer: Any) -> int:
    return tokenizer.eos_token_id


def greedy(row: RowConstraint, tokenizer: Any, seed: int, bias: torch.Tensor | None = None) -> str:
    """Greedy picks from random logits under the row's mask until end-of-sequence; checks on
    the way that end-of-sequence is masked until the document can end."""
    generator = torch.Generator().manual_seed(seed)
    picked: list[int] = []
    for _ in range(MAX_STEPS):
        logits = torch.randn(len(tokenizer), generator=generator)
        if bias is not None:
            logits += bias
        row.mask(logits)
        assert (logits[eos(tokenizer)] > NEG) == row.can_end
        token = int(logits.argmax())
        if token == eos(tokenizer):
            assert row.is_finished or row.can_end
            return tokenizer.decode(picked)
        row.accept(token)
        picked.append(token)
    raise AssertionError(f"no end-of-sequence in {MAX_STEPS} steps: {tokenizer.decode(picked)!r}")


@pytest.mark.parametrize("schema", [ORDER, WEATHER_ARGUMENTS], ids=["response", "tool"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_picks_from_random_logits_under_a_schema_make_a_valid_document(
    compiler: GrammarCompiler, smollm2_tokenizer: Any, schema: dict, seed: int
) -> None:
    text = greedy(compiler.json_schema(schema).start(), smollm2_tokenizer, seed)
    jsonschema.validate(json.loads(text), schema)


def test_json_object_mode_makes_an_object_and_only_an_object(
    compiler: GrammarCompiler, smollm2_tokenizer: Any
) -> None:
    tokenizer = smollm2_tokenizer
    grammar = compiler.json_object()
    first = torch.zeros(len(tokenizer))
    grammar.start().mask(first)
    for text in ("[", "1", '"', "null"):
        assert first[tokenizer.convert_tokens_to_ids(text)] == NEG, text
    assert first[tokenizer.convert_tokens_to_ids("{")] == 0
    # Random logits would wander inside strings for ever: tokens that close something are
    # favoured, so documents end; what may follow what is still the grammar's alone.
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    closing = torch.tensor([5.0 if any(c in p for c in '"}]') else 0.0 for p in pieces])
    for seed in range(3):
        document = json.loads(greedy(grammar.start(), tokenizer, seed, bias=closing))
        assert isinstance(document, dict)


def test_json_object_mode_lets_a_deeply_nested_object_through_to_its_end(
    compiler: GrammarCompiler, smollm2_tokenizer: Any
) -> None:
    tokenizer = smollm2_tokenizer
    text = json.dumps(
        {"a": {"b": [1, {"c": {"d": {"e": [True, None, "x\\y"]}}}], "f": -2.5e3}},
        separators=(",", ":"),
    )
    row = compiler.json_object().start()
    for token in tokenizer.encode(text, add_special_tokens=False):
        logits = torch.zeros(len(tokenizer))
        row.mask(logits)
        assert logits[token] == 0, tokenizer.decode([token])
        assert not row.can_end
        row.accept(token)
    assert row.can_end and row.is_finished


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}},
        {"type": "no-such-type"},
        {"type": "string", "pattern": "(unclosed"},
        [{"type": "object"}],
    ],
    ids=["dangling-ref", "unknown-type", "bad-pattern", "not-an-object"],
)
def test_a_schema_that_cannot_compile_is_an_error_naming_its_field(
    compiler: GrammarCompiler, schema: Any
) -> None:
    with pytest.raises(ConfigError) as caught:
        compiler.json_schema(schema)
    assert caught.value.field == JSON_SCHEMA_FIELD == "response_format.json_schema.schema"
    with pytest.raises(ConfigError) as caught:
        compiler.json_schema(schema, field="tools[1].function.parameters")
    assert caught.value.field == "tools[1].function.parameters"


def reordered(value: Any) -> Any:
    """The same JSON with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: reordered(v) for k, v in reversed(list(value.items()))}
    if isinstance(value, list):
        return [reordered(v) for v in value]
    return value


def test_the_cache_returns_one_compiled_grammar_for_equal_schemas_in_any_key_order(
    smollm2_tokenizer: Any,
) -> None:
    compiler = GrammarCompiler(smollm2_tokenizer, [eos(smollm2_tokenizer)], cache_size=2)
    assert json.dumps(reordered(ORDER)) != json.dumps(ORDER)
    first = compiler.json_schema(ORDER)
    assert compiler.json_schema(reordered(ORDER)) is first
    assert compiler.json_schema(WEATHER_ARGUMENTS) is not first
    compiler.json_object()  # a third grammar: the least recently used one (ORDER) leaves
    assert compiler.json_schema(WEATHER_ARGUMENTS) is compiler.json_schema(WEATHER_ARGUMENTS)
    assert compiler.json_schema(ORDER) is not first


def test_rows_with_different_schemas_and_a_free_row_mask_one_batch_independently(
    compiler: GrammarCompiler, smollm2_tokenizer: Any
) -> None:
    tokenizer = smollm2_tokenizer
    only = {
        name: {
            "type": "object",
            "properties": {name: {"type": "integer"}},
            "required": [name],
            "additionalProperties": False,
        }
        for name in ("left", "right")
    }
    rows = [compiler.json_schema(only["left"]).start(), compiler.json_schema(only["right"]).start()]
    prefix = tokenizer.encode('{"', add_special_tokens=False)
    for token in prefix:
        for row in rows:
            row.accept(token)
    logits = torch.randn(3, len(tokenizer), generator=torch.Generator().manual_seed(0))
    free = logits[2].clone()
    for i, row in enumerate(rows):
        row.mask(logits[i])
    left, right = (tokenizer.encode(w, add_special_tokens=False)[0] for w in ("left", "right"))
    assert logits[0, left] > NEG and logits[0, right] == NEG
    assert logits[1, right] > NEG and logits[1, left] == NEG
    assert torch.equal(logits[2], free)  # the unconstrained row in the same batch is untouched
    # Advancing one row leaves the other's mask as it was.
    before = torch.zeros(len(tokenizer))
    rows[1].mask(before)
    rows[0].accept(left)
    after = torch.zeros(len(tokenizer))
    rows[1].mask(after)
    assert torch.equal(before, after)


def test_logit_columns_past_the_tokenizer_vocabulary_are_never_allowed(
    compiler: GrammarCompiler, smollm2_tokenizer: Any
) -> None:
    """A model's embedding may be padded past its tokenizer (to a multiple of 64, say)."""
    vocab = len(smollm2_tokenizer)
    logits = torch.zeros(vocab + 64)
    compiler.json_schema(WEATHER_ARGUMENTS).start().mask(logits)
    assert bool((logits[vocab:] == NEG).all())
    assert int((logits[:vocab] == 0).sum()) > 0


def test_a_token_the_mask_forbids_is_refused(
    compiler: GrammarCompiler, smollm2_tokenizer: Any
) -> None:
    row = compiler.json_schema(WEATHER_ARGUMENTS).start()
    with pytest.raises(GrammarViolation):
        row.accept(smollm2_tokenizer.convert_tokens_to_ids("["))
