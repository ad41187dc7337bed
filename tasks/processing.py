"""`process_ai_task`: drive one job through its model deployment, by name, through a Ray Serve handle."""

import itertools
import logging
import os
import random
import time
import uuid
from typing import Any

from celery.exceptions import Reject
from ray.exceptions import RayActorError, RaySystemError
from ray.serve.exceptions import RayServeException, RequestCancelledError

from deployments.events import InvalidInput
from tasks import ray_client, state_writes
from tasks.celery_app import celery_app
from tasks.config import get_settings
from tasks.models import utcnow
from tasks.registry import TASK_SPECS, Stage
from tasks.storage import Storage, get_storage
from tasks.supervisor import CLUSTER_GONE, RunningTask, Stop, supervisor
from tasks.webhooks import notify_finished

log = logging.getLogger(__name__)

ray_client.on_disconnect(supervisor.connection_dropped)

# Task progress around the model's own 0..100: a little is reported before the model starts and after it ends.
MODEL_PROGRESS_START, MODEL_PROGRESS_END = 10, 90


class _Stopped(Exception):
    """The Serve request was cancelled by us (docs/architecture.md, Consumers): the user cancelled, a limit passed,
    or no replica took it in time (then `retry`)."""

    def __init__(self, stop: Stop):
        super().__init__(stop.reason)
        self.retry = stop.retry


class _ClusterUnavailable(Exception):
    """The deployment could not be reached before any model work began: Ray or Serve is (re)starting."""


def _stream_stage(running: RunningTask, index: int, stage: Stage, span: tuple[int, int],
                  writer: state_writes.ProgressWriter, **call: Any) -> dict[str, Any]:
    """Call the task's `index`th deployment, streaming its events into the row within `span`; return its result
    payload."""
    try:
        handle, generation = ray_client.get_handle(stage.app_name, stage.deployment_name)
    except Exception as exc:  # no cluster to connect to, or no such application (yet)
        raise _ClusterUnavailable(_error_message(exc)) from exc
    try:
        response = handle.process.remote(**call)
        running.begin_stage(index, response, generation)
        if not ray_client.is_current(generation):  # dropped while this call was being made
            running.cancel(CLUSTER_GONE)
        low, high = span
        for event in response:
            running.saw_event()
            if "result" in event:
                return event["result"]
            writer.update(low + (high - low) * event["progress"] // 100, event["message"])
    except RequestCancelledError as exc:
        stop = running.stop or Stop("cancelled")
        if stop.cluster_gone and running.running_since is None:  # no model work began: wait for the new cluster
            raise _ClusterUnavailable(stop.reason) from exc
        raise _Stopped(stop) from exc
    except Exception as exc:
        reconnect = _needs_reconnect(exc)
        if reconnect:
            ray_client.disconnect(generation)
        if running.running_since is None and (reconnect or isinstance(exc, RayActorError)):
            # No model work began (the replica went away before taking it): the cluster's trouble, not the task's.
            raise _ClusterUnavailable(_error_message(exc)) from exc
        raise
    raise RuntimeError(f"{stage.deployment_name} finished without a result")


def _read_input(storage: Storage, key: str) -> bytes:
    try:
        return storage.get(key)
    except FileNotFoundError:  # deleted (expiry, an operator): no retry can bring it back
        raise InvalidInput("the input image is no longer in storage") from None


def stage_spans(stages: tuple[Stage, ...]) -> list[tuple[int, int]]:
    """Each stage's stretch of the task's progress bar: the model's part of it, shared by the stages' weights."""
    total = sum(stage.weight for stage in stages)
    width = MODEL_PROGRESS_END - MODEL_PROGRESS_START
    done = list(itertools.accumulate((stage.weight for stage in stages), initial=0))
    return [(MODEL_PROGRESS_START + width * before // total, MODEL_PROGRESS_START + width * after // total)
            for before, after in itertools.pairwise(done)]


def _run_stages(task: state_writes.Claimed, storage: Storage, running: RunningTask) -> tuple[dict[str, Any], str]:
    """Run the task type's stages in order; return the last stage's result and the prompt it was given."""
    spec = TASK_SPECS[task.task_type]
    image = _read_input(storage, task.input_image) if task.input_image else None
    extra_images = {name: _read_input(storage, key) for name, key in (task.extra_inputs or {}).items()}
    prompt, parameters, metadata = task.prompt, dict(task.parameters), {}
    writer = state_writes.ProgressWriter(task.id)
    for index, (stage, span) in enumerate(zip(spec.stages, stage_spans(spec.stages), strict=True)):
        result = _stream_stage(running, index, stage, span, writer, image=image, parameters=parameters,
                               prompt=prompt, extra_images=extra_images)
        prompt = result.get("prompt", prompt)
        parameters.update(result.get("parameters", {}))
        metadata.update(result.get("metadata", {}))
    if "image" not in result:
        raise RuntimeError(f"{spec.stages[-1].deployment_name} returned no image")
    return {**result, "metadata": metadata}, prompt


def _error_message(exc: BaseException) -> str:
    """One line for the user: the model's own message (Ray wraps replica exceptions in a RayTaskError whose
    str is a traceback), or the first line of a system error such as ActorDiedError."""
    cause = getattr(exc, "cause", None)
    lines = str(cause if isinstance(cause, BaseException) else exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _needs_reconnect(exc: BaseException) -> bool:
    """After a Ray or Serve restart a connected driver keeps failing until it reconnects (docs/architecture.md,
    measured facts)."""
    return isinstance(exc, RaySystemError | RayServeException | ConnectionError)


def _retry_countdown(retry_count: int) -> float:
    """Exponential backoff (base * 2**n, 60 s base in production) with up to 10% jitter against thundering herds."""
    base = get_settings().retry_backoff_base_s * 2**retry_count
    return base * (1 + random.uniform(0, 0.1))


# A state write that still fails after progress's own retries (the database is away): the message is handed back
# after this pause, so the task comes back rather than being acked in no final state.
REQUEUE_PAUSE_S = 1.0
# A job that found no cluster to run on goes back to its queue after this pause (a Ray head restarting).
CLUSTER_PAUSE_S = 5.0


@celery_app.task(bind=True, name="tasks.process_ai_task")
def process_ai_task(self, task_id: str) -> dict[str, str]:
    """Run one AITask: PROCESSING → (progress…) → SUCCESS with result_data, or RETRY/FAILURE."""
    try:
        return _process(self, uuid.UUID(task_id))
    except state_writes.DatabaseUnavailable as exc:
        log.error("task %s: database unavailable (%s); message handed back", task_id, exc)
        time.sleep(REQUEUE_PAUSE_S)
        raise Reject(str(exc), requeue=True) from exc


def _fail(task_id: uuid.UUID, error: str) -> None:
    """FAILURE with `error`; when this write is the one that ended the task, its webhook is queued."""
    if state_writes.fail(task_id, error):
        notify_finished(task_id)


def _process(celery_task, task_uuid: uuid.UUID) -> dict[str, str]:
    task_id = str(task_uuid)
    request = celery_task.request
    task = state_writes.claim(task_uuid, request.id, worker=f"{request.hostname}:{os.getpid()}")
    if task is None:
        log.info("task %s is finished, cancelled or running elsewhere: skipped", task_id)
        return {"status": "skipped", "task_id": task_id}
    limit = get_settings().max_worker_losses
    if task.worker_losses > limit:  # a poison task: it must not kill consumer after consumer
        _fail(task_uuid, f"worker lost: the task ended its worker {task.worker_losses} times (limit {limit})")
        return {"status": "failure", "task_id": task_id}
    log.info("processing task %s (%s)", task_id, task.task_type)
    storage = get_storage()
    try:
        with supervisor.track(task_uuid, TASK_SPECS[task.task_type].queue) as running:
            result, prompt_used = _run_stages(task, storage, running)
        # Under the name the first claim gave it: a run that dies or fails from here on leaves no file of its own
        # (the next run replaces it; a task ending otherwise has it deleted with its inputs, by expiry or DELETE).
        storage.write(task.result_image, result["image"])
        # URL and timing are not stored twice: the API derives them from result_image and processing_time.
        done = state_writes.succeed(task_uuid, task.result_image, {"prompt_used": prompt_used,
                                                               "metadata": result["metadata"]},
                                processing_time=time.monotonic() - (running.running_since or time.monotonic()))
        if done and task.webhook_url:  # the claimed row has it: no SELECT for the many tasks without one
            notify_finished(task_uuid)
        return {"status": "success" if done else "skipped", "task_id": task_id}
    except _ClusterUnavailable as exc:
        return _wait_for_cluster(celery_task, task, exc)
    except _Stopped as stopped:
        if not stopped.retry:
            _fail(task_uuid, str(stopped))
            return {"status": "stopped", "task_id": task_id}
        return _retry_or_fail(celery_task, task, stopped)
    except InvalidInput as exc:  # the one permanent failure, by type (deployments/events.py): never retried
        _fail(task_uuid, _error_message(exc))
        return {"status": "failure", "task_id": task_id}
    except state_writes.DatabaseUnavailable:
        raise
    except Exception as exc:  # anything else may pass (replica died, Serve restarting, OOM): bounded retries
        return _retry_or_fail(celery_task, task, exc)


def _wait_for_cluster(celery_task, task: state_writes.Claimed, exc: _ClusterUnavailable) -> dict[str, str]:
    """Back to the queue without spending a retry, for as long as a replica may take to appear; after that, an
    ordinary failure."""
    waited_s = (utcnow() - task.started_at).total_seconds()
    if waited_s > get_settings().replica_wait_timeout_s:
        return _retry_or_fail(celery_task, task, exc)
    log.warning("task %s: no cluster to run on (%s); back to the queue", task.id, exc)
    if not state_writes.requeue(task.id, f"Waiting for the model service: {exc}"):
        return {"status": "skipped", "task_id": str(task.id)}  # cancelled meanwhile
    time.sleep(CLUSTER_PAUSE_S)
    raise Reject(str(exc), requeue=True)


def _retry_or_fail(celery_task, task: state_writes.Claimed, exc: Exception) -> dict[str, str]:
    task_id = str(task.id)
    cause = getattr(exc, "cause", None) or exc
    error = str(exc) if isinstance(exc, _Stopped) else f"{type(cause).__name__}: {_error_message(exc)}"
    log.warning("task %s failed (attempt %d): %s", task_id, task.retry_count + 1, error)
    if task.retry_count >= task.max_retries:
        _fail(task.id, error)
        return {"status": "failure", "task_id": task_id}
    if state_writes.schedule_retry(task.id, task.retry_count + 1, error):
        raise celery_task.retry(exc=exc, countdown=_retry_countdown(task.retry_count), max_retries=None) from exc
    return {"status": "skipped", "task_id": task_id}
