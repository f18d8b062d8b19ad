"""A generation request's choices as OpenAI's clients expect them: waited for whole, or streamed
as server-sent chunks of token deltas ending in ``data: [DONE]``.

Completions and chat completions differ only in the shape of a chunk's choice (``text`` against
``delta``), so one `Run` and one stream serve both; `ChunkShape` says which.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import StreamingResponse

from adalora_core.serving.handles import Completion, Generation, TextEvent, complete_all
from adalora_core.serving.sampling import TokenLogprob
from api.openai_schemas import StreamOptions, Usage
from api.sse import sse_message, sse_response
from application.tool_calls import ToolCall, ToolPlan, new_call


@dataclass(frozen=True)
class ChunkShape:
    """How a protocol's streamed chunk looks: its object name, the id prefix, and whether a
    choice carries a chat ``delta`` (with an opening chunk naming the role) or plain ``text``."""

    object: str
    id_prefix: str
    chat: bool


COMPLETION_CHUNKS = ChunkShape("text_completion", "cmpl", chat=False)
CHAT_CHUNKS = ChunkShape("chat.completion.chunk", "chatcmpl", chat=True)


@dataclass(frozen=True)
class LogprobView:
    """A choice's log-probabilities in its protocol's shape: chat's ``content`` list of
    {token, logprob, bytes, top_logprobs}, or completions' parallel lists with text offsets."""

    token_bytes: Callable[[Sequence[int]], list[bytes]]
    chat: bool

    def render(
        self, entries: Sequence[TokenLogprob], offset: int, lead: int | None = None
    ) -> tuple[dict[str, Any], int]:
        """The shape for ``entries`` and the text offset after them (completions count
        ``text_offset`` from ``offset``); ``lead`` is an echoed prompt's first token, listed
        first with no log-probability (nothing precedes it)."""
        ids = [e.token_id for e in entries] + [t for e in entries for t, _ in e.top]
        ids += [] if lead is None else [lead]
        raw = dict(zip(ids, self.token_bytes(ids), strict=True))

        def text(token: int) -> str:
            return raw[token].decode("utf-8", errors="replace")

        if self.chat:
            content = [
                {
                    "token": text(e.token_id),
                    "logprob": e.logprob,
                    "bytes": list(raw[e.token_id]),
                    "top_logprobs": [
                        {"token": text(t), "logprob": v, "bytes": list(raw[t])} for t, v in e.top
                    ],
                }
                for e in entries
            ]
            return {"content": content, "refusal": None}, offset
        tokens = [text(e.token_id) for e in entries]
        logprobs: list[float | None] = [e.logprob for e in entries]
        tops: list[dict[str, float] | None] = [{text(t): v for t, v in e.top} for e in entries]
        if lead is not None:
            tokens, logprobs, tops = [text(lead), *tokens], [None, *logprobs], [None, *tops]
        offsets = []
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        shaped = {
            "tokens": tokens,
            "token_logprobs": logprobs,
            "top_logprobs": tops,
            "text_offset": offsets,
        }
        return shaped, offset


@dataclass
class Run:
    """One request's choices in the decoder: prompt i's k-th choice is index i·n + k.
    ``opening`` is text each choice starts with (completions' echoed prompt); ``logprobs`` set
    when the request asked for them; ``echo_logprobs`` when the echoed prompt's tokens are
    listed too (its text then opens the first chunk that carries them)."""

    model: str
    shape: ChunkShape
    prompt_tokens: int
    handles: list[Generation]
    logprobs: LogprobView | None = None
    opening: Sequence[str] = ()
    tools: ToolPlan | None = None
    echo_logprobs: bool = False
    id: str = ""
    created: int = 0
    _offsets: list[int] = field(default_factory=list)
    _opened: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.id = self.id or f"{self.shape.id_prefix}-{secrets.token_hex(12)}"
        self.created = self.created or int(time.time())

    def usage(self, completion_tokens: Sequence[int]) -> Usage:
        generated = sum(completion_tokens)
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=generated,
            total_tokens=self.prompt_tokens + generated,
        )

    async def complete(self) -> list[Completion]:
        return await complete_all(self.handles)

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()

    def stream(self, options: StreamOptions | None) -> StreamingResponse:
        return sse_response(_events(self, options is not None and options.include_usage))

    def logprobs_of(
        self,
        index: int,
        entries: Sequence[TokenLogprob],
        prompt: Sequence[TokenLogprob] | None = None,
    ) -> dict[str, Any] | None:
        """A choice's log-probabilities for ``entries``, continuing its text offsets; with
        ``prompt`` (an echo's, on its first chunk) the prompt's tokens come first."""
        if self.logprobs is None:
            return None
        if not self._offsets:
            self._offsets = [
                0 if self.echo_logprobs or not self.opening else len(self.opening[i])
                for i in range(len(self.handles))
            ]
        lead = None
        if prompt is not None:
            lead, entries = self.handles[index].prompt_ids[0], [*prompt, *entries]
        shaped, self._offsets[index] = self.logprobs.render(entries, self._offsets[index], lead)
        return shaped

    # ---- chunks ---------------------------------------------------------------------------------
    def chunk(self, index: int, event: TextEvent | None) -> dict[str, Any]:
        """A choice's chunk; ``event`` None is its opening chunk: a chat choice's role, or a
        completion's echoed prompt."""
        finish = None if event is None or event.finish is None else finish_reason(event.finish)
        opens = self.echo_logprobs and event is not None and index not in self._opened
        prompt = event.prompt_logprobs if opens and event is not None else None
        logprobs = None if event is None else self.logprobs_of(index, event.logprobs, prompt)
        choice: dict[str, Any] = {"index": index, "logprobs": logprobs, "finish_reason": finish}
        if not self.shape.chat:
            choice["text"] = self.opening[index] if event is None else event.delta
            if opens:
                self._opened.add(index)
                choice["text"] = self.opening[index] + event.delta  # type: ignore[union-attr]
        elif event is None:
            choice["delta"] = {"role": "assistant", "content": ""}
        else:
            choice["delta"] = {"content": event.delta} if event.delta else {}
        return self.envelope([choice])

    def tool_chunks(self, index: int, event: TextEvent, reader: ToolStream) -> list[dict[str, Any]]:
        """A chat choice's chunks for ``event`` through its tool-call reader; the last one
        carries the finish reason and the first the log-probabilities."""
        deltas = reader.deltas(event)
        if not deltas and event.finish is None and not event.logprobs:
            return []
        deltas = deltas or [{}]
        finish = None if event.finish is None else finish_reason(event.finish, reader.called)
        logprobs = self.logprobs_of(index, event.logprobs)
        chunks = []
        for k, delta in enumerate(deltas):
            last = k == len(deltas) - 1
            choice = {
                "index": index,
                "delta": delta,
                "logprobs": logprobs if k == 0 else None,
                "finish_reason": finish if last else None,
            }
            chunks.append(self.envelope([choice]))
        return chunks

    def envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.shape.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }


def finish_reason(finish: str, called: bool = False) -> str:
    """OpenAI's reason: a cut answer is "length" (a call's arguments cut too), a call is
    "tool_calls"."""
    if finish == "length":
        return "length"
    return "tool_calls" if called else "stop"


class ToolStream:
    """One chat choice's deltas when the request has tools. Plain text passes as content; a
    named call goes out as it is generated (its arguments in pieces, after a first delta with
    its id and name); under ``auto`` or ``required`` text that may still be a call is held back
    until the answer shows what it is, then sent as one call delta per call, or as content."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.held = ""
        self.plain = plan.mode == "none"
        self.called = False

    def deltas(self, event: TextEvent) -> list[dict[str, Any]]:
        if self.plan.mode == "named":
            out = []
            if not self.called:
                self.called = True
                call = new_call(self.plan.named or "", "")
                out.append(_call_delta(0, call))
            if event.delta:
                out.append({"tool_calls": [{"index": 0, "function": {"arguments": event.delta}}]})
            return out
        if self.plain:
            return [{"content": event.delta}] if event.delta else []
        self.held += event.delta
        if event.finish is not None:
            calls = self.plan.calls(self.held)
            if calls:
                self.called = True
                return [_call_delta(i, call) for i, call in enumerate(calls)]
        elif self.plan.may_call(self.held):
            return []
        self.plain = True
        text, self.held = self.held, ""
        return [{"content": text}] if text else []


def _call_delta(index: int, call: ToolCall) -> dict[str, Any]:
    function = {"name": call.name, "arguments": call.arguments}
    return {
        "tool_calls": [{"index": index, "id": call.id, "type": "function", "function": function}]
    }


async def _events(run: Run, include_usage: bool) -> AsyncIterator[str]:
    generated = [0] * len(run.handles)
    try:
        if run.shape.chat or (run.opening and not run.echo_logprobs):
            for index in range(len(run.handles)):
                yield sse_message(run.chunk(index, None))
        readers = [ToolStream(run.tools) for _ in run.handles] if run.tools else None
        async for index, event in _merged(run.handles):
            generated[index] = event.tokens
            if readers is not None:
                for chunk in run.tool_chunks(index, event, readers[index]):
                    yield sse_message(chunk)
            elif event.delta or event.finish is not None or event.logprobs:
                yield sse_message(run.chunk(index, event))
        if include_usage:
            usage = run.usage(generated).model_dump()
            yield sse_message({**run.envelope([]), "usage": usage})
        yield sse_message("[DONE]")
    except Exception as exc:  # a failure after the headers went out: say so in the stream
        message = str(exc) or "generation failed"
        error = {"message": message, "type": "server_error", "param": None, "code": None}
        yield sse_message({"error": error})
    finally:
        run.cancel()


async def _merged(handles: Sequence[Generation]) -> AsyncIterator[tuple[int, TextEvent]]:
    """Every choice's events as they come, tagged with the choice's index."""
    streams = {i: h.events().__aiter__() for i, h in enumerate(handles)}
    pending = {asyncio.ensure_future(anext(s)): i for i, s in streams.items()}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                index = pending.pop(task)
                try:
                    event = task.result()
                except StopAsyncIteration:
                    continue
                yield index, event
                if event.finish is None:
                    pending[asyncio.ensure_future(anext(streams[index]))] = index
    finally:
        for task in pending:
            task.cancel()
