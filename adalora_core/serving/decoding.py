"""Continuous batching for causal-LM generation: many adapters, one KV-cached decode step.

One thread per shared base runs the decode loop. Between two decode steps it admits what was
submitted (their prompts are prefilled together, then their caches join the running batch) and
drops every row that finished or was cancelled, so nothing waits for the longest generation.
Each step is one forward of one new token per row; the running rows are kept sorted by adapter,
so the routed layers add every adapter's low-rank term to its own contiguous rows (grouped.py).

Rows have different lengths: the batch cache is left-padded to its longest row and the padding is
masked, and each row's positions count its own tokens only, so a row decodes exactly as it would
alone (greedy, fp32: tests/serving/test_decoding.py).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers.cache_utils import DynamicCache

from adalora_core.serving.bases import SharedBase
from adalora_core.serving.grouped import (
    Routing,
    RowGroup,
    Strategy,
    group_rows,
    routed,
)
from adalora_core.serving.handles import (
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    Generation,
    TextEvent,
)
from adalora_core.serving.loading import LoadedAdapter
from adalora_core.serving.sampling import row_generator, sample_token
from adalora_core.serving.text_stream import StreamedText

log = logging.getLogger("adalora.serving.decoding")

# The decoder's low-rank op: "grouped" costs two small matmuls per adapter group per layer,
# "concat" three ops per layer whatever the groups, but multiplies every row by every group's
# factors. "auto" takes concat while the groups average at most CONCAT_ROWS_PER_GROUP rows, where
# per-call overhead outweighs the extra arithmetic (bench/decode.py, docs/benchmarks.md).
DecodeStrategy = Literal["auto", "grouped", "concat"]
CONCAT_ROWS_PER_GROUP = 2


@dataclass
class _Row:
    """A running row: its handle, what it generated and what of its text was published."""

    generation: Generation
    generator: torch.Generator | None
    length: int  # real tokens in the cache (prompt + generated, less the pending last token)
    text: StreamedText
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None


class ContinuousDecoder:
    """The decode loop of one causal-LM base. Thread-safe `submit`; `close` ends the thread."""

    def __init__(
        self,
        base: SharedBase,
        device: torch.device,
        max_rows: int,
        strategy: DecodeStrategy = "auto",
        max_tokens: int | None = None,
    ) -> None:
        if base.kind != "causal-lm":
            raise ValueError(f"continuous decoding serves causal-lm bases, not {base.kind}")
        self.base = base
        self.device = device
        self.max_rows = max_rows
        # The KV cache's bound: the running rows' prompt + max_new_tokens, summed.
        self.max_tokens = max_tokens
        self.strategy = strategy
        self.generated = 0  # tokens generated since start, end-of-sequence tokens not counted
        # The running rows' routing, rebuilt only when who is in the batch changes.
        self._routing_for: tuple[int, ...] = ()
        self._routing_cached: Routing | None = None
        self.steps = 0  # decode steps run (for tests and metrics)
        self.largest_batch = 0
        self.eos_ids = _eos_ids(base)
        self._incoming: queue.SimpleQueue[Generation | None] = queue.SimpleQueue()
        self._waiting: list[Generation] = []
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # rows × cached positions, 0 on left padding
        self._last: torch.Tensor | None = None  # rows × 1: each row's newest token
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="adalora-decoder", daemon=True)
        self._thread.start()

    def submit(self, generation: Generation) -> Generation:
        if self._closed:
            raise RuntimeError("the decoder is closed")
        self._incoming.put(generation)
        return generation

    def close(self) -> None:
        self._closed = True
        self._incoming.put(None)
        self._thread.join(timeout=30)

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting) + self._incoming.qsize()

    # ---- the loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            if not self._take_incoming(block=not self._rows and not self._waiting):
                self._fail_all(RuntimeError("the decoder closed"))
                return
            try:
                with self.base.lock, torch.inference_mode():
                    self._admit()
                    if self._rows:
                        self._step()
            except Exception as exc:  # a failed forward fails the rows in it, not the thread
                log.exception("decode step failed")
                self._fail_all(exc, waiting=False)
            self._retire()

    def _take_incoming(self, block: bool) -> bool:
        try:
            item = self._incoming.get() if block else self._incoming.get_nowait()
            while True:
                if item is None:
                    return False
                self._waiting.append(item)
                item = self._incoming.get_nowait()
        except queue.Empty:
            return True

    def _admit(self) -> None:
        """Prefill what waits (as many as fit) and merge it into the running batch."""
        waiting = [g for g in self._waiting if not g.cancelled.is_set()]
        for g in self._waiting:
            if g.cancelled.is_set():
                g.publish(TextEvent("", 0, FINISH_CANCELLED))
        used = sum(_cost(r.generation) for r in self._rows)
        admitted = 0
        for g in waiting:  # first come, first served: a big request is not overtaken
            if len(self._rows) + admitted >= self.max_rows:
                break
            if (
                self.max_tokens is not None
                and used + _cost(g) > self.max_tokens
                and (self._rows or admitted)
            ):
                break
            used += _cost(g)
            admitted += 1
        joining, self._waiting = waiting[:admitted], waiting[admitted:]
        if not joining:
            return
        joining.sort(key=lambda g: g.adapter_key)
        width = max(len(g.prompt_ids) for g in joining)
        pad = self.base.tokenizer.pad_token_id or 0
        ids = torch.tensor(
            [[pad] * (width - len(g.prompt_ids)) + g.prompt_ids for g in joining],
            device=self.device,
        )
        mask = torch.tensor(
            [[0] * (width - len(g.prompt_ids)) + [1] * len(g.prompt_ids) for g in joining],
            device=self.device,
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        rows = [
            _Row(
                g, row_generator(g.sampling.seed), len(g.prompt_ids), StreamedText(g.sampling.stop)
            )
            for g in joining
        ]
        try:
            with routed(self._build_routing([g.adapter for g in joining])):
                out = self.base.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=DynamicCache(),
                    use_cache=True,
                )
        except Exception as exc:  # the prompts that failed fail; the running rows go on
            log.exception("prefill failed")
            for g in joining:
                g.publish(TextEvent("", 0, FINISH_STOP, error=exc))
            return
        first = self._pick(out.logits[:, -1, :], rows)
        self._merge(rows, out.past_key_values, mask, first)

    def _step(self) -> None:
        assert self._cache is not None and self._mask is not None and self._last is not None
        ones = torch.ones(len(self._rows), 1, dtype=self._mask.dtype, device=self.device)
        mask = torch.cat([self._mask, ones], dim=1)
        positions = torch.tensor([[r.length] for r in self._rows], device=self.device)
        with routed(self._routing([r.generation.adapter for r in self._rows])):
            out = self.base.model(
                input_ids=self._last,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=self._cache,
                use_cache=True,
            )
        self._cache = out.past_key_values
        self._mask = mask
        for row in self._rows:
            row.length += 1
        self._last = self._pick(out.logits[:, -1, :], self._rows)
        self.steps += 1

    def _pick(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        """Each row's next token, recorded and published; returns them as rows × 1."""
        logits = logits.float()
        chosen = logits.argmax(dim=-1)
        for i, row in enumerate(rows):
            sampling = row.generation.sampling
            if sampling.temperature > 0:
                chosen[i] = sample_token(logits[i], sampling, row.generator)
        picked = chosen.tolist()
        for row, token in zip(rows, picked, strict=True):
            self._record(row, token)
        return chosen[:, None]

    def _record(self, row: _Row, token: int) -> None:
        sampling = row.generation.sampling
        if token in self.eos_ids:
            row.finish = FINISH_STOP
        else:
            row.tokens.append(token)
            self.generated += 1
            if len(row.tokens) >= sampling.max_new_tokens:
                row.finish = FINISH_LENGTH
        with self.base.tokenizer_lock:
            text = self.base.tokenizer.decode(row.tokens, skip_special_tokens=True)
        delta, stopped = row.text.advance(text, row.finish is not None)
        if stopped:
            row.finish = FINISH_STOP
        if delta or row.finish is not None:
            row.generation.publish(TextEvent(delta, len(row.tokens), row.finish))

    def _retire(self) -> None:
        """Rows that finished or were cancelled leave the batch now."""
        for row in self._rows:
            if row.finish is None and row.generation.cancelled.is_set():
                row.finish = FINISH_CANCELLED
                row.generation.publish(TextEvent("", len(row.tokens), FINISH_CANCELLED))
        keep = [i for i, r in enumerate(self._rows) if r.finish is None]
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache, self._mask, self._last = [], None, None, None
            return
        assert self._cache is not None and self._mask is not None and self._last is not None
        index = torch.tensor(keep, device=self.device)
        mask = self._mask[index]
        start = int(mask.any(dim=0).int().argmax())  # leading columns that are padding for all
        for layer in self._cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]
        self._mask = mask[:, start:]
        self._last = self._last[index]
        self._rows = [self._rows[i] for i in keep]

    def _merge(
        self, rows: list[_Row], cache: DynamicCache, mask: torch.Tensor, last: torch.Tensor
    ) -> None:
        """Join prefilled rows to the running batch, left-padding the shorter cache, and keep
        the rows sorted by adapter."""
        if self._cache is None:
            self._rows, self._cache, self._mask, self._last = rows, cache, mask, last
            self.largest_batch = max(self.largest_batch, len(rows))
            return
        assert self._mask is not None and self._last is not None
        width = max(self._mask.shape[1], mask.shape[1])
        merged = self._rows + rows
        order = sorted(range(len(merged)), key=lambda i: merged[i].generation.adapter_key)
        index = torch.tensor(order, device=self.device)
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)])[index]
            old.values = torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)])[
                index
            ]
        self._mask = torch.cat(
            [_left_pad(self._mask, width, dim=1), _left_pad(mask, width, dim=1)]
        )[index]
        self._last = torch.cat([self._last, last])[index]
        self._rows = [merged[i] for i in order]
        self.largest_batch = max(self.largest_batch, len(self._rows))

    def _routing(self, adapters: Sequence[LoadedAdapter | None]) -> Routing:
        key = tuple(id(a) for a in adapters)
        if key != self._routing_for or self._routing_cached is None:
            self._routing_cached, self._routing_for = self._build_routing(adapters), key
        return self._routing_cached

    def _build_routing(self, adapters: Sequence[LoadedAdapter | None]) -> Routing:
        groups = group_rows(adapters)  # causal-LM adapters carry no heads
        return Routing.build(len(adapters), groups, len(self.base.layer_index), self._op(groups))

    def _op(self, groups: Sequence[RowGroup]) -> Strategy:
        if self.strategy != "auto":
            return self.strategy
        adapted = [g for g in groups if g.layers is not None]
        rows = sum(g.stop - g.start for g in adapted)
        if len(adapted) > 1 and rows <= CONCAT_ROWS_PER_GROUP * len(adapted):
            return "concat"
        return "grouped"

    def _fail_all(self, exc: BaseException, waiting: bool = True) -> None:
        for row in self._rows:
            if row.finish is None:
                row.generation.publish(TextEvent("", len(row.tokens), FINISH_STOP, error=exc))
        self._rows, self._cache, self._mask, self._last = [], None, None, None
        if waiting:
            for g in self._waiting:
                g.publish(TextEvent("", 0, FINISH_STOP, error=exc))
            self._waiting = []


def _new_row(generation: Generation) -> _Row:
    sampling = generation.sampling
    return _Row(
        generation,
        row_generator(sampling.seed),
        len(generation.prompt_ids),
        StreamedText(sampling.stop),
    )


def _cost(generation: Generation) -> int:
    """The cache positions a row may come to hold."""
    return len(generation.prompt_ids) + generation.sampling.max_new_tokens


def _left_pad(tensor: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _eos_ids(base: SharedBase) -> frozenset[int]:
    ids: set[int] = set()
    for source in (base.model.generation_config, base.model.config, base.tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)


DecoderFactory = Callable[[SharedBase], ContinuousDecoder]


class Decoders:
    """One continuous decoder per causal-LM base, started on first use."""

    def __init__(
        self,
        device: torch.device,
        max_rows: int,
        strategy: DecodeStrategy = "auto",
        max_tokens: int | None = None,
    ) -> None:
        self.device = device
        self.max_rows = max_rows
        self.strategy = strategy
        self.max_tokens = max_tokens
        self._by_base: dict[int, ContinuousDecoder] = {}
        self._lock = threading.Lock()

    def get(self, base: SharedBase) -> ContinuousDecoder:
        with self._lock:
            found = self._by_base.get(id(base))
            if found is None:
                found = self._by_base[id(base)] = ContinuousDecoder(
                    base, self.device, self.max_rows, self.strategy, self.max_tokens
                )
            return found

    def all(self) -> list[ContinuousDecoder]:
        with self._lock:
            return list(self._by_base.values())

    def close(self) -> None:
        for decoder in self.all():
            decoder.close()
