"""The batched forward: rows of many adapters on one shared base, one routed pass.

Requests are sorted by adapter so each adapter's rows are one contiguous group, the base runs
once (one forward, or one seq2seq generate) under that routing, and the answers are un-sorted back
into request order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from adalora_core.serving.bases import SharedBase
from adalora_core.serving.generation import generate_rows
from adalora_core.serving.grouped import (
    Routing,
    RowGroup,
    Strategy,
    group_rows,
    routed,
)
from adalora_core.serving.loading import LoadedAdapter
from adalora_core.serving.outputs import embeddings, head_outputs
from adalora_core.serving.requests import Prepared


class EncoderForward(Protocol):
    """Runs a padded sequence-classification batch over row groups: (logits, final hidden
    states, or None unless a group is a base row or ``hidden`` asks for them). Here in the
    calling thread (`forward_here`) or in the forward process (forward_process.py)."""

    def __call__(
        self,
        base: SharedBase,
        padded: Mapping[str, torch.Tensor],
        groups: Sequence[RowGroup],
        hidden: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def forward_here(strategy: Strategy) -> EncoderForward:
    def run(
        base: SharedBase,
        padded: Mapping[str, torch.Tensor],
        groups: Sequence[RowGroup],
        hidden: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = groups[-1].stop
        routing = Routing.build(rows, tuple(groups), len(base.layer_index), strategy)
        with base.lock, torch.inference_mode(), routed(routing):
            base.last_hidden.clear()
            logits = base.model(**padded).logits.float()
            states = base.last_hidden.pop()
        wanted = hidden or any(g.layers is None for g in groups)
        return logits, states if wanted else None

    return run


def run_batch(
    batch: Sequence[Prepared],
    device: torch.device,
    strategy: Strategy,
    encoder: EncoderForward | None = None,
) -> list[list[dict[str, Any]]]:
    """One routed forward for prepared requests of one base; answers in request order."""
    bases = {id(p.base) for p in batch}
    if len(bases) != 1:
        raise ValueError("a batch must use one shared base")
    base = batch[0].base
    if base.kind == "causal-lm":
        raise ValueError("causal-LM rows decode in the continuous decoder (decoding.py)")
    order = sorted(
        range(len(batch)),
        key=lambda i: "" if batch[i].adapter is None else batch[i].adapter.adapter_id,
    )
    encodings: list[dict[str, list[int]]] = []
    owners: list[LoadedAdapter | None] = []
    embed: list[bool] = []
    spans: dict[int, tuple[int, int]] = {}
    for i in order:
        item = batch[i]
        start = len(encodings)
        encodings.extend(item.encodings)
        owners.extend([item.adapter] * item.rows)
        embed.extend([item.embed] * item.rows)
        spans[i] = (start, len(encodings))
    groups = group_rows(owners)
    if base.kind == "sequence-classification":
        forward = encoder or forward_here(strategy)
        rows = _classify(base, encodings, groups, embed, device, forward)
    else:
        routing = Routing.build(len(encodings), groups, len(base.layer_index), strategy)
        with base.lock, torch.inference_mode(), routed(routing):
            rows = _generate(base, batch, order, encodings, device)
    return [rows[spans[i][0] : spans[i][1]] for i in range(len(batch))]


def _classify(
    base: SharedBase,
    encodings: list[dict[str, list[int]]],
    groups: Sequence[RowGroup],
    embed: Sequence[bool],
    device: torch.device,
    encoder: EncoderForward,
) -> list[dict[str, Any]]:
    """Each row's answer: its adapter's head outputs, or the pooled embedding for base rows
    and rows of an embeddings request."""
    with base.tokenizer_lock:
        padded = base.tokenizer.pad(encodings, return_tensors="pt").to(device)
    logits, hidden = encoder(base, padded, groups, hidden=any(embed))
    mask = padded["attention_mask"]
    results: list[dict[str, Any]] = []
    for g in groups:
        pooled = heads = None
        if g.adapter is None or any(embed[g.start : g.stop]):
            assert hidden is not None
            pooled = embeddings(hidden[g.start : g.stop], mask[g.start : g.stop])
        if g.adapter is not None and not all(embed[g.start : g.stop]):
            heads = head_outputs(g.adapter, logits[g.start : g.stop])
        for k in range(g.stop - g.start):
            wants_embedding = g.adapter is None or embed[g.start + k]
            results.append(pooled[k] if wants_embedding else heads[k])  # type: ignore[index]
    return results


def _generate(
    base: SharedBase,
    batch: Sequence[Prepared],
    order: list[int],
    encodings: list[dict[str, list[int]]],
    device: torch.device,
) -> list[dict[str, Any]]:
    limits: list[int] = []
    for i in order:
        params = batch[i].generation
        assert params is not None
        limits.extend([params.max_new_tokens] * batch[i].rows)
    sampling = batch[order[0]].generation.sampling_key  # type: ignore[union-attr]
    rows = [{"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]} for e in encodings]
    with base.tokenizer_lock:
        padded = base.tokenizer.pad(rows, return_tensors="pt").to(device)
    texts = generate_rows(
        base.model,
        base.tokenizer,
        padded,
        limits,
        sampling,
    )
    return [{"text": t} for t in texts]
