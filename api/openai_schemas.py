"""Bodies of the OpenAI-compatible routes, in OpenAI's shapes (so its clients parse them).

Fields OpenAI defines that this service does not implement are accepted only at their neutral
value (``echo: false``, ``presence_penalty: 0``, ...); any other value is a 400 that names the
field, never a silent no-op. Fields OpenAI does not define are rejected the same way.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from application.request_fields import Text

# The most choices one request may ask for (``n``): each is a decoding row.
MAX_CHOICES = 8


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(Strict):
    include_usage: bool = False


class SamplingFields(Strict):
    """What completions and chat completions share."""

    model: str = Field(..., min_length=1, description="An adapter id, or a base model's name.")
    temperature: float | None = Field(None, ge=0, le=2, description="Default 1; 0 is greedy.")
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Accepted at their neutral value only (checked in the route, naming the field).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None


class CompletionRequest(SamplingFields):
    prompt: Text | list[Text] | list[int] | list[list[int]] = Field(
        ..., description="One prompt or several, as text or as token ids."
    )
    max_tokens: int | None = Field(16, ge=1, description="Tokens to generate per choice.")
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


class TextPart(Strict):
    type: Literal["text"]
    text: Text


class UnreadablePart(BaseModel):
    """A part OpenAI's models may read and ours cannot (they read text): accepted by the
    schema so that the route can say so plainly."""

    model_config = ConfigDict(extra="allow")
    type: Literal["image_url", "input_audio", "file", "refusal"]


ContentPart = Annotated[TextPart | UnreadablePart, Field(discriminator="type")]


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[ContentPart]
    # Passed to the chat template, which may render it; OpenAI's own bound.
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="Default: as many as fit.")
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = Field(None, description="The request field at fault, dotted.")
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


def openai_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for /v1 routes: errors in OpenAI's shape."""
    return {status: {"model": OpenAIError, "description": "error"} for status in statuses}


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    base_model: str | None = Field(None, description="Adapters: the base they run on.")
    task: str | None = Field(None, description="Adapters: what they were trained for.")


class ModelCards(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
