"""The best adapter of a run: the evaluation with the lowest validation loss so far, its
adapter written as a bundle when it improves, and the early stop's count of evaluations since.

A run that keeps the best publishes this bundle instead of its last state; with a patience it
ends once that many evaluations in a row have not improved on the best. Held in memory and on
local disk: a run resumed from a checkpoint chooses among the evaluations since the resume.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path


class BestAdapter:
    def __init__(
        self, snapshot: Callable[[Path], Path] | None, directory: Path, patience: int | None
    ) -> None:
        # Writes the adapter of this moment as a bundle into a directory; None when only the
        # early stop is asked for (the last adapter is published).
        self.snapshot = snapshot
        self.directory = Path(directory)
        self.patience = patience
        self.step: int | None = None
        self.loss = math.inf
        self.since = 0  # evaluations since the best

    def offer(self, step: int, metrics: dict[str, float]) -> None:
        """Keep this moment's adapter when its validation loss is the lowest yet."""
        loss = metrics.get("eval_loss")
        if loss is None or not math.isfinite(loss) or loss >= self.loss:
            self.since += 1
            return
        if self.snapshot is not None:
            if self.directory.exists():
                shutil.rmtree(self.directory)
            self.snapshot(self.directory)
        self.step, self.loss, self.since = step, loss, 0

    @property
    def patience_spent(self) -> bool:
        return self.patience is not None and self.since >= self.patience

    @property
    def bundle(self) -> Path | None:
        """The best evaluation's bundle; None when none was written."""
        return self.directory if self.snapshot is not None and self.step is not None else None
