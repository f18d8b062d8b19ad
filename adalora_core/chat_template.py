"""Conversations rendered by the base tokenizer's chat template, the same way for training and
serving, so an adapter sees at serving time what it learned from.

Torch-free; the tokenizer does the rendering.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adalora_core.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


# What a message may carry to the template besides its role and content: a speaker's name, an
# assistant's tool calls, and a tool message's call id (OpenAI's fields, as HF templates read
# them).
MESSAGE_FIELDS = ("name", "tool_calls", "tool_call_id")
# A chat training row's tool definitions, beside its messages (OpenAI's fine-tuning format).
TOOLS_KEY = "tools"


def is_chat(value: Any) -> bool:
    """A causal-LM text value that is a conversation: a list of {role, content} messages."""
    return isinstance(value, list) and all(isinstance(m, Mapping) for m in value)


def supports_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the base's chat template renders tool definitions (it reads ``tools``): a
    template that does not would silently drop them."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, Mapping):
        template = " ".join(str(t) for t in template.values())
    return "tools" in str(template)


def template_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """A message as the template reads it: role, content (text, empty for an assistant turn
    that only calls tools) and the optional fields it carries; a tool call's ``arguments``
    given as a JSON string become an object, as HF templates expect."""
    rendered: dict[str, Any] = {"role": message["role"], "content": message.get("content") or ""}
    for name in MESSAGE_FIELDS:
        if message.get(name) is not None:
            rendered[name] = message[name]
    if "tool_calls" in rendered:
        rendered["tool_calls"] = [_call_with_object_arguments(c) for c in rendered["tool_calls"]]
    return rendered


def _call_with_object_arguments(call: Mapping[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):  # not JSON: the template renders the text
            function["arguments"] = json.loads(arguments)
    return {**call, "function": function}


@dataclass(frozen=True)
class ChatTokens:
    """A rendered conversation and, per token, whether it belongs to an assistant turn (the
    tokens a chat row teaches)."""

    ids: list[int]
    assistant: list[bool]


def encode_chat(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    where: str,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> ChatTokens:
    """An assistant turn's tokens are what its message adds to the rendering of the
    conversation before it (which ends with the generation prompt); an assistant turn that
    calls tools teaches its calls as the template renders them."""
    _require_template(
        tokenizer,
        where,
        "this base model's tokenizer has no chat template; use prompt/completion rows",
    )
    _require_tools(tokenizer, messages, tools, where)
    chat = [template_message(m) for m in messages]
    ids = _chat_ids(tokenizer, chat, generation_prompt=False, tools=tools)
    assistant = [False] * len(ids)
    for index, message in enumerate(chat):
        if message["role"] != "assistant":
            continue
        start = 0
        if index:
            start = len(_chat_ids(tokenizer, chat[:index], generation_prompt=True, tools=tools))
        end = len(_chat_ids(tokenizer, chat[: index + 1], generation_prompt=False, tools=tools))
        assistant[start:end] = [True] * (end - start)
    return ChatTokens(ids=ids, assistant=assistant[: len(ids)])


def chat_prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    chat: Sequence[Mapping[str, Any]],
    where: str,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> list[int]:
    """A conversation to answer, rendered exactly as training renders the turns before an
    assistant message; ``tools`` (OpenAI's function definitions) rendered by the template as
    transformers' ``apply_chat_template(tools=...)`` does."""
    _require_template(
        tokenizer, where, "this model's tokenizer has no chat template; use completions"
    )
    _require_tools(tokenizer, chat, tools, where)
    messages = [template_message(m) for m in chat]
    return _chat_ids(tokenizer, messages, generation_prompt=True, tools=tools)


def _require_template(tokenizer: PreTrainedTokenizerBase, where: str, message: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(where, message)


def _require_tools(
    tokenizer: PreTrainedTokenizerBase,
    chat: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    where: str,
) -> None:
    """Tool definitions, tool calls and tool results need a template that renders them."""
    uses = "tools" if tools else None
    for index, message in enumerate(chat):
        if uses is None and (message.get("role") == "tool" or message.get("tool_calls")):
            uses = f"{where}.{index}" if where == "messages" else f"{where}[{index}]"
    if uses is not None and not supports_tools(tokenizer):
        raise ConfigError(uses, "this model's chat template has no tool support")


def _chat_ids(
    tokenizer: PreTrainedTokenizerBase,
    chat: list[dict[str, Any]],
    generation_prompt: bool,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        chat,
        tools=list(tools) if tools else None,
        tokenize=True,
        add_generation_prompt=generation_prompt,
        return_dict=True,
    )
    return list(encoded["input_ids"])
