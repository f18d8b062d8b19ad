"""The grouped low-rank op's inner loop, compiled by TorchScript so it runs without the GIL.

Every torch call made from Python gives the GIL up and has to take it back. A routed forward of
8 adapters makes about 1,700 such calls (six per adapter group per layer) where the bare model
makes about 100, and in the server the event loop holds the GIL between them: with a busy Python
thread beside it the Python loop took 17 s for a batch the bare model ran in 1.1 s. One scripted
call per layer takes the GIL once (docs/benchmarks.md). The same function runs as plain Python
where TorchScript is unavailable (it is deprecated), with the same results.

This module does not use ``from __future__ import annotations``: TorchScript reads the types.
"""

import warnings
from collections.abc import Callable

import torch

AddGroupTerms = Callable[
    [torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[int], int], None
]


def add_group_terms(
    out: torch.Tensor,
    x: torch.Tensor,
    qs: list[torch.Tensor],
    ps: list[torch.Tensor],
    bounds: list[int],
    rows: int,
) -> None:
    """``out[s:e] += x[s:e] @ Q'ᵀ @ Pᵀ`` for each group's token span, in place.

    ``bounds`` holds each group's first and last-plus-one row, in pairs; a row is
    ``tokens / rows`` consecutive tokens of the flattened batch.
    """
    out2 = out.view(-1, out.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    tokens = out2.shape[0]
    if tokens % rows != 0:
        raise RuntimeError(f"{tokens} tokens do not split into {rows} rows")
    per_row = tokens // rows
    for i in range(len(qs)):
        start = bounds[2 * i] * per_row
        stop = bounds[2 * i + 1] * per_row
        out2[start:stop].addmm_(x2[start:stop] @ qs[i].t(), ps[i].t())


def _compile() -> tuple[AddGroupTerms, bool]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(add_group_terms), True
    except Exception:  # noqa: BLE001 - TorchScript gone or broken: the same loop in Python
        return add_group_terms, False


compiled_add_group_terms, SCRIPTED = _compile()
