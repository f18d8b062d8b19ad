"""Seq2seq (tiny T5) adapters: each row of a mixed batch equals HF `generate` on its adapter
merged into its own copy of the base (and the engine's own answer for the row alone).

Causal-LM rows decode continuously: tests/serving/test_decoding.py."""

from __future__ import annotations

from pathlib import Path

import torch

from adalora_core.formats.bundle import AdapterWeights
from adalora_core.serving.generation import GenerationParams
from tests.serving.tiny_serving import (
    MemorySource,
    make_adapter,
    make_model,
    make_tokenizer,
    merged_reference,
)


def gpt2_adapters() -> dict:
    h = "transformer.h"
    return {
        "g1": make_adapter(
            "tiny-gpt2", "causal-lm", {f"{h}.0.attn.c_attn": 4, f"{h}.1.mlp.c_fc": 2}, seed=11
        ),
        "g2": make_adapter(
            "tiny-gpt2",
            "causal-lm",
            {f"{h}.0.attn.c_proj": 3, f"{h}.1.attn.c_attn": 0, f"{h}.1.mlp.c_proj": 4},
            seed=12,
        ),
    }


def t5_adapters() -> dict:
    return {
        "t1": make_adapter(
            "tiny-t5",
            "seq2seq",
            {
                "encoder.block.0.layer.0.SelfAttention.q": 4,
                "decoder.block.1.layer.1.EncDecAttention.v": 3,
            },
            seed=21,
        ),
        "t2": make_adapter(
            "tiny-t5",
            "seq2seq",
            {
                "decoder.block.0.layer.0.SelfAttention.o": 2,
                "encoder.block.1.layer.1.DenseReluDense.wi": 4,
            },
            seed=22,
        ),
    }


def seq2seq_reference(weights: AdapterWeights | None, text: str, max_new: int) -> str:
    """HF generate, greedy, one input alone, on the plain T5 or on the adapter merged into its
    own copy of it; the text after the decoder's start token."""
    model = make_model("t5") if weights is None else merged_reference(weights)
    tokenizer = make_tokenizer(with_cls=False)
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=max_new, do_sample=False, num_beams=1, pad_token_id=0
        )
    return tokenizer.decode(out[0, 1:], skip_special_tokens=True)


def test_mixed_seq2seq_generation_equals_hf_on_each_merged_adapter(
    make_engine, source: MemorySource, tmp_path: Path
) -> None:
    weights = t5_adapters()
    for adapter_id, w in weights.items():
        source.add(adapter_id, w, tmp_path)
    engine = make_engine()
    base, kind = "tiny-t5", "seq2seq"
    ids = list(weights)
    requests = [
        (ids[0], ["w1 w2 w3 w4 w5", "w9"], 6),
        (None, ["w3 w3 w7"], 5),
        (ids[1], ["w10 w11", "w12 w13 w14 w15 w16 w17"], 8),
    ]
    prepared = [
        engine.prepare(a, inputs, GenerationParams(n), base_model=base, base_kind=kind)
        for a, inputs, n in requests
    ]
    mixed = engine.run(prepared)
    for (adapter_id, inputs, n), got in zip(requests, mixed, strict=True):
        for text, row in zip(inputs, got, strict=True):
            weights_of_row = None if adapter_id is None else weights[adapter_id]
            assert row["text"] == seq2seq_reference(weights_of_row, text, n), (adapter_id, text)
            alone = engine.infer(
                adapter_id, [text], GenerationParams(n), base_model=base, base_kind=kind
            )
            assert row == alone[0]
            assert len(row["text"].split()) <= n
    # The adapters must change what is generated, or this test would prove nothing.
    plain = engine.infer(
        None, ["w1 w2 w3 w4 w5"], GenerationParams(6), base_model=base, base_kind=kind
    )
    assert plain[0] != mixed[0][0]


def test_sampled_generation_runs(make_engine, source, tmp_path) -> None:
    source.add("g1", gpt2_adapters()["g1"], tmp_path)
    engine = make_engine()
    sampled = engine.infer("g1", ["w1 w2"], GenerationParams(4, temperature=0.7, top_p=0.9))
    assert isinstance(sampled[0]["text"], str)
