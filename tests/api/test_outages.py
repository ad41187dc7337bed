"""With Redis or Postgres down the API refuses clearly (503 + Retry-After), with storage full it says so (507 +
Retry-After), and it keeps nothing half-made."""

import time

import httpx
import sqlalchemy as sa

from cli.stack import free_port
from tests.helpers import full_disk, png_bytes


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


def test_create_with_storage_full_is_507_keeps_nothing_and_succeeds_once_there_is_room(
        uvicorn_api, tmp_path, redis_client, astronaut, astronaut_png):
    """A face swap stores two uploads: with room for the first only, the first is deleted again."""
    face = png_bytes(astronaut.resize((64, 64)))  # ~9 KB, and the target ~420 KB
    request = {"data": {"task_type": "face_swap", "prompt": "swap"},
               "files": {"image": ("face.png", face), "target_image": ("target.png", astronaut_png)}}
    with full_disk(tmp_path / "media") as disk:  # where the API below stores (DATA_DIR/media)
        url = uvicorn_api()
        rows_before, queued_before = _row_count(), redis_client.llen("face_swap")
        for room in (0, 64 * 1024):  # nothing fits; the face fits, the target does not
            disk.make_room(room)
            refused = httpx.post(f"{url}/api/v1/tasks/create/", timeout=30, **request)
            assert refused.status_code == 507, refused.text
            assert refused.json() == {"error": "Storage for uploads is full; nothing was stored. Retry later."}
            assert refused.headers["Retry-After"].isdigit()
            assert str(tmp_path) not in refused.text
            assert disk.files() == []
            assert (_row_count(), redis_client.llen("face_swap")) == (rows_before, queued_before)

        disk.make_room()
        created = httpx.post(f"{url}/api/v1/tasks/create/", timeout=30, **request)
        assert created.status_code == 201, created.text
        assert len(disk.files()) == 2
        assert (_row_count(), redis_client.llen("face_swap")) == (rows_before + 1, queued_before + 1)
        task_id = created.json()["task_id"]
        assert httpx.post(f"{url}/api/v1/tasks/{task_id}/cancel/", timeout=30).status_code == 200


def test_the_create_route_documents_507(api_client):
    responses = api_client.get("/openapi.json").json()["paths"]["/api/v1/tasks/create/"]["post"]["responses"]
    assert responses["507"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
