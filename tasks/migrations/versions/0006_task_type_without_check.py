"""task_type without a CHECK constraint: the registry, not the schema, says which task types exist

With the constraint a task type added to tasks/registry.py but not to a migration failed every create with an
IntegrityError (a 500); now the API validates the type against the registry and the column takes any name.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The column as 0001 made it: VARCHAR(50) with the CHECK constraint "task_type" over the five built-in types.
CHECKED_TASK_TYPE = sa.Enum("image_generation", "face_swap", "background_removal", "style_transfer",
                            "image_enhancement", name="task_type", native_enum=False, create_constraint=True,
                            length=50)


def upgrade() -> None:
    # Given the old type, Alembic drops its CHECK constraint (Postgres) or rebuilds the table without it (SQLite).
    with op.batch_alter_table("ai_tasks") as batch_op:
        batch_op.alter_column("task_type", existing_type=CHECKED_TASK_TYPE, type_=sa.String(length=50),
                              existing_nullable=False)


def downgrade() -> None:
    # Fails while rows hold a type outside the five: delete those tasks first.
    with op.batch_alter_table("ai_tasks") as batch_op:
        batch_op.alter_column("task_type", existing_type=sa.String(length=50), type_=CHECKED_TASK_TYPE,
                              existing_nullable=False)
