"""Tool calls, OpenAI's ``tools`` and ``tool_choice``: what a request's tools ask of its
generation, and how the generated text becomes calls.

The definitions reach the model through its own chat template (admission renders them). A
named choice decodes the function's arguments under its parameters' JSON Schema, so the whole
answer is the arguments; ``required`` decodes one object ``{"name", "arguments"}`` under a
grammar of every tool's; ``auto`` lets the model write freely and reads a call when the answer
is one (a bare object, a list of them, or each wrapped in ``<tool_call>`` as Hermes-style
templates teach); ``none`` never reads calls.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from adalora_core.errors import ConfigError
from application.admission import JsonOutput

ToolMode = Literal["none", "auto", "required", "named"]
_WRAPPED = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
ANY_ARGUMENTS: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON text, as OpenAI sends it


def new_call(name: str, arguments: str) -> ToolCall:
    return ToolCall(f"call_{secrets.token_hex(12)}", name, arguments)


@dataclass(frozen=True)
class ToolPlan:
    """A request's tools (definitions in OpenAI's shape, for the template) and its choice."""

    tools: tuple[Mapping[str, Any], ...]
    mode: ToolMode
    named: str | None = None

    @property
    def names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]

    def parameters(self, name: str) -> Mapping[str, Any]:
        function = self.tools[self.names.index(name)]["function"]
        return function.get("parameters") or ANY_ARGUMENTS

    def output(self) -> JsonOutput | None:
        """The grammar a forced call decodes under; None when the model writes freely."""
        if self.mode == "named":
            assert self.named is not None
            index = self.names.index(self.named)
            return JsonOutput(self.parameters(self.named), f"tools.{index}.function.parameters")
        if self.mode == "required":
            one_of = [
                {
                    "type": "object",
                    "properties": {"name": {"const": name}, "arguments": self.parameters(name)},
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
                for name in self.names
            ]
            return JsonOutput({"anyOf": one_of}, "tools")
        return None

    def calls(self, text: str) -> list[ToolCall]:
        """The calls an answer makes; [] when it is a plain answer."""
        if self.mode == "none":
            return []
        if self.mode == "named":
            assert self.named is not None
            return [new_call(self.named, text)]
        return _read_calls(text, set(self.names))

    def may_call(self, text: str) -> bool:
        """Whether an answer that begins with ``text`` may still turn out to be a call (a stream
        holds such text back until it knows)."""
        if self.mode != "auto":
            return self.mode != "none"
        head = text.lstrip()
        return (
            not head
            or head[0] in "{["
            or head.startswith("<tool_call>")
            or ("<tool_call>".startswith(head))
        )


def plan_tools(
    tools: Sequence[Mapping[str, Any]] | None, choice: str | Mapping[str, Any] | None
) -> ToolPlan | None:
    """The request's tools checked (unique names, a known named choice); None without tools."""
    if not tools:
        if choice not in (None, "none"):
            raise ConfigError("tool_choice", "needs tools")
        return None
    names = [t["function"]["name"] for t in tools]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ConfigError(f"tools.{index}.function.name", f"{name!r} is defined twice")
    if choice is None or isinstance(choice, str):
        mode = choice or "auto"
        if mode not in ("none", "auto", "required"):
            raise ConfigError("tool_choice", "must be none, auto, required or a named function")
        return ToolPlan(tuple(tools), mode)  # type: ignore[arg-type]
    name = (choice.get("function") or {}).get("name")
    if name not in names:
        raise ConfigError("tool_choice.function.name", f"no tool is named {name!r}")
    return ToolPlan(tuple(tools), "named", name)


def _read_calls(text: str, names: set[str]) -> list[ToolCall]:
    wrapped = _WRAPPED.findall(text)
    pieces = wrapped if wrapped else [text]
    found: list[ToolCall] = []
    for piece in pieces:
        try:
            value = json.loads(piece.strip())
        except ValueError:
            return []
        for item in value if isinstance(value, list) else [value]:
            call = _as_call(item, names)
            if call is None:
                return []
            found.append(call)
    return found


def _as_call(item: object, names: set[str]) -> ToolCall | None:
    if not isinstance(item, dict) or item.get("name") not in names:
        return None
    arguments = item.get("arguments", item.get("parameters"))
    if isinstance(arguments, dict):
        arguments = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)
    if not isinstance(arguments, str):
        return None
    return new_call(item["name"], arguments)
