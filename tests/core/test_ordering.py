import random

import torch

from adalora_core.ordering import GROUP_WINDOW_BATCHES, epoch_order, length_grouped_order


def _padded_tokens(order: torch.Tensor, lengths: list[int], batch_size: int) -> int:
    rows = order.tolist()
    return sum(
        max(lengths[i] for i in rows[s : s + batch_size]) * len(rows[s : s + batch_size])
        for s in range(0, len(rows), batch_size)
    )


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    assert torch.equal(epoch_order(50, 1, 0), epoch_order(50, 1, 0))
    assert not torch.equal(epoch_order(50, 1, 0), epoch_order(50, 1, 1))
    assert not torch.equal(epoch_order(50, 1, 0), epoch_order(50, 2, 0))
    assert sorted(epoch_order(50, 1, 3).tolist()) == list(range(50))


def test_grouped_order_is_a_replayable_permutation() -> None:
    lengths = [random.Random(i).randint(3, 60) for i in range(1000)]
    order = length_grouped_order(lengths, seed=1, epoch=2, batch_size=16)
    assert sorted(order.tolist()) == list(range(1000))
    assert torch.equal(order, length_grouped_order(lengths, seed=1, epoch=2, batch_size=16))
    assert not torch.equal(order, length_grouped_order(lengths, seed=1, epoch=3, batch_size=16))


def test_grouping_pads_far_less_than_random_batches() -> None:
    rng = random.Random(0)
    # Short texts with a long tail, like SST-2: most of a random batch is padding.
    lengths = [min(120, int(rng.lognormvariate(2.8, 0.5))) + 2 for _ in range(3200)]
    real = sum(lengths)
    grouped = _padded_tokens(length_grouped_order(lengths, 0, 0, 16), lengths, 16)
    shuffled = _padded_tokens(epoch_order(len(lengths), 0, 0), lengths, 16)
    assert shuffled > 1.8 * real
    assert grouped < 1.1 * real


def test_batches_are_not_sorted_across_the_epoch() -> None:
    # Sorting only within windows, then shuffling batches: the epoch does not run long-to-short.
    lengths = list(range(16 * GROUP_WINDOW_BATCHES * 4))
    order = length_grouped_order(lengths, seed=0, epoch=0, batch_size=16).view(-1, 16)
    batch_max = order.max(dim=1).values.tolist()
    assert batch_max != sorted(batch_max) and batch_max != sorted(batch_max, reverse=True)
    first_quarter = batch_max[: len(batch_max) // 4]
    assert min(first_quarter) < len(lengths) / 4 < max(first_quarter)


def test_a_short_last_batch_stays_last_and_small_sets_are_plain_shuffles() -> None:
    lengths = [5] * 37
    order = length_grouped_order(lengths, seed=0, epoch=0, batch_size=16)
    assert sorted(order.tolist()) == list(range(37))
    assert torch.equal(length_grouped_order([1, 2, 3], 4, 0, 16), epoch_order(3, 4, 0))
