"""The task endpoints: the v1 four (create, status, result, cancel) plus events, listing and deletion."""

import base64
import binascii
import inspect
import json
import re
import unicodedata
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from serve import strict_json
from serve.deps import CallerDep, SettingsDep, TaskDep
from serve.errors import ApiError
from serve.events import live_status, wait_until_finished
from serve.forms import refuse_ambiguous_form
from serve.schemas import (
    ErrorOut,
    TaskCancelled,
    TaskCreated,
    TaskList,
    TaskResultData,
    TaskResultOut,
    TaskStatusOut,
    TaskSummary,
)
from serve.uploads import FORM_PART_MAX_BYTES, read_image_as_png
from tasks import service, state_writes
from tasks.models import CANCELLED_MESSAGE, AITask, TaskStatus
from tasks.registry import IMAGE, TASK_SPECS, TaskSpec, upload_fields
from tasks.webhooks import WebhookRefused, check_webhook_url

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 408, 409, 410, 413, 429, 503)
}
MAX_PARAMETERS_CHARS = 16 * 1024  # the largest valid parameters (a 1000-character negative prompt) fit many times
# Bounds on the parts parsed at all (the form has four text fields and three files); a repeated field is then
# refused by name.
CREATE_FORM_LIMITS = {"max_fields": 16, "max_files": 8, "max_part_size": FORM_PART_MAX_BYTES}
# `Prefer: wait=N` holds the create answer until the task is done, up to this long; longer jobs belong to the
# status, events and webhook routes.
MAX_PREFER_WAIT_S = 60
# A create refused for too many queued tasks is worth retrying after about this long.
QUEUED_CAP_RETRY_AFTER_S = 30
PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.IGNORECASE)
CREATE_EXAMPLES = {
    "background_removal": {"summary": "Cut out the subject (attach `image`)", "value": {
        "task_type": "background_removal", "prompt": "remove the background",
        "parameters": '{"bgcolor": "#ffffff"}'}},
    "image_generation": {"summary": "Generate from a prompt (no upload)", "value": {
        "task_type": "image_generation", "prompt": "a lighthouse at dawn, watercolour",
        "parameters": '{"width": 512, "height": 512, "num_inference_steps": 30}'}},
    "style_transfer": {"summary": "Restyle a photo (attach `image`; a `style_image` instead of `style`)", "value": {
        "task_type": "style_transfer", "prompt": "restyle", "parameters": '{"style": "style-3", "strength": 0.8}'}},
    "image_enhancement": {"summary": "Upscale 4x (attach `image`)", "value": {
        "task_type": "image_enhancement", "prompt": "upscale", "parameters": '{"scale": 4}'}},
    "face_swap": {"summary": "Put the face of `image` into `target_image` (attach both)", "value": {
        "task_type": "face_swap", "prompt": "swap", "parameters": '{"blend_ratio": 0.8}'}},
}


def _spec_for(task_type: str) -> TaskSpec:
    spec = TASK_SPECS.get(task_type)
    if spec is None:
        raise ApiError(400, f"Unknown task_type {task_type!r}",
                       {"task_type": f"choose one of: {', '.join(TASK_SPECS)}"})
    return spec


def _checked_prompt(prompt: str | None, max_length: int) -> str:
    if prompt is None or _blank(prompt):
        raise ApiError(400, "prompt is required", {"prompt": "This field may not be blank."})
    if len(prompt) > max_length:
        raise ApiError(400, f"prompt is longer than {max_length} characters",
                       {"prompt": f"got {len(prompt)} characters"})
    return prompt


def _blank(text: str) -> bool:
    """Nothing visible: only whitespace and invisible format characters (zero-width space, BOM, ...)."""
    return all(char.isspace() or unicodedata.category(char) == "Cf" for char in text)


def _parameters_for(spec: TaskSpec, raw: str | None) -> dict[str, Any]:
    try:
        parameters = strict_json.loads(raw, MAX_PARAMETERS_CHARS) if raw and raw.strip() else {}
    except strict_json.JsonRefused as refused:
        raise ApiError(400, f"parameters {refused}", {"parameters": str(refused)}) from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, "parameters must be a JSON object", {"parameters": str(exc)}) from None
    if not isinstance(parameters, dict):
        raise ApiError(400, "parameters must be a JSON object", {"parameters": f"got {type(parameters).__name__}"})
    try:
        return spec.parameters.model_validate(parameters).model_dump()
    except ValidationError as exc:
        errors = exc.errors()
        details = [{"field": ".".join(["parameters", *(str(p) for p in e["loc"])]),
                    "message": e["msg"].removeprefix("Value error, ")} for e in errors]
        if all(not e["loc"] for e in errors):  # a rule across fields: the parameters contradict each other
            raise ApiError(400, f"Contradictory parameters for {spec.task_type}: {details[0]['message']}",
                           details) from None
        raise ApiError(400, f"Invalid parameters for {spec.task_type}", details) from None


def _submitted(upload: UploadFile | None) -> bool:
    return upload is not None and bool(upload.filename or upload.size)


def _media_url(request: Request, key: str | None, public_base: str | None) -> str | None:
    if key is None:
        return None
    if public_base:
        return f"{public_base.rstrip('/')}/{key}"
    return str(request.url_for("get_media", key=key))


def _prefer_wait_s(prefer: str | None) -> int:
    match = PREFER_WAIT.search(prefer or "")
    if not match:
        return 0
    digits = match.group(1).lstrip("0") or "0"
    # Past the cap either way; thousands of digits would not even convert to an int.
    return MAX_PREFER_WAIT_S if len(digits) > 3 else min(int(digits), MAX_PREFER_WAIT_S)


def _taking_registered_uploads(endpoint: Callable) -> Callable:
    """Declare each upload that a registered task type takes beside `image` as an optional file field of the
    endpoint, which receives them in `**uploads`: the API docs list them, and a new type's uploads need no code
    here. Which of them a given task may send is its spec's to say."""
    signature = inspect.signature(endpoint)
    declared = [parameter for parameter in signature.parameters.values()
                if parameter.kind is not inspect.Parameter.VAR_KEYWORD]
    fields = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                annotation=Annotated[UploadFile | None, File(description=description)])
              for name, description in upload_fields().items() if name != IMAGE]
    endpoint.__signature__ = signature.replace(parameters=[*declared, *fields])
    return endpoint


@router.post("/create/", status_code=201, response_model=TaskCreated | TaskStatusOut,
             responses={**ERRORS, 507: {"model": ErrorOut, "description": "Storage for uploads is full"}},
             form_limits=CREATE_FORM_LIMITS,
             openapi_extra={"requestBody": {"content": {"multipart/form-data": {"examples": CREATE_EXAMPLES}}}})
@_taking_registered_uploads
async def create_task(
    settings: SettingsDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    task_type: Annotated[str, Form(description="What to do; GET /api/v1/task-types/ describes each.",
                                   json_schema_extra={"enum": list(TASK_SPECS)})],
    prompt: Annotated[str | None, Form(description="Required, at most 5000 characters; types that do not use it "
                                                   "(`prompt` in GET /api/v1/task-types/) take any text.")
                      ] = None,
    image: Annotated[UploadFile | None, File(description="Input image (required by image tasks).")] = None,
    parameters: Annotated[str | None, Form(description="JSON object of per-type parameters.")] = None,
    webhook_url: Annotated[str | None, Form(max_length=2000, description="POSTed the outcome when the task "
                                            "finishes, signed (X-Backendai-Signature).")] = None,
    idempotency_key: Annotated[str | None, Header(max_length=200, description="Same key and body: the same "
                                                  "task again; same key, other body: 409.")] = None,
    prefer: Annotated[str | None, Header(description=f"`wait=N`: answer once the task is done if that takes at "
                                                     f"most N seconds (up to {MAX_PREFER_WAIT_S}), with its status "
                                                     f"JSON and `Preference-Applied: wait=N`; otherwise as "
                                                     f"usual.")] = None,
    **uploads: UploadFile | None,
) -> TaskCreated | TaskStatusOut:
    """Validate, store the input, record the task (PENDING) and queue it."""
    await refuse_ambiguous_form(request)
    spec = _spec_for(task_type)
    prompt = _checked_prompt(prompt, settings.max_prompt_length)
    checked_parameters = _parameters_for(spec, parameters)
    if webhook_url:
        try:
            await run_in_threadpool(check_webhook_url, webhook_url)
        except WebhookRefused as refused:
            raise ApiError(400, str(refused), {"webhook_url": webhook_url}) from None
    has_image = _submitted(image)
    if spec.requires_image and not has_image:
        raise ApiError(400, f"{spec.task_type} needs an image", {"image": "No file was submitted."})
    extra_uploads = {name: upload for name, upload in uploads.items() if _submitted(upload)}
    unexpected = sorted(extra_uploads.keys() - set(spec.extra_images))
    if unexpected:
        raise ApiError(400, f"{spec.task_type} does not take {', '.join(unexpected)}",
                       dict.fromkeys(unexpected, "Remove this field."))
    missing = [name for name in spec.required_extra_images if name not in extra_uploads]
    if missing:
        raise ApiError(400, f"{spec.task_type} needs {', '.join(missing)}",
                       dict.fromkeys(missing, "No file was submitted."))
    try:
        spec.parameters.model_validate(checked_parameters).check_uploads(frozenset(extra_uploads))
    except ValueError as exc:
        raise ApiError(400, f"Contradictory input for {spec.task_type}: {exc}",
                       {"parameters": str(exc), **dict.fromkeys(extra_uploads, "Uploaded.")}) from None
    uploaded = await read_image_as_png(image, settings) if has_image and image is not None else None
    extras = {name: await read_image_as_png(upload, settings) for name, upload in extra_uploads.items()}
    if uploaded is not None:
        try:
            spec.parameters.model_validate(checked_parameters).check_input_size(uploaded.width, uploaded.height)
        except ValueError as exc:
            raise ApiError(400, str(exc), {"image": f"{uploaded.width}x{uploaded.height}"}) from None
    task_request = service.TaskRequest(
        task_type=spec.task_type, prompt=prompt, parameters=checked_parameters,
        image_png=uploaded.png if uploaded else None, extra_pngs={name: extra.png for name, extra in extras.items()},
        owner=caller.key_id, submitter=caller.identity, idempotency_key=idempotency_key,
        webhook_url=webhook_url or None,
    )
    try:
        task, replayed = await run_in_threadpool(service.create_task, task_request)
    except service.IdempotencyConflict as conflict:
        raise ApiError(409, "Idempotency-Key was already used with a different request",
                       {"task_id": str(conflict.args[0])}) from None
    except service.TooManyQueued as refused:
        raise ApiError(429, f"Too many tasks queued: {refused.args[0]} of yours are queued or running, the most "
                            f"one key (or client address) may have; retry once some have finished",
                       headers={"Retry-After": str(QUEUED_CAP_RETRY_AFTER_S)}) from None
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    if wait_s := _prefer_wait_s(prefer):
        finished = await wait_until_finished(task.id, wait_s)
        if finished is not None:
            response.headers["Preference-Applied"] = f"wait={wait_s}"
            return await run_in_threadpool(status_body, finished, request)
    return TaskCreated(task_id=task.id, status=task.status, message="Task queued successfully",
                       created_at=task.created_at)


def _cursor(task: AITask) -> str:
    return base64.urlsafe_b64encode(f"{task.created_at.isoformat()}|{task.id}".encode()).decode().rstrip("=")


def _parse_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created_at, _, task_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition("|")
        parsed = datetime.fromisoformat(created_at), uuid.UUID(task_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(400, "Invalid cursor: pass the next_cursor of a previous page unchanged",
                       {"cursor": cursor}) from None
    if parsed[0].tzinfo is None:
        raise ApiError(400, "Invalid cursor: pass the next_cursor of a previous page unchanged", {"cursor": cursor})
    return parsed


@router.get("/", response_model=TaskList, responses=ERRORS)
def list_tasks(
    caller: CallerDep,
    request: Request,
    status: Annotated[TaskStatus | None, Query(description="Only tasks in this status.")] = None,
    task_type: Annotated[str | None, Query(description="Only tasks of this type.",
                                           json_schema_extra={"enum": list(TASK_SPECS)})] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Tasks per page.")] = 20,
    cursor: Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page.")] = None,
) -> TaskList:
    """Your tasks, newest first: those of your API key, or without a key those made without one. Deleted tasks
    are left out."""
    before = _parse_cursor(cursor) if cursor else None
    page = service.list_tasks(caller.key_id, limit, before, status, _spec_for(task_type).task_type if task_type
                              else None)
    return TaskList(
        tasks=[TaskSummary(
            task_id=task.id, task_type=task.task_type, status=task.status, progress=task.progress,
            message=task.message, cancelled=service.is_cancelled(task), error_message=task.error_message,
            created_at=task.created_at, completed_at=task.completed_at, processing_time=task.processing_time,
            status_url=str(request.url_for("task_status", task_id=str(task.id))),
            result_url=str(request.url_for("task_result", task_id=str(task.id)))
            if task.status == TaskStatus.SUCCESS and task.expired_at is None else None,
        ) for task in page.tasks],
        next_cursor=_cursor(page.tasks[-1]) if page.more else None,
    )


def status_body(task: AITask, request: Request) -> TaskStatusOut:
    """The status JSON (the v1 fields plus queue position and ETA while waiting, whether cancelled or deleted);
    also the SSE payload."""
    failed = task.status == TaskStatus.FAILURE
    waiting = task.status in (TaskStatus.PENDING, TaskStatus.RETRY) or (
        task.status == TaskStatus.PROCESSING and task.message == state_writes.WAITING_MESSAGE)
    estimate = service.queue_estimate(task) if waiting else None
    return TaskStatusOut(
        task_id=task.id, id=task.id, task_type=task.task_type, status=task.status, progress=task.progress,
        message=task.message, retry_count=task.retry_count, created_at=task.created_at,
        updated_at=task.updated_at, started_at=task.started_at, completed_at=task.completed_at,
        processing_time=task.processing_time, error_message=task.error_message,
        error=task.error_message if failed else None, failed_at=task.completed_at if failed else None,
        result_url=str(request.url_for("task_result", task_id=str(task.id)))
        if task.status == TaskStatus.SUCCESS else None,
        queue_position=estimate.position if estimate else None,
        eta_seconds=estimate.eta_seconds if estimate else None,
        expired_at=task.expired_at, cancelled=service.is_cancelled(task), deleted=service.is_deleted(task),
    )


@router.get("/{task_id}/status/", response_model=TaskStatusOut, responses=ERRORS)
def task_status(task: TaskDep, request: Request) -> TaskStatusOut:
    """Where the task is: status, progress and message; queue position and ETA while waiting; result_url once
    SUCCESS, error once FAILURE."""
    return status_body(task, request)


@router.get("/{task_id}/events/", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {}}, "description": "`status` events with the status JSON"}, **ERRORS})
async def task_events(task: TaskDep, request: Request) -> StreamingResponse:
    """Server-Sent Events: the status JSON now and at every change, ending with the finished state.

    Reconnect-safe: every connection starts with a full snapshot, so a client that lost events is current again.
    """
    render = lambda current: status_body(current, request).model_dump(mode="json")  # noqa: E731
    return StreamingResponse(live_status(task.id, request, render), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/{task_id}/result/", response_model=TaskResultOut, responses=ERRORS)
def task_result(task: TaskDep, request: Request, settings: SettingsDep) -> TaskResultOut:
    """The finished task's output: image URL, prompt used, timing and model metadata."""
    if task.status != TaskStatus.SUCCESS:
        raise ApiError(400, f"Task not completed. Status: {task.status}")
    if service.is_deleted(task):
        raise ApiError(410, f"Result deleted by its owner at {task.expired_at:%Y-%m-%dT%H:%M:%SZ}")
    if task.expired_at is not None:
        raise ApiError(410, f"Result expired: results are kept for {settings.result_ttl_s // 3600} hours after "
                            f"completion and this one was deleted at {task.expired_at:%Y-%m-%dT%H:%M:%SZ}")
    stored = task.result_data or {}
    image_url = _media_url(request, task.result_image, settings.public_media_url)
    result = TaskResultData(image_url=image_url, prompt_used=stored.get("prompt_used"),
                            processing_time=task.processing_time, metadata=stored.get("metadata", {}))
    return TaskResultOut(task_id=task.id, id=task.id, task_type=task.task_type, status=task.status,
                         prompt=task.prompt, image_url=image_url, result=result, result_data=result,
                         processing_time=task.processing_time, completed_at=task.completed_at)


@router.post("/{task_id}/cancel/", response_model=TaskCancelled, responses=ERRORS)
def cancel_task(task: TaskDep) -> TaskCancelled:
    """Cancel a pending or running task: it ends FAILURE with "Cancelled by user" and `cancelled: true`."""
    try:
        cancelled: AITask = service.cancel_task(task)
    except service.TaskAlreadyFinished as finished:
        raise ApiError(400, f"Task already completed. Status: {finished.args[0]}") from None
    return TaskCancelled(task_id=cancelled.id, status=cancelled.status, message=f"Task cancelled: {CANCELLED_MESSAGE}")


@router.delete("/{task_id}/", status_code=204, response_class=Response, responses=ERRORS)
def delete_task(task: TaskDep) -> Response:
    """Cancel the task if it is still running and delete its inputs and result. Its status keeps answering, with
    `deleted: true`; it leaves the listing."""
    service.delete_task(task)
    return Response(status_code=204)
