"""Response bodies: the v1 JSON shapes (fields are only ever added), never the table class itself."""

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from tasks.models import TaskStatus
from tasks.registry import PromptUse


class TaskCreated(BaseModel):
    task_id: uuid.UUID
    status: TaskStatus
    message: str
    created_at: datetime


class TaskStatusOut(BaseModel):
    task_id: uuid.UUID
    id: uuid.UUID
    task_type: str
    status: TaskStatus
    progress: int
    message: str | None
    retry_count: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    processing_time: float | None
    error_message: str | None
    error: str | None
    failed_at: datetime | None
    result_url: str | None
    queue_position: int | None = Field(default=None, description="While waiting (queued, or for a replica): tasks "
                                                                 "ahead of it.")
    eta_seconds: float | None = Field(default=None, description="While waiting: estimated seconds until done.")
    expired_at: datetime | None = Field(default=None, description="When its inputs and result were deleted.")
    cancelled: bool = Field(default=False, description="FAILURE because its owner cancelled it, not an error "
                                                       '(error_message stays "Cancelled by user").')
    deleted: bool = Field(default=False, description="Deleted by its owner: only this record remains.")


class TaskSummary(BaseModel):
    """One task in a listing: enough to show it and follow it."""

    task_id: uuid.UUID
    task_type: str
    status: TaskStatus
    progress: int
    message: str | None
    cancelled: bool
    error_message: str | None
    created_at: datetime
    completed_at: datetime | None
    processing_time: float | None
    status_url: str
    result_url: str | None


class TaskList(BaseModel):
    tasks: list[TaskSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null on the last.")


class TaskResultData(BaseModel):
    image_url: str | None
    prompt_used: str | None
    processing_time: float | None
    metadata: dict[str, Any]


class TaskResultOut(BaseModel):
    task_id: uuid.UUID
    id: uuid.UUID
    task_type: str
    status: TaskStatus
    prompt: str
    image_url: str | None
    result: TaskResultData
    result_data: TaskResultData
    processing_time: float | None
    completed_at: datetime | None


class TaskCancelled(BaseModel):
    task_id: uuid.UUID
    status: TaskStatus
    message: str


class UploadOut(BaseModel):
    name: str
    description: str
    required: bool


class TaskTypeOut(BaseModel):
    task_type: str
    prompt: PromptUse = Field(description="required: the prompt is the task's input; optional: it steers some "
                                          "deployments; unused: any text will do (the form field is required).")
    queue: str
    requires_image: bool
    extra_images: list[str]
    required_extra_images: list[str]
    uploads: list[UploadOut] = Field(description="Every image field it takes (`image` first), with what it is for.")
    parameters_schema: dict[str, Any]


class ErrorOut(BaseModel):
    error: str
    details: Any = None
