"""Target discovery for each supported family, heads, errors that list candidates, naming."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import transformers
from torch import nn

from adalora_core.adalora_model import inject_adalora, inject_lora
from adalora_core.config import AdaLoraConfig
from adalora_core.errors import ConfigError
from adalora_core.inject import candidate_names, find_targets, module_layer_and_kind
from adalora_core.layers import SVDLinear

SMALL = {"vocab_size": 64, "max_position_embeddings": 32}
ENCODER = {
    **SMALL,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 24,
}

# (config class, model class, config kwargs, heads, expected kinds per layer, adapted count)
FAMILIES = {
    "bert": (
        "BertConfig",
        "BertForSequenceClassification",
        ENCODER,
        ["classifier"],
        {"attention.self.query", "attention.self.key", "attention.self.value"}
        | {"attention.output.dense", "intermediate.dense", "output.dense"},
        12,
    ),
    "roberta": (
        "RobertaConfig",
        "RobertaForSequenceClassification",
        {**ENCODER, "pad_token_id": 1},
        ["classifier"],
        {"attention.self.query", "attention.self.key", "attention.self.value"}
        | {"attention.output.dense", "intermediate.dense", "output.dense"},
        12,
    ),
    "deberta-v2": (
        "DebertaV2Config",
        "DebertaV2ForSequenceClassification",
        ENCODER,
        ["classifier"],
        {"attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj"}
        | {"attention.output.dense", "intermediate.dense", "output.dense"},
        12,
    ),
    "mpnet": (
        "MPNetConfig",
        "MPNetForSequenceClassification",
        ENCODER,
        ["classifier"],
        {"attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o"}
        | {"intermediate.dense", "output.dense"},
        12,
    ),
    "gpt2": (
        "GPT2Config",
        "GPT2ForSequenceClassification",
        {**SMALL, "n_embd": 16, "n_layer": 2, "n_head": 2, "n_positions": 32, "pad_token_id": 0},
        ["score"],
        {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"},
        8,
    ),
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {**ENCODER, "num_key_value_heads": 2},
        [],
        {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}
        | {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"},
        14,
    ),
    "bart": (
        "BartConfig",
        "BartForSequenceClassification",
        {
            **SMALL,
            "d_model": 16,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 24,
            "decoder_ffn_dim": 24,
        },
        ["classification_head"],
        {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"}
        | {"encoder_attn.q_proj", "encoder_attn.k_proj", "encoder_attn.v_proj"}
        | {"encoder_attn.out_proj", "fc1", "fc2"},
        2 * 6 + 2 * 10,
    ),
    "t5": (
        "T5Config",
        "T5ForConditionalGeneration",
        {"vocab_size": 64, "d_model": 16, "d_kv": 8, "d_ff": 24, "num_layers": 2, "num_heads": 2},
        [],
        {"SelfAttention.q", "SelfAttention.k", "SelfAttention.v", "SelfAttention.o"}
        | {"EncDecAttention.q", "EncDecAttention.k", "EncDecAttention.v", "EncDecAttention.o"}
        | {"DenseReluDense.wi", "DenseReluDense.wo"},
        2 * 6 + 2 * 10,
    ),
}


def _build(family: str) -> tuple[nn.Module, list[str]]:
    config_cls, model_cls, kwargs, heads, _, _ = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**kwargs)
    return getattr(transformers, model_cls)(config).eval(), heads


def _kind_after_layer(path: str) -> str:
    parts = path.split(".")
    last_index = max(i for i, part in enumerate(parts) if part.isdigit())
    return ".".join(parts[last_index + 1 :])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_default_targets_cover_attention_and_ffn(family: str) -> None:
    model, heads = _build(family)
    assert model.config.model_type == family
    *_, kinds, count = FAMILIES[family]
    targets = find_targets(model, None, heads)
    assert len(targets) == count
    assert {_kind_after_layer(path) for path in targets} == kinds
    head_names = {"classifier", "score", "classification_head", "lm_head"}
    assert not any(set(path.split(".")) & head_names for path in targets)


@pytest.mark.parametrize("family", ["gpt2", "t5", "bart"])
def test_injected_model_is_unchanged_at_step_zero(family: str) -> None:
    model, heads = _build(family)
    ids = torch.randint(3, 64, (2, 6))
    inputs = {"input_ids": ids}
    if family in ("t5", "bart"):
        inputs["decoder_input_ids"] = ids
    if family == "bart":  # BART's classification head needs one EOS per row
        ids[:, -1] = model.config.eos_token_id
    before = model(**inputs).logits
    config = AdaLoraConfig(init_r=4, target_r=2)
    wrapped = inject_adalora(model, config, schedule=config.schedule(20), head_modules=heads)
    # Not bitwise: MKL may pick alignment-dependent kernels for the (unchanged) attention math.
    torch.testing.assert_close(wrapped(**inputs).logits, before, rtol=1e-6, atol=1e-5)
    assert all(isinstance(layer, SVDLinear) for layer in wrapped.adapted.values())


def test_only_adapters_and_head_train(make_tiny_bert) -> None:
    config = AdaLoraConfig(init_r=4, target_r=2)
    model = inject_adalora(
        make_tiny_bert(),
        config,
        schedule=config.schedule(20),
        head_modules=["classifier"],
    )
    trainable = {name for name, p in model.base_model.named_parameters() if p.requires_grad}
    expected_heads = {"classifier.weight", "classifier.bias"}
    assert expected_heads <= trainable
    assert all(
        name.rsplit(".", 1)[-1] in {"lora_A", "lora_B", "lora_E"}
        for name in trainable - expected_heads
    )
    assert model.head_paths == ["classifier"]
    assert {id(p) for p in model.head_parameters()} == {
        id(p) for p in model.base_model.classifier.parameters()
    }


def test_head_is_never_targeted_even_if_a_pattern_matches(make_tiny_bert) -> None:
    model = make_tiny_bert()
    targets = find_targets(model, ("dense", "classifier"), ["classifier"])
    assert "classifier" not in targets and "bert.pooler.dense" in targets


def test_regex_targets() -> None:
    model, heads = _build("bert")
    targets = find_targets(model, r".*\.layer\.0\.attention\.self\.(query|value)", heads)
    assert targets == [
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.0.attention.self.value",
    ]


def test_unmatched_patterns_list_the_candidates(make_tiny_bert) -> None:
    with pytest.raises(ConfigError) as info:
        find_targets(make_tiny_bert(), ("q_proj",), ["classifier"])
    assert info.value.field == "adalora.target_modules"
    assert "attention.self.query" in info.value.message
    assert "intermediate.dense" in info.value.message


class _Mystery(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="mystery")
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"mix": nn.Linear(4, 4), "norm": nn.LayerNorm(4)}) for _ in range(2)
        )
        self.out = nn.Linear(4, 2)


def test_unknown_family_without_targets_lists_the_candidates() -> None:
    with pytest.raises(ConfigError) as info:
        find_targets(_Mystery(), None)
    assert info.value.field == "adalora.target_modules"
    assert "mystery" in info.value.message
    assert "['mix', 'out']" in info.value.message  # deduplicated over the two blocks
    assert find_targets(_Mystery(), ("mix",)) == ["blocks.0.mix", "blocks.1.mix"]


def test_candidate_names_are_deduplicated_suffixes() -> None:
    paths = [
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.1.attention.self.query",
        "bert.pooler.dense",
    ]
    assert candidate_names(paths) == ["attention.self.query", "bert.pooler.dense"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("bert.encoder.layer.3.attention.self.query", (3, "query")),
        ("bert.encoder.layer.3.attention.output.dense", (3, "attention.output.dense")),
        ("bert.encoder.layer.3.output.dense", (3, "output.dense")),
        ("transformer.h.0.attn.c_proj", (0, "attn.c_proj")),
        ("transformer.h.0.mlp.c_proj", (0, "mlp.c_proj")),
        ("model.layers.5.self_attn.q_proj", (5, "self_attn.q_proj")),
        ("encoder.block.1.layer.0.SelfAttention.q", (1, "SelfAttention.q")),
        ("decoder.block.1.layer.1.EncDecAttention.q", (1, "decoder.EncDecAttention.q")),
        ("model.decoder.layers.0.fc1", (0, "decoder.fc1")),
        ("bert.pooler.dense", (None, "bert.pooler.dense")),
    ],
)
def test_module_layer_and_kind(path: str, expected: tuple[int | None, str]) -> None:
    assert module_layer_and_kind(path) == expected


def test_lora_baseline_has_the_trainer_methods(make_tiny_bert, batch) -> None:
    model = inject_lora(make_tiny_bert(), r=4, lora_alpha=8.0, head_modules=["classifier"])
    assert len(model.adapted) == 12
    assert set(model.ranks().values()) == {4}
    assert model.budget_now() == 48
    assert float(model.regularization_loss()) == 0.0
    model.update_and_allocate(1)
    assert model.rank_pattern()[next(iter(model.adapted))] == [True] * 4
    loss = model(**batch).loss
    loss.backward()
    assert all(p.grad is not None for p in model.adapter_parameters())
    with pytest.raises(ConfigError):
        inject_lora(make_tiny_bert(), r=0, lora_alpha=8.0)
