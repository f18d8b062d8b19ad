"""Key scopes, operator and disabled tenants; keys found by their hash, no secret prefix kept.

Keys that existed before scopes could manage keys, so they become admin keys. The tenant named
"default" (the one `adalora serve` bootstraps) becomes the operator tenant.

Revision ID: 0003_key_scopes_and_tenants
Revises: 0002_dataset_idempotency
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_key_scopes_and_tenants"
down_revision: str | None = "0002_dataset_idempotency"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(
            sa.Column("operator", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(sa.text("UPDATE tenants SET operator = :yes WHERE name = 'default'").bindparams(yes=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column("scope", sa.String(16), nullable=False, server_default="admin")
        )
        batch.drop_index("ix_api_keys_prefix")
        batch.drop_column("prefix")


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("prefix", sa.String(16), nullable=False, server_default=""))
        batch.create_index("ix_api_keys_prefix", ["prefix"])
        batch.drop_column("scope")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("disabled_at")
        batch.drop_column("operator")
