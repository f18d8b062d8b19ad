"""A tiny BERT saved to disk with its own word-level vocabulary, for trainer and format tests
(the trainer loads base models by path, like the service does)."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "weak"]
FILLER = ["the", "a", "movie", "film", "plot", "was", "is", "very", "quite", "really", "and"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + POSITIVE + NEGATIVE + FILLER


def save_tiny_bert(directory: Path, seed: int = 0, dropout: float = 0.1) -> Path:
    """Random-init BERT (hidden 32, 2 layers) plus a tokenizer, saved like a hub model."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(VOCAB)})
    tokenizer.save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=0,
        initializer_range=0.3,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(directory)
    return directory


def sentiment_rows(count: int, seed: int = 0) -> list[dict[str, object]]:
    """Rows whose label is decided by the sentiment words they contain."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for _ in range(count):
        label = rng.randrange(2)
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": ["negative", "positive"][label]})
    return rows
