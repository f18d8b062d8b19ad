"""A tiny BERT saved to disk with its own word-level vocabulary, for trainer and format tests
(the trainer loads base models by path, like the service does)."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

from adalora_core.trainer import ProgressEvent, TrainCallbacks

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
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=0,
        initializer_range=initializer_range,
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


def save_tiny_gpt2(directory: Path, seed: int = 0) -> Path:
    """Random-init GPT-2 (Conv1D projections) with a word-level tokenizer, saved like a hub
    model."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    words = ["<unk>", "<eos>", *POSITIVE, *NEGATIVE, *FILLER]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", bos_token="<eos>"
    )
    tokenizer.save_pretrained(directory)
    config = GPT2Config(
        vocab_size=len(words),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=1,
        initializer_range=0.3,
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def save_tiny_t5(directory: Path, seed: int = 0) -> Path:
    """Random-init T5 encoder-decoder sharing the word-level vocabulary of the GPT-2 helper."""
    from transformers import T5Config, T5ForConditionalGeneration

    save_tiny_gpt2(directory, seed)  # writes the tokenizer (and a GPT-2 we overwrite)
    tokenizer_vocab = len(["<unk>", "<eos>", *POSITIVE, *NEGATIVE, *FILLER])
    config = T5Config(
        vocab_size=tokenizer_vocab,
        d_model=32,
        d_kv=16,
        d_ff=48,
        num_layers=2,
        num_heads=2,
        pad_token_id=1,
        eos_token_id=1,
        decoder_start_token_id=1,
    )
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(directory)
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
