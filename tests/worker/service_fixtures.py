"""Shared by the worker, e2e and CLI tests: a tiny BERT on disk and sentiment rows for it."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from tests.core.tiny_trainer_model import FILLER, NEGATIVE, POSITIVE
from tests.core.tiny_trainer_model import save_tiny_bert as _save_tiny_bert


def save_tiny_bert(directory: Path, seed: int = 0) -> Path:
    """The trainer tests' tiny BERT with transformers' default initialisation, saved like a hub
    model so the worker loads it by path (max_position_embeddings 128: the default
    training.max_length fits)."""
    return _save_tiny_bert(directory, seed=seed, initializer_range=0.02)


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
