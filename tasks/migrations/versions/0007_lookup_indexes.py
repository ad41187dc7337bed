"""an index for every lookup on a request path, and who submitted each task

- result_image: `/media/…` finds the task of a result file (was a full scan per image view);
- (task_type, status, created_at): the tasks queued ahead of one, counted on every status poll of a waiting task;
- (task_type, status, completed_at): the ETA's recent durations of a type, and the metrics' finished tasks;
- (api_key_id, created_at, id): a key's task listing, newest first (replaces the index on api_key_id alone);
- submitter, a new column, and (submitter, status): the cap on tasks queued per key or client address;
- completed_at of rows not yet expired: the expiry job's batches (a partial index, small however old the table).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNEXPIRED = sa.text("expired_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("ai_tasks") as batch_op:
        batch_op.add_column(sa.Column("submitter", sa.String(length=100), nullable=True))
        batch_op.drop_index("ix_ai_tasks_api_key_id")
        batch_op.create_index("ix_ai_tasks_owner_created_at", ["api_key_id", "created_at", "id"])
        batch_op.create_index("ix_ai_tasks_result_image", ["result_image"])
        batch_op.create_index("ix_ai_tasks_type_status_created_at", ["task_type", "status", "created_at"])
        batch_op.create_index("ix_ai_tasks_type_status_completed_at", ["task_type", "status", "completed_at"])
        batch_op.create_index("ix_ai_tasks_submitter_status", ["submitter", "status"])
        batch_op.create_index("ix_ai_tasks_unexpired_completed_at", ["completed_at"], postgresql_where=UNEXPIRED,
                              sqlite_where=UNEXPIRED)


def downgrade() -> None:
    with op.batch_alter_table("ai_tasks") as batch_op:
        for name in ("ix_ai_tasks_unexpired_completed_at", "ix_ai_tasks_submitter_status",
                     "ix_ai_tasks_type_status_completed_at", "ix_ai_tasks_type_status_created_at",
                     "ix_ai_tasks_result_image", "ix_ai_tasks_owner_created_at"):
            batch_op.drop_index(name)
        batch_op.create_index("ix_ai_tasks_api_key_id", ["api_key_id"])
        batch_op.drop_column("submitter")
