"""The rank heatmap (layers x module kinds, one annotated cell per module), like the AdaLoRA
paper's Figure 3; drawn with matplotlib's Agg backend from an adapter's rank_info."""

from __future__ import annotations

import io
from typing import Any, Literal


def rank_grid(
    modules: list[dict[str, Any]],
) -> tuple[list[int | None], list[str], list[list[int | None]]]:
    """Rows = layers (ascending), columns = module kinds (first-seen order), cells = rank."""
    layers = sorted({m.get("layer") for m in modules}, key=lambda v: (v is None, v or 0))
    kinds: list[str] = []
    for module in modules:
        if module["kind"] not in kinds:
            kinds.append(module["kind"])
    grid: list[list[int | None]] = [[None] * len(kinds) for _ in layers]
    for module in modules:
        row = layers.index(module.get("layer"))
        col = kinds.index(module["kind"])
        grid[row][col] = (grid[row][col] or 0) + int(module["rank"])
    return layers, kinds, grid


def draw_rank_heatmap(
    modules: list[dict[str, Any]],
    init_r: int,
    title: str = "",
    fmt: Literal["png", "svg"] = "png",
) -> bytes:
    """Render the heatmap as PNG or SVG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure

    layers, kinds, grid = rank_grid(modules)
    values = np.array(
        [[np.nan if cell is None else cell for cell in row] for row in grid], dtype=float
    ).reshape(len(layers), len(kinds))
    figure = Figure(figsize=(1.0 + 0.9 * max(1, len(kinds)), 1.0 + 0.45 * max(1, len(layers))))
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="YlGn", vmin=0, vmax=max(1, init_r), aspect="auto")
    axes.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right")
    axes.set_yticks(range(len(layers)), ["-" if layer is None else str(layer) for layer in layers])
    axes.set_xlabel("module")
    axes.set_ylabel("layer")
    for row, layer_cells in enumerate(grid):
        for col, cell in enumerate(layer_cells):
            if cell is not None:
                dark = cell > 0.6 * max(1, init_r)
                axes.text(
                    col,
                    row,
                    str(cell),
                    ha="center",
                    va="center",
                    color="white" if dark else "black",
                    fontsize=8,
                )
    figure.colorbar(image, ax=axes, label="rank")
    if title:
        # Titles carry user-chosen names: "$...$" must stay text, not become math.
        axes.set_title(title, parse_math=False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=100)
    return buffer.getvalue()
