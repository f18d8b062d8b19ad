"""Data sets record the characters a generative job would learn from each column.

The recipe sizes a generative run by its data's content (``adalora_core.recipe``): the
upload counts, per column, a chat's assistant turns or the text. Data sets stored before this
revision have none (NULL); their jobs are sized by their rows alone.

Revision ID: 0009_dataset_learned_chars
Revises: 0008_adapter_names_and_imports
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_dataset_learned_chars"
down_revision: str | None = "0008_adapter_names_and_imports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("datasets", sa.Column("learned_chars", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("datasets", "learned_chars")
