"""A tiny BERT saved to disk with its own word-level vocabulary, for trainer and format tests
(the trainer loads base models by path, like the service does)."""

from __future__ import annotations

import random
from pathlib import Path

from transformers import (
    BertForSequenceClassification,
    BertTokenizer,
    GPT2LMHeadModel,
    T5ForConditionalGeneration,
)

from adalora_core.trainer import ProgressEvent, TrainCallbacks
from tests.tiny_models import bert_config, gpt2_config, seeded, t5_config, word_level_tokenizer

POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "weak"]
FILLER = ["the", "a", "movie", "film", "plot", "was", "is", "very", "quite", "really", "and"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + POSITIVE + NEGATIVE + FILLER


def save_tiny_bert(
    directory: Path, seed: int = 0, dropout: float = 0.1, initializer_range: float = 0.3
) -> Path:
    """Random-init BERT (hidden 32, 2 layers) plus a tokenizer, saved like a hub model."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(VOCAB)})
    tokenizer.save_pretrained(directory)
    config = bert_config(
        len(VOCAB),
        intermediate_size=48,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=0,
        initializer_range=initializer_range,
    )
    seeded(BertForSequenceClassification, config, seed).save_pretrained(directory)
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


GENERATIVE_VOCAB = ["<unk>", "<eos>", *POSITIVE, *NEGATIVE, *FILLER]


def save_tiny_gpt2(directory: Path, seed: int = 0) -> Path:
    """Random-init GPT-2 (Conv1D projections) with a word-level tokenizer, saved like a hub
    model."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = word_level_tokenizer(
        GENERATIVE_VOCAB, "<unk>", eos_token="<eos>", bos_token="<eos>"
    )
    tokenizer.save_pretrained(directory)
    config = gpt2_config(
        len(GENERATIVE_VOCAB), bos_token_id=1, eos_token_id=1, initializer_range=0.3
    )
    seeded(GPT2LMHeadModel, config, seed).save_pretrained(directory)
    return directory


def save_tiny_t5(directory: Path, seed: int = 0) -> Path:
    """Random-init T5 encoder-decoder sharing the word-level vocabulary of the GPT-2 helper."""
    save_tiny_gpt2(directory, seed)  # writes the tokenizer (and a GPT-2 we overwrite)
    config = t5_config(
        len(GENERATIVE_VOCAB),
        d_ff=48,
        pad_token_id=1,
        eos_token_id=1,
        decoder_start_token_id=1,
    )
    seeded(T5ForConditionalGeneration, config, seed).save_pretrained(directory)
    return directory


class StopAfter(TrainCallbacks):
    """Asks the loop to stop once update ``step`` is done (a cancel at a known point)."""

    def __init__(self, step: int) -> None:
        self.step = 0
        self.limit = step

    def on_progress(self, event: ProgressEvent) -> None:
        self.step = event.step

    def should_stop(self) -> bool:
        return self.step >= self.limit
