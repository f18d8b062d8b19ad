"""Jobs remember their experiment trackers' runs (MLflow and W&B run ids, the stored TensorBoard
event files), so a resumed job continues the same runs and the API can serve the event files.

Revision ID: 0007_job_tracking
Revises: 0006_checkpoints
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_job_tracking"
down_revision: str | None = "0006_checkpoints"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("tracking", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("tracking")
