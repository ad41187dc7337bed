"""Rows a test writes straight to the real database, and removes again."""

import pytest
import sqlalchemy as sa

from tasks.db import session_scope
from tasks.models import AITask


@pytest.fixture
def saved_rows(database):
    """`save(*rows)` commits the rows (refreshed, as the database has them) and returns them; all are deleted after
    the test."""
    added: list[AITask] = []

    def save(*rows: AITask) -> list[AITask]:
        with session_scope() as session:
            session.add_all(rows)
            session.commit()
            for row in rows:
                session.refresh(row)
        added.extend(rows)
        return list(rows)

    yield save
    with session_scope() as session:
        session.execute(sa.delete(AITask).where(AITask.id.in_([row.id for row in added])))
        session.commit()
