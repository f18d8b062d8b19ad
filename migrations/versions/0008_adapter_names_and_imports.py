"""Adapters have names unique per tenant, say where they came from, and imports honour
Idempotency-Key.

- ``source``: "train" for adapters a job produced (every existing row), "import" for PEFT
  adapters brought in through POST /adapters/import.
- ``idempotency_key`` and ``request_hash``: an import's key and the digest of what it uploaded,
  unique per tenant (as for data sets and jobs).
- ``name`` unique per tenant, as vLLM users address adapters by name. Rows stored before this
  revision may share a name: the oldest keeps it, each later one is renamed
  ``<name>-<adapter id>`` (ids are unique, so the new names are).

Revision ID: 0008_adapter_names_and_imports
Revises: 0007_job_tracking
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_adapter_names_and_imports"
down_revision: str | None = "0007_job_tracking"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ADAPTERS = sa.table(
    "adapters",
    sa.column("id", sa.String),
    sa.column("tenant_id", sa.String),
    sa.column("name", sa.String),
)
NAME_ROOM = 255 - 1 - 40  # "-<adapter id>" must fit in 255 characters


def renamed_duplicates(rows: Sequence[tuple[str, str, str]]) -> dict[str, str]:
    """adapter id -> its new name, for every row but the oldest of each (tenant, name);
    ``rows`` are (id, tenant_id, name) and ids sort by creation."""
    seen: set[tuple[str, str]] = set()
    renamed: dict[str, str] = {}
    for adapter_id, tenant_id, name in sorted(rows):
        if (tenant_id, name) in seen:
            renamed[adapter_id] = f"{name[:NAME_ROOM]}-{adapter_id}"
        seen.add((tenant_id, name))
    return renamed


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(ADAPTERS.c.id, ADAPTERS.c.tenant_id, ADAPTERS.c.name).where(
            ADAPTERS.c.name.is_not(None)
        )
    ).all()
    for adapter_id, name in renamed_duplicates([tuple(r) for r in rows]).items():
        connection.execute(ADAPTERS.update().where(ADAPTERS.c.id == adapter_id).values(name=name))
    with op.batch_alter_table("adapters") as batch:
        batch.add_column(
            sa.Column("source", sa.String(16), nullable=False, server_default="train")
        )
        batch.add_column(sa.Column("idempotency_key", sa.String(255), nullable=True))
        batch.add_column(sa.Column("request_hash", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_adapters_tenant_name", ["tenant_id", "name"])
        batch.create_unique_constraint(
            "uq_adapters_tenant_idempotency_key", ["tenant_id", "idempotency_key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("adapters") as batch:
        batch.drop_constraint("uq_adapters_tenant_idempotency_key", type_="unique")
        batch.drop_constraint("uq_adapters_tenant_name", type_="unique")
        batch.drop_column("request_hash")
        batch.drop_column("idempotency_key")
        batch.drop_column("source")
