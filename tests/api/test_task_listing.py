"""GET /api/v1/tasks/ (the caller's tasks, newest first, by cursor) and DELETE /api/v1/tasks/{id}/ (cancel, files
gone, a tombstone that still answers status), on the real app, database, Redis and storage; no worker."""

import io
import uuid

import pytest
from PIL import Image

from tasks import state_writes
from tasks.keys import create_key
from tasks.service import get_task
from tasks.storage import get_storage

CREATE = "/api/v1/tasks/create/"
TASKS = "/api/v1/tasks/"


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (90, 20, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _create(client, headers, task_type="background_removal") -> str:
    files = {"image": ("a.png", _png())} if task_type != "image_generation" else None
    response = client.post(CREATE, headers=headers, data={"task_type": task_type, "prompt": "list me"},
                           files=files)
    assert response.status_code == 201, response.text
    return response.json()["task_id"]


@pytest.fixture
def key_headers(database) -> dict[str, str]:
    """A fresh API key: its listing holds only this test's tasks."""
    key, _ = create_key(f"listing-{uuid.uuid4().hex[:6]}")
    return {"Authorization": f"Bearer {key}"}


def _finish(task_id: str) -> None:
    """What a consumer does, without one: claim, then succeed with a stored result."""
    task_uuid = uuid.UUID(task_id)
    assert state_writes.claim(task_uuid, f"test-{task_id}", worker="test:1")
    key = get_storage().put("output", _png())
    assert state_writes.succeed(task_uuid, key, {"prompt_used": "list me", "metadata": {}}, processing_time=0.5)


def test_the_listing_pages_newest_first_and_filters(api_client, key_headers):
    made = [_create(api_client, key_headers) for _ in range(5)]
    generated = _create(api_client, key_headers, "image_generation")
    _finish(made[0])

    first = api_client.get(TASKS, params={"limit": 4}, headers=key_headers)
    assert first.status_code == 200, first.text
    body = first.json()
    assert [task["task_id"] for task in body["tasks"]] == [generated, *made[:0:-1]][:4]
    second = api_client.get(TASKS, params={"limit": 4, "cursor": body["next_cursor"]}, headers=key_headers).json()
    assert [task["task_id"] for task in second["tasks"]] == [made[1], made[0]] and second["next_cursor"] is None

    succeeded = api_client.get(TASKS, params={"status": "SUCCESS"}, headers=key_headers).json()["tasks"]
    assert [task["task_id"] for task in succeeded] == [made[0]]
    assert succeeded[0]["result_url"].endswith(f"/api/v1/tasks/{made[0]}/result/")
    by_type = api_client.get(TASKS, params={"task_type": "image_generation"}, headers=key_headers).json()["tasks"]
    assert [(task["task_id"], task["status"], task["result_url"]) for task in by_type] == [(generated, "PENDING", None)]
    assert by_type[0]["status_url"].endswith(f"/api/v1/tasks/{generated}/status/")


def test_each_caller_sees_only_its_own_tasks(api_client, key_headers):
    mine = _create(api_client, key_headers)
    anonymous = _create(api_client, {})
    other_key, _ = create_key("someone else")
    listed = {name: {task["task_id"] for task in api_client.get(TASKS, params={"limit": 100}, headers=headers)
                     .json()["tasks"]}
              for name, headers in (("mine", key_headers), ("anonymous", {}),
                                    ("other", {"X-API-Key": other_key}))}
    assert listed["mine"] == {mine}
    assert anonymous in listed["anonymous"] and mine not in listed["anonymous"]
    assert listed["other"] == set()


@pytest.mark.parametrize(("params", "error"), [
    ({"cursor": "not-a-cursor"}, "Invalid cursor"),
    ({"cursor": "MjAyNC0wMS0wMXxub3QtYS11dWlk"}, "Invalid cursor"),  # a date, then not a uuid
    ({"status": "DONE"}, "Invalid input"),
    ({"task_type": "teleportation"}, "Unknown task_type 'teleportation'"),
    ({"limit": 0}, "Invalid input"),
    ({"limit": 101}, "Invalid input"),
])
def test_bad_listing_parameters_are_400(api_client, params, error):
    response = api_client.get(TASKS, params=params)
    assert response.status_code == 400 and response.json()["error"].startswith(error), response.text


def test_delete_of_a_finished_task_removes_its_files_and_leaves_a_tombstone(api_client, key_headers):
    task_id = _create(api_client, key_headers)
    _finish(task_id)
    task = get_task(uuid.UUID(task_id))
    media = api_client.get(TASKS + f"{task_id}/result/", headers=key_headers).json()["image_url"]
    assert api_client.delete(TASKS + f"{task_id}/", headers=key_headers).status_code == 204

    storage = get_storage()
    assert not storage.exists(task.input_image) and not storage.exists(task.result_image)
    status = api_client.get(TASKS + f"{task_id}/status/", headers=key_headers).json()
    assert (status["status"], status["deleted"], status["cancelled"], status["message"]) == \
        ("SUCCESS", True, False, "Deleted by user")
    assert status["expired_at"] is not None
    result = api_client.get(TASKS + f"{task_id}/result/", headers=key_headers)
    assert result.status_code == 410 and result.json()["error"].startswith("Result deleted by its owner")
    assert api_client.get(media.removeprefix("http://testserver")).status_code == 410
    listed = api_client.get(TASKS, params={"limit": 100}, headers=key_headers).json()["tasks"]
    assert task_id not in {task["task_id"] for task in listed}
    assert api_client.delete(TASKS + f"{task_id}/", headers=key_headers).status_code == 204  # again: harmless


def test_delete_of_a_running_task_cancels_it(api_client, key_headers):
    task_id = _create(api_client, key_headers)
    task_uuid = uuid.UUID(task_id)
    assert state_writes.claim(task_uuid, f"test-{task_id}", worker="test:1")
    assert api_client.delete(TASKS + f"{task_id}/", headers=key_headers).status_code == 204
    status = api_client.get(TASKS + f"{task_id}/status/", headers=key_headers).json()
    assert (status["status"], status["error_message"], status["cancelled"], status["deleted"]) == \
        ("FAILURE", "Cancelled by user", True, True)
    late = get_storage().put("output", _png())  # the consumer's result, arriving after the delete, is refused
    assert not state_writes.succeed(task_uuid, late, {"metadata": {}}, processing_time=1.0)
    assert not get_storage().exists(get_task(task_uuid).input_image)


def test_delete_is_only_for_the_owner(api_client, key_headers):
    task_id = _create(api_client, key_headers)
    assert api_client.delete(TASKS + f"{task_id}/").status_code == 404
    assert api_client.delete(TASKS + f"{uuid.uuid4()}/", headers=key_headers).status_code == 404
    assert api_client.get(TASKS + f"{task_id}/status/", headers=key_headers).json()["deleted"] is False


def test_a_cancel_reads_as_cancelled_not_as_a_failure(api_client, key_headers):
    task_id = _create(api_client, key_headers)
    cancel = api_client.post(TASKS + f"{task_id}/cancel/", headers=key_headers)
    assert cancel.json() == {"task_id": task_id, "status": "FAILURE", "message": "Task cancelled: Cancelled by user"}
    status = api_client.get(TASKS + f"{task_id}/status/", headers=key_headers).json()
    assert (status["status"], status["error_message"], status["error"], status["cancelled"]) == \
        ("FAILURE", "Cancelled by user", "Cancelled by user", True)
    listed = api_client.get(TASKS, params={"status": "FAILURE"}, headers=key_headers).json()["tasks"]
    assert [(task["task_id"], task["cancelled"]) for task in listed] == [(task_id, True)]
    failed = _create(api_client, key_headers)
    state_writes.fail(uuid.UUID(failed), "RuntimeError: out of memory")
    assert api_client.get(TASKS + f"{failed}/status/", headers=key_headers).json()["cancelled"] is False
