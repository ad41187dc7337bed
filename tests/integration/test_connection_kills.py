"""The connection-kill experiment as a test: every database connection of every consumer is terminated every
1.5–3 s while tasks run through the real stack; no task is lost and each has exactly one result file."""

import io
import random
import threading
import time

import pytest
import sqlalchemy as sa

from tasks.db import session_scope
from tests.helpers import assert_one_result_file_each, create_background_removal, result_files, task_row, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.postgres]  # pg_terminate_backend

TASKS = 40
# Consumers, beat and the housekeeping worker: every process started as `celery` (tasks/db.py application_name).
CONSUMER_CONNECTIONS = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name LIKE 'backendai:celery:%'")


def test_no_task_is_lost_while_consumer_connections_are_killed_again_and_again(http, settings, astronaut):
    small = io.BytesIO()
    astronaut.resize((128, 128)).save(small, format="PNG")
    outputs_before = result_files(settings)
    stop, killed = threading.Event(), []

    def kill_connections() -> None:
        while not stop.wait(random.uniform(1.5, 3.0)):
            with session_scope() as session:
                killed.append(sum(session.exec(sa.text(CONSUMER_CONNECTIONS)).scalars()))
                session.commit()

    killer = threading.Thread(target=kill_connections, daemon=True)
    killer.start()
    try:
        task_ids = []
        for _ in range(TASKS):
            task_ids.append(create_background_removal(http, small.getvalue(), "connection kills"))
            time.sleep(0.1)  # spread over the kills: claims, progress and SUCCESS writes all get hit
        statuses = [wait_for(http, task_id, {"SUCCESS", "FAILURE"}, timeout_s=300) for task_id in task_ids]
    finally:
        stop.set()
        killer.join(10)
    assert sum(killed) >= 5, f"too few connections were killed to mean anything: {killed}"
    assert [status["status"] for status in statuses] == ["SUCCESS"] * TASKS, \
        [(status["status"], status["error_message"]) for status in statuses if status["status"] != "SUCCESS"]
    rows = [task_row(task_id) for task_id in task_ids]
    assert_one_result_file_each(settings, outputs_before, rows)
