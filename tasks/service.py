"""Creating and cancelling tasks: the middle tier's entry points for the API and the CLI."""

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from kombu.exceptions import OperationalError as BrokerError

from tasks import state_writes
from tasks.celery_app import celery_app
from tasks.config import get_settings
from tasks.db import get_engine, session_scope
from tasks.models import (
    CANCELLED_MESSAGE,
    FINISHED_STATUSES,
    UNFINISHED_STATUSES,
    AITask,
    TaskStatus,
    TaskType,
    utcnow,
)
from tasks.registry import TASK_SPECS
from tasks.storage import Storage, get_storage
from tasks.webhooks import notify_finished

log = logging.getLogger(__name__)


DELETED_MESSAGE = "Deleted by user"
TASKS = AITask.__table__


class QueueUnavailable(Exception):
    """The broker refused the job; nothing of the task was kept."""


class TaskAlreadyFinished(Exception):
    pass


class TooManyQueued(Exception):
    """The submitter already has MAX_QUEUED_PER_KEY tasks queued or running; nothing of the request was kept."""


@dataclass(frozen=True)
class TaskRequest:
    """A validated create request."""

    task_type: str
    prompt: str
    parameters: dict[str, Any]
    image_png: bytes | None = None
    extra_pngs: dict[str, bytes] = field(default_factory=dict)
    owner: uuid.UUID | None = None  # the API key's id
    submitter: str | None = None  # key:<id> or ip:<address>, counted by the cap on queued tasks
    idempotency_key: str | None = None
    webhook_url: str | None = None

    def fingerprint(self) -> str:
        described = [self.task_type, self.prompt, self.parameters, self.webhook_url]
        digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
        for name, data in sorted({"image": self.image_png or b"", **self.extra_pngs}.items()):
            digest.update(name.encode() + hashlib.sha256(data).digest())
        return digest.hexdigest()

    @property
    def idempotency_scope(self) -> str | None:
        return f"{self.owner or 'anonymous'}:{self.idempotency_key}" if self.idempotency_key else None


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request."""


def _replay(request: TaskRequest) -> AITask | None:
    """The task an earlier identical request with the same Idempotency-Key made, if any."""
    if request.idempotency_scope is None:
        return None
    with session_scope() as session:
        earlier = session.exec(
            sa.select(AITask).where(AITask.idempotency_scope == request.idempotency_scope)
        ).scalar_one_or_none()
    if earlier is not None and earlier.request_fingerprint != request.fingerprint():
        raise IdempotencyConflict(earlier.id)
    return earlier


def create_task(request: TaskRequest) -> tuple[AITask, bool]:
    """Store the inputs, insert the PENDING row, enqueue it on its queue; undo all of it if any step fails.

    Returns the task and whether it is a replay of an earlier request with the same Idempotency-Key.
    """
    earlier = _replay(request)
    if earlier is not None:
        return earlier, True
    _refuse_over_cap(request.submitter)
    spec = TASK_SPECS[request.task_type]
    storage = get_storage()
    input_key, extra_inputs = _store_inputs(storage, request)
    stored = [key for key in (input_key, *extra_inputs.values()) if key]
    task = AITask(task_type=request.task_type, prompt=request.prompt, parameters=request.parameters,
                  input_image=input_key, extra_inputs=extra_inputs or None, celery_task_id=str(uuid.uuid4()),
                  api_key_id=request.owner, submitter=request.submitter,
                  idempotency_scope=request.idempotency_scope,
                  request_fingerprint=request.fingerprint(), webhook_url=request.webhook_url,
                  max_retries=get_settings().max_retries, message="Queued")
    try:
        with get_engine().begin() as connection:  # one INSERT, no ORM flush: the row is complete already
            connection.execute(TASKS.insert(), {column.key: getattr(task, column.key) for column in TASKS.columns})
    except sa.exc.IntegrityError:
        _delete_all(storage, stored)
        earlier = _replay(request)  # a concurrent request with the same key won the insert
        if earlier is None:
            raise
        return earlier, True
    except Exception:
        _delete_all(storage, stored)
        raise
    try:
        # ignore_result: the row is the result; waiting on Celery's result store would only add a failure point.
        celery_app.send_task("tasks.process_ai_task", args=[str(task.id)], task_id=task.celery_task_id,
                             queue=spec.queue, ignore_result=True)
    except BrokerError as exc:
        log.error("enqueue of %s failed: %s", task.id, exc)
        with session_scope() as session:
            session.delete(session.get(AITask, task.id))
            session.commit()
        _delete_all(storage, stored)
        raise QueueUnavailable(str(exc)) from exc
    return task, False


def _refuse_over_cap(submitter: str | None) -> None:
    """One submitter's backlog may not crowd out everyone else's. Counted up to the cap only, by the (submitter,
    status) index; creates that race past the check at once may exceed it by their number."""
    cap = get_settings().max_queued_per_key
    if not cap or submitter is None:
        return
    mine = (sa.select(AITask.id).where(AITask.submitter == submitter, AITask.status.in_(UNFINISHED_STATUSES))
            .limit(cap).subquery())
    with session_scope() as session:
        if session.exec(sa.select(sa.func.count()).select_from(mine)).scalar_one() >= cap:
            raise TooManyQueued(cap)


def _store_inputs(storage: Storage, request: TaskRequest) -> tuple[str | None, dict[str, str]]:
    """The request's uploads, stored; when one fails (storage.StorageFull: the API's 507), those already stored for
    this request are deleted again."""
    stored: list[str] = []
    try:
        input_key = None
        if request.image_png is not None:
            input_key = storage.put("input", request.image_png)
            stored.append(input_key)
        extra_inputs = {}
        for name, data in request.extra_pngs.items():
            extra_inputs[name] = storage.put("input", data)
            stored.append(extra_inputs[name])
    except BaseException:
        _delete_all(storage, stored)
        raise
    return input_key, extra_inputs


def _delete_all(storage: Storage, keys: list[str]) -> None:
    for key in keys:
        storage.delete(key)


def get_task(task_id: uuid.UUID) -> AITask | None:
    with session_scope() as session:
        return session.get(AITask, task_id)


@dataclass(frozen=True)
class QueueEstimate:
    position: int  # tasks ahead of this one: queued before it, or (waiting for a replica) claimed before it
    eta_seconds: float | None  # when it may be done; None before any task of its type has finished


@lru_cache(maxsize=4096)
def _png_pixels(key: str) -> int | None:
    """Pixels of a stored input, from its PNG header (inputs are always stored as PNG); None once deleted. Cached:
    a stored file never changes."""
    try:
        header = get_storage().read_head(key, 24)
    except (FileNotFoundError, ValueError):
        return None
    if header[12:16] != b"IHDR":
        return None
    return int.from_bytes(header[16:20], "big") * int.from_bytes(header[20:24], "big")


def _job_units(task: AITask) -> float | None:
    """How much work a task is, in units whose cost per second is stable for its type: output pixels x steps for
    generation, output pixels for enhancement, the picture's pixels otherwise (face swap: the target's)."""
    parameters = task.parameters or {}
    if task.task_type == TaskType.IMAGE_GENERATION:
        return parameters.get("width", 512) * parameters.get("height", 512) * parameters.get("num_inference_steps", 30)
    key = (task.extra_inputs or {}).get("target_image") or task.input_image
    pixels = _png_pixels(key) if key else None
    if pixels is None:
        return None
    return pixels * parameters.get("scale", 2) ** 2 if task.task_type == TaskType.IMAGE_ENHANCEMENT else pixels


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def queue_estimate(task: AITask, recent: int = 20) -> QueueEstimate:
    """Where a task that is not running yet stands on its type's queue, and when it may be done.

    The work ahead (tasks queued before it at the median duration, the remainder of those already claimed) is
    shared by as many slots as tasks are running now (at least one), then this task's own duration follows,
    scaled by its size from the recent seconds per unit of work of its type.
    """
    waiting = (TaskStatus.PENDING, TaskStatus.RETRY)
    same_type = AITask.task_type == task.task_type
    claimed = sa.and_(same_type, AITask.status == TaskStatus.PROCESSING, AITask.id != task.id)
    if task.status == TaskStatus.PROCESSING:  # claimed but waiting for a replica: behind those claimed earlier
        ahead_query = sa.and_(claimed, AITask.message == state_writes.WAITING_MESSAGE,
                              AITask.started_at < task.started_at)
        claimed = sa.and_(claimed, AITask.started_at < task.started_at)
    else:
        ahead_query = sa.and_(same_type, AITask.status.in_(waiting), AITask.created_at < task.created_at)
    with session_scope() as session:
        ahead = session.exec(sa.select(sa.func.count()).select_from(AITask).where(ahead_query)).scalar_one()
        running = session.exec(sa.select(AITask.progress, AITask.message).where(claimed)).all()
        finished = session.exec(recent_successes(task.task_type, recent)).scalars().all()
    typical = _median([done.processing_time for done in finished])
    if typical is None:
        return QueueEstimate(position=ahead, eta_seconds=None)
    rates = [done.processing_time / units for done in finished if (units := _job_units(done))]
    units, rate = _job_units(task), _median(rates)
    own = rate * units if units and rate else typical
    slots = max(1, sum(1 for _, message in running if message != state_writes.WAITING_MESSAGE))
    remaining = sum(typical * (100 - done) / 100 for done, _ in running)
    if task.status != TaskStatus.PROCESSING:
        remaining += ahead * typical
    return QueueEstimate(position=ahead, eta_seconds=round(remaining / slots + own, 2))


def recent_successes(task_type: str, recent: int) -> sa.Select:
    """The type's last `recent` successful tasks, newest first: read on every status poll of a waiting task, from
    the (task_type, status, completed_at) index."""
    return (sa.select(AITask).where(AITask.task_type == task_type, AITask.status == TaskStatus.SUCCESS,
                                    AITask.processing_time.is_not(None))
            .order_by(AITask.completed_at.desc()).limit(recent))


def task_by_result(result_key: str) -> sa.Select:
    """The task of a result file: read on every `/media/…` view, from the result_image index."""
    return sa.select(AITask).where(AITask.result_image == result_key)


def get_task_by_result(result_key: str) -> AITask | None:
    with session_scope() as session:
        return session.exec(task_by_result(result_key)).scalar_one_or_none()


def is_cancelled(task: AITask) -> bool:
    """Cancelled by its owner, not failed: the row says FAILURE "Cancelled by user" (the v1 contract)."""
    return task.status == TaskStatus.FAILURE and task.error_message == CANCELLED_MESSAGE


def is_deleted(task: AITask) -> bool:
    return task.expired_at is not None and task.message == DELETED_MESSAGE


@dataclass(frozen=True)
class TaskPage:
    tasks: list[AITask]
    more: bool  # tasks older than the last one match too


def list_tasks(owner: uuid.UUID | None, limit: int, before: tuple[datetime, uuid.UUID] | None = None,
               status: TaskStatus | None = None, task_type: str | None = None) -> TaskPage:
    """An owner's tasks (None: those made without a key), newest first, deleted ones left out; `before` is the
    (created_at, id) of the last task of the previous page, so a page never repeats or skips a task while new
    ones arrive."""
    query = sa.select(AITask).where(AITask.api_key_id == owner if owner else AITask.api_key_id.is_(None),
                                    sa.not_(sa.and_(AITask.expired_at.is_not(None),
                                                    AITask.message == DELETED_MESSAGE)))
    if before is not None:
        query = query.where(sa.tuple_(AITask.created_at, AITask.id) < sa.tuple_(*before))
    if status is not None:
        query = query.where(AITask.status == status)
    if task_type is not None:
        query = query.where(AITask.task_type == task_type)
    with session_scope() as session:
        rows = session.exec(query.order_by(AITask.created_at.desc(), AITask.id.desc()).limit(limit + 1)).scalars()
        tasks = list(rows)
    return TaskPage(tasks=tasks[:limit], more=len(tasks) > limit)


def delete_task(task: AITask) -> AITask:
    """Cancel it if unfinished, delete its inputs and result from storage, and keep the row as a tombstone
    (expired, "Deleted by user") so that its status still answers. Deleting twice is harmless."""
    if task.status not in FINISHED_STATUSES:
        try:
            cancel_task(task)
        except TaskAlreadyFinished:
            pass  # it finished meanwhile: its files go all the same
    with session_scope() as session:
        row = session.exec(sa.select(AITask).where(AITask.id == task.id).with_for_update()).scalar_one()
        keys = [key for key in (row.input_image, row.result_image, *(row.extra_inputs or {}).values()) if key]
        row.expired_at, row.message, row.updated_at = row.expired_at or utcnow(), DELETED_MESSAGE, utcnow()
        session.add(row)
        session.commit()
        session.refresh(row)
    _delete_all(get_storage(), keys)
    return row


def cancel_task(task: AITask) -> AITask:
    """The v1 task API's cancel: FAILURE with "Cancelled by user". A pending task never runs; a running one's Serve
    request is cancelled by its worker, which watches the row."""
    if task.status in FINISHED_STATUSES or not state_writes.fail(
        task.id, CANCELLED_MESSAGE, only_if=(TaskStatus.PENDING, TaskStatus.PROCESSING, TaskStatus.RETRY)
    ):
        raise TaskAlreadyFinished(task.status)
    notify_finished(task.id)
    try:
        celery_app.control.revoke(task.celery_task_id)  # best effort: the worker's claim refuses it anyway
    except BrokerError as exc:
        log.warning("revoke of %s not sent: %s", task.id, exc)
    return get_task(task.id) or task
