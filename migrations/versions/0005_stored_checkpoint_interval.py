"""Jobs store their checkpoint interval: fill it into jobs submitted before the recipe chose it.

Until this revision the worker chose ``training.checkpoint_every`` at run time for jobs that
set none (about ten checkpoints a run); now the recipe chooses it at submission and the worker
only reads it. Jobs stored without one get the value the worker would have chosen, by the same
rule (``adalora_core.recipe.default_checkpoint_every``), so they run exactly as before; their
``chosen_by_service`` lists it, as it does for new jobs.

The downgrade keeps the values: the older worker uses a stored interval as given, and the
filled one is the interval it would have chosen, so old code runs these jobs the same way.

Revision ID: 0005_stored_checkpoint_interval
Revises: 0004_dataset_header
Create Date: 2026-12-02
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from adalora_core.recipe import default_checkpoint_every

revision: str = "0005_stored_checkpoint_interval"
down_revision: str | None = "0004_dataset_header"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHOSEN = "training.checkpoint_every"
JOBS = sa.table("jobs", sa.column("id", sa.String), sa.column("hyperparameters", sa.JSON))


def with_checkpoint_interval(hyperparameters: Any) -> dict[str, Any] | None:
    """The job's stored settings with the interval filled in; None when nothing changes."""
    if not isinstance(hyperparameters, dict):
        return None
    training = hyperparameters.get("training")
    total_steps = hyperparameters.get("total_steps")
    if not isinstance(training, dict) or training.get("checkpoint_every") is not None:
        return None
    if not isinstance(total_steps, int) or isinstance(total_steps, bool):
        return None
    every = default_checkpoint_every(total_steps)
    if every is None:
        return None
    filled = {**hyperparameters, "training": {**training, "checkpoint_every": every}}
    chosen = hyperparameters.get("chosen_by_service")
    if isinstance(chosen, list) and CHOSEN not in chosen:
        filled["chosen_by_service"] = [*chosen, CHOSEN]
    return filled


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.select(JOBS.c.id, JOBS.c.hyperparameters)).all()
    for job_id, hyperparameters in rows:
        filled = with_checkpoint_interval(hyperparameters)
        if filled is not None:
            connection.execute(
                JOBS.update().where(JOBS.c.id == job_id).values(hyperparameters=filled)
            )


def downgrade() -> None:
    pass
