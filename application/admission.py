"""The one admission step for every inference protocol: /infer, /v1/completions and
/v1/chat/completions go in as (tenant, model or adapter, inputs, sampling); one request the
engine can run, or an error naming the field, comes out.

Every refusal is decided here, once: an unknown or another tenant's adapter, a model of the
wrong kind for the protocol, too many rows, inputs too long for the context or the batch, bad
generation parameters. The routes only translate their protocol to these types and the answer
back; the engine keeps the mechanism (cache, batching, forward, decoding).

Runs in a worker thread (a cold adapter loads from the store) except `infer_resident`, which
answers on the event loop when the adapter's record and weights are both in memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adalora_core.chat_template import chat_prompt_ids
from adalora_core.errors import ConfigError
from adalora_core.serving.bases import BaseModelUnavailable, SharedBase
from adalora_core.serving.constraints import JSON_SCHEMA_FIELD, CompiledGrammar
from adalora_core.serving.engine import InferenceEngine
from adalora_core.serving.generation import MAX_LOGIT_BIAS, GenerationParams
from adalora_core.serving.handles import Generation
from adalora_core.serving.loading import LoadedAdapter
from adalora_core.serving.outputs import token_bytes
from adalora_core.serving.requests import (
    MAX_CHARS_PER_TOKEN,
    Prepared,
    check_context,
    prepare_texts,
    prepare_token_rows,
)
from adalora_core.serving.scheduling import DecoderBusy
from adalora_core.serving.sources import (
    AdapterCorrupt,
    AdapterIncompatible,
    AdapterNotFound,
    AdapterTooLarge,
    AdapterUnavailable,
)
from adalora_core.tasks import ModelKind
from application.adapter_directory import AdapterDirectory, AdapterRecord
from application.errors import RequestError, not_found, retry_after
from service.base_models import SentencePooling, is_causal_lm, sentence_pooling
from service.settings import DEFAULT_MINILM_NAME

# /infer: tokens generated when parameters.max_new_tokens is unset.
DEFAULT_MAX_NEW_TOKENS = 32
MAX_STOPS = 4  # as OpenAI
# /infer: a request up to this many characters is tokenized on the event loop when its adapter
# is in memory; a longer one would hold the loop (and every other request) while it tokenizes.
INLINE_PREPARE_CHARS = 4096


@dataclass(frozen=True)
class AdmissionLimits:
    """The service's bounds on one request (Settings ``infer_*`` and ``max_batch_tokens``)."""

    max_rows: int
    max_new_tokens: int
    max_batch_tokens: int


# ---- what a protocol hands in ---------------------------------------------------------------


@dataclass(frozen=True)
class TextRows:
    """/infer's inputs: texts, or [text, pair] rows for pair classification."""

    rows: Sequence[str | Sequence[str]]
    truncate: bool = True


@dataclass(frozen=True)
class Prompts:
    """/v1/completions' prompts (and /v1/embeddings' inputs): texts or rows of token ids;
    ``single`` when one was given, so errors name ``prompt`` rather than ``prompt.0``."""

    prompts: Sequence[str | Sequence[int]]
    single: bool = False
    field: str = "prompt"

    def where(self, index: int) -> str:
        return self.field if self.single else f"{self.field}.{index}"


@dataclass(frozen=True)
class EmbeddingShape:
    """What /v1/embeddings does to a pooled vector: cut it to ``dimensions`` (a model trained
    for it), then scale it to length 1 where the model's pipeline normalizes."""

    normalize: bool
    dimensions: int | None = None

    def apply(self, vector: Sequence[float]) -> list[float]:
        values = list(vector[: self.dimensions] if self.dimensions else vector)
        if self.normalize:
            norm = max(math.sqrt(sum(v * v for v in values)), 1e-12)  # torch's normalize
            values = [v / norm for v in values]
        return values


@dataclass(frozen=True)
class Chat:
    """/v1/chat/completions' conversation, roles already mapped to the chat template's, and
    the tool definitions the template renders."""

    messages: Sequence[Mapping[str, Any]]
    tools: Sequence[Mapping[str, Any]] = ()


Inputs = TextRows | Prompts | Chat


@dataclass(frozen=True)
class InferCall:
    """A POST /infer request: an adapter of the tenant's, or the plain base (``adapter_id``
    None, ``base_model`` or the default), its rows and its ``parameters``."""

    tenant_id: str
    adapter_id: str | None
    base_model: str | None
    inputs: TextRows
    parameters: Mapping[str, object]


@dataclass(frozen=True)
class JsonOutput:
    """The answer must be a JSON document: any object (``schema`` None, OpenAI's json_object)
    or one valid against ``schema`` (json_schema, or a tool's arguments); ``field`` is what
    an error about the schema names."""

    schema: Mapping[str, Any] | None = None
    field: str = JSON_SCHEMA_FIELD


@dataclass(frozen=True)
class Sampling:
    """Generation parameters as the protocol gave them; ``max_new_tokens`` None means as many
    as fit in the context (the chat protocol's default). ``n`` rows per prompt are decoded."""

    max_new_tokens: int | None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] | str | None = None
    n: int = 1
    output: JsonOutput | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[str, float] | None = None  # token id as a string → bias
    logprobs: int | None = None  # None: not reported; k: the picked token and k alternatives
    prompt_logprobs: bool = False  # the prompt's tokens too (an echoed completion's)


@dataclass(frozen=True)
class Admitted:
    """A request the engine can run: its tokenized rows, and how many choices each gets."""

    prepared: Prepared
    copies: int = 1
    embedding: EmbeddingShape | None = None  # set for /v1/embeddings

    @property
    def prompt_tokens(self) -> int:
        return sum(len(e["input_ids"]) for e in self.prepared.encodings)

    @property
    def rows(self) -> int:
        """Rows the engine will run: each prompt once per choice."""
        return self.prepared.rows * self.copies

    def token_bytes(self, ids: Sequence[int]) -> list[bytes]:
        """Each token's bytes, for the log-probabilities an answer reports."""
        base = self.prepared.base
        with base.tokenizer_lock:
            return token_bytes(base.tokenizer, ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids as text (a completion's echoed prompt)."""
        base = self.prepared.base
        with base.tokenizer_lock:
            return base.tokenizer.decode(list(ids), skip_special_tokens=True)


@dataclass(frozen=True)
class _Target:
    """What a request resolved to: a base, the kind its model runs as, and an adapter or none."""

    name: str
    base_model: str
    kind: ModelKind
    record: AdapterRecord | None = None


@dataclass(frozen=True)
class _Rules:
    """How a protocol names things: the field of its model, whether it only generates, the
    field of its new-token count and of its inputs."""

    model_field: str
    generative: bool
    max_new_tokens_field: str
    inputs_field: str


INFER = _Rules("adapter_id", False, "parameters.max_new_tokens", "inputs")
EMBEDDINGS = _Rules("model", False, "", "input")
COMPLETIONS = _Rules("model", True, "max_tokens", "prompt")
CHAT = _Rules("model", True, "max_tokens", "messages")


class Admission:
    """Thread-safe; shared by every request of the API process."""

    def __init__(
        self,
        engine: InferenceEngine,
        directory: AdapterDirectory,
        base_models: Mapping[str, str],
        limits: AdmissionLimits,
    ) -> None:
        self.engine = engine
        self.directory = directory
        self.base_models = base_models
        self.limits = limits
        self._base_kinds: dict[str, ModelKind] = {}
        self._poolings: dict[str, SentencePooling] = {}

    # ---- the protocols' entry points ----------------------------------------------------------
    def infer(self, call: InferCall) -> Admitted:
        """POST /infer: an adapter of the tenant's, or the plain base (``adapter_id`` None)."""
        target = self._infer_target(call.tenant_id, call.adapter_id, call.base_model)
        return self._admit(call.tenant_id, target, INFER, call.inputs, _infer_sampling(call))

    def infer_resident(self, call: InferCall) -> Admitted | None:
        """`infer` on the event loop, for a short request whose adapter record and weights are
        both in memory; None sends the caller to `infer` in a worker thread."""
        if (
            call.adapter_id is None
            or call.base_model is not None
            or _characters(call.inputs) > INLINE_PREPARE_CHARS
        ):
            return None
        record = self.directory.find_cached(call.tenant_id, call.adapter_id)
        if record is None or self.engine.resident(record.ref) is None:
            return None
        target = _Target(call.adapter_id, record.ref.base_model or "", record.kind, record)
        return self._admit(call.tenant_id, target, INFER, call.inputs, _infer_sampling(call))

    def generation(
        self, tenant_id: str, model: str, inputs: Prompts | Chat, sampling: Sampling
    ) -> Admitted:
        """/v1/completions and /v1/chat/completions: ``model`` is a base's name or one of the
        tenant's adapters."""
        rules = CHAT if isinstance(inputs, Chat) else COMPLETIONS
        return self._admit(tenant_id, self._model_target(tenant_id, model), rules, inputs, sampling)

    def embeddings(
        self, tenant_id: str, model: str, inputs: Prompts, dimensions: int | None
    ) -> Admitted:
        """/v1/embeddings: ``model`` an encoder base or an adapter on one; each input becomes
        the vector the model's sentence-embedding pipeline defines (its pooling, its
        normalization), the adapter's low-rank terms applied and its head left out."""
        target = self._model_target(tenant_id, model)
        if target.kind != "sequence-classification":
            raise ConfigError("model", f"{model!r} is not an encoder; it does not give embeddings")
        _check_rows(EMBEDDINGS, inputs, 1, self.limits.max_rows)
        pooling = self._pooling(target.base_model)
        if pooling.mode != "mean":
            raise ConfigError("model", f"pools by {pooling.mode}; only mean pooling is served")
        base, adapter = self._load(tenant_id, target)
        width = int(base.model.config.hidden_size)
        if dimensions is not None and dimensions != width:
            if not pooling.truncatable:
                raise ConfigError(
                    "dimensions",
                    f"{model!r} gives {width}-dimensional embeddings and was not trained to be "
                    "cut shorter",
                )
            if not 1 <= dimensions <= width:
                raise ConfigError("dimensions", f"must be from 1 to {width}")
        limit = adapter.max_length if adapter is not None else base.max_length
        typed = "token_type_ids" in getattr(base.tokenizer, "model_input_names", ())
        encodings = []
        for i, ids in enumerate(_prompt_rows(base, inputs)):
            if not ids:
                raise ConfigError(inputs.where(i), "is empty")
            if len(ids) > limit:
                raise ConfigError(
                    inputs.where(i), f"is {len(ids)} tokens, above this model's {limit}"
                )
            encoding = {"input_ids": ids, "attention_mask": [1] * len(ids)}
            if typed:
                encoding["token_type_ids"] = [0] * len(ids)
            encodings.append(encoding)
        prepared = Prepared(base, adapter, encodings, None, embed=True)
        self._check_lengths(prepared, inputs)
        return Admitted(prepared, embedding=EmbeddingShape(pooling.normalize, dimensions))

    def _pooling(self, base_model: str) -> SentencePooling:
        found = self._poolings.get(base_model)
        if found is None:
            found = self._poolings[base_model] = sentence_pooling(self.base_models[base_model])
        return found

    def generate(self, tenant_id: str, admitted: Admitted) -> list[Generation]:
        """Start the rows in their base's decoder, taking the tenant's turn; a full queue is
        a 429 to retry, not a wait without bound."""
        try:
            return self.engine.generate(admitted.prepared, admitted.copies, tenant_id)
        except DecoderBusy as exc:
            raise RequestError(
                429, "overloaded", str(exc), None, retry_after(exc.retry_after_s)
            ) from exc

    # ---- resolving what the request names -----------------------------------------------------
    def _infer_target(
        self, tenant_id: str, adapter_id: str | None, base_model: str | None
    ) -> _Target:
        if adapter_id is not None:
            if base_model is not None:
                raise ConfigError("base_model", "only allowed with adapter_id null")
            record = self.directory.find(tenant_id, adapter_id)
            return _Target(adapter_id, record.ref.base_model or "", record.kind, record)
        name = base_model or self.default_base_model()
        if name is None or name not in self.base_models:
            known = sorted(self.base_models)
            raise ConfigError("base_model", f"unknown base model {name!r}; known: {known}")
        return _Target(name, name, self._base_kind(name))

    def _base_kind(self, name: str) -> ModelKind:
        """A plain base runs as what it is: a causal LM generates, any other gives embeddings
        (read from its config once)."""
        kind = self._base_kinds.get(name)
        if kind is None:
            generates = is_causal_lm(self.base_models[name])
            kind = self._base_kinds[name] = "causal-lm" if generates else "sequence-classification"
        return kind

    def _model_target(self, tenant_id: str, model: str) -> _Target:
        if model in self.base_models:
            return _Target(model, model, self._base_kind(model))
        try:
            record = self.directory.find(tenant_id, model)
        except RequestError as exc:
            if exc.status != 404:
                raise
            raise RequestError(
                404,
                "model_not_found",
                f"model {model!r} is neither a base model here nor one of your adapters",
                "model",
            ) from None
        return _Target(model, record.ref.base_model or "", record.kind, record)

    def default_base_model(self) -> str | None:
        """The base a request with adapter_id null runs on when it names none."""
        if DEFAULT_MINILM_NAME in self.base_models:
            return DEFAULT_MINILM_NAME
        return next(iter(self.base_models), None)

    # ---- the one step -------------------------------------------------------------------------
    def _admit(
        self, tenant_id: str, target: _Target, rules: _Rules, inputs: Inputs, sampling: Sampling
    ) -> Admitted:
        if rules.generative and target.kind != "causal-lm":
            raise ConfigError(
                rules.model_field, f"{target.name!r} does not generate text; use /infer"
            )
        _check_rows(rules, inputs, sampling.n, self.limits.max_rows)
        wanted = self._wanted_tokens(rules, sampling)
        base, adapter = self._load(tenant_id, target)
        if isinstance(inputs, TextRows):
            generation = None
            if target.kind != "sequence-classification":
                generation = _params(sampling, wanted or self._default_new_tokens())
            prepared = prepare_texts(base, adapter, inputs.rows, generation, inputs.truncate)
        else:
            rows = (
                _chat_rows(base, inputs) if isinstance(inputs, Chat) else _prompt_rows(base, inputs)
            )
            if wanted is None:  # as many as fit
                wanted = min(self.limits.max_new_tokens, base.max_length - max(map(len, rows)))
                if wanted <= 0:
                    raise ConfigError(
                        rules.inputs_field,
                        f"leaves no room in this model's {base.max_length} tokens",
                    )
            params = _params(sampling, wanted, _generation_controls(base, sampling))
            prepared = prepare_token_rows(base, adapter, rows, params)
        self._check_lengths(prepared, inputs)
        return Admitted(prepared, sampling.n)

    def _wanted_tokens(self, rules: _Rules, sampling: Sampling) -> int | None:
        """The new tokens asked for, within the service's cap (checked for every request, so a
        bad value is an error even where a model does not generate)."""
        cap = self.limits.max_new_tokens
        wanted = sampling.max_new_tokens
        if wanted is not None and not 1 <= wanted <= cap:
            message = f"must be an integer from 1 to {cap}, got {wanted!r}"
            if rules.generative:
                message = f"at most {cap}, got {wanted}"
            raise ConfigError(rules.max_new_tokens_field, message)
        return wanted

    def _default_new_tokens(self) -> int:
        return min(DEFAULT_MAX_NEW_TOKENS, self.limits.max_new_tokens)

    def _load(self, tenant_id: str, target: _Target) -> tuple[SharedBase, LoadedAdapter | None]:
        """The base and the adapter, loading either on first use; engine failures become the
        caller's errors here, once."""
        try:
            if target.record is None:
                return self.engine.base(target.base_model, target.kind), None
            adapter = self._adapter(tenant_id, target.record)
            return adapter.base, adapter
        except BaseModelUnavailable as exc:
            raise RequestError(503, "base_model_unavailable", str(exc)) from exc

    def _adapter(self, tenant_id: str, record: AdapterRecord) -> LoadedAdapter:
        adapter_id = record.ref.adapter_id
        try:
            return self.engine.adapter(record.ref)
        except AdapterNotFound:
            raise not_found("adapter", adapter_id) from None
        except AdapterCorrupt as exc:
            raise self.directory.condemn(tenant_id, adapter_id, exc.reason) from exc
        except AdapterIncompatible as exc:
            raise RequestError(409, "adapter_incompatible", str(exc)) from exc
        except AdapterTooLarge as exc:
            raise RequestError(503, "adapter_too_large", str(exc)) from exc
        except AdapterUnavailable as exc:
            raise RequestError(503, "adapter_unavailable", f"{exc}; retry shortly") from exc

    def _check_lengths(self, prepared: Prepared, inputs: Inputs) -> None:
        """Every row fits the model's context with its new tokens, and one batch's memory."""
        generation = prepared.generation
        new_tokens = generation.max_new_tokens if generation is not None else 0
        limit = self.limits.max_batch_tokens
        for i, encoding in enumerate(prepared.encodings):
            tokens = len(encoding["input_ids"])
            if isinstance(inputs, TextRows):
                where, batch_where = f"inputs[{i}]", "inputs"
            else:
                where = batch_where = inputs.where(i) if isinstance(inputs, Prompts) else "messages"
                if tokens == 0:
                    raise ConfigError(where, "is empty")
            if generation is not None and prepared.base.kind == "causal-lm":
                check_context(prepared.base, tokens, generation, where)
            if tokens + new_tokens > limit:
                raise ConfigError(
                    batch_where,
                    f"needs {tokens + new_tokens} tokens, above the batch limit of {limit}",
                )


# ---- protocol vocabulary, checked once ----------------------------------------------------


def _infer_sampling(call: InferCall) -> Sampling:
    """/infer's ``parameters``: greedy unless a temperature is given."""
    parameters = call.parameters
    temperature = parameters.get("temperature")
    temperature = 0.0 if temperature is None else temperature
    if not isinstance(temperature, int | float) or not 0.0 <= float(temperature) <= 100.0:
        raise ConfigError(
            "parameters.temperature", f"must be a number from 0 to 100, got {temperature!r}"
        )
    top_p = parameters.get("top_p")
    top_p = 1.0 if top_p is None else top_p
    if not isinstance(top_p, int | float) or not 0.0 < float(top_p) <= 1.0:
        raise ConfigError("parameters.top_p", f"must be in (0, 1], got {top_p!r}")
    max_new = parameters.get("max_new_tokens")
    if max_new is not None and (isinstance(max_new, bool) or not isinstance(max_new, int)):
        raise ConfigError("parameters.max_new_tokens", f"must be an integer, got {max_new!r}")
    return Sampling(max_new, float(temperature), float(top_p))


def _check_rows(rules: _Rules, inputs: Inputs, n: int, max_rows: int) -> None:
    """One bound on the rows of a request, whatever its protocol: prompts × choices."""
    count = len(inputs.rows if isinstance(inputs, TextRows) else _prompts_of(inputs))
    if not count:
        raise ConfigError(rules.inputs_field, "needs at least one input")
    if count * n > max_rows:
        what = f"{count} prompts × n={n}" if n > 1 else f"{count}"
        raise ConfigError(
            rules.inputs_field, f"at most {max_rows} rows per request (prompts × n), got {what}"
        )


def _prompts_of(inputs: Prompts | Chat) -> Sequence[object]:
    return inputs.prompts if isinstance(inputs, Prompts) else [inputs.messages]


def _stops(stop: Sequence[str] | str | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise ConfigError("stop", f"at most {MAX_STOPS} sequences, got {len(stops)}")
    for i, s in enumerate(stops):
        if not s:
            raise ConfigError("stop" if isinstance(stop, str) else f"stop.{i}", "is empty")
    return tuple(stops)


def _params(
    sampling: Sampling, max_new_tokens: int, controls: Mapping[str, Any] | None = None
) -> GenerationParams:
    return GenerationParams(
        max_new_tokens=max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=sampling.seed,
        stop=_stops(sampling.stop),
        **(controls or {}),
    )


def _generation_controls(base: SharedBase, sampling: Sampling) -> dict[str, Any]:
    """What the continuous decoder applies per row: the output's grammar (compiled, or taken
    from the base's cache), the penalties, the logit bias, the log-probabilities reported."""
    return {
        "grammar": _grammar(base, sampling.output),
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "logit_bias": _logit_bias(base, sampling.logit_bias),
        "logprobs": sampling.logprobs,
        "prompt_logprobs": sampling.prompt_logprobs,
    }


def _grammar(base: SharedBase, output: JsonOutput | None) -> CompiledGrammar | None:
    if output is None:
        return None
    if output.schema is None:
        return base.grammars.json_object()
    return base.grammars.json_schema(output.schema, output.field)


def _logit_bias(
    base: SharedBase, bias: Mapping[str, float] | None
) -> tuple[tuple[int, float], ...]:
    """Token ids of this base's vocabulary, each biased by at most ±100 (OpenAI's bound)."""
    vocabulary = base.model.get_input_embeddings().num_embeddings
    entries: list[tuple[int, float]] = []
    for key, value in (bias or {}).items():
        where = f"logit_bias.{key}"
        if not key.isdigit() or not 0 <= int(key) < vocabulary:
            raise ConfigError(where, f"must be a token id from 0 to {vocabulary - 1}")
        if not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise ConfigError(where, f"must be from -100 to 100, got {value}")
        if value:
            entries.append((int(key), float(value)))
    return tuple(entries)


def _characters(inputs: TextRows) -> int:
    return sum(len(t) for row in inputs.rows for t in ([row] if isinstance(row, str) else row))


def _guard_characters(base: SharedBase, characters: int, where: str) -> None:
    """Tokenizing holds the base's tokenizer lock: refuse a text far above the context by its
    characters first, so one request cannot hold the lock while it tokenizes megabytes."""
    if characters > base.max_length * MAX_CHARS_PER_TOKEN:
        raise ConfigError(where, f"is far above this model's {base.max_length} tokens")


def _chat_rows(base: SharedBase, chat: Chat) -> list[list[int]]:
    _guard_characters(base, len(json.dumps([chat.messages, chat.tools])), "messages")
    with base.tokenizer_lock:
        return [chat_prompt_ids(base.tokenizer, chat.messages, "messages", chat.tools)]


def _prompt_rows(base: SharedBase, prompts: Prompts) -> list[list[int]]:
    return [_prompt_ids(base, p, prompts.where(i)) for i, p in enumerate(prompts.prompts)]


def _prompt_ids(base: SharedBase, prompt: str | Sequence[int], where: str) -> list[int]:
    if isinstance(prompt, str):
        _guard_characters(base, len(prompt), where)
        with base.tokenizer_lock:
            return list(base.tokenizer(prompt)["input_ids"])
    vocabulary = base.model.get_input_embeddings().num_embeddings
    for i, token in enumerate(prompt):
        if not 0 <= token < vocabulary:
            raise ConfigError(f"{where}.{i}", f"token id {token} is outside 0..{vocabulary - 1}")
    return list(prompt)
