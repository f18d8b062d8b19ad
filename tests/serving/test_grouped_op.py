"""The grouped low-rank op adds each group's term to its own rows only, and nothing elsewhere."""

from __future__ import annotations

import pytest
import torch

from adalora_core.serving.grouped import GroupedLayer, add_group_terms


def test_each_group_adds_its_own_term_to_its_own_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    rows, per_row, fan_in, fan_out = 7, 3, 10, 6
    x = torch.randn(rows, per_row, fan_in, generator=gen)
    base = torch.randn(rows, per_row, fan_out, generator=gen)
    # three groups, rows 2..3 and 6 left to the base, one group of rank 1
    bounds = [0, 2, 4, 5, 5, 6]
    ranks = [3, 1, 2]
    layer = GroupedLayer(
        qs=[torch.randn(r, fan_in, generator=gen) for r in ranks],
        ps=[torch.randn(fan_out, r, generator=gen) for r in ranks],
        bounds=bounds,
    )
    out = base.clone()
    add_group_terms(out, x, layer, rows)

    expected = base.clone()
    for i, (q, p) in enumerate(zip(layer.qs, layer.ps, strict=True)):
        start, stop = bounds[2 * i], bounds[2 * i + 1]
        expected[start:stop] += x[start:stop] @ (p @ q).t()
    torch.testing.assert_close(out, expected)
    assert torch.equal(out[2:4], base[2:4]) and torch.equal(out[6], base[6])


def test_tokens_that_do_not_split_into_rows_are_an_error() -> None:
    layer = GroupedLayer([torch.zeros(1, 3)], [torch.zeros(4, 1)], [0, 1])
    with pytest.raises(RuntimeError, match="do not split into 2 rows"):
        add_group_terms(torch.zeros(5, 4), torch.zeros(5, 3), layer, 2)
