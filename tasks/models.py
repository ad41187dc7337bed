"""The AITask table (the v1 task model), its statuses, and API keys."""

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import JSON, Column, Field, SQLModel


class TaskType(StrEnum):
    """The built-in task types, for code that names one. Which types exist is the registry's to say
    (tasks/registry.py): the column is a plain string, so a new type needs no migration."""

    IMAGE_GENERATION = "image_generation"
    FACE_SWAP = "face_swap"
    BACKGROUND_REMOVAL = "background_removal"
    STYLE_TRANSFER = "style_transfer"
    IMAGE_ENHANCEMENT = "image_enhancement"


class TaskStatus(StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    RETRY = "RETRY"


FINISHED_STATUSES = frozenset({TaskStatus.SUCCESS, TaskStatus.FAILURE})
UNFINISHED_STATUSES = (TaskStatus.PENDING, TaskStatus.RETRY, TaskStatus.PROCESSING)
CANCELLED_MESSAGE = "Cancelled by user"


def utcnow() -> datetime:
    """Timezone-aware now: SQLAlchemy 2.1 with SQLModel rejects naive datetimes."""
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator):
    """Timestamp that always comes back timezone-aware (SQLite stores it without a zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _choice(enum: type[StrEnum], name: str) -> sa.Enum:
    # VARCHAR plus a CHECK constraint: a fixed set of choices, enforced by the database on Postgres and SQLite.
    return sa.Enum(enum, name=name, native_enum=False, create_constraint=True, length=50,
                   values_callable=lambda e: [m.value for m in e])


def _timestamp() -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))


class APIKey(SQLModel, table=True):
    """A client's key: only its SHA-256 is stored; the key itself is shown once, when created."""

    __tablename__ = "api_keys"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=100)
    key_hash: str = Field(max_length=64, unique=True, index=True)
    prefix: str = Field(max_length=12, description="First characters of the key, to recognise it in listings.")
    rate_limit_per_minute: int | None = Field(default=None, description="Overrides the default per-key limit.")
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    revoked_at: datetime | None = _timestamp()


# Rows whose files the expiry job has yet to delete: its index stays small however many tasks ever ran.
UNEXPIRED = sa.text("expired_at IS NULL")


class AITask(SQLModel, table=True):
    """One AI job: its input, progress, outcome and timing."""

    __tablename__ = "ai_tasks"
    # Each lookup a request or a periodic job makes has an index (migration 0007 says which for what).
    __table_args__ = (
        sa.Index("ix_ai_tasks_status_created_at", "status", "created_at"),
        sa.Index("ix_ai_tasks_celery_task_id", "celery_task_id"),
        sa.Index("ix_ai_tasks_result_image", "result_image"),
        sa.Index("ix_ai_tasks_type_status_created_at", "task_type", "status", "created_at"),
        sa.Index("ix_ai_tasks_type_status_completed_at", "task_type", "status", "completed_at"),
        sa.Index("ix_ai_tasks_owner_created_at", "api_key_id", "created_at", "id"),
        sa.Index("ix_ai_tasks_submitter_status", "submitter", "status"),
        sa.Index("ix_ai_tasks_unexpired_completed_at", "completed_at", postgresql_where=UNEXPIRED,
                 sqlite_where=UNEXPIRED),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    celery_task_id: str | None = Field(default=None, max_length=255, unique=True)
    api_key_id: uuid.UUID | None = Field(default=None, foreign_key="api_keys.id",
                                         description="Owner; None for tasks made without a key.")
    submitter: str | None = Field(default=None, max_length=100, description="key:<id>, or ip:<client address> "
                                  "without a key: whom the cap on queued tasks per key counts against.")
    idempotency_scope: str | None = Field(default=None, max_length=400, unique=True,
                                          description="Owner and Idempotency-Key header of the create request.")
    request_fingerprint: str | None = Field(default=None, max_length=64, description="SHA-256 of the request.")

    task_type: str = Field(sa_column=Column(sa.String(50), nullable=False))
    status: TaskStatus = Field(
        default=TaskStatus.PENDING,
        sa_column=Column(_choice(TaskStatus, "task_status"), nullable=False, default=TaskStatus.PENDING),
    )

    prompt: str = Field(sa_column=Column(sa.Text, nullable=False))
    input_image: str | None = Field(default=None, max_length=500, description="Storage key of the upload.")
    parameters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    extra_inputs: dict[str, str] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True), description="Storage keys of further uploads by field."
    )

    result_image: str | None = Field(default=None, max_length=500, description="Storage key of the result.")
    result_data: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))

    progress: int = Field(default=0, ge=0, le=100)
    message: str | None = Field(default=None, max_length=500, description="What the job is doing now.")

    error_message: str | None = Field(default=None, sa_column=Column(sa.Text, nullable=True))
    retry_count: int = 0
    max_retries: int = 3
    worker_losses: int = Field(default=0, description="Deliveries whose worker died mid-task.")
    worker: str | None = Field(default=None, max_length=255, description="hostname:pid of the process running it.")

    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    started_at: datetime | None = _timestamp()
    completed_at: datetime | None = _timestamp()
    processing_time: float | None = Field(default=None, description="Seconds from start to completion.")
    expired_at: datetime | None = _timestamp()  # inputs and result deleted by the expiry job

    webhook_url: str | None = Field(default=None, max_length=2000, description="POSTed the result when finished.")
    webhook_deliveries: list[dict[str, Any]] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True), description="One entry per delivery attempt."
    )

    def __str__(self) -> str:
        return f"{self.task_type} - {self.status} ({self.id})"
