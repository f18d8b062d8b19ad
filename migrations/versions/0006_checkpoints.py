"""Checkpoints are rows: a job's adapter at a step, listed, downloaded and served by id.

Revision ID: 0006_checkpoints
Revises: 0005_stored_checkpoint_interval
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_checkpoints"
down_revision: str | None = "0005_stored_checkpoint_interval"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "tenant_id",
            sa.String(40),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("base_model", sa.String(255), nullable=False),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("budget", sa.JSON(), nullable=False),
        sa.Column("formats", sa.JSON(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("job_id", "step", name="uq_checkpoints_job_id_step"),
    )
    op.create_index("ix_checkpoints_tenant_id_id", "checkpoints", ["tenant_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_checkpoints_tenant_id_id", table_name="checkpoints")
    op.drop_table("checkpoints")
