"""The OpenAI-compatible surface: /v1/models, /v1/completions, /v1/chat/completions.

``model`` is one of the tenant's adapter ids or a base model's name, as LoRAX and vLLM do. Rows
decode in the base's continuous decoder beside every other request, /infer's included. Same keys,
tenant scoping and rate limits as /infer; errors leave in OpenAI's error shape (api/errors.py).
With ``stream: true`` the answer is server-sent events of token deltas ending in ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from adalora_core.chat_template import chat_prompt_ids
from adalora_core.errors import ConfigError
from adalora_core.serving.bases import BaseModelUnavailable, SharedBase
from adalora_core.serving.decoding import Generation, TextEvent
from adalora_core.serving.engine import InferenceEngine
from adalora_core.serving.generation import GenerationParams
from adalora_core.serving.requests import MAX_CHARS_PER_TOKEN, Prepared
from api.deps import CallerDep, EngineDep, InferLimitedCaller, SessionDep, SettingsDep
from api.inference import with_tenant_adapter
from api.openai_schemas import (
    MAX_STOPS,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelCards,
    Sampling,
    Usage,
    openai_errors,
)
from application.errors import RequestError
from service import adapters as adapter_rows
from service.base_models import is_causal_lm

router = APIRouter(prefix="/v1", tags=["openai"])

BASE_OWNER = "adalora-service"
STARTED = int(time.time())


@router.get("/models", response_model=ModelCards, responses=openai_errors(401))
def list_models(caller: CallerDep, session: SessionDep, settings: SettingsDep) -> ModelCards:
    cards = [
        ModelCard(id=name, created=STARTED, owned_by=BASE_OWNER)
        for name in sorted(settings.base_models)
    ]
    for row in adapter_rows.servable_adapters(session, caller.tenant_id):
        cards.append(
            ModelCard(
                id=row.id,
                created=int(row.created_at.timestamp()),
                owned_by=caller.tenant_id,
                base_model=row.base_model,
                task=row.task,
            )
        )
    return ModelCards(data=cards)


@router.post(
    "/completions",
    response_model=Completion,
    responses=openai_errors(400, 401, 404, 409, 429, 503),
)
async def completions(
    body: CompletionRequest, request: Request, caller: InferLimitedCaller, engine: EngineDep
) -> Any:
    _neutral_only(body, echo=False, logprobs=None, suffix=None)
    if body.best_of not in (None, 1, body.n):
        raise RequestError(400, "unsupported_parameter", "best_of is not supported", "best_of")
    prompt = body.prompt
    one = isinstance(prompt, str) or (bool(prompt) and isinstance(prompt[0], int))
    prompts: list[Any] = [prompt] if one else list(prompt)
    if not prompts or not all(prompts):
        raise RequestError(400, "invalid_value", "needs at least one non-empty prompt", "prompt")

    def rows(base: SharedBase) -> list[list[int]]:
        return [
            _tokenize(base, p, "prompt" if one else f"prompt.{i}")
            if isinstance(p, str)
            else _token_ids(base, p, "prompt" if one else f"prompt.{i}")
            for i, p in enumerate(prompts)
        ]

    run = await _start(request, engine, caller.tenant_id, body, body.max_tokens, rows, "prompt")
    if body.stream:
        return _stream(run, body, _completion_chunk)
    done = await run.complete()
    return Completion(
        id=run.id,
        created=run.created,
        model=body.model,
        choices=[
            CompletionChoice(index=i, text=c.text, finish_reason=_reason(c.finish))
            for i, c in enumerate(done)
        ],
        usage=run.usage([c.completion_tokens for c in done]),
    )


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses=openai_errors(400, 401, 404, 409, 429, 503),
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, caller: InferLimitedCaller, engine: EngineDep
) -> Any:
    _neutral_only(body, logprobs=None, top_logprobs=None, tools=None, tool_choice=None)
    if body.response_format not in (None, {"type": "text"}):
        raise RequestError(
            400, "unsupported_parameter", "only text responses are supported", "response_format"
        )
    chat = [_chat_turn(m, i) for i, m in enumerate(body.messages)]

    def rows(base: SharedBase) -> list[list[int]]:
        characters = sum(len(m["content"]) for m in chat)
        if characters > base.max_length * MAX_CHARS_PER_TOKEN:
            raise ConfigError("messages", f"is far above this model's {base.max_length} tokens")
        with base.tokenizer_lock:
            return [chat_prompt_ids(base.tokenizer, chat, "messages")]

    max_tokens = body.max_completion_tokens or body.max_tokens
    run = await _start(request, engine, caller.tenant_id, body, max_tokens, rows, "messages")
    if body.stream:
        return _stream(run, body, _chat_chunk)
    done = await run.complete()
    return ChatCompletion(
        id=run.id,
        created=run.created,
        model=body.model,
        choices=[
            ChatChoice(
                index=i,
                message=AssistantMessage(content=c.text),
                finish_reason=_reason(c.finish),
            )
            for i, c in enumerate(done)
        ],
        usage=run.usage([c.completion_tokens for c in done]),
    )


# ---- running a request -------------------------------------------------------------------------


@dataclass
class Run:
    """One request's choices in the decoder: prompt i's k-th choice is index i·n + k."""

    id: str
    created: int
    prompt_tokens: int
    handles: list[Generation]

    def usage(self, completion_tokens: Sequence[int]) -> Usage:
        generated = sum(completion_tokens)
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=generated,
            total_tokens=self.prompt_tokens + generated,
        )

    async def complete(self) -> list[Any]:
        try:
            return list(await asyncio.gather(*(h.complete() for h in self.handles)))
        finally:
            self.cancel()

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()


async def _start(
    request: Request,
    engine: InferenceEngine,
    tenant_id: str,
    body: Sampling,
    max_tokens: int | None,
    rows: Callable[[SharedBase], list[list[int]]],
    field: str,
) -> Run:
    try:
        prepared = await asyncio.to_thread(
            _prepare, request, engine, tenant_id, body, max_tokens, rows, field
        )
    except BaseModelUnavailable as exc:
        raise RequestError(503, "base_model_unavailable", str(exc)) from exc
    prefix = "cmpl" if isinstance(body, CompletionRequest) else "chatcmpl"
    return Run(
        id=f"{prefix}-{secrets.token_hex(12)}",
        created=int(time.time()),
        prompt_tokens=sum(len(e["input_ids"]) for e in prepared.encodings),
        handles=engine.generate(prepared, copies=body.n),
    )


def _prepare(
    request: Request,
    engine: InferenceEngine,
    tenant_id: str,
    body: Sampling,
    max_tokens: int | None,
    rows: Callable[[SharedBase], list[list[int]]],
    field: str,
) -> Prepared:
    """In a worker thread: resolve ``model``, render and tokenize, check the limits."""
    settings = request.app.state.settings
    stops = _stops(body.stop)

    def prepare(adapter_id: str | None, base: SharedBase) -> Prepared:
        if base.kind != "causal-lm":
            raise ConfigError("model", f"{body.model!r} does not generate text; use /infer")
        token_rows = rows(base)
        longest = max(len(r) for r in token_rows)
        room = min(engine.settings.max_new_tokens, base.max_length - longest)
        if max_tokens is not None:
            wanted = max_tokens
        elif room > 0:
            wanted = room
        else:
            raise ConfigError(field, f"leaves no room in this model's {base.max_length} tokens")
        generation = GenerationParams(
            max_new_tokens=wanted,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            stop=stops,
        )
        return engine.prepare_tokens(
            adapter_id, token_rows, generation, base_model=base.name, field=field
        )

    if body.model in settings.base_models:
        if not is_causal_lm(settings.base_models[body.model]):
            raise ConfigError("model", f"base model {body.model!r} does not generate text")
        return prepare(None, engine.base(body.model, "causal-lm"))
    try:
        return with_tenant_adapter(
            request,
            tenant_id,
            body.model,
            lambda: prepare(body.model, engine.adapter(body.model).base),
        )
    except RequestError as exc:
        if exc.status != 404:
            raise
        raise RequestError(
            404,
            "model_not_found",
            f"model {body.model!r} is neither a base model here nor one of your adapters",
            "model",
        ) from None


def _tokenize(base: SharedBase, text: str, where: str) -> list[int]:
    if len(text) > base.max_length * MAX_CHARS_PER_TOKEN:
        raise ConfigError(where, f"is far above this model's {base.max_length} tokens")
    with base.tokenizer_lock:
        return list(base.tokenizer(text)["input_ids"])


def _token_ids(base: SharedBase, ids: list[int], where: str) -> list[int]:
    vocabulary = base.model.get_input_embeddings().num_embeddings
    for i, token in enumerate(ids):
        if not 0 <= token < vocabulary:
            raise ConfigError(f"{where}.{i}", f"token id {token} is outside 0..{vocabulary - 1}")
    return list(ids)


def _chat_turn(message: ChatMessage, index: int) -> dict[str, str]:
    content = message.content
    text = content if isinstance(content, str) else "".join(p.text for p in content)
    if not text.strip() and message.role != "assistant":
        raise ConfigError(f"messages.{index}.content", "is empty")
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": text}


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise ConfigError("stop", f"at most {MAX_STOPS} sequences, got {len(stops)}")
    for i, s in enumerate(stops):
        if not s:
            raise ConfigError("stop" if isinstance(stop, str) else f"stop.{i}", "is empty")
    return tuple(stops)


def _neutral_only(body: Sampling, **neutral: Any) -> None:
    """OpenAI fields this service does not implement: only their neutral value passes."""
    shared = {"presence_penalty": (None, 0), "frequency_penalty": (None, 0), "logit_bias": (None,)}
    for name, allowed in shared.items():
        value = getattr(body, name)
        if value not in allowed and value != {}:
            raise RequestError(400, "unsupported_parameter", f"{name} is not supported", name)
    for name, value in neutral.items():
        if getattr(body, name) not in (value, [], False):
            raise RequestError(400, "unsupported_parameter", f"{name} is not supported", name)


def _reason(finish: str) -> str:
    return "length" if finish == "length" else "stop"


# ---- streaming ---------------------------------------------------------------------------------

Chunk = Callable[[Run, Sampling, int, TextEvent | None], dict[str, Any]]


def _completion_chunk(run: Run, body: Sampling, index: int, event: TextEvent | None) -> dict:
    finish = None if event is None or event.finish is None else _reason(event.finish)
    choice = {
        "index": index,
        "text": "" if event is None else event.delta,
        "logprobs": None,
        "finish_reason": finish,
    }
    return _envelope(run, body, "text_completion", [choice])


def _chat_chunk(run: Run, body: Sampling, index: int, event: TextEvent | None) -> dict:
    if event is None:  # the opening chunk of a choice names the role
        delta: dict[str, Any] = {"role": "assistant", "content": ""}
        finish = None
    elif event.finish is not None:
        delta = {"content": event.delta} if event.delta else {}
        finish = _reason(event.finish)
    else:
        delta, finish = {"content": event.delta}, None
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return _envelope(run, body, "chat.completion.chunk", [choice])


def _envelope(run: Run, body: Sampling, kind: str, choices: list[dict]) -> dict[str, Any]:
    return {
        "id": run.id,
        "object": kind,
        "created": run.created,
        "model": body.model,
        "choices": choices,
    }


def _stream(run: Run, body: Sampling, chunk: Chunk) -> StreamingResponse:
    include_usage = body.stream_options is not None and body.stream_options.include_usage

    async def events() -> AsyncIterator[str]:
        generated = [0] * len(run.handles)
        try:
            if chunk is _chat_chunk:
                for index in range(len(run.handles)):
                    yield _sse(chunk(run, body, index, None))
            async for index, event in _merged(run.handles):
                generated[index] = event.tokens
                if event.delta or event.finish is not None:
                    yield _sse(chunk(run, body, index, event))
            if include_usage:
                usage = run.usage(generated).model_dump()
                yield _sse({**_envelope(run, body, _kind(chunk), []), "usage": usage})
            yield "data: [DONE]\n\n"
        except Exception as exc:  # a failure after the headers went out: say so in the stream
            message = str(exc) or "generation failed"
            error = {"message": message, "type": "server_error", "param": None, "code": None}
            yield _sse({"error": error})
        finally:
            run.cancel()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _kind(chunk: Chunk) -> str:
    return "chat.completion.chunk" if chunk is _chat_chunk else "text_completion"


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


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
