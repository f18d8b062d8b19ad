"""How many token positions a base model has, read from its ``config.json`` (torch-free).

The one reading of that limit: the API uses it at submission (the recipe's default sequence
length, the plan's check) and the worker when it rebuilds the plan on the machine that trains.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path


@functools.lru_cache(maxsize=64)
def context_limit(model_dir: str | Path) -> int | None:
    """The base's position limit (``max_position_embeddings``, GPT-2's ``n_positions``); None
    when the directory has no readable config or the family has no fixed limit (T5). Cached:
    read once per model directory, not on every submission."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("max_position_embeddings") or config.get("n_positions")
    return value if isinstance(value, int) and value > 0 else None
