"""State transitions on the real database: a finished task can never be undone by a late or repeated write."""

import uuid

import pytest

from tasks import progress
from tasks.db import session_scope
from tasks.models import CANCELLED_MESSAGE, AITask, TaskStatus, TaskType


@pytest.fixture
def task(database) -> AITask:
    row = AITask(task_type=TaskType.BACKGROUND_REMOVAL, prompt="p", celery_task_id=str(uuid.uuid4()))
    with session_scope() as session:
        session.add(row)
        session.commit()
    return row


def _status(task: AITask) -> AITask:
    with session_scope() as session:
        return session.get(AITask, task.id)


def test_claim_runs_a_task_once_but_lets_its_own_redelivery_resume(task):
    claimed = progress.claim(task.id, task.celery_task_id)
    assert claimed is not None and claimed.status == TaskStatus.PROCESSING and claimed.started_at is not None
    assert progress.claim(task.id, str(uuid.uuid4())) is None
    assert progress.claim(task.id, task.celery_task_id) is not None  # same message after its worker died


def test_a_cancelled_task_is_not_claimed_and_not_overwritten(task):
    assert progress.fail(task.id, CANCELLED_MESSAGE)
    assert progress.claim(task.id, task.celery_task_id) is None
    assert not progress.succeed(task.id, "tasks/output/x.png", {}, task.created_at)
    progress.ProgressWriter(task.id, 0).update(50, "late progress")
    row = _status(task)
    assert (row.status, row.error_message, row.progress, row.result_image) == (
        TaskStatus.FAILURE, CANCELLED_MESSAGE, 0, None)


def test_success_is_written_once(task):
    claimed = progress.claim(task.id, task.celery_task_id)
    assert progress.succeed(task.id, "tasks/output/a.png", {"metadata": {}}, claimed.started_at)
    assert not progress.succeed(task.id, "tasks/output/b.png", {"metadata": {}}, claimed.started_at)
    assert not progress.fail(task.id, "late failure")
    row = _status(task)
    assert (row.status, row.result_image, row.progress) == (TaskStatus.SUCCESS, "tasks/output/a.png", 100)
    assert row.processing_time >= 0


def test_retry_state_is_recorded_and_claimable_again(task):
    progress.claim(task.id, task.celery_task_id)
    assert progress.schedule_retry(task.id, 1, "ActorDiedError: replica died")
    row = _status(task)
    assert (row.status, row.retry_count) == (TaskStatus.RETRY, 1)
    assert progress.claim(task.id, task.celery_task_id) is not None


def test_progress_writes_are_throttled(task):
    progress.claim(task.id, task.celery_task_id)
    writer = progress.ProgressWriter(task.id, min_interval_s=60)
    writer.update(20, "Working")
    writer.update(60, "Working")  # same message inside the interval: published, not written
    assert _status(task).progress == 20
    writer.update(70, "Encoding")  # a new message is always written
    assert _status(task).progress == 70
