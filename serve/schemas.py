"""Response bodies: the seed's JSON (API Flow examples and serializers), never the table class itself."""

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from tasks.models import TaskStatus


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
    queue_position: int | None = Field(default=None, description="While waiting: tasks ahead on its queue.")
    eta_seconds: float | None = Field(default=None, description="While waiting: estimated seconds until done.")
    expired_at: datetime | None = None


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
    queue: str
    requires_image: bool
    extra_images: list[str]
    required_extra_images: list[str]
    uploads: list[UploadOut] = Field(description="Every image field it takes (`image` first), with what it is for.")
    parameters_schema: dict[str, Any]


class ErrorOut(BaseModel):
    error: str
    details: Any = None
