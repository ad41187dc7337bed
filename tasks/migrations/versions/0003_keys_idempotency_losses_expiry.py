"""api keys and task ownership, idempotency, worker losses, expiry

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tasks.models import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=12), nullable=False),
        sa.Column("rate_limit_per_minute", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_api_keys_key_hash", "api_keys", ["key_hash"], unique=True)
    with op.batch_alter_table("ai_tasks") as batch_op:
        batch_op.add_column(sa.Column("api_key_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("idempotency_scope", sa.String(length=400), nullable=True))
        batch_op.add_column(sa.Column("request_fingerprint", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("worker_losses", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("expired_at", UTCDateTime(), nullable=True))
        batch_op.create_index("ix_ai_tasks_api_key_id", ["api_key_id"])
        batch_op.create_unique_constraint("uq_ai_tasks_idempotency_scope", ["idempotency_scope"])
        batch_op.create_foreign_key("fk_ai_tasks_api_key_id", "api_keys", ["api_key_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("ai_tasks") as batch_op:
        batch_op.drop_constraint("fk_ai_tasks_api_key_id", type_="foreignkey")
        batch_op.drop_constraint("uq_ai_tasks_idempotency_scope", type_="unique")
        batch_op.drop_index("ix_ai_tasks_api_key_id")
        for column in ("expired_at", "worker_losses", "request_fingerprint", "idempotency_scope", "api_key_id"):
            batch_op.drop_column(column)
    op.drop_index("ix_api_keys_key_hash", table_name="api_keys")
    op.drop_table("api_keys")
