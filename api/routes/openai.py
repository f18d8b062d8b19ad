"""The OpenAI-compatible surface: /v1/models, /v1/completions, /v1/chat/completions and
/v1/embeddings.

``model`` is one of the tenant's adapter ids or a base model's name, as LoRAX and vLLM do. Rows
decode in the base's continuous decoder beside every other request, /infer's included. Same keys,
tenant scoping and rate limits as /infer; errors leave in OpenAI's error shape (api/errors.py).
With ``stream: true`` the answer is server-sent events of token deltas ending in ``[DONE]``
(api/openai_stream.py). These routes only translate OpenAI's fields to the admission step
(`application.admission`) and its answer back.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import struct
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from adalora_core.errors import ConfigError
from adalora_core.serving.handles import Completion as Finished
from api.deps import CallerDep, Metered, MeteredCaller, ServingDep, SessionDep, SettingsDep
from api.disconnect import unless_disconnected
from api.openai_schemas import (
    AssistantMessage,
    CalledFunction,
    CalledTool,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Embedding,
    EmbeddingRequest,
    Embeddings,
    EmbeddingUsage,
    ModelCard,
    ModelCards,
    SamplingFields,
    UnreadablePart,
    openai_errors,
)
from api.openai_stream import (
    CHAT_CHUNKS,
    COMPLETION_CHUNKS,
    ChunkShape,
    LogprobView,
    Run,
    finish_reason,
)
from application import model_names
from application.admission import Admitted, Chat, JsonOutput, Prompts, Sampling
from application.engine_factory import Serving
from application.errors import RequestError
from application.tool_calls import ToolCall, plan_tools
from service import adapters as adapter_rows

router = APIRouter(prefix="/v1", tags=["openai"])

BASE_OWNER = "adalora-service"
STARTED = int(time.time())
GENERATION_ERRORS = openai_errors(400, 401, 404, 409, 429, 503)


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
    for named in model_names.named_models(session, caller.tenant_id):
        cards.append(
            ModelCard(
                id=named.name,
                created=int(named.created_at.timestamp()),
                owned_by=caller.tenant_id,
                base_model=named.base_model,
                task=named.task,
            )
        )
    return ModelCards(data=cards)


@router.post("/embeddings", response_model=Embeddings, responses=GENERATION_ERRORS)
async def embeddings(
    body: EmbeddingRequest, request: Request, metered: MeteredCaller, serving: ServingDep
) -> Embeddings:
    given = body.input
    single = isinstance(given, str) or (bool(given) and isinstance(given[0], int))
    inputs = Prompts([given] if single else list(given), single, "input")  # type: ignore[list-item]
    admitted = await asyncio.to_thread(
        serving.admission.embeddings, metered.tenant_id, body.model, inputs, body.dimensions
    )
    await metered.charge_rows(admitted.rows)
    rows = await unless_disconnected(request, serving.run_encoder(admitted.prepared))
    assert admitted.embedding is not None
    data = []
    for index, row in enumerate(rows):
        vector = admitted.embedding.apply(row["embedding"])
        if body.encoding_format == "base64":
            packed = struct.pack(f"<{len(vector)}f", *vector)
            data.append(Embedding(index=index, embedding=base64.b64encode(packed).decode()))
        else:
            data.append(Embedding(index=index, embedding=vector))
    tokens = admitted.prompt_tokens
    usage = EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    return Embeddings(data=data, model=body.model, usage=usage)


@router.post("/completions", response_model=Completion, responses=GENERATION_ERRORS)
async def completions(
    body: CompletionRequest, request: Request, metered: MeteredCaller, serving: ServingDep
) -> Any:
    if body.suffix:
        raise RequestError(
            400,
            "unsupported_parameter",
            "suffix needs a fill-in-the-middle model; none is served here",
            "suffix",
        )
    best_of = body.best_of or body.n
    if best_of < body.n:
        raise RequestError(400, "invalid_value", "best_of must be at least n", "best_of")
    if best_of > body.n and body.stream:
        raise RequestError(400, "invalid_value", "best_of cannot be used with stream", "best_of")
    prompt = body.prompt
    single = isinstance(prompt, str) or (bool(prompt) and isinstance(prompt[0], int))
    prompts: list[Any] = [prompt] if single else list(prompt)
    if not prompts or not all(prompts):
        raise RequestError(400, "invalid_value", "needs at least one non-empty prompt", "prompt")
    # best_of ranks its candidates by their tokens' mean log-probability.
    logprobs = body.logprobs if body.logprobs is not None or best_of == body.n else 0
    sampling = _sampling(body, body.max_tokens, best_of, logprobs)
    if body.echo and body.logprobs is not None:  # the echoed prompt's tokens are listed too
        sampling = dataclasses.replace(sampling, prompt_logprobs=True)
    inputs = Prompts(prompts, single)
    run, admitted = await _start(serving, metered, body, inputs, sampling, COMPLETION_CHUNKS)
    if body.echo:
        texts = [p if isinstance(p, str) else admitted.decode(p) for p in prompts]
        run.opening = [text for text in texts for _ in range(best_of)]
    if body.logprobs is not None:
        run.logprobs = LogprobView(admitted.token_bytes, chat=False)
        run.echo_logprobs = body.echo
    if body.stream:
        return run.stream(body.stream_options)
    done = await unless_disconnected(request, run.complete())
    chosen = _best(done, best_of, body.n) if best_of > body.n else list(range(len(done)))
    choices = []
    for index, k in enumerate(chosen):
        opening = run.opening[k] if run.opening else ""
        choices.append(
            CompletionChoice(
                index=index,
                text=opening + done[k].text,
                logprobs=run.logprobs_of(
                    k, done[k].logprobs, done[k].prompt_logprobs if body.echo else None
                ),
                finish_reason=finish_reason(done[k].finish),
            )
        )
    usage = run.usage([c.completion_tokens for c in done])
    return Completion(
        id=run.id, created=run.created, model=body.model, choices=choices, usage=usage
    )


@router.post("/chat/completions", response_model=ChatCompletion, responses=GENERATION_ERRORS)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, metered: MeteredCaller, serving: ServingDep
) -> Any:
    _refuse_unserved(body)
    if body.top_logprobs is not None and not body.logprobs:
        raise RequestError(
            400, "invalid_value", "top_logprobs needs logprobs set to true", "top_logprobs"
        )
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    choice = body.tool_choice
    plan = plan_tools(tools, choice.model_dump() if isinstance(choice, BaseModel) else choice)
    forced = plan.output() if plan is not None else None
    form = body.response_format
    if forced is not None and form is not None and form.type != "text":
        raise ConfigError("response_format", "cannot be combined with a forced tool_choice")
    inputs = Chat([_chat_turn(m, i) for i, m in enumerate(body.messages)], tools)
    max_tokens = body.max_completion_tokens or body.max_tokens
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    sampling = _sampling(body, max_tokens, body.n, logprobs, forced)
    run, admitted = await _start(serving, metered, body, inputs, sampling, CHAT_CHUNKS)
    run.tools = plan
    if body.logprobs:
        run.logprobs = LogprobView(admitted.token_bytes, chat=True)
    if body.stream:
        return run.stream(body.stream_options)
    done = await unless_disconnected(request, run.complete())
    choices = []
    for i, c in enumerate(done):
        calls = plan.calls(c.text) if plan is not None else []
        message = AssistantMessage(content=c.text)
        if calls:
            message = AssistantMessage(content=None, tool_calls=[_called(call) for call in calls])
        choices.append(
            ChatChoice(
                index=i,
                message=message,
                logprobs=run.logprobs_of(i, c.logprobs),
                finish_reason=finish_reason(c.finish, bool(calls)),
            )
        )
    usage = run.usage([c.completion_tokens for c in done])
    return ChatCompletion(
        id=run.id, created=run.created, model=body.model, choices=choices, usage=usage
    )


def _called(call: ToolCall) -> CalledTool:
    return CalledTool(id=call.id, function=CalledFunction(name=call.name, arguments=call.arguments))


def _best(done: list[Finished], best_of: int, n: int) -> list[int]:
    """Of each prompt's ``best_of`` candidates, the ``n`` with the highest log-probability per
    token (OpenAI's rule), best first."""

    def score(k: int) -> float:
        entries = done[k].logprobs
        return sum(e.logprob for e in entries) / len(entries) if entries else float("-inf")

    chosen: list[int] = []
    for start in range(0, len(done), best_of):
        candidates = range(start, start + best_of)
        chosen.extend(sorted(candidates, key=score, reverse=True)[:n])
    return chosen


def _sampling(
    body: SamplingFields,
    max_tokens: int | None,
    rows: int,
    logprobs: int | None,
    output: JsonOutput | None = None,
) -> Sampling:
    """The request's generation parameters, as the admission step takes them; ``output`` is
    a forced tool call's grammar, else the response format's."""
    form = body.response_format if output is None else None
    if form is not None and form.type == "json_object":
        output = JsonOutput()
    elif form is not None and form.type == "json_schema":
        if form.json_schema is None:
            raise ConfigError("response_format.json_schema", "is required with type json_schema")
        output = JsonOutput(form.json_schema.schema_)
    return Sampling(
        max_new_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=body.stop,
        n=rows,
        output=output,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=body.logit_bias,
        logprobs=logprobs,
    )


async def _start(
    serving: Serving,
    metered: Metered,
    body: SamplingFields,
    inputs: Prompts | Chat,
    sampling: Sampling,
    shape: ChunkShape,
) -> tuple[Run, Admitted]:
    admitted = await asyncio.to_thread(
        serving.admission.generation, metered.tenant_id, body.model, inputs, sampling
    )
    await metered.charge_rows(admitted.rows)
    handles = serving.admission.generate(metered.tenant_id, admitted)
    return Run(body.model, shape, admitted.prompt_tokens, handles), admitted


UNREADABLE = {
    "image_url": "image inputs are not supported: this service's models read text",
    "input_audio": "audio inputs are not supported: this service's models read text",
    "file": "file inputs are not supported: send the file's text as a text part",
    "refusal": "refusal parts are not supported in a request",
}


def _chat_turn(message: ChatMessage, index: int) -> dict[str, Any]:
    content = message.content or ""
    if not isinstance(content, str):
        for j, part in enumerate(content):
            if isinstance(part, UnreadablePart):
                where = f"messages.{index}.content.{j}"
                raise RequestError(400, "unsupported_content", UNREADABLE[part.type], where)
    text = content if isinstance(content, str) else "".join(p.text for p in content)
    if message.tool_calls is not None and message.role != "assistant":
        raise ConfigError(f"messages.{index}.tool_calls", "only an assistant message calls tools")
    if message.role == "tool" and message.tool_call_id is None:
        raise ConfigError(f"messages.{index}.tool_call_id", "is required for a tool message")
    if not text.strip() and message.role != "assistant":
        raise ConfigError(f"messages.{index}.content", "is empty")
    role = "system" if message.role == "developer" else message.role
    turn: dict[str, Any] = {"role": role, "content": text}
    if message.name is not None:
        turn["name"] = message.name
    if message.tool_calls is not None:
        turn["tool_calls"] = [c.model_dump() for c in message.tool_calls]
    if message.tool_call_id is not None:
        turn["tool_call_id"] = message.tool_call_id
    return turn


# OpenAI's chat fields this service does not serve, and why (docs/api.md lists every field).
REFUSED = {
    "functions": "the deprecated functions form is not served: use tools",
    "function_call": "the deprecated functions form is not served: use tool_choice",
    "audio": "the served models read and write text only",
    "modalities": "the served models read and write text only",
    "prediction": "predicted outputs are not implemented",
    "reasoning_effort": "no reasoning model is served",
    "verbosity": "no reasoning model is served",
    "store": "completions are not stored",
    "metadata": "completions are not stored, so they carry no metadata",
    "service_tier": "there are no service tiers",
    "prompt_cache_key": "there is no prompt cache keyed by the caller",
    "safety_identifier": "no safety system reads it",
    "web_search_options": "there is no web search",
}
# What OpenAI's clients may send that asks for nothing (text only, not stored).
NEUTRAL: tuple[Any, ...] = (None, False, ["text"])


def _refuse_unserved(body: ChatCompletionRequest) -> None:
    for name, reason in REFUSED.items():
        if getattr(body, name) not in NEUTRAL:
            raise RequestError(400, "unsupported_parameter", f"{name}: {reason}", name)
