"""Task state transitions, written so that a late or repeated write can never undo a finished task.

Every update after the claim is conditional on the row still being PROCESSING: a cancel (FAILURE) or a
result written by another delivery of the same message wins, and this worker's later writes do nothing.
"""

import json
import time
import uuid
from functools import lru_cache
from typing import Any

import redis
import sqlalchemy as sa

from tasks.config import get_settings
from tasks.db import session_scope
from tasks.models import FINISHED_STATUSES, AITask, TaskStatus, utcnow
from tasks.webhooks import notify_finished

CHANNEL_PREFIX = "backendai:task:"


@lru_cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(get_settings().effective_redis_url, socket_timeout=2, socket_connect_timeout=2)


def publish(task_id: uuid.UUID, **event: Any) -> None:
    """Tell live listeners (pub/sub) what changed; losing one of these never loses state (the row has it)."""
    try:
        redis_client().publish(f"{CHANNEL_PREFIX}{task_id}", json.dumps({"task_id": str(task_id), **event}))
    except redis.RedisError:
        pass


MESSAGE_LENGTH = AITask.__table__.c.message.type.length


def _update(task_id: uuid.UUID, only_if: tuple[TaskStatus, ...], **values: Any) -> bool:
    values["updated_at"] = utcnow()
    if values.get("message"):
        values["message"] = values["message"][:MESSAGE_LENGTH]
    statement = sa.update(AITask).where(AITask.id == task_id, AITask.status.in_(only_if)).values(**values)
    with session_scope() as session:
        changed = session.exec(statement).rowcount == 1  # type: ignore[call-overload]
        session.commit()
    if changed:
        publish(task_id, **{k: v for k, v in values.items() if k in ("status", "progress", "message")})
        if values.get("status") in FINISHED_STATUSES:
            notify_finished(task_id)
    return changed


def claim(task_id: uuid.UUID, celery_task_id: str, worker: str | None = None) -> AITask | None:
    """Mark the task PROCESSING for this delivery; None when it must not run (finished, cancelled, taken).

    A delivery of the message that is already PROCESSING means its worker died mid-task (acks_late +
    reject_on_worker_lost redeliver it). That is counted, and past `max_worker_losses` the task ends FAILURE
    instead of killing worker after worker.
    """
    now = utcnow()
    runnable = AITask.status.in_((TaskStatus.PENDING, TaskStatus.RETRY))
    redelivered = sa.and_(AITask.status == TaskStatus.PROCESSING, AITask.celery_task_id == celery_task_id)
    statement = (
        sa.update(AITask)
        .where(AITask.id == task_id, sa.or_(runnable, redelivered))
        .values(status=TaskStatus.PROCESSING, celery_task_id=celery_task_id, progress=5, message="Started",
                worker=worker,
                worker_losses=AITask.worker_losses + sa.case((redelivered, 1), else_=0),
                started_at=sa.func.coalesce(AITask.started_at, now), updated_at=now)
    )
    with session_scope() as session:
        claimed = session.exec(statement).rowcount == 1  # type: ignore[call-overload]
        session.commit()
        task = session.get(AITask, task_id) if claimed else None
    if task is None:
        return None
    limit = get_settings().max_worker_losses
    if task.worker_losses > limit:
        fail(task_id, f"worker lost: the task ended its worker {task.worker_losses} times (limit {limit})")
        return None
    publish(task_id, status=TaskStatus.PROCESSING, progress=5, message="Started")
    return task


def current_status(task_id: uuid.UUID) -> TaskStatus | None:
    with session_scope() as session:
        return session.exec(sa.select(AITask.status).where(AITask.id == task_id)).scalar_one_or_none()


class ProgressWriter:
    """Writes progress to the row at most every `min_interval_s` (and always on a jump to a new message)."""

    def __init__(self, task_id: uuid.UUID, min_interval_s: float | None = None):
        self.task_id = task_id
        self.min_interval_s = get_settings().progress_min_interval_s if min_interval_s is None else min_interval_s
        self._last_write = 0.0
        self._last_message: str | None = None

    def update(self, progress: int, message: str) -> None:
        now = time.monotonic()
        if message == self._last_message and now - self._last_write < self.min_interval_s:
            publish(self.task_id, progress=progress, message=message)
            return
        self._last_write, self._last_message = now, message
        _update(self.task_id, (TaskStatus.PROCESSING,), progress=progress, message=message)


def succeed(task_id: uuid.UUID, result_image: str, result_data: dict[str, Any], started_at) -> bool:
    completed_at = utcnow()
    return _update(
        task_id, (TaskStatus.PROCESSING,), status=TaskStatus.SUCCESS, progress=100, message="Completed",
        result_image=result_image, result_data=result_data, completed_at=completed_at,
        processing_time=(completed_at - started_at).total_seconds(),
    )


def schedule_retry(task_id: uuid.UUID, retry_count: int, error: str) -> bool:
    return _update(task_id, (TaskStatus.PROCESSING,), status=TaskStatus.RETRY, retry_count=retry_count,
                   error_message=error, message=f"Retrying ({retry_count}) after: {error}")


def fail(task_id: uuid.UUID, error: str,
         only_if: tuple[TaskStatus, ...] = (TaskStatus.PENDING, TaskStatus.PROCESSING, TaskStatus.RETRY)) -> bool:
    """End the task FAILURE with `error` (the seed's cancel uses this too) unless it already finished."""
    return _update(task_id, only_if, status=TaskStatus.FAILURE, error_message=error, message=error,
                   completed_at=utcnow())
