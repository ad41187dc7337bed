"""The reaper brings back tasks whose queue message was lost, once each, and leaves every other task alone."""

import subprocess
import sys
import threading
import time
import uuid

import pytest

from tasks import state_writes
from tasks.celery_app import celery_app
from tasks.reaper import reap
from tests.helpers import create_background_removal, task_row, wait_for

pytestmark = pytest.mark.integration

QUEUE = "background_removal"


def _create(http, png: bytes) -> str:
    return create_background_removal(http, png, "lost")


def _lose_message(redis_client, task_id: str) -> None:
    """Remove the task's message from its queue, as a crash before the publish or a Redis data loss would."""
    celery_id = task_row(task_id).celery_task_id.encode()
    lost = [raw for raw in redis_client.lrange(QUEUE, 0, -1) if celery_id in raw]
    assert len(lost) == 1
    redis_client.lrem(QUEUE, 1, lost[0])


@pytest.fixture
def paused_consumer(stack):
    consumer = f"consumer-{QUEUE}@"
    deadline = time.monotonic() + 60
    while not any(name.startswith(consumer) for reply in celery_app.control.cancel_consumer(
            QUEUE, reply=True, timeout=2) for name in reply):
        assert time.monotonic() < deadline, "the consumer never answered"
    yield
    assert celery_app.control.add_consumer(QUEUE, reply=True, timeout=5)


def test_lost_pending_and_processing_tasks_come_back_once_and_queued_ones_are_left_alone(
        http, redis_client, paused_consumer, astronaut_png, settings):
    pending, processing, queued = (_create(http, astronaut_png) for _ in range(3))
    _lose_message(redis_client, pending)
    _lose_message(redis_client, processing)
    claimed = state_writes.claim(uuid.UUID(processing), task_row(processing).celery_task_id, worker="gone:1")
    assert claimed is not None  # a consumer took it, then vanished with its message

    reports = []
    reapers = [threading.Thread(target=lambda: reports.append(reap(grace_s=0))) for _ in range(2)]
    for reaper in reapers:
        reaper.start()
    for reaper in reapers:
        reaper.join(30)
    republished = [task_id for report in reports for task_id in report.republished]
    assert sorted(map(str, republished)) == sorted([pending, processing])  # each once, across both reapers
    assert task_row(processing).status == "RETRY" and task_row(processing).retry_count == 1
    assert redis_client.llen(QUEUE) == 3

    # On demand too: nothing is lost now, so the command re-publishes nothing.
    command = subprocess.run([sys.executable, "-m", "cli.main", "reap", "--grace", "0"], capture_output=True,
                             text=True, timeout=60)
    assert command.returncode == 0 and command.stdout.startswith("re-published 0 lost tasks"), command

    celery_app.control.add_consumer(QUEUE, reply=True, timeout=5)
    for task_id in (pending, processing, queued):
        assert wait_for(http, task_id, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
