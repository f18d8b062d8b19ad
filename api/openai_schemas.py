"""Bodies of the OpenAI-compatible routes, in OpenAI's shapes (so its clients parse them).

Fields OpenAI defines that this service does not implement are accepted only at their neutral
value (``suffix: null``, ...); any other value is a 400 that names the field, never a silent
no-op. Fields OpenAI does not define are rejected the same way. docs/api.md lists every field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from adalora_core.serving.generation import MAX_TOP_LOGPROBS
from application.request_fields import Text

# The most choices one request may ask for (``n``, or ``best_of``): each is a decoding row.
MAX_CHOICES = 8
Penalty = Annotated[float | None, Field(ge=-2, le=2)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(Strict):
    include_usage: bool = False


class JsonSchemaFormat(Strict):
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] = Field(..., alias="schema")
    strict: bool | None = None


class ResponseFormat(Strict):
    """``text``, ``json_object`` (any JSON object) or ``json_schema`` (``json_schema.schema``):
    one model rather than a tagged union, so an error names the field the caller sent."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


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
    presence_penalty: Penalty = None
    frequency_penalty: Penalty = None
    logit_bias: dict[str, float] | None = Field(
        None, description="Token id (as a string) → bias added to its logit, -100 to 100."
    )
    response_format: ResponseFormat | None = None


class CompletionRequest(SamplingFields):
    prompt: Text | list[Text] | list[int] | list[list[int]] = Field(
        ..., description="One prompt or several, as text or as token ids."
    )
    max_tokens: int | None = Field(16, ge=1, description="Tokens to generate per choice.")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)
    suffix: str | None = None  # accepted empty only: no fill-in-the-middle models here


class TextPart(Strict):
    type: Literal["text"]
    text: Text


class UnreadablePart(BaseModel):
    """A part OpenAI's models may read and ours cannot (they read text): accepted by the
    schema so that the route can say so plainly."""

    model_config = ConfigDict(extra="allow")
    type: Literal["image_url", "input_audio", "file", "refusal"]


ContentPart = Annotated[TextPart | UnreadablePart, Field(discriminator="type")]


FunctionName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class CalledFunction(Strict):
    name: FunctionName
    arguments: str


class ToolCallIn(Strict):
    """An earlier assistant turn's tool call, in the history."""

    id: str = Field(..., min_length=1)
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # None only for an assistant turn that calls tools.
    content: Text | list[ContentPart] | None = None
    # Passed to the chat template, which may render it; OpenAI's own bound.
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    tool_calls: list[ToolCallIn] | None = Field(None, min_length=1)
    tool_call_id: str | None = Field(None, min_length=1, description="A tool result's call.")


class FunctionDefinition(Strict):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema of the arguments.")
    strict: bool | None = None


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Strict):
    name: FunctionName


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="Default: as many as fit.")
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # OpenAI's fields this service refuses (the route says why, naming the field; docs/api.md).
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    store: Any = None
    metadata: Any = None
    service_tier: Any = None
    prompt_cache_key: Any = None
    safety_identifier: Any = None
    web_search_options: Any = None


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


class CompletionLogprobs(BaseModel):
    """The legacy completions shape: parallel lists per token."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class CalledTool(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[CalledTool] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class EmbeddingRequest(Strict):
    model: str = Field(..., min_length=1, description="An encoder base, or an adapter on one.")
    input: Text | list[Text] | list[int] | list[list[int]] = Field(
        ..., description="One input or several, as text or as token ids."
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(..., description="base64: little-endian float32.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class Embeddings(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


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
