"""State transitions on the real database: a finished task can never be undone by a late or repeated write."""

import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from tasks import state_writes
from tasks.db import session_scope
from tasks.models import CANCELLED_MESSAGE, AITask, TaskStatus, TaskType
from tasks.storage import RESULTS, Storage


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
    claimed = state_writes.claim(task.id, task.celery_task_id)
    assert claimed is not None and claimed.status == TaskStatus.PROCESSING and claimed.started_at is not None
    assert state_writes.claim(task.id, str(uuid.uuid4())) is None
    assert state_writes.claim(task.id, task.celery_task_id) is not None  # same message after its worker died


def test_every_run_of_a_task_writes_its_result_under_the_name_the_first_claim_gave(task, tmp_path):
    """A consumer that dies after storing its result and before SUCCESS leaves no second file: the next run (a
    redelivery, or a retry after RETRY) replaces the same one."""
    storage = Storage(f"file://{tmp_path}")
    first = state_writes.claim(task.id, task.celery_task_id, worker="host:1")
    assert first.result_image.startswith(f"{RESULTS}/")
    storage.write(first.result_image, b"first run")  # ... and host:1 dies here
    again = state_writes.claim(task.id, task.celery_task_id, worker="host:2")
    assert state_writes.schedule_retry(task.id, 1, "replica died")
    retried = state_writes.claim(task.id, str(uuid.uuid4()), worker="host:3")
    assert first.result_image == again.result_image == retried.result_image
    storage.write(retried.result_image, b"last run")
    assert state_writes.succeed(task.id, retried.result_image, {"metadata": {}}, processing_time=0.1)
    assert [path.read_bytes() for path in tmp_path.rglob("*.png")] == [b"last run"]


def test_a_redelivery_counts_a_worker_loss_only_when_another_consumer_claims(task):
    state_writes.claim(task.id, task.celery_task_id, worker="host:1")
    assert state_writes.claim(task.id, task.celery_task_id, worker="host:1").worker_losses == 0  # its own retry
    assert state_writes.claim(task.id, task.celery_task_id, worker="host:2").worker_losses == 1  # host:1 died


def test_a_cancelled_task_is_not_claimed_and_not_overwritten(task):
    assert state_writes.fail(task.id, CANCELLED_MESSAGE)
    assert state_writes.claim(task.id, task.celery_task_id) is None
    assert not state_writes.succeed(task.id, "tasks/output/x.png", {}, processing_time=1.0)
    state_writes.ProgressWriter(task.id, 0).update(50, "late progress")
    row = _status(task)
    assert (row.status, row.error_message, row.progress, row.result_image) == (
        TaskStatus.FAILURE, CANCELLED_MESSAGE, 0, None)


def test_success_is_written_once(task):
    claimed = state_writes.claim(task.id, task.celery_task_id)
    assert claimed is not None
    assert state_writes.succeed(task.id, "tasks/output/a.png", {"metadata": {}}, processing_time=0.25)
    assert not state_writes.succeed(task.id, "tasks/output/b.png", {"metadata": {}}, processing_time=0.5)
    assert not state_writes.fail(task.id, "late failure")
    row = _status(task)
    assert (row.status, row.result_image, row.progress) == (TaskStatus.SUCCESS, "tasks/output/a.png", 100)
    assert row.processing_time == 0.25


def test_success_clears_the_error_of_an_earlier_attempt(task):
    state_writes.claim(task.id, task.celery_task_id)
    state_writes.schedule_retry(task.id, 1, "ActorDiedError: replica died")
    state_writes.claim(task.id, task.celery_task_id)
    assert state_writes.succeed(task.id, "tasks/output/a.png", {"metadata": {}}, processing_time=0.1)
    assert _status(task).error_message is None


def test_retry_state_is_recorded_and_claimable_again(task):
    state_writes.claim(task.id, task.celery_task_id)
    assert state_writes.schedule_retry(task.id, 1, "ActorDiedError: replica died")
    row = _status(task)
    assert (row.status, row.retry_count) == (TaskStatus.RETRY, 1)
    assert state_writes.claim(task.id, task.celery_task_id) is not None


def test_progress_writes_are_throttled_from_the_claim(task):
    state_writes.claim(task.id, task.celery_task_id)
    claimed = time.monotonic()
    writer = state_writes.ProgressWriter(task.id, min_interval_s=0.3)
    writer.update(20, "Working")
    writer.update(60, "Encoding")  # inside the interval since the claim: published, not written
    assert (_status(task).progress, _status(task).message) == (5, state_writes.WAITING_MESSAGE)
    deadline = time.monotonic() + 30
    while (_status(task).progress, _status(task).message) != (70, "Encoding"):  # once the interval has passed
        assert time.monotonic() < deadline, "no progress write after the interval"
        writer.update(70, "Encoding")
        time.sleep(0.05)
    assert time.monotonic() - claimed >= 0.3  # and not before


@pytest.mark.postgres  # pg_terminate_backend
def test_a_state_write_survives_its_connection_being_killed(task, database):
    """The row is locked while the write waits; its connection is terminated; the write retries and lands."""
    from tasks.db import get_engine

    state_writes.claim(task.id, task.celery_task_id, worker="host:1")
    get_engine().dispose()  # the write below gets a fresh connection whose pid we can find
    done = threading.Event()
    with get_engine().connect() as holder:
        holder.execute(sa.text("SELECT 1 FROM ai_tasks WHERE id = :id FOR UPDATE"), {"id": task.id})
        writer = threading.Thread(target=lambda: done.set() if state_writes.succeed(
            task.id, "tasks/output/a.png", {"metadata": {}}, processing_time=0.1) else None)
        writer.start()
        blocked = None
        with get_engine().connect() as observer:  # its own connection: pg_stat_activity is per-transaction
            for _ in range(100):
                blocked = observer.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                                   " AND datname = current_database()")).scalar()
                observer.rollback()
                if blocked:
                    break
                time.sleep(0.05)
            assert blocked, "the write never waited on the row lock"
            observer.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": blocked})
        holder.rollback()
    writer.join(15)
    assert done.is_set()
    assert _status(task).status == TaskStatus.SUCCESS


def test_the_cancel_that_ends_a_task_queues_its_webhook_once(task, monkeypatch):
    from tasks import service

    queued = []
    monkeypatch.setattr(service, "notify_finished", queued.append)
    service.cancel_task(task)
    with pytest.raises(service.TaskAlreadyFinished):
        service.cancel_task(_status(task))
    assert queued == [task.id]
