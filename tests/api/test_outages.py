"""With Redis or Postgres down the API refuses clearly (503 + Retry-After) and keeps nothing half-made."""

import time

import httpx
import sqlalchemy as sa

from serve.stack import free_port


def _row_count() -> int:
    from tasks.db import get_engine

    with get_engine().connect() as connection:
        return connection.execute(sa.text("SELECT count(*) FROM ai_tasks")).scalar_one()


def test_create_with_the_queue_down_is_503_and_leaves_no_task(uvicorn_api, tmp_path, astronaut_png):
    url = uvicorn_api(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    rows_before = _row_count()
    started = time.monotonic()
    response = httpx.post(f"{url}/api/v1/tasks/create/", timeout=30,
                          data={"task_type": "background_removal", "prompt": "cut out"},
                          files={"image": ("astronaut.png", astronaut_png)})
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"].isdigit()
    assert "task queue is unavailable" in response.json()["error"]
    assert time.monotonic() - started < 10
    assert _row_count() == rows_before
    assert not [path for path in (tmp_path / "media").rglob("*") if path.is_file()]
    health = httpx.get(f"{url}/api/v1/health/")
    assert health.status_code == 503 and "Retry-After" in health.headers


def test_with_the_database_down_every_endpoint_is_503_and_no_file_is_kept(uvicorn_api, tmp_path, astronaut_png):
    url = uvicorn_api(DATABASE_URL=f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nowhere")
    created = httpx.post(f"{url}/api/v1/tasks/create/", timeout=30,
                         data={"task_type": "background_removal", "prompt": "cut out"},
                         files={"image": ("astronaut.png", astronaut_png)})
    status = httpx.get(f"{url}/api/v1/tasks/5b0d6f0e-8a4f-4f5e-9a53-3f1a8e4f7a11/status/", timeout=30)
    for response in (created, status):
        assert response.status_code == 503, response.text
        assert response.json()["error"].startswith("The database is unavailable")
        assert response.headers["Retry-After"].isdigit()
    assert not [path for path in (tmp_path / "media").rglob("*") if path.is_file()]
