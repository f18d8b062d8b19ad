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
import threading
from collections import Counter
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
from adalora_core.serving.sampling import RowSampler, TokenLogprob, token_logprob
from adalora_core.serving.scheduling import DecoderBusy, FairQueue, QueueLimits, RunningLimits
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
    """A row: its handle, what it generated, and what of its text was published. It waits in
    the queue, runs in the batch, and may wait again if another tenant needs its place."""

    generation: Generation
    sampler: RowSampler
    text: StreamedText
    length: int = 0  # tokens in the cache (prompt + generated, less the pending last token)
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None
    joined_at: int = 0  # the decode step at which it (last) joined the batch
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet published
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # computed at its first prefill, published once
    prefilled: bool = False

    @classmethod
    def of(cls, generation: Generation) -> _Row:
        sampling = generation.sampling
        return cls(generation, RowSampler(sampling), StreamedText(sampling.stop))

    @property
    def tenant(self) -> str:
        return self.generation.tenant

    @property
    def context(self) -> list[int]:
        """What a prefill reads: the prompt and, for a row taken out and back in, its tokens."""
        return self.generation.prompt_ids + self.tokens

    @property
    def cost(self) -> int:
        """The cache positions the row may come to hold."""
        return len(self.generation.prompt_ids) + self.generation.sampling.max_new_tokens


class ContinuousDecoder:
    """The decode loop of one causal-LM base. Thread-safe `submit`; `close` ends the thread.

    Waiting rows join between steps, round-robin across tenants (scheduling.py). When a
    tenant with no running row waits and the batch is full, the newest row of the tenant that
    holds the most places beyond its fair share is taken out (its cache dropped, its tokens
    kept) and waits first in its tenant's line; when it joins again its prompt and tokens are
    prefilled and it goes on where it stopped. So one tenant's backlog delays another tenant's
    first token by one step, not by the length of its generations (vLLM preempts the same way).
    While more than one tenant has rows, each runs at most `RunningLimits.shared` of them (the
    newest above it are taken out the same way), so the other's rows decode beside few.
    """

    def __init__(
        self,
        base: SharedBase,
        device: torch.device,
        max_rows: int,
        strategy: DecodeStrategy = "auto",
        max_tokens: int | None = None,
        queue_limits: QueueLimits | None = None,
        running_limits: RunningLimits | None = None,
    ) -> None:
        if base.kind != "causal-lm":
            raise ValueError(f"continuous decoding serves causal-lm bases, not {base.kind}")
        self.base = base
        self.device = device
        self.max_rows = max_rows
        # The most places one tenant holds in the batch, alone and beside another tenant, so
        # another tenant's row always finds one and runs beside fewer rows.
        self.running_limits = running_limits or RunningLimits()
        # The KV cache's bound: the running rows' prompt + max_new_tokens, summed.
        self.max_tokens = max_tokens
        self.strategy = strategy
        self.generated = 0  # tokens generated since start, end-of-sequence tokens not counted
        # The running rows' routing, rebuilt only when who is in the batch changes.
        self._routing_for: tuple[int, ...] = ()
        self._routing_cached: Routing | None = None
        self.steps = 0  # decode steps run (for tests and metrics)
        self.largest_batch = 0
        self.preempted = 0  # rows taken out of the batch for another tenant
        self.refused = 0  # rows refused because the queue was full
        self.eos_ids = base.eos_ids
        self._queue: FairQueue[_Row] = FairQueue(queue_limits)
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # rows × cached positions, 0 on left padding
        self._last: torch.Tensor | None = None  # rows × 1: each row's newest token
        self._thread = threading.Thread(target=self._loop, name="adalora-decoder", daemon=True)
        self._thread.start()

    def submit(self, generation: Generation) -> Generation:
        self.submit_all([generation])
        return generation

    def submit_all(self, generations: Sequence[Generation]) -> None:
        """Queue one request's rows together, all or none: `DecoderBusy` when the queue is
        full for the decoder or for their tenant."""
        if not generations:
            return
        try:
            room = max(0, self.max_rows - len(self._rows))  # read without the loop's lock: a bound
            self._queue.put(generations[0].tenant, [_Row.of(g) for g in generations], room)
        except DecoderBusy:
            self.refused += len(generations)
            raise

    def close(self) -> None:
        self._queue.close()
        self._thread.join(timeout=30)

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def rows_of(self, adapter_id: str) -> int:
        """Rows of this adapter running or waiting (an adapter is not unloaded under them)."""
        rows = [*list(self._rows), *self._queue.items()]
        return sum(
            1
            for row in rows
            if row.generation.adapter is not None
            and row.generation.adapter.adapter_id == adapter_id
        )

    # ---- the loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            if self._queue.closed or (not self._rows and not self._queue.wait()):
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

    def _admit(self) -> None:
        """Prefill the rows whose turn it is (as many as fit) and merge them into the batch."""
        for row in self._queue.remove_if(lambda r: r.generation.cancelled.is_set()):
            row.generation.publish(TextEvent("", len(row.tokens), FINISH_CANCELLED))
        running = Counter(r.tenant for r in self._rows)
        cap = self.running_limits.cap(len(set(running) | set(self._queue.tenants())))
        passed: set[str] = set()  # tenants whose next row does not fit this time
        for victim in self._trim_to(cap, running):
            passed.add(victim.tenant)  # it gave its place up: no place back this round
        used = sum(r.cost for r in self._rows)
        joining: list[_Row] = []

        def fits(row: _Row) -> bool:
            rows = len(self._rows) + len(joining)
            if rows >= self.max_rows:
                return False
            if cap is not None and running[row.tenant] >= cap:
                return False
            return self.max_tokens is None or used + row.cost <= self.max_tokens or not rows

        while (head := self._queue.peek(passed)) is not None:
            tenant, row = head
            while not fits(row) and (cap is None or running[tenant] < cap):
                victim = self._preempt_for(tenant, running)
                if victim is None:
                    break
                used -= victim.cost
                passed.add(victim.tenant)  # it gave its place up: no place back this round
            if not fits(row):
                passed.add(tenant)  # its rows keep their order; another tenant's may fit
                continue
            self._queue.take(tenant)
            joining.append(row)
            running[tenant] += 1
            used += row.cost
        if joining:
            self._prefill(joining)

    def _trim_to(self, cap: int | None, running: Counter[str]) -> list[_Row]:
        """Take out each tenant's newest rows above ``cap`` (it tightened because another
        tenant came); they wait first in their tenants' lines, tokens kept."""
        if cap is None or all(n <= cap for n in running.values()):
            return []
        newest_first = sorted(
            range(len(self._rows)), key=lambda i: self._rows[i].joined_at, reverse=True
        )
        over = {t: n - cap for t, n in running.items() if n > cap}
        out: set[int] = set()
        for i in newest_first:
            tenant = self._rows[i].tenant
            if over.get(tenant, 0) > 0:
                over[tenant] -= 1
                out.add(i)
        return self._take_out(out, running)

    def _take_out(self, indices: set[int], running: Counter[str]) -> list[_Row]:
        """Take these rows out of the batch (cache dropped, tokens kept); each waits first in
        its tenant's line, the oldest ahead, and is re-prefilled when it joins again."""
        victims = sorted((self._rows[i] for i in indices), key=lambda r: r.joined_at)
        self._keep([i for i in range(len(self._rows)) if i not in indices])
        for victim in reversed(victims):  # put_front: the oldest ends up first in line
            running[victim.tenant] -= 1
            self._queue.put_front(victim.tenant, victim)
        self.preempted += len(victims)
        return victims

    def _preempt_for(self, tenant: str, running: Counter[str]) -> _Row | None:
        """Free a place for ``tenant`` while it runs fewer rows than its fair share: take out
        the newest row of the tenant furthest above its share and return it; None when no
        tenant is above its share."""
        active = set(running) | set(self._queue.tenants()) | {tenant}
        share = max(1, self.max_rows // len(active))
        if running[tenant] >= share:
            return None
        holders = [t for t, n in running.items() if n > share and t != tenant]
        candidates = [i for i, r in enumerate(self._rows) if r.tenant in holders]
        if not candidates:
            return None  # the holders' places are rows joining now, not yet in the batch
        victim_tenant = max(holders, key=lambda t: running[t])
        index = max(
            (i for i in candidates if self._rows[i].tenant == victim_tenant),
            key=lambda i: self._rows[i].joined_at,
            default=max(candidates, key=lambda i: self._rows[i].joined_at),
        )
        return self._take_out({index}, running)[0]

    def _prefill(self, joining: list[_Row]) -> None:
        joining.sort(key=lambda r: r.generation.adapter_key)
        contexts = [r.context for r in joining]
        width = max(len(c) for c in contexts)
        pad = self.base.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(c)) + c for c in contexts], device=self.device)
        mask = torch.tensor(
            [[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=self.device
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        for row, context in zip(joining, contexts, strict=True):
            row.length, row.joined_at = len(context), self.steps
        try:
            with routed(self._build_routing([r.generation.adapter for r in joining])):
                out = self.base.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=DynamicCache(),
                    use_cache=True,
                )
        except Exception as exc:  # the prompts that failed fail; the running rows go on
            log.exception("prefill failed")
            for row in joining:
                row.generation.publish(TextEvent("", len(row.tokens), FINISH_STOP, error=exc))
            return
        for j, row in enumerate(joining):
            if row.generation.sampling.prompt_logprobs and not row.prefilled:
                row.prompt_logprobs = _prompt_logprobs(out.logits[j], row.context, row.sampler)
            row.prefilled = True
        first = self._pick(out.logits[:, -1, :], joining)
        self._merge(joining, out.past_key_values, mask, first)

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
        """Each row's next token, recorded and published; returns them as rows × 1. Rows with
        no penalty, bias, grammar or temperature are picked together (one argmax)."""
        logits = logits.float()
        reporting = [i for i, r in enumerate(rows) if r.sampler.params.logprobs is not None]
        logprobs = torch.log_softmax(logits[reporting], dim=-1) if reporting else None
        for i, row in enumerate(rows):
            if row.sampler.adjusts:
                row.sampler.adjust(logits[i])
        chosen = logits.argmax(dim=-1)
        for i, row in enumerate(rows):
            if row.sampler.params.temperature > 0:
                chosen[i] = row.sampler.pick(logits[i])
        picked = chosen.tolist()
        if logprobs is not None:
            for j, i in enumerate(reporting):
                if picked[i] not in self.eos_ids:
                    top = rows[i].sampler.params.logprobs or 0
                    rows[i].logprobs.append(token_logprob(logprobs[j], picked[i], top))
        for row, token in zip(rows, picked, strict=True):
            self._record(row, token)
        return chosen[:, None]

    def _record(self, row: _Row, token: int) -> None:
        sampling = row.generation.sampling
        end = token in self.eos_ids
        row.sampler.accept(token, end)
        if end:
            row.finish = FINISH_STOP
        else:
            row.tokens.append(token)
            self.generated += 1
            if row.sampler.document_closed:  # nothing but its end may follow
                row.finish = FINISH_STOP
            elif len(row.tokens) >= sampling.max_new_tokens:
                row.finish = FINISH_LENGTH
        with self.base.tokenizer_lock:
            text = self.base.tokenizer.decode(row.tokens, skip_special_tokens=True)
        delta, stopped = row.text.advance(text, row.finish is not None)
        if stopped:
            row.finish = FINISH_STOP
        if delta or row.finish is not None:
            logprobs, row.logprobs = tuple(row.logprobs), []
            prompt, row.prompt_logprobs = row.prompt_logprobs, ()
            event = TextEvent(delta, len(row.tokens), row.finish, None, logprobs, prompt)
            row.generation.publish(event)

    def _retire(self) -> None:
        """Rows that finished or were cancelled leave the batch now."""
        for row in self._rows:
            if row.finish is None and row.generation.cancelled.is_set():
                row.finish = FINISH_CANCELLED
                row.generation.publish(TextEvent("", len(row.tokens), FINISH_CANCELLED))
        keep = [i for i, r in enumerate(self._rows) if r.finish is None]
        if len(keep) != len(self._rows):
            self._keep(keep)

    def _keep(self, keep: list[int]) -> None:
        """Only these rows stay in the batch, their cache, mask and last token with them."""
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
            for row in self._queue.drain():
                row.generation.publish(TextEvent("", len(row.tokens), FINISH_STOP, error=exc))


def _prompt_logprobs(
    logits: torch.Tensor, context: list[int], sampler: RowSampler
) -> tuple[TokenLogprob, ...]:
    """Each prompt token's log-probability after the tokens before it (the first has none),
    from one row's prefill logits, which end with its (left-padded) context."""
    top = sampler.params.logprobs or 0
    rows = torch.log_softmax(logits[-len(context) : -1].float(), dim=-1)
    return tuple(token_logprob(rows[i], context[i + 1], top) for i in range(len(context) - 1))


def _left_pad(tensor: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


DecoderFactory = Callable[[SharedBase], ContinuousDecoder]


class Decoders:
    """One continuous decoder per causal-LM base, started on first use."""

    def __init__(
        self,
        device: torch.device,
        max_rows: int,
        strategy: DecodeStrategy = "auto",
        max_tokens: int | None = None,
        queue_limits: QueueLimits | None = None,
        running_limits: RunningLimits | None = None,
    ) -> None:
        self.device = device
        self.max_rows = max_rows
        self.strategy = strategy
        self.max_tokens = max_tokens
        self.queue_limits = queue_limits
        self.running_limits = running_limits
        self._by_base: dict[int, ContinuousDecoder] = {}
        self._lock = threading.Lock()

    def get(self, base: SharedBase) -> ContinuousDecoder:
        with self._lock:
            found = self._by_base.get(id(base))
            if found is None:
                found = self._by_base[id(base)] = ContinuousDecoder(
                    base,
                    self.device,
                    self.max_rows,
                    self.strategy,
                    self.max_tokens,
                    self.queue_limits,
                    self.running_limits,
                )
            return found

    def all(self) -> list[ContinuousDecoder]:
        with self._lock:
            return list(self._by_base.values())

    def close(self) -> None:
        for decoder in self.all():
            decoder.close()
