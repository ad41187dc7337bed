"""Named dependencies, so a route's signature reads like its contract."""

import uuid
from typing import Annotated

from fastapi import Depends

from serve.errors import ApiError
from tasks.config import Settings, get_settings
from tasks.models import AITask
from tasks.service import get_task

SettingsDep = Annotated[Settings, Depends(get_settings)]


def _task_from_path(task_id: str) -> AITask:
    try:
        parsed = uuid.UUID(task_id)
    except ValueError:
        raise ApiError(404, f"Task not found: {task_id!r} is not a valid task id") from None
    task = get_task(parsed)
    if task is None:
        raise ApiError(404, "Task not found")
    return task


TaskDep = Annotated[AITask, Depends(_task_from_path)]
