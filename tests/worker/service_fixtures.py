"""Shared by the worker, e2e and CLI tests: a tiny BERT on disk and sentiment rows for it."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "weak"]
FILLER = ["the", "a", "movie", "film", "plot", "was", "is", "very", "quite", "really", "and"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]


def save_tiny_bert(directory: Path, seed: int = 0) -> Path:
    """Random-init BERT (hidden 32, 2 layers) and its word-level tokenizer, saved like a hub
    model so the worker loads it by path."""
    directory.mkdir(parents=True, exist_ok=True)
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,  # the default training.max_length fits
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(directory)
    return directory


def write_sentiment_csv(path: Path, count: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for _ in range(count):
            label = rng.randrange(2)
            words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
            rng.shuffle(words)
            writer.writerow([" ".join(words), ["negative", "positive"][label]])
    return path


def job_body(dataset_id: str, base_model: str = "tiny", **training: object) -> dict[str, object]:
    """A POST /jobs body (also stored as jobs.request by the in-process tests)."""
    return {
        "base_model": base_model,
        "task": "classification",
        "dataset_id": dataset_id,
        "columns": {"text": "text", "label": "label"},
        "adalora": {"init_r": 4, "target_r": 2, "t_init": 2, "t_final": 2, "delta_t": 1},
        "training": {
            "max_steps": 12,
            "batch_size": 8,
            "learning_rate": 5e-3,
            "max_length": 32,
            **training,
        },
        "output": "merged",
    }
