"""queue_estimate on the real database: position among the tasks ahead, an ETA that shares the work ahead among the
running tasks and scales this task's own duration by its size.

The rows here are dated in 2001 (queued) and 2100 (finished), so that other tests' rows are neither ahead of them
nor among the most recent durations.
"""

import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from PIL import Image

from tasks.db import session_scope
from tasks.models import AITask, TaskStatus, TaskType
from tasks.service import queue_estimate
from tasks.state_writes import WAITING_MESSAGE
from tasks.storage import get_storage

QUEUED_AT = datetime(2001, 1, 1, tzinfo=UTC)
FINISHED_AT = datetime(2100, 1, 1, tzinfo=UTC)


@pytest.fixture
def rows(saved_rows):
    """Adds rows (kwargs per row) and removes them after the test. The estimate reads every task of a type (those
    running now, the recent durations), so the rows of earlier tests in this run are removed first."""
    with session_scope() as session:
        session.execute(sa.delete(AITask))
        session.commit()

    def add(**fields) -> AITask:
        return saved_rows(AITask(prompt="estimate", celery_task_id=str(uuid.uuid4()), **fields))[0]

    return add


def _generation(steps: int = 30, side: int = 512) -> dict:
    return {"width": side, "height": side, "num_inference_steps": steps}


def _finished(rows, task_type: TaskType, seconds: float, count: int = 3, **fields) -> None:
    for n in range(count):
        rows(task_type=task_type, status=TaskStatus.SUCCESS, processing_time=seconds,
             completed_at=FINISHED_AT + timedelta(seconds=n), **fields)


def _queued(rows, task_type: TaskType, minute: int, **fields) -> AITask:
    return rows(task_type=task_type, created_at=QUEUED_AT + timedelta(minutes=minute), **fields)


def test_no_history_gives_a_position_but_no_eta(rows):
    first = _queued(rows, TaskType.FACE_SWAP, 0)
    second = _queued(rows, TaskType.FACE_SWAP, 1)
    assert (queue_estimate(first).position, queue_estimate(second).position) == (0, 1)
    assert queue_estimate(second).eta_seconds is None


def test_eta_grows_with_the_tasks_ahead_and_with_the_job_size(rows):
    _finished(rows, TaskType.IMAGE_GENERATION, 10.0, parameters=_generation())
    queued = [_queued(rows, TaskType.IMAGE_GENERATION, minute, parameters=_generation()) for minute in range(3)]
    assert [(e.position, e.eta_seconds) for e in map(queue_estimate, queued)] == [(0, 10.0), (1, 20.0), (2, 30.0)]
    double_steps = _queued(rows, TaskType.IMAGE_GENERATION, -1, parameters=_generation(steps=60))
    assert queue_estimate(double_steps).eta_seconds == 20.0
    larger = _queued(rows, TaskType.IMAGE_GENERATION, -2, parameters=_generation(side=1024))
    assert queue_estimate(larger).eta_seconds == 40.0


def test_running_tasks_count_and_share_the_work_ahead(rows):
    _finished(rows, TaskType.IMAGE_GENERATION, 10.0, parameters=_generation())
    for _ in range(2):
        rows(task_type=TaskType.IMAGE_GENERATION, status=TaskStatus.PROCESSING, progress=50, message="Denoising",
             started_at=QUEUED_AT, parameters=_generation())
    alone = _queued(rows, TaskType.IMAGE_GENERATION, 0, parameters=_generation())
    estimate = queue_estimate(alone)
    assert (estimate.position, estimate.eta_seconds) == (0, (5 + 5) / 2 + 10)


def test_a_task_waiting_for_a_replica_shows_its_place_among_the_waiting(rows):
    _finished(rows, TaskType.IMAGE_GENERATION, 10.0, parameters=_generation())
    earlier, mine = (rows(task_type=TaskType.IMAGE_GENERATION, status=TaskStatus.PROCESSING, progress=5,
                          message=WAITING_MESSAGE, started_at=QUEUED_AT + timedelta(seconds=n),
                          parameters=_generation()) for n in range(2))
    estimate = queue_estimate(mine)
    assert (estimate.position, estimate.eta_seconds) == (1, 9.5 + 10)
    assert queue_estimate(earlier).position == 0


def _stored_png(side: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side)).save(buffer, format="PNG")
    return get_storage().put("input", buffer.getvalue())


def test_image_tasks_scale_with_their_pixels_and_the_upscale_factor(rows):
    _finished(rows, TaskType.IMAGE_ENHANCEMENT, 2.0, input_image=_stored_png(100), parameters={"scale": 2})
    small = _queued(rows, TaskType.IMAGE_ENHANCEMENT, 0, input_image=_stored_png(100), parameters={"scale": 2})
    assert queue_estimate(small).eta_seconds == 2.0
    large = _queued(rows, TaskType.IMAGE_ENHANCEMENT, -1, input_image=_stored_png(200), parameters={"scale": 4})
    assert queue_estimate(large).eta_seconds == 2.0 * 4 * 4  # queued before `small`: nothing ahead of it
    gone = _queued(rows, TaskType.IMAGE_ENHANCEMENT, -2, input_image="tasks/input/2001/01/01/deleted.png",
                   parameters={"scale": 4})
    assert queue_estimate(gone).eta_seconds == 2.0  # size unknown: the median duration
