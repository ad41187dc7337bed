"""Task state transitions, written so that a late or repeated write can never undo a finished task.

Every update after the claim is conditional on the row still being PROCESSING: a cancel (FAILURE) or a
result written by another delivery of the same message wins, and this worker's later writes do nothing.
These functions write state and publish it, nothing else: `succeed` and `fail` say whether they finished the task,
and the caller that finished it queues its webhook (docs/architecture.md, The state machine).
"""

import json
import logging
import time
import uuid
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

import redis
import sqlalchemy as sa

from tasks.config import get_settings
from tasks.db import get_engine
from tasks.models import AITask, TaskStatus, utcnow
from tasks.redis_client import redis_client
from tasks.storage import new_key

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "backendai:task:"
# A dropped connection (server restart, pg_terminate_backend, failover) is retried after these pauses.
WRITE_RETRY_PAUSES_S = (0.1, 0.5, 1.0, 2.0)
T = TypeVar("T")


class DatabaseUnavailable(Exception):
    """A state write failed on every retry: the caller must not ack its message (docs/architecture.md)."""


def _with_retries(write: Callable[[bool], T]) -> T:
    """Run `write(retried)`, again after a pause when the connection drops. `retried` tells the write that an
    earlier attempt may have committed just before its connection went."""
    pauses = iter(WRITE_RETRY_PAUSES_S)
    retried = False
    while True:
        try:
            return write(retried)
        except sa.exc.DBAPIError as exc:
            lost_connection = exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError |
                                                                        sa.exc.InterfaceError)
            pause = next(pauses, None) if lost_connection else None
            if not lost_connection:
                raise
            if pause is None:
                raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc
            log.warning("database write failed (%s); retrying in %.1f s", str(exc).splitlines()[0], pause)
            time.sleep(pause)
            retried = True


def publish(task_id: uuid.UUID, **event: Any) -> None:
    """Tell live listeners (pub/sub) what changed; losing one of these never loses state (the row has it)."""
    try:
        redis_client().publish(f"{CHANNEL_PREFIX}{task_id}", json.dumps({"task_id": str(task_id), **event}))
    except redis.RedisError:
        pass


MESSAGE_LENGTH = AITask.__table__.c.message.type.length
WAITING_MESSAGE = "Waiting for a replica"


TASKS = AITask.__table__
Claimed = sa.Row  # the claimed task's row: its columns as attributes


@lru_cache(maxsize=64)
def _update_statement(only_if: tuple[TaskStatus, ...], columns: tuple[str, ...]) -> sa.Update:
    """One UPDATE per (guard, columns set), built once: its values are bound parameters, so every later write reuses
    the compiled statement (no ORM flush, no per-call cache key over the values)."""
    return (sa.update(TASKS).where(TASKS.c.id == sa.bindparam("task_key"), TASKS.c.status.in_(only_if))
            .values({column: sa.bindparam(f"new_{column}", type_=TASKS.c[column].type) for column in columns}))


def _update(task_id: uuid.UUID, only_if: tuple[TaskStatus, ...], **values: Any) -> bool:
    values["updated_at"] = utcnow()
    if values.get("message"):
        values["message"] = values["message"][:MESSAGE_LENGTH]
    statement = _update_statement(only_if, tuple(values))
    parameters = {"task_key": task_id, **{f"new_{column}": value for column, value in values.items()}}

    def write(retried: bool) -> bool:
        with get_engine().begin() as connection:
            changed = connection.execute(statement, parameters).rowcount == 1
        if not changed and retried and "status" in values:  # did the lost attempt commit it?
            with get_engine().connect() as connection:
                return connection.execute(sa.select(TASKS.c.status).where(TASKS.c.id == task_id)).scalar() \
                    == values["status"]
        return changed

    changed = _with_retries(write)
    if changed:
        publish(task_id, **{k: v for k, v in values.items() if k in ("status", "progress", "message")})
    return changed


def _claim_statement() -> sa.Update:
    """The claim as one UPDATE … RETURNING with bound parameters, built once (see `claim`)."""
    runnable = TASKS.c.status.in_((TaskStatus.PENDING, TaskStatus.RETRY))
    claimed_by = sa.bindparam("claimed_by", type_=TASKS.c.celery_task_id.type)
    claimer = sa.bindparam("claimer", type_=TASKS.c.worker.type)
    now = sa.bindparam("now", type_=TASKS.c.updated_at.type)
    redelivered = sa.and_(TASKS.c.status == TaskStatus.PROCESSING, TASKS.c.celery_task_id == claimed_by)
    lost = sa.and_(redelivered, TASKS.c.worker.is_distinct_from(claimer))
    return (
        sa.update(TASKS)
        .where(TASKS.c.id == sa.bindparam("task_key"), sa.or_(runnable, redelivered))
        .values(status=TaskStatus.PROCESSING, celery_task_id=claimed_by, progress=5, message=WAITING_MESSAGE,
                worker=claimer, worker_losses=TASKS.c.worker_losses + sa.case((lost, 1), else_=0),
                started_at=sa.func.coalesce(TASKS.c.started_at, now), updated_at=now,
                result_image=sa.func.coalesce(TASKS.c.result_image,
                                              sa.bindparam("result_key", type_=TASKS.c.result_image.type)))
        .returning(*TASKS.c)
    )


CLAIM = _claim_statement()


def claim(task_id: uuid.UUID, celery_task_id: str, worker: str | None = None) -> Claimed | None:
    """Mark the task PROCESSING for this delivery and return its row; None when it must not run (finished,
    cancelled, taken).

    A delivery of the message that is already PROCESSING by another consumer means that consumer died mid-task
    (its lease ran out and the message came back): that is counted in `worker_losses`, for the caller to end a
    task that kills consumer after consumer. The same consumer claiming again (its first claim's answer was lost
    with its connection) is no loss.

    The first claim also names the result file (`result_image`), and every later run writes under that same name:
    a run that dies after storing its result leaves no file that no row refers to.
    """
    parameters = {"task_key": task_id, "claimed_by": celery_task_id, "claimer": worker, "now": utcnow(),
                  "result_key": new_key("output")}

    def write(_retried: bool) -> Claimed | None:
        with get_engine().begin() as connection:  # one round trip: the claimed row comes back with the UPDATE
            return connection.execute(CLAIM, parameters).one_or_none()

    task = _with_retries(write)
    if task is not None:
        publish(task_id, status=TaskStatus.PROCESSING, progress=5, message=WAITING_MESSAGE)
    return task


class ProgressWriter:
    """Publishes every event; writes the row at most every `min_interval_s` since the claim or the last write, so
    a job shorter than that costs no progress write at all (live streams still see every event)."""

    def __init__(self, task_id: uuid.UUID, min_interval_s: float | None = None):
        self.task_id = task_id
        self.min_interval_s = get_settings().progress_min_interval_s if min_interval_s is None else min_interval_s
        self._last_write = time.monotonic()  # the claim wrote the row

    def update(self, progress: int, message: str) -> None:
        now = time.monotonic()
        if now - self._last_write < self.min_interval_s:
            publish(self.task_id, progress=progress, message=message)
            return
        self._last_write = now
        _update(self.task_id, (TaskStatus.PROCESSING,), progress=progress, message=message)


def succeed(task_id: uuid.UUID, result_image: str, result_data: dict[str, Any], processing_time: float) -> bool:
    """SUCCESS with the result (True when this write ended the task); the last retry's error does not stay on a
    successful row."""
    return _update(
        task_id, (TaskStatus.PROCESSING,), status=TaskStatus.SUCCESS, progress=100, message="Completed",
        result_image=result_image, result_data=result_data, completed_at=utcnow(), error_message=None,
        processing_time=round(processing_time, 4),
    )


def requeue(task_id: uuid.UUID, message: str) -> bool:
    """Back to PENDING: the job never reached a replica (Ray or Serve was restarting), so it costs no retry."""
    return _update(task_id, (TaskStatus.PROCESSING,), status=TaskStatus.PENDING, progress=0, message=message)


def schedule_retry(task_id: uuid.UUID, retry_count: int, error: str) -> bool:
    return _update(task_id, (TaskStatus.PROCESSING,), status=TaskStatus.RETRY, retry_count=retry_count,
                   error_message=error, message=f"Retrying ({retry_count}) after: {error}")


def fail(task_id: uuid.UUID, error: str,
         only_if: tuple[TaskStatus, ...] = (TaskStatus.PENDING, TaskStatus.PROCESSING, TaskStatus.RETRY)) -> bool:
    """End the task FAILURE with `error` (a cancel too) unless it already finished; True when this write ended it."""
    return _update(task_id, only_if, status=TaskStatus.FAILURE, error_message=error, message=error,
                   completed_at=utcnow())
