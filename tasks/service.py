"""Creating and cancelling tasks: the middle tier's entry points for the API and the CLI."""

import logging
import uuid
from typing import Any

from kombu.exceptions import OperationalError as BrokerError

from tasks import progress
from tasks.celery_app import celery_app
from tasks.config import get_settings
from tasks.db import session_scope
from tasks.models import CANCELLED_MESSAGE, FINISHED_STATUSES, AITask, TaskStatus, TaskType
from tasks.registry import TASK_SPECS
from tasks.storage import Storage, get_storage

log = logging.getLogger(__name__)


class QueueUnavailable(Exception):
    """The broker refused the job; nothing of the task was kept."""


class TaskAlreadyFinished(Exception):
    pass


def create_task(task_type: TaskType, prompt: str, parameters: dict[str, Any], image_png: bytes | None,
                extra_pngs: dict[str, bytes] | None = None) -> AITask:
    """Store the inputs, insert the PENDING row, enqueue it on its queue; undo all of it if any step fails."""
    spec = TASK_SPECS[task_type]
    storage = get_storage()
    input_key = storage.put("input", image_png) if image_png is not None else None
    extra_inputs = {name: storage.put("input", data) for name, data in (extra_pngs or {}).items()}
    stored = [key for key in (input_key, *extra_inputs.values()) if key]
    task = AITask(task_type=task_type, prompt=prompt, parameters=parameters, input_image=input_key,
                  extra_inputs=extra_inputs or None, celery_task_id=str(uuid.uuid4()),
                  max_retries=get_settings().max_retries, message="Queued")
    try:
        with session_scope() as session:
            session.add(task)
            session.commit()
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
    return task


def _delete_all(storage: Storage, keys: list[str]) -> None:
    for key in keys:
        storage.delete(key)


def get_task(task_id: uuid.UUID) -> AITask | None:
    with session_scope() as session:
        return session.get(AITask, task_id)


def cancel_task(task: AITask) -> AITask:
    """Seed semantics: FAILURE with "Cancelled by user". A pending task never runs; a running one's Serve
    request is cancelled by its worker, which watches the row."""
    if task.status in FINISHED_STATUSES or not progress.fail(
        task.id, CANCELLED_MESSAGE, only_if=(TaskStatus.PENDING, TaskStatus.PROCESSING, TaskStatus.RETRY)
    ):
        raise TaskAlreadyFinished(task.status)
    try:
        celery_app.control.revoke(task.celery_task_id)  # best effort: the worker's claim refuses it anyway
    except BrokerError as exc:
        log.warning("revoke of %s not sent: %s", task.id, exc)
    return get_task(task.id) or task
