"""The real SmolLM2 through /v1/chat/completions: 16 concurrent streams on four adapters and the
plain base, decoded together, each equal to the same request made alone."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from adalora_core.formats.bundle import AdapterMeta, AdapterWeights, ModuleDelta
from service.base_models import SMOLLM2_NAME
from service.settings import Settings

pytestmark = pytest.mark.slow

STREAMS, NEW_TOKENS = 16, 8
KINDS = ("q_proj", "v_proj", "o_proj", "up_proj", "down_proj")
QUESTIONS = ["What is a river?", "Name a colour.", "Why is the sky blue?", "Say hello."]


@pytest.fixture
def settings(settings: Settings, smollm2_dir: Path) -> Settings:
    bases = {**settings.base_models, SMOLLM2_NAME: str(smollm2_dir)}
    return settings.model_copy(update={"base_models": bases})


def random_adapter(smollm2_dir: Path, seed: int) -> AdapterWeights:
    """AdaLoRA-shaped triplets on five projections of every layer, large enough to change
    what the model says."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(smollm2_dir)
    hidden, inner = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    shapes = {
        "q_proj": ("self_attn", hidden, hidden),
        "v_proj": ("self_attn", hidden, kv),
        "o_proj": ("self_attn", hidden, hidden),
        "up_proj": ("mlp", hidden, inner),
        "down_proj": ("mlp", inner, hidden),
    }
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for layer in range(config.num_hidden_layers):
        for kind in KINDS:
            block, fan_in, fan_out = shapes[kind]
            modules[f"model.layers.{layer}.{block}.{kind}"] = ModuleDelta(
                lora_A=torch.randn(4, fan_in, generator=gen) * 0.1,
                lora_B=torch.randn(fan_out, 4, generator=gen) * 0.1,
                lora_E=torch.randn(4, 1, generator=gen),
                scaling=2.0,
            )
    meta = AdapterMeta(
        task={"kind": "causal-lm"},
        base_model=SMOLLM2_NAME,
        init_r=4,
        target_r=4,
        lora_alpha=8,
        scaling=2.0,
        labels=None,
        modules=[{"name": p, "rank": 4} for p in modules],
        max_length=512,
    )
    return AdapterWeights(meta, {"peft_type": "ADALORA"}, modules, {})


def test_sixteen_mixed_streams_each_equal_the_request_alone(
    live_server: Any, tenant: Any, store_bundle: Any, smollm2_dir: Path
) -> None:
    adapters = [
        store_bundle(tenant, random_adapter(smollm2_dir, seed), SMOLLM2_NAME) for seed in range(4)
    ]
    models = [*adapters, SMOLLM2_NAME]
    requests = [(models[i % len(models)], QUESTIONS[i % len(QUESTIONS)]) for i in range(STREAMS)]
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=tenant.secret, max_retries=0)

    def ask(model: str, question: str) -> str:
        chunks = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            max_tokens=NEW_TOKENS,
            temperature=0,
            stream=True,
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    together: list[str | None] = [None] * STREAMS
    start = threading.Barrier(STREAMS)

    def run(index: int) -> None:
        start.wait()
        together[index] = ask(*requests[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(STREAMS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    alone = [ask(model, question) for model, question in requests]
    assert together == alone
    # The adapters must change the answers, or this would test the base sixteen times.
    same_question = {ask(model, QUESTIONS[0]) for model in models}
    assert len(same_question) == len(models)
