"""Creating and cancelling tasks: the middle tier's entry points for the API and the CLI."""

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from kombu.exceptions import OperationalError as BrokerError

from tasks import progress
from tasks.celery_app import celery_app
from tasks.config import get_settings
from tasks.db import session_scope
from tasks.models import CANCELLED_MESSAGE, FINISHED_STATUSES, AITask, TaskStatus
from tasks.registry import TASK_SPECS
from tasks.storage import Storage, get_storage
from tasks.webhooks import notify_finished

log = logging.getLogger(__name__)


class QueueUnavailable(Exception):
    """The broker refused the job; nothing of the task was kept."""


class TaskAlreadyFinished(Exception):
    pass


@dataclass(frozen=True)
class TaskRequest:
    """A validated create request."""

    task_type: str
    prompt: str
    parameters: dict[str, Any]
    image_png: bytes | None = None
    extra_pngs: dict[str, bytes] = field(default_factory=dict)
    owner: uuid.UUID | None = None  # the API key's id
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
    spec = TASK_SPECS[request.task_type]
    storage = get_storage()
    input_key = storage.put("input", request.image_png) if request.image_png is not None else None
    extra_inputs = {name: storage.put("input", data) for name, data in request.extra_pngs.items()}
    stored = [key for key in (input_key, *extra_inputs.values()) if key]
    task = AITask(task_type=request.task_type, prompt=request.prompt, parameters=request.parameters,
                  input_image=input_key, extra_inputs=extra_inputs or None, celery_task_id=str(uuid.uuid4()),
                  api_key_id=request.owner, idempotency_scope=request.idempotency_scope,
                  request_fingerprint=request.fingerprint(), webhook_url=request.webhook_url,
                  max_retries=get_settings().max_retries, message="Queued")
    try:
        with session_scope() as session:
            session.add(task)
            session.commit()
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


def _delete_all(storage: Storage, keys: list[str]) -> None:
    for key in keys:
        storage.delete(key)


def get_task(task_id: uuid.UUID) -> AITask | None:
    with session_scope() as session:
        return session.get(AITask, task_id)


@dataclass(frozen=True)
class QueueEstimate:
    position: int  # tasks ahead of this one on its Celery queue
    eta_seconds: float | None  # (position + 1) x the median recent duration of this task type


def queue_estimate(task: AITask, recent: int = 20) -> QueueEstimate:
    """Where a waiting task stands: tasks queued before it on the same queue, and when it may be done."""
    queue = TASK_SPECS[task.task_type].queue
    same_queue = [task_type for task_type, spec in TASK_SPECS.items() if spec.queue == queue]
    waiting = (TaskStatus.PENDING, TaskStatus.RETRY)
    with session_scope() as session:
        ahead = session.exec(sa.select(sa.func.count()).select_from(AITask).where(
            AITask.task_type.in_(same_queue), AITask.status.in_(waiting), AITask.created_at < task.created_at,
        )).scalar_one()
        durations = sorted(session.exec(
            sa.select(AITask.processing_time).where(AITask.task_type == task.task_type,
                                                    AITask.status == TaskStatus.SUCCESS,
                                                    AITask.processing_time.is_not(None))
            .order_by(AITask.completed_at.desc()).limit(recent)
        ).scalars())
    eta = (ahead + 1) * durations[len(durations) // 2] if durations else None
    return QueueEstimate(position=ahead, eta_seconds=round(eta, 2) if eta is not None else None)


def get_task_by_result(result_key: str) -> AITask | None:
    with session_scope() as session:
        return session.exec(sa.select(AITask).where(AITask.result_image == result_key)).scalar_one_or_none()


def cancel_task(task: AITask) -> AITask:
    """Seed semantics: FAILURE with "Cancelled by user". A pending task never runs; a running one's Serve
    request is cancelled by its worker, which watches the row."""
    if task.status in FINISHED_STATUSES or not progress.fail(
        task.id, CANCELLED_MESSAGE, only_if=(TaskStatus.PENDING, TaskStatus.PROCESSING, TaskStatus.RETRY)
    ):
        raise TaskAlreadyFinished(task.status)
    notify_finished(task.id)
    try:
        celery_app.control.revoke(task.celery_task_id)  # best effort: the worker's claim refuses it anyway
    except BrokerError as exc:
        log.warning("revoke of %s not sent: %s", task.id, exc)
    return get_task(task.id) or task
