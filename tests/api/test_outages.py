"""With its queue down the API refuses to create work (503 + Retry-After) and keeps nothing half-made."""

import os
import subprocess
import sys
import time

import httpx
import pytest
import sqlalchemy as sa

from serve.stack import free_port


@pytest.fixture
def api_without_redis(database, tmp_path):
    """The real API under plain uvicorn, on the real database, with REDIS_URL pointing at a closed port."""
    port = free_port()
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "DATA_DIR": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "serve.app:app", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/openapi.json", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.2)
    yield url, tmp_path
    process.terminate()
    process.wait(10)


def test_create_with_the_queue_down_is_503_and_leaves_no_task(api_without_redis, astronaut_png):
    from tasks.db import get_engine

    url, data_dir = api_without_redis
    with get_engine().connect() as connection:
        rows_before = connection.execute(sa.text("SELECT count(*) FROM ai_tasks")).scalar_one()
    started = time.monotonic()
    response = httpx.post(f"{url}/api/v1/tasks/create/", timeout=30,
                          data={"task_type": "background_removal", "prompt": "cut out"},
                          files={"image": ("astronaut.png", astronaut_png)})
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"].isdigit()
    assert "task queue is unavailable" in response.json()["error"]
    assert time.monotonic() - started < 10
    with get_engine().connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM ai_tasks")).scalar_one() == rows_before
    assert not [path for path in (data_dir / "media").rglob("*") if path.is_file()]
    health = httpx.get(f"{url}/api/v1/health/")
    assert health.status_code == 503 and "Retry-After" in health.headers
