"""Fixtures for the OpenAI-compatible routes: a tiny Llama base with a chat template, an adapter
on it, and the official `openai` client pointed at a live server."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import openai
import pytest

from service.settings import Settings
from tests.conftest import TenantKey
from tests.serving.tiny_serving import greedy_alone, make_adapter, make_model, make_tokenizer

LLAMA = "tiny-llama"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant{% endif %}"
)
RANKS = {"model.layers.0.self_attn.q_proj": 4, "model.layers.1.mlp.down_proj": 3}


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The shared settings plus a tiny Llama base with a chat template."""
    path = tmp_path / LLAMA
    make_model("llama").save_pretrained(path)
    tokenizer = make_tokenizer(with_cls=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return settings.model_copy(update={"base_models": {**settings.base_models, LLAMA: str(path)}})


@pytest.fixture
def llama_adapter(store_bundle: Any, tenant: TenantKey) -> tuple[str, Any]:
    weights = make_adapter(LLAMA, "causal-lm", RANKS, seed=41)
    weights = dataclasses.replace(weights, meta=dataclasses.replace(weights.meta, base_model=LLAMA))
    return store_bundle(tenant, weights, LLAMA), weights


@pytest.fixture
def client(live_server: Any, tenant: TenantKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=tenant.secret, max_retries=0)


def greedy(weights: Any, prompt_ids: list[int], max_new: int) -> tuple[str, int]:
    out = greedy_alone(LLAMA, weights, prompt_ids, max_new)
    return make_tokenizer(with_cls=False).decode(out, skip_special_tokens=True), len(out)


def chat_ids(messages: list[dict[str, str]]) -> list[int]:
    tokenizer = make_tokenizer(with_cls=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return list(
        tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=True
        )["input_ids"]
    )
