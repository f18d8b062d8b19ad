"""The grouped low-rank op's compiled loop equals its Python form and the per-group reference."""

from __future__ import annotations

import pytest
import torch

from adalora_core.serving.grouped_kernel import (
    SCRIPTED,
    add_group_terms,
    compiled_add_group_terms,
)


def test_the_pinned_torch_compiles_the_loop() -> None:
    # CI runs the compiled path; if a torch upgrade drops TorchScript this says so.
    assert SCRIPTED


def test_compiled_loop_equals_python_loop_and_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    rows, per_row, fan_in, fan_out = 7, 3, 10, 6
    x = torch.randn(rows, per_row, fan_in, generator=gen)
    base = torch.randn(rows, per_row, fan_out, generator=gen)
    # three groups, rows 2..3 and 6 left to the base, one group of rank 1
    bounds = [0, 2, 4, 5, 5, 6]
    ranks = [3, 1, 2]
    qs = [torch.randn(r, fan_in, generator=gen) for r in ranks]
    ps = [torch.randn(fan_out, r, generator=gen) for r in ranks]

    compiled, plain = base.clone(), base.clone()
    compiled_add_group_terms(compiled, x, qs, ps, bounds, rows)
    add_group_terms(plain, x, qs, ps, bounds, rows)

    expected = base.clone()
    for i, (q, p) in enumerate(zip(qs, ps, strict=True)):
        start, stop = bounds[2 * i], bounds[2 * i + 1]
        expected[start:stop] += x[start:stop] @ (p @ q).t()
    assert torch.equal(compiled, plain)
    torch.testing.assert_close(compiled, expected)
    assert torch.equal(compiled[2:4], base[2:4]) and torch.equal(compiled[6], base[6])


def test_tokens_that_do_not_split_into_rows_are_an_error() -> None:
    out, x = torch.zeros(5, 4), torch.zeros(5, 3)
    qs, ps = [torch.zeros(1, 3)], [torch.zeros(4, 1)]
    for kernel in (compiled_add_group_terms, add_group_terms):
        # TorchScript re-raises as torch.jit.Error, which is not a RuntimeError subclass
        with pytest.raises((RuntimeError, torch.jit.Error), match="do not split into 2 rows"):
            kernel(out, x, qs, ps, [0, 1], 2)
