"""`adalora chat`: one message to a causal-LM adapter (or base), the answer streamed as it comes."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from cli.client import DEFAULT_URL, ApiClient, KeyOption, UrlOption, describe_error, fail, iter_sse


def chat(
    model: Annotated[str, typer.Argument(help="Adapter id, or a base model's name.")],
    message: Annotated[
        list[str] | None, typer.Argument(help="The message (default: stdin).")
    ] = None,
    system: Annotated[str | None, typer.Option(help="A system message before it.")] = None,
    max_tokens: Annotated[
        int | None, typer.Option(min=1, help="Tokens to generate (default: as many as fit).")
    ] = None,
    temperature: Annotated[
        float, typer.Option(min=0.0, max=2.0, help="0 is greedy (the default).")
    ] = 0.0,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Chat with an adapter through /v1/chat/completions; streams the answer."""
    text = " ".join(message) if message else sys.stdin.read()
    if not text.strip():
        raise typer.BadParameter("give a message (arguments or stdin)")
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    body: dict[str, object] = {
        "model": model,
        "messages": messages,
        "temperature": temperature,
        "stream": True,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    with (
        ApiClient(url, key, timeout=600) as api,
        api.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        if response.status_code >= 400:
            response.read()
            fail(describe_error(response))
        for _, data in iter_sse(response.iter_lines()):
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                fail(chunk["error"].get("message", "generation failed"))
            for choice in chunk.get("choices", []):
                typer.echo(choice.get("delta", {}).get("content") or "", nl=False)
    typer.echo()
