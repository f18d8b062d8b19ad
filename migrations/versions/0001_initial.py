"""Initial schema: tenants, api_keys, datasets, jobs, job_events, adapters.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(40)


def ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", ID, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        ts("created_at", nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", ID, primary_key=True),
        sa.Column(
            "tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        ts("created_at", nullable=False),
        ts("revoked_at"),
        ts("last_used_at"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"])

    op.create_table(
        "datasets",
        sa.Column("id", ID, primary_key=True),
        sa.Column(
            "tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("num_rows", sa.Integer(), nullable=False),
        sa.Column("columns", sa.JSON(), nullable=False),
        sa.Column("column_types", sa.JSON(), nullable=False),
        sa.Column("label_values", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("storage_key", sa.String(500), nullable=False),
        ts("created_at", nullable=False),
    )
    op.create_index("ix_datasets_tenant_id_id", "datasets", ["tenant_id", "id"])

    op.create_table(
        "jobs",
        sa.Column("id", ID, primary_key=True),
        sa.Column(
            "tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("base_model", sa.String(255), nullable=False),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column(
            "dataset_id", ID, sa.ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column(
            "validation_dataset_id",
            ID,
            sa.ForeignKey("datasets.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("budget", sa.JSON(), nullable=False),
        sa.Column("adapter_id", ID, nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        ts("lease_expires_at"),
        ts("heartbeat_at"),
        sa.Column("checkpoint_key", sa.String(500), nullable=True),
        ts("created_at", nullable=False),
        ts("started_at"),
        ts("finished_at"),
        ts("updated_at", nullable=False),
        sa.UniqueConstraint(
            "tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"
        ),
    )
    op.create_index("ix_jobs_tenant_id_id", "jobs", ["tenant_id", "id"])
    op.create_index("ix_jobs_status", "jobs", ["status"])

    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", ID, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column(
            "tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        ts("created_at", nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_job_events_job_id_id", "job_events", ["job_id", "id"])

    op.create_table(
        "adapters",
        sa.Column("id", ID, primary_key=True),
        sa.Column(
            "tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("job_id", ID, sa.ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("base_model", sa.String(255), nullable=False),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=True),
        sa.Column("init_r", sa.Integer(), nullable=False),
        sa.Column("target_r", sa.Integer(), nullable=False),
        sa.Column("total_rank", sa.Integer(), nullable=False),
        sa.Column("trainable_params", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("formats", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("rank_info", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        ts("created_at", nullable=False),
    )
    op.create_index("ix_adapters_tenant_id_id", "adapters", ["tenant_id", "id"])
    op.create_index("ix_adapters_job_id", "adapters", ["job_id"])


def downgrade() -> None:
    op.drop_table("adapters")
    op.drop_table("job_events")
    op.drop_table("jobs")
    op.drop_table("datasets")
    op.drop_table("api_keys")
    op.drop_table("tenants")
