"""Datasets remember whether their CSV/TSV file has a header row (GLUE's CoLA files do not).

Revision ID: 0004_dataset_header
Revises: 0003_key_scopes_and_tenants
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_dataset_header"
down_revision: str | None = "0003_key_scopes_and_tenants"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(
            sa.Column("has_header", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("has_header")
