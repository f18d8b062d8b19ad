"""Exact match on generative validation rows: the adapter's greedy answer against the
reference answer.

A row's reference is its last run of learned tokens (the last assistant turn of a chat, or
the completion); its prompt is every token before that run (for seq2seq: the encoder input,
and the reference is the whole target). Both sides are decoded without special tokens and
compared with surrounding white space stripped. At most ``MAX_ROWS`` rows are scored, the
first of the validation set in its own order, so an evaluation of a large set stays a bounded
cost (the count scored is reported beside the score).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from adalora_core.encoding import IGNORE_INDEX
from adalora_core.precision import MixedPrecision

MAX_ROWS = 128
# New tokens allowed beyond the reference's length: an answer a little longer is still read
# whole, and so counted wrong, instead of being cut to look right.
SLACK_TOKENS = 8


def answer_split(row: dict[str, Any], causal: bool) -> tuple[list[int], list[int]] | None:
    """(prompt ids, reference ids) of an encoded row, or None when it has no learned token."""
    ids, labels = list(row["input_ids"]), list(row["labels"])
    if not causal:
        reference = [t for t in labels if t != IGNORE_INDEX]
        return (ids, reference) if reference else None
    learned = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    if not learned:
        return None
    end = learned[-1] + 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return ids[:start], ids[start:end]


@torch.no_grad()
def exact_match(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    causal: bool,
    batch_size: int,
    mixed: MixedPrecision,
    device: torch.device,
) -> tuple[float, int]:
    """(the share of scored rows answered exactly, how many rows were scored)."""
    splits = [s for s in (answer_split(r, causal) for r in rows[:MAX_ROWS]) if s and s[0]]
    if not splits:
        return 0.0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    matches = 0
    for start in range(0, len(splits), batch_size):
        chunk = splits[start : start + batch_size]
        width = max(len(prompt) for prompt, _ in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p, _ in chunk], device=device)
        mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p, _ in chunk], device=device
        )
        longest = max(len(reference) for _, reference in chunk)
        with mixed.autocast():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=longest + SLACK_TOKENS,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad,
            )
        answers = out[:, width:] if causal else out[:, 1:]
        for answer, (_, reference) in zip(answers.tolist(), chunk, strict=True):
            said = tokenizer.decode(answer, skip_special_tokens=True).strip()
            wanted = tokenizer.decode(reference, skip_special_tokens=True).strip()
            matches += said == wanted
    return matches / len(splits), len(splits)
