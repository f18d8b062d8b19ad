"""The tests' tiny random-init models in one place: BERT, GPT-2, Llama and T5 with hidden size 32
and 2 layers of 2 heads (fast on a CPU), the word-level tokenizer they read, and a seeded build
so that the same call gives the same weights.

Each suite keeps its own vocabulary and the few settings its tests rely on (passed as keyword
settings, which win over the sizes here); `tests/serving/tiny_serving.py` builds them in memory,
`tests/core/tiny_trainer_model.py` saves them to disk like a hub model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import PostProcessor
from transformers import (
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    T5Config,
)

HIDDEN = 32
LAYERS = 2
HEADS = 2

Model = TypeVar("Model", bound=PreTrainedModel)


def bert_config(vocab_size: int, **settings: Any) -> BertConfig:
    sizes = {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS}
    return BertConfig(**{"vocab_size": vocab_size, **sizes, **settings})


def gpt2_config(vocab_size: int, **settings: Any) -> GPT2Config:
    sizes = {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": HEADS, "n_positions": 64}
    return GPT2Config(**{"vocab_size": vocab_size, **sizes, **settings})


def llama_config(vocab_size: int, **settings: Any) -> LlamaConfig:
    sizes = {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS}
    return LlamaConfig(**{"vocab_size": vocab_size, **sizes, **settings})


def t5_config(vocab_size: int, **settings: Any) -> T5Config:
    sizes = {"d_model": HIDDEN, "d_kv": 16, "num_layers": LAYERS, "num_heads": HEADS}
    return T5Config(**{"vocab_size": vocab_size, **sizes, **settings})


def seeded(model_class: type[Model], config: PretrainedConfig, seed: int) -> Model:
    """``model_class(config)`` with torch seeded first: the same seed, the same weights."""
    torch.manual_seed(seed)
    return model_class(config)


def word_level_tokenizer(
    words: Sequence[str],
    unk_token: str,
    post_processor: PostProcessor | None = None,
    **special: Any,
) -> PreTrainedTokenizerFast:
    """Splits on whitespace and maps each word to its index in ``words`` (others to
    ``unk_token``); ``special`` names the other special tokens and tokenizer settings."""
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token=unk_token))
    backend.pre_tokenizer = Whitespace()
    if post_processor is not None:
        backend.post_processor = post_processor
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=unk_token, **special)
