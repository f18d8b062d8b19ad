"""Tiny random-init models shared by the core tests (hidden 32, 2 layers: fast on CPU)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from tests.tiny_models import bert_config, seeded


def tiny_bert_config(**overrides: object) -> BertConfig:
    settings: dict[str, object] = {
        "intermediate_size": 48,
        "max_position_embeddings": 32,
        "num_labels": 2,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    settings.update(overrides)
    return bert_config(**{"vocab_size": 64, **settings})


@pytest.fixture(scope="session")
def make_tiny_bert() -> Callable[..., BertForSequenceClassification]:
    """Seeded factory: the same call gives the same weights."""

    def make(seed: int = 0, **overrides: object) -> BertForSequenceClassification:
        return seeded(BertForSequenceClassification, tiny_bert_config(**overrides), seed).eval()

    return make


@pytest.fixture
def tiny_bert() -> BertForSequenceClassification:
    return seeded(BertForSequenceClassification, tiny_bert_config(), 0).eval()


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(0, 64, (4, 12), generator=generator),
        "labels": torch.tensor([0, 1, 1, 0]),
    }
