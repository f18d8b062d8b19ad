"""Constrained decoding: a decode row may carry a JSON grammar that masks its next-token logits.

Structured outputs (``response_format`` json_object / json_schema) and tool-call arguments must be
JSON documents that parse and follow their schema; masking, before every pick, the tokens the
grammar forbids guarantees that. The grammar work (JSON Schema to grammar, token masks over a
byte-level vocabulary) is llguidance's, chosen by bench/grammar_libs.py (docs/benchmarks.md).
This module binds it to one base's tokenizer, caches compiled grammars, and gives the decoder one
small object per row, so rows with different grammars and free rows share one decode step.

Documents are compact: no whitespace between JSON tokens, "," and ":" as separators. Free
whitespace would let a small model loop on newlines without ever closing its document.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import llguidance
import torch
from llguidance.hf import from_tokenizer

from adalora_core.errors import ConfigError

JSON_SCHEMA_FIELD = "response_format.json_schema.schema"
ANY_OBJECT: dict[str, Any] = {"type": "object"}  # json_object mode: any JSON object
# llguidance's JSON compile options, applied over any "x-guidance" the schema itself carries.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}


class GrammarViolation(RuntimeError):
    """A row was given a token its grammar forbids: a decoder bug, since the mask forbids it."""


def schema_key(schema: Mapping[str, Any]) -> str:
    """The cache key of a schema: a hash of its canonical JSON (sorted keys, no spaces), so
    equal schemas written with their keys in another order share one compiled grammar."""
    text = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def _byte_bias(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Row ``b``: the additive bias (0 allowed, -inf forbidden) of the 8 tokens whose bits make
    up byte value ``b`` of a bitmask."""
    bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
    return torch.where(bits == 1, 0.0, float("-inf")).to(device=device, dtype=dtype)


def mask_bias(words: torch.Tensor, size: int, like: torch.Tensor) -> torch.Tensor:
    """The additive bias (0 allowed, -inf forbidden) of the first ``size`` tokens of a bitmask
    (bit ``i % 32`` of int32 word ``i // 32`` set when token ``i`` is allowed), on the device and
    in the dtype of ``like``. A byte-wise table lookup then an add: cheaper than unpacking the
    bits with shifts and a masked fill (docs/benchmarks.md, constrained decoding)."""
    # The words' bytes in memory order are bits 0-7, 8-15, ... on a little-endian machine.
    index = words.view(torch.uint8).to(like.device, torch.int32)  # a copy: the row reuses words
    return _byte_bias(like.device, like.dtype).index_select(0, index).view(-1)[:size]


class RowConstraint:
    """One row's place in its grammar. Used by the decode thread only: `mask` before each pick,
    `accept` after it."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._words = torch.zeros((vocab_size + 31) // 32, dtype=torch.int32)

    def mask(self, logits: torch.Tensor) -> None:
        """Set, in place, the logits of every token the grammar forbids now to -inf. Columns
        past the tokenizer's vocabulary (a model's padded embedding) are always forbidden."""
        self._matcher.unsafe_compute_mask_ptr(self._words.data_ptr(), self._words.numel() * 4)
        self._raise_on_error()
        size = min(logits.shape[-1], self._vocab_size)
        logits[:size].add_(mask_bias(self._words, size, logits))
        logits[size:] = float("-inf")

    def accept(self, token_id: int) -> None:
        """Advance by the token picked under the mask (an end-of-sequence token included)."""
        self._matcher.consume_token(token_id)
        self._raise_on_error()

    @property
    def can_end(self) -> bool:
        """The text so far is a complete document: the mask now allows end-of-sequence."""
        return self._matcher.is_accepting()

    @property
    def is_finished(self) -> bool:
        """Nothing but end-of-sequence can follow: the row may stop without another step."""
        return self._matcher.is_stopped()

    def _raise_on_error(self) -> None:
        if self._matcher.is_error():
            raise GrammarViolation(self._matcher.get_error())


@dataclass(frozen=True)
class CompiledGrammar:
    """A grammar compiled for one tokenizer, shared by every row that uses it."""

    key: str
    _prototype: llguidance.LLMatcher
    _vocab_size: int
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False)

    def start(self) -> RowConstraint:
        """A new row at the start of the document (a copy of the compiled matcher: microseconds)."""
        with self._lock:
            matcher = self._prototype.deep_copy()
        return RowConstraint(matcher, self._vocab_size)


class GrammarCompiler:
    """Compiles JSON grammars for one base's tokenizer; one per base, thread-safe.

    llguidance's view of the tokenizer takes about a second to build, so it is built on the first
    compile: a base that never serves a constrained request never pays it. Compiled grammars are
    kept in a bounded LRU keyed by `schema_key`.
    """

    def __init__(
        self,
        tokenizer: Any,
        eos_ids: Iterable[int],
        *,
        cache_size: int = 128,
        tokenizer_lock: threading.Lock | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._eos_ids = sorted(set(eos_ids))
        self._cache_size = cache_size
        self._tokenizer_lock = tokenizer_lock or threading.Lock()
        self._view: llguidance.LLTokenizer | None = None
        self._view_lock = threading.Lock()
        self._cache: OrderedDict[str, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    def json_object(self) -> CompiledGrammar:
        """Any JSON object (``response_format: {"type": "json_object"}``)."""
        return self.json_schema(ANY_OBJECT, field="response_format")

    def json_schema(self, schema: object, field: str = JSON_SCHEMA_FIELD) -> CompiledGrammar:
        """A document valid against ``schema``: a response format's schema, or a tool's
        parameters (pass that tool's field). Raises ConfigError naming ``field`` when the schema
        is not a JSON object or the library cannot compile it."""
        if not isinstance(schema, Mapping):
            raise ConfigError(field, "must be a JSON Schema object")
        try:
            key = schema_key(schema)
        except (TypeError, ValueError) as exc:
            raise ConfigError(field, f"is not JSON: {exc}") from exc
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                return found
        compiled = self._compile(key, schema, field)
        with self._lock:
            found = self._cache.setdefault(key, compiled)  # a racing compile of it may have won
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return found

    def _compile(self, key: str, schema: Mapping[str, Any], field: str) -> CompiledGrammar:
        view = self._tokenizer_view(field)
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                dict(schema), overrides=_JSON_OPTIONS
            )
        except ValueError as exc:
            raise ConfigError(field, f"cannot be compiled: {exc}") from exc
        matcher = llguidance.LLMatcher(view, grammar, log_level=0)
        if matcher.is_error():
            raise ConfigError(field, f"cannot be compiled: {matcher.get_error()}")
        return CompiledGrammar(key, matcher, view.vocab_size)

    def _tokenizer_view(self, field: str) -> llguidance.LLTokenizer:
        with self._view_lock:
            if self._view is None:
                try:
                    with self._tokenizer_lock:
                        self._view = from_tokenizer(
                            self._tokenizer, eos_token=self._eos_ids or None
                        )
                except ValueError as exc:  # llguidance reads fast (Rust) tokenizers only
                    raise ConfigError(
                        field, f"this base's tokenizer cannot be constrained: {exc}"
                    ) from exc
            return self._view
