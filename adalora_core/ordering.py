"""The order rows are visited in, one epoch at a time.

Every order is a function of (seed, epoch) and the rows alone, so a resumed run replays the
exact batches it would have seen. Length grouping puts rows of similar token length in the
same batch: batches are padded to their longest row, and on short-text data sets with a few
long rows a random batch is mostly padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Rows are sorted by length only inside windows of this many batches, so every batch still
# draws from a random slice of the data set rather than from one length band of it.
GROUP_WINDOW_BATCHES = 50


def epoch_order(num_rows: int, seed: int, epoch: int) -> torch.Tensor:
    """A uniformly random permutation of the rows."""
    return torch.randperm(num_rows, generator=_generator(seed, epoch))


def length_grouped_order(
    lengths: Sequence[int], seed: int, epoch: int, batch_size: int
) -> torch.Tensor:
    """A permutation whose consecutive ``batch_size`` slices hold rows of similar length.

    Shuffle, sort each window of ``GROUP_WINDOW_BATCHES`` batches by length, then shuffle the
    order of the full batches; a short last batch stays last, so the batch count is unchanged.
    """
    generator = _generator(seed, epoch)
    order = torch.randperm(len(lengths), generator=generator)
    if len(lengths) <= batch_size:
        return order
    length_of = torch.as_tensor(list(lengths), dtype=torch.long)
    window = batch_size * GROUP_WINDOW_BATCHES
    sorted_windows = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        ranked = torch.sort(length_of[chunk], descending=True, stable=True).indices
        sorted_windows.append(chunk[ranked])
    grouped = torch.cat(sorted_windows)
    full = len(grouped) // batch_size
    batches = grouped[: full * batch_size].view(full, batch_size)
    shuffled = batches[torch.randperm(full, generator=generator)].reshape(-1)
    return torch.cat([shuffled, grouped[full * batch_size :]])


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)
