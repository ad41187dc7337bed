"""webhooks: a URL per task and a record of each delivery attempt

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 19:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ai_tasks") as batch_op:
        batch_op.add_column(sa.Column("webhook_url", sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column("webhook_deliveries", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ai_tasks") as batch_op:
        batch_op.drop_column("webhook_deliveries")
        batch_op.drop_column("webhook_url")
