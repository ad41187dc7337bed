"""The expiry job on the real database: it drains every expired task in batches, marks each batch before deleting
its files outside the transaction, and stops at its time budget.

Its rows finished in 2000, before anything other tests write, so a cutoff in 2000 touches only them.
"""

import logging
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tasks import expiry
from tasks.db import session_scope
from tasks.models import AITask, TaskStatus, TaskType
from tasks.storage import get_storage

FINISHED_AT = datetime(2000, 1, 1, tzinfo=UTC)
CUTOFF = datetime(2000, 6, 1, tzinfo=UTC)


@pytest.fixture
def finished(saved_rows):
    """Adds `count` SUCCESS tasks finished in 2000, each with a stored input and result; removes them after."""

    def add(count: int, finished_at: datetime = FINISHED_AT) -> list[AITask]:
        storage = get_storage()
        rows = [AITask(task_type=TaskType.BACKGROUND_REMOVAL, prompt="expiry", status=TaskStatus.SUCCESS,
                       completed_at=finished_at + timedelta(seconds=n), input_image=storage.put("input", b"in"),
                       result_image=storage.put("output", b"out")) for n in range(count)]
        return saved_rows(*rows)

    return add


def _expired(rows: list[AITask]) -> int:
    with session_scope() as session:
        return session.exec(sa.select(sa.func.count()).select_from(AITask).where(
            AITask.id.in_([row.id for row in rows]), AITask.expired_at.is_not(None))).scalar_one()


def test_one_run_drains_more_than_a_batch(finished):
    rows = finished(expiry.BATCH_SIZE + 300)
    later = finished(1, CUTOFF + timedelta(days=1))
    assert expiry.expire_finished_before(CUTOFF) == len(rows)
    assert _expired(rows) == len(rows) and _expired(later) == 0
    storage = get_storage()
    assert not any(storage.exists(row.input_image) or storage.exists(row.result_image) for row in rows)
    assert storage.exists(later[0].result_image)
    assert expiry.expire_finished_before(CUTOFF) == 0


def test_a_run_stops_at_its_budget_and_the_next_goes_on(finished):
    rows = finished(25)
    assert expiry.expire_finished_before(CUTOFF, budget_s=0, batch_size=10) == 10
    assert _expired(rows) == 10
    assert expiry.expire_finished_before(CUTOFF, batch_size=10) == 15


def test_a_file_that_fails_to_delete_keeps_its_task_marked(finished, monkeypatch, caplog):
    rows = finished(3)
    storage = get_storage()
    stuck = rows[1].result_image
    delete = storage.delete

    def failing_delete(key: str) -> None:
        if key == stuck:
            raise PermissionError(f"{key}: read-only")
        delete(key)

    monkeypatch.setattr(storage, "delete", failing_delete)
    with caplog.at_level(logging.WARNING, logger="tasks.expiry"):
        assert expiry.expire_finished_before(CUTOFF) == 3
    assert _expired(rows) == 3
    assert storage.exists(stuck) and not storage.exists(rows[2].result_image)
    assert f"{stuck} not deleted" in caplog.text
