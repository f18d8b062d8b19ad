"""Conversations rendered by the base tokenizer's chat template, the same way for training and
serving, so an adapter sees at serving time what it learned from.

Torch-free; the tokenizer does the rendering.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adalora_core.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def is_chat(value: Any) -> bool:
    """A causal-LM text value that is a conversation: a list of {role, content} messages."""
    return isinstance(value, list) and all(isinstance(m, Mapping) for m in value)


@dataclass(frozen=True)
class ChatTokens:
    """A rendered conversation and, per token, whether it belongs to an assistant turn (the
    tokens a chat row teaches)."""

    ids: list[int]
    assistant: list[bool]


def encode_chat(
    messages: Sequence[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase, where: str
) -> ChatTokens:
    """An assistant turn's tokens are what its message adds to the rendering of the
    conversation before it (which ends with the generation prompt)."""
    _require_template(
        tokenizer,
        where,
        "this base model's tokenizer has no chat template; use prompt/completion rows",
    )
    chat = [{"role": m["role"], "content": m["content"]} for m in messages]
    ids = _chat_ids(tokenizer, chat, generation_prompt=False)
    assistant = [False] * len(ids)
    for index, message in enumerate(chat):
        if message["role"] != "assistant":
            continue
        start = len(_chat_ids(tokenizer, chat[:index], generation_prompt=True)) if index else 0
        end = len(_chat_ids(tokenizer, chat[: index + 1], generation_prompt=False))
        assistant[start:end] = [True] * (end - start)
    return ChatTokens(ids=ids, assistant=assistant[: len(ids)])


def chat_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, chat: Sequence[Mapping[str, str]], where: str
) -> list[int]:
    """A conversation to answer, rendered exactly as training renders the turns before an
    assistant message."""
    _require_template(
        tokenizer, where, "this model's tokenizer has no chat template; use completions"
    )
    return _chat_ids(tokenizer, [dict(m) for m in chat], generation_prompt=True)


def _require_template(tokenizer: PreTrainedTokenizerBase, where: str, message: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(where, message)


def _chat_ids(
    tokenizer: PreTrainedTokenizerBase, chat: list[dict[str, Any]], generation_prompt: bool
) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        chat, tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
    )
    return list(encoded["input_ids"])
