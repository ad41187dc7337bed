"""GET /metrics: requests by route template and status, and the job system's state read from the ai_tasks rows and
Redis at scrape time."""

import uuid
from datetime import timedelta

import httpx
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from cli.stack import free_port
from tasks.db import session_scope
from tasks.models import CANCELLED_MESSAGE, AITask, TaskStatus, TaskType, utcnow

Samples = dict[tuple[str, frozenset], float]


def parse(text: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape(client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved_by(client, rows: list[AITask], task_type: str | None = None):
    """Scrape, add `rows`, scrape again, remove them; returns moved(name, **labels): how far a sample moved (with
    `task_type` as a default label) and the second scrape."""
    before = scrape(client)
    with session_scope() as session:
        session.add_all(rows)
        session.commit()
    try:
        after = scrape(client)
    finally:
        with session_scope() as session:
            session.execute(sa.delete(AITask).where(AITask.id.in_([row.id for row in rows])))
            session.commit()

    def moved(name: str, **labels: str) -> float:
        labels = {"task_type": task_type, **labels} if task_type else labels
        return value(after, name, **labels) - value(before, name, **labels)

    return moved, after


def test_requests_are_counted_by_route_template_and_status(api_client):
    status_route = "/api/v1/tasks/{task_id}/status/"
    before = scrape(api_client)
    assert api_client.get(f"/api/v1/tasks/{uuid.uuid4()}/status/").status_code == 404
    assert api_client.get(f"/no/such/path/{uuid.uuid4()}").status_code == 404
    after = scrape(api_client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("backendai_http_requests_total", method="GET", route=status_route, status="404") == 1
    assert moved("backendai_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert moved("backendai_http_request_duration_seconds_count", method="GET", route=status_route) == 1
    assert not any("no/such/path" in str(labels) for _, labels in after)


def test_tasks_and_their_durations_are_read_from_the_rows(api_client, redis_client):
    now = utcnow()
    rows = [AITask(task_type=TaskType.BACKGROUND_REMOVAL, prompt="metrics", status=TaskStatus.SUCCESS,
                   started_at=now, completed_at=now + timedelta(seconds=seconds), processing_time=seconds)
            for seconds in (0.3, 3.0, 700.0)]
    rows.append(AITask(task_type=TaskType.BACKGROUND_REMOVAL, prompt="metrics", status=TaskStatus.FAILURE,
                       completed_at=now))
    moved, after = moved_by(api_client, rows, "background_removal")

    assert moved("backendai_tasks", status="SUCCESS") == 3 and moved("backendai_tasks", status="FAILURE") == 1
    assert moved("backendai_tasks", status="PENDING") == 0
    every_pair = {("backendai_tasks", frozenset({"task_type": task_type, "status": status}.items()))
                  for task_type in TaskType for status in TaskStatus}
    assert every_pair <= set(after)  # zeros included: a series exists before its first task
    histogram = "backendai_task_processing_seconds"
    assert {bound: moved(f"{histogram}_bucket", le=bound) for bound in ("0.25", "0.5", "2.5", "5.0", "600.0", "+Inf")} \
        == {"0.25": 0, "0.5": 1, "2.5": 1, "5.0": 2, "600.0": 2, "+Inf": 3}
    assert moved(f"{histogram}_count") == 3 and abs(moved(f"{histogram}_sum") - 703.3) < 1e-6
    for queue in ("background_removal", "style_transfer"):
        assert value(after, "backendai_queue_depth", queue=queue) == redis_client.llen(queue)
    assert value(after, "backendai_metrics_source_up", source="database") == 1
    assert value(after, "backendai_metrics_source_up", source="redis") == 1


def test_a_scrape_with_redis_down_still_answers_and_says_which_source_is_down(uvicorn_api):
    url = uvicorn_api(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    response = httpx.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200
    samples = parse(response.text)
    assert value(samples, "backendai_metrics_source_up", source="redis") == 0
    assert value(samples, "backendai_metrics_source_up", source="database") == 1
    assert ("backendai_tasks", frozenset({"task_type": "image_generation", "status": "SUCCESS"}.items())) in samples
    assert not [name for name, _ in samples if name == "backendai_queue_depth"]


def test_cancels_have_their_own_series(api_client):
    rows = [AITask(task_type=TaskType.FACE_SWAP, prompt="metrics", status=TaskStatus.FAILURE, error_message=error,
                   completed_at=utcnow()) for error in (CANCELLED_MESSAGE, CANCELLED_MESSAGE, "RuntimeError: oom")]
    moved, after = moved_by(api_client, rows)

    assert moved("backendai_tasks_cancelled", task_type="face_swap") == 2
    assert moved("backendai_tasks", task_type="face_swap", status="FAILURE") == 3  # v1: a cancel is a FAILURE row
    assert {("backendai_tasks_cancelled", frozenset({"task_type": task_type}.items())) for task_type in TaskType} \
        <= set(after)


def test_finished_tasks_count_within_the_window_and_unfinished_ones_always(api_client, settings):
    """A scrape reads the backlog and the last METRICS_WINDOW_S of finished tasks, not every task ever run."""
    long_ago = utcnow() - timedelta(seconds=settings.metrics_window_s + 60)
    rows = [AITask(task_type=TaskType.STYLE_TRANSFER, prompt="metrics", status=TaskStatus.SUCCESS,
                   completed_at=long_ago, processing_time=1.0),
            AITask(task_type=TaskType.STYLE_TRANSFER, prompt="metrics", status=TaskStatus.FAILURE,
                   completed_at=long_ago, error_message=CANCELLED_MESSAGE),
            AITask(task_type=TaskType.STYLE_TRANSFER, prompt="metrics", status=TaskStatus.RETRY, created_at=long_ago)]
    moved, _ = moved_by(api_client, rows, "style_transfer")

    assert moved("backendai_tasks", status="RETRY") == 1
    assert moved("backendai_tasks", status="SUCCESS") == moved("backendai_tasks", status="FAILURE") == 0
    assert moved("backendai_tasks_cancelled") == 0 and moved("backendai_task_processing_seconds_count") == 0
