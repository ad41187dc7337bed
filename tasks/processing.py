"""`process_ai_task`: drive one job through its model deployment, by name, through a Ray Serve handle."""

import logging
import os
import random
import threading
import time
import uuid
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from ray.exceptions import RaySystemError
from ray.serve.exceptions import RayServeException, RequestCancelledError

from tasks import progress, ray_client
from tasks.celery_app import celery_app
from tasks.config import get_settings
from tasks.models import CANCELLED_MESSAGE, AITask, TaskStatus
from tasks.registry import TASK_SPECS, Stage
from tasks.storage import Storage, get_storage

log = logging.getLogger(__name__)

# Task progress around the model's own 0..100: the seed's jobs report a little before and after the model.
MODEL_PROGRESS_START, MODEL_PROGRESS_END = 10, 90


class _Stopped(Exception):
    """The Serve request was cancelled by us: the user cancelled, or the deployment went silent too long."""


class _RequestWatch:
    """Cancels a running Serve request when its task is cancelled or no event arrives in time.

    Runs beside the event loop because a streaming handle's `next()` has no timeout of its own.
    """

    def __init__(self, task_id: uuid.UUID, response, event_timeout_s: float, poll_s: float = 0.25):
        self.task_id, self.response = task_id, response
        self.event_timeout_s, self.poll_s = event_timeout_s, poll_s
        self.reason: str | None = None
        self._last_event = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name=f"watch-{task_id}")

    def __enter__(self) -> "_RequestWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def saw_event(self) -> None:
        self._last_event = time.monotonic()

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.response.cancel()

    def _watch(self) -> None:
        while not self._done.wait(self.poll_s):
            if progress.current_status(self.task_id) == TaskStatus.FAILURE:
                self.stop(CANCELLED_MESSAGE)
            elif time.monotonic() - self._last_event > self.event_timeout_s:
                self.stop(f"no progress from the model for {self.event_timeout_s:.0f} s")


def _stream_stage(task_id: uuid.UUID, stage: Stage, span: tuple[int, int], writer: progress.ProgressWriter,
                  **call: Any) -> dict[str, Any]:
    """Call one deployment, streaming its events into the row within `span`; return its result payload."""
    handle = ray_client.get_handle(stage.app_name, stage.deployment_name)
    response = handle.options(stream=True).process.remote(**call)
    low, high = span
    with _RequestWatch(task_id, response, get_settings().serve_event_timeout_s) as watch:
        try:
            for event in response:
                watch.saw_event()
                if "result" in event:
                    return event["result"]
                writer.update(low + (high - low) * event["progress"] // 100, event["message"])
        except SoftTimeLimitExceeded:
            watch.stop("timed out")
            raise
        except RequestCancelledError as exc:
            raise _Stopped(watch.reason or "cancelled") from exc
    raise RuntimeError(f"{stage.deployment_name} finished without a result")


def _read_input(storage: Storage, key: str) -> bytes:
    try:
        return storage.get(key)
    except FileNotFoundError:  # deleted (expiry, an operator): no retry can bring it back
        raise ValueError("the input image is no longer in storage") from None


def _run_stages(task: AITask, storage: Storage) -> tuple[dict[str, Any], str]:
    """Run the task type's stages in order; return the last stage's result and the prompt it was given."""
    spec = TASK_SPECS[task.task_type]
    image = _read_input(storage, task.input_image) if task.input_image else None
    extra_images = {name: _read_input(storage, key) for name, key in (task.extra_inputs or {}).items()}
    prompt, parameters, metadata = task.prompt, dict(task.parameters), {}
    writer = progress.ProgressWriter(task.id)
    total = sum(stage.weight for stage in spec.stages)
    done = 0
    for stage in spec.stages:
        low = MODEL_PROGRESS_START + (MODEL_PROGRESS_END - MODEL_PROGRESS_START) * done // total
        done += stage.weight
        high = MODEL_PROGRESS_START + (MODEL_PROGRESS_END - MODEL_PROGRESS_START) * done // total
        result = _stream_stage(task.id, stage, (low, high), writer, image=image, parameters=parameters,
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
    """After a Ray or Serve restart a connected driver keeps failing until it reconnects (ARCHITECTURE.md)."""
    return isinstance(exc, RaySystemError | RayServeException | ConnectionError)


def _retry_countdown(retry_count: int) -> float:
    """Seed backoff (base * 2**n, 60 s base in production) with up to 10% jitter against thundering herds."""
    base = get_settings().retry_backoff_base_s * 2**retry_count
    return base * (1 + random.uniform(0, 0.1))


@celery_app.task(bind=True, name="tasks.process_ai_task")
def process_ai_task(self, task_id: str) -> dict[str, str]:
    """Run one AITask: PROCESSING → (progress…) → SUCCESS with result_data, or RETRY/FAILURE."""
    task_uuid = uuid.UUID(task_id)
    task = progress.claim(task_uuid, self.request.id, worker=f"{self.request.hostname}:{os.getpid()}")
    if task is None:
        log.info("task %s is finished, cancelled or running elsewhere: skipped", task_id)
        return {"status": "skipped", "task_id": task_id}
    log.info("processing task %s (%s)", task_id, task.task_type)
    storage = get_storage()
    try:
        result, prompt_used = _run_stages(task, storage)
        progress.publish(task_uuid, progress=95, message="Saving result")  # the SUCCESS write follows at once
        result_key = storage.put("output", result["image"])
        # URL and timing are not stored twice: the API derives them from result_image and processing_time.
        done = progress.succeed(task_uuid, result_key, {"prompt_used": prompt_used, "metadata": result["metadata"]},
                                task.started_at)
        if not done:  # cancelled while saving: the result must not outlive the task
            storage.delete(result_key)
        return {"status": "success" if done else "skipped", "task_id": task_id}
    except _Stopped as stopped:
        progress.fail(task_uuid, str(stopped))
        return {"status": "stopped", "task_id": task_id}
    except SoftTimeLimitExceeded:
        progress.fail(task_uuid, "timed out")
        return {"status": "timed out", "task_id": task_id}
    except ValueError as exc:  # bad input (deployments raise InvalidInput, a ValueError): never retried
        progress.fail(task_uuid, _error_message(exc))
        return {"status": "failure", "task_id": task_id}
    except Exception as exc:  # anything else may pass (replica died, Serve restarting, OOM): bounded retries
        error = f"{type(getattr(exc, 'cause', None) or exc).__name__}: {_error_message(exc)}"
        log.warning("task %s failed (attempt %d): %s", task_id, task.retry_count + 1, error)
        if _needs_reconnect(exc):
            ray_client.disconnect()
        if task.retry_count >= task.max_retries:
            progress.fail(task_uuid, error)
            return {"status": "failure", "task_id": task_id}
        if progress.schedule_retry(task_uuid, task.retry_count + 1, error):
            raise self.retry(exc=exc, countdown=_retry_countdown(task.retry_count), max_retries=None) from exc
        return {"status": "skipped", "task_id": task_id}
