"""create ai_tasks

Revision ID: 0001
Revises:
Create Date: 2026-11-28 18:57:11.177290
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table('ai_tasks',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('celery_task_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('task_type', sa.Enum('image_generation', 'face_swap', 'background_removal', 'style_transfer', 'image_enhancement', name='task_type', native_enum=False, create_constraint=True, length=50), nullable=False),
    sa.Column('status', sa.Enum('PENDING', 'PROCESSING', 'SUCCESS', 'FAILURE', 'RETRY', name='task_status', native_enum=False, create_constraint=True, length=50), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('input_image', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('parameters', sa.JSON(), nullable=False),
    sa.Column('result_image', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('result_data', sa.JSON(), nullable=True),
    sa.Column('progress', sa.Integer(), nullable=False),
    sa.Column('message', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('retry_count', sa.Integer(), nullable=False),
    sa.Column('max_retries', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('processing_time', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('celery_task_id')
    )
    with op.batch_alter_table('ai_tasks', schema=None) as batch_op:
        batch_op.create_index('ix_ai_tasks_celery_task_id', ['celery_task_id'], unique=False)
        batch_op.create_index('ix_ai_tasks_status_created_at', ['status', 'created_at'], unique=False)



def downgrade() -> None:

    with op.batch_alter_table('ai_tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_ai_tasks_status_created_at')
        batch_op.drop_index('ix_ai_tasks_celery_task_id')

    op.drop_table('ai_tasks')
