"""A request ready for a batch: its rows tokenized for one adapter's base.

The mechanism only: how texts, pairs and token rows become encodings, and what a prompt needs of
the model's context. Which requests the service accepts (how many rows, which parameters, which
model for which protocol) is decided above the core, by the service's admission step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adalora_core.errors import ConfigError
from adalora_core.serving.bases import SharedBase
from adalora_core.serving.generation import GenerationParams
from adalora_core.serving.loading import LoadedAdapter


@dataclass
class Prepared:
    """One request (or one chunk of it) ready for a batch: tokenized rows of one adapter."""

    base: SharedBase
    adapter: LoadedAdapter | None
    encodings: list[dict[str, list[int]]]
    generation: GenerationParams | None
    # Encoder rows answer with their pooled final hidden states whatever their adapter's head
    # (an embeddings request), in the same routed forward as the rows that use the head.
    embed: bool = False

    @property
    def rows(self) -> int:
        return len(self.encodings)

    @property
    def longest(self) -> int:
        return max(len(e["input_ids"]) for e in self.encodings)

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys may share one forward."""
        sampling = self.generation.sampling_key if self.generation is not None else None
        return (id(self.base), sampling)

    def split(self, rows: int) -> list[Prepared]:
        return [
            Prepared(
                self.base, self.adapter, self.encodings[i : i + rows], self.generation, self.embed
            )
            for i in range(0, self.rows, rows)
        ]


# No tokenizer we serve turns more characters than this into one token (WordPiece maps a word of
# over 100 characters to a single [UNK], which this bound still covers for max_length rows).
MAX_CHARS_PER_TOKEN = 64


def encode_input(
    base: SharedBase,
    row: str | Sequence[str],
    index: int,
    max_length: int,
    truncate: bool,
    generative: bool,
) -> dict[str, list[int]]:
    where = f"inputs[{index}]"
    if isinstance(row, str):
        first, second = row, None
    elif (
        isinstance(row, Sequence)
        and len(row) == 2
        and all(isinstance(t, str) for t in row)
        and not generative
    ):
        first, second = row[0], row[1]
    else:
        allowed = "a string" if generative else "a string or a pair of strings"
        raise ConfigError(where, f"must be {allowed}")
    # Tokenizing holds the base's tokenizer lock: cut (or refuse) a huge text by characters
    # first, so one request cannot hold the lock while it tokenizes megabytes.
    char_limit = max_length * MAX_CHARS_PER_TOKEN
    longest = max(len(first), len(second or ""))
    if longest > char_limit:
        if not truncate:
            raise ConfigError(
                where,
                f"is {longest} characters, far above the maximum of {max_length} tokens "
                "(set parameters.truncate to true to cut it)",
            )
        first = first[:char_limit]
        second = None if second is None else second[:char_limit]
    with base.tokenizer_lock:
        full = base.tokenizer(first, second, truncation=False)
    if len(full["input_ids"]) > max_length:
        if not truncate:
            raise ConfigError(
                where,
                f"is {len(full['input_ids'])} tokens, above the maximum of {max_length} "
                "(set parameters.truncate to true to cut it)",
            )
        strategy = "longest_first" if second is not None else True
        with base.tokenizer_lock:
            full = base.tokenizer(first, second, truncation=strategy, max_length=max_length)
    return {key: list(values) for key, values in full.items()}


def prepare_texts(
    base: SharedBase,
    adapter: LoadedAdapter | None,
    inputs: Sequence[str | Sequence[str]],
    generation: GenerationParams | None,
    truncate: bool = True,
) -> Prepared:
    """Texts (or pairs, for sequence classification) tokenized for ``adapter`` on ``base``; rows
    longer than the adapter's max_length are cut, or refused with truncate false."""
    max_length = adapter.max_length if adapter is not None else base.max_length
    generative = base.kind != "sequence-classification"
    encodings = [
        encode_input(base, row, i, max_length, truncate, generative) for i, row in enumerate(inputs)
    ]
    return Prepared(base, adapter, encodings, generation if generative else None)


def prepare_token_rows(
    base: SharedBase,
    adapter: LoadedAdapter | None,
    rows: Sequence[Sequence[int]],
    generation: GenerationParams,
) -> Prepared:
    """Rows already tokenized (rendered by a chat template, or given as ids) for decoding."""
    encodings = [{"input_ids": list(r), "attention_mask": [1] * len(r)} for r in rows]
    return Prepared(base, adapter, encodings, generation)


def check_context(base: SharedBase, tokens: int, generation: GenerationParams, where: str) -> None:
    """A prompt must leave room for the tokens it asks for in the model's context."""
    if tokens + generation.max_new_tokens > base.max_length:
        raise ConfigError(
            where,
            f"is {tokens} tokens; with {generation.max_new_tokens} new tokens that is above this "
            f"model's context of {base.max_length} tokens",
        )
