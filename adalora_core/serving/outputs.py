"""What a row's answer looks like, per task: labels and scores, a value, or an embedding; and
a generated token's bytes as a row's log-probabilities report it."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from adalora_core.serving.loading import LoadedAdapter, head_width


def head_outputs(adapter: LoadedAdapter, logits: torch.Tensor) -> list[dict[str, Any]]:
    if adapter.task == "regression":
        return [{"value": float(v)} for v in logits[:, 0].tolist()]
    assert adapter.heads is not None
    count = len(adapter.labels) or head_width(adapter.heads)
    names = adapter.labels or tuple(f"LABEL_{i}" for i in range(count))
    probs = torch.softmax(logits[:, :count], dim=-1)
    out: list[dict[str, Any]] = []
    for row in probs.tolist():
        best = max(range(count), key=row.__getitem__)
        out.append(
            {
                "label": names[best],
                "score": row[best],
                "scores": dict(zip(names, row, strict=True)),
            }
        )
    return out


def embeddings(hidden: torch.Tensor, mask: torch.Tensor) -> list[dict[str, Any]]:
    """The attention-masked mean of the final hidden states, per row."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return [{"embedding": row} for row in pooled.float().tolist()]


@functools.cache
def _byte_of_char() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's table), reversed: printable
    Latin-1 bytes stand for themselves, the others for the characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in printable}
    others = (b for b in range(256) if b not in set(printable))
    table.update({chr(0x100 + i): b for i, b in enumerate(others)})
    return table


def token_bytes(tokenizer: Any, ids: Sequence[int]) -> list[bytes]:
    """Each token's own bytes (OpenAI's logprob ``bytes``): a byte-level token may hold part
    of a character, which decoding it alone would turn into U+FFFD. The caller holds the
    tokenizer's lock."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if type(getattr(backend, "decoder", None)).__name__ == "ByteLevel":
        table = _byte_of_char()
        pieces = tokenizer.convert_ids_to_tokens(list(ids))
        if all(c in table for piece in pieces for c in piece):
            return [bytes(table[c] for c in piece) for piece in pieces]
    return [tokenizer.decode([i]).encode() for i in ids]
