"""The OpenAI-compatible surface: /v1/models, /v1/completions, /v1/chat/completions.

``model`` is one of the tenant's adapter ids or a base model's name, as LoRAX and vLLM do. Rows
decode in the base's continuous decoder beside every other request, /infer's included. Same keys,
tenant scoping and rate limits as /infer; errors leave in OpenAI's error shape (api/errors.py).
With ``stream: true`` the answer is server-sent events of token deltas ending in ``[DONE]``
(api/openai_stream.py). These routes only translate OpenAI's fields to the admission step
(`application.admission`) and its answer back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from adalora_core.errors import ConfigError
from adalora_core.serving.handles import Completion as Finished
from api.deps import CallerDep, Metered, MeteredCaller, ServingDep, SessionDep, SettingsDep
from api.disconnect import unless_disconnected
from api.openai_schemas import (
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
    SamplingFields,
    UnreadablePart,
    openai_errors,
)
from api.openai_stream import CHAT_CHUNKS, COMPLETION_CHUNKS, ChunkShape, Run, finish_reason
from application.admission import Chat, Prompts, Sampling
from application.engine_factory import Serving
from application.errors import RequestError
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
    return ModelCards(data=cards)


@router.post("/completions", response_model=Completion, responses=GENERATION_ERRORS)
async def completions(
    body: CompletionRequest, request: Request, metered: MeteredCaller, serving: ServingDep
) -> Any:
    _neutral_only(body, echo=False, logprobs=None, suffix=None)
    if body.best_of not in (None, 1, body.n):
        raise RequestError(400, "unsupported_parameter", "best_of is not supported", "best_of")
    prompt = body.prompt
    single = isinstance(prompt, str) or (bool(prompt) and isinstance(prompt[0], int))
    prompts: list[Any] = [prompt] if single else list(prompt)
    if not prompts or not all(prompts):
        raise RequestError(400, "invalid_value", "needs at least one non-empty prompt", "prompt")
    inputs = Prompts(prompts, single)
    run = await _start(serving, metered, body, inputs, body.max_tokens, COMPLETION_CHUNKS)
    return await _answer(request, run, body, Completion, _completion_choice)


@router.post("/chat/completions", response_model=ChatCompletion, responses=GENERATION_ERRORS)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, metered: MeteredCaller, serving: ServingDep
) -> Any:
    _neutral_only(body, logprobs=None, top_logprobs=None, tools=None, tool_choice=None)
    if body.response_format not in (None, {"type": "text"}):
        raise RequestError(
            400, "unsupported_parameter", "only text responses are supported", "response_format"
        )
    inputs = Chat([_chat_turn(m, i) for i, m in enumerate(body.messages)])
    max_tokens = body.max_completion_tokens or body.max_tokens
    run = await _start(serving, metered, body, inputs, max_tokens, CHAT_CHUNKS)
    return await _answer(request, run, body, ChatCompletion, _chat_choice)


def _completion_choice(index: int, done: Finished) -> CompletionChoice:
    return CompletionChoice(index=index, text=done.text, finish_reason=finish_reason(done.finish))


def _chat_choice(index: int, done: Finished) -> ChatChoice:
    message = AssistantMessage(content=done.text)
    return ChatChoice(index=index, message=message, finish_reason=finish_reason(done.finish))


async def _answer(
    request: Request,
    run: Run,
    body: SamplingFields,
    response: type[Any],
    choice: Callable[[int, Finished], Any],
) -> Any:
    """The stream, or every choice waited for (and cancelled if the client goes first) and
    shaped as the protocol's response."""
    if body.stream:
        return run.stream(body.stream_options)
    done = await unless_disconnected(request, run.complete())
    return response(
        id=run.id,
        created=run.created,
        model=body.model,
        choices=[choice(i, c) for i, c in enumerate(done)],
        usage=run.usage([c.completion_tokens for c in done]),
    )


async def _start(
    serving: Serving,
    metered: Metered,
    body: SamplingFields,
    inputs: Prompts | Chat,
    max_tokens: int | None,
    shape: ChunkShape,
) -> Run:
    sampling = Sampling(
        max_new_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=body.stop,
        n=body.n,
    )
    admitted = await asyncio.to_thread(
        serving.admission.generation, metered.tenant_id, body.model, inputs, sampling
    )
    await metered.charge_rows(admitted.rows)
    handles = serving.admission.generate(metered.tenant_id, admitted)
    return Run(body.model, shape, admitted.prompt_tokens, handles)


UNREADABLE = {
    "image_url": "image inputs are not supported: this service's models read text",
    "input_audio": "audio inputs are not supported: this service's models read text",
    "file": "file inputs are not supported: send the file's text as a text part",
    "refusal": "refusal parts are not supported in a request",
}


def _chat_turn(message: ChatMessage, index: int) -> dict[str, str]:
    content = message.content
    if not isinstance(content, str):
        for j, part in enumerate(content):
            if isinstance(part, UnreadablePart):
                where = f"messages.{index}.content.{j}"
                raise RequestError(400, "unsupported_content", UNREADABLE[part.type], where)
    text = content if isinstance(content, str) else "".join(p.text for p in content)
    if not text.strip() and message.role != "assistant":
        raise ConfigError(f"messages.{index}.content", "is empty")
    role = "system" if message.role == "developer" else message.role
    turn = {"role": role, "content": text}
    if message.name is not None:
        turn["name"] = message.name
    return turn


def _neutral_only(body: SamplingFields, **neutral: Any) -> None:
    """OpenAI fields this service does not implement: only their neutral value passes."""
    shared = {"presence_penalty": (None, 0), "frequency_penalty": (None, 0), "logit_bias": (None,)}
    for name, allowed in shared.items():
        value = getattr(body, name)
        if value not in allowed and value != {}:
            raise RequestError(400, "unsupported_parameter", f"{name} is not supported", name)
    for name, value in neutral.items():
        if getattr(body, name) not in (value, [], False):
            raise RequestError(400, "unsupported_parameter", f"{name} is not supported", name)
