"""Create's options beyond the v1 form: contradictory input refused before anything is stored, and `Prefer: wait=N`
answering with the finished status (a stand-in consumer finishes the task through tasks.state_writes, as a real one
would, so the wait is woken by the task's pub/sub channel)."""

import io
import threading
import time
import uuid

import pytest
from PIL import Image

from tasks import state_writes
from tasks.storage import get_storage

CREATE = "/api/v1/tasks/create/"


def _png(size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 120, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("task_type", "parameters", "uploads", "error"), [
    ("style_transfer", '{"style": "style-3"}', ("image", "style_image"),
     "Contradictory input for style_transfer: give either parameters.style (a named style) or a style_image upload"),
    ("background_removal", '{"return_mask": true, "bgcolor": "#00ff00"}', ("image",),
     "Contradictory parameters for background_removal: return_mask returns the mask alone"),
    ("face_swap", '{"swap_all_faces": true, "target_face_index": 2}', ("image", "target_image"),
     "Contradictory parameters for face_swap: swap_all_faces replaces every face"),
    ("image_enhancement", '{"model": "classic", "tile_size": 128}', ("image",),
     "Contradictory parameters for image_enhancement: the classic model works on the whole image"),
], ids=["style-and-style-image", "mask-and-bgcolor", "all-faces-and-index", "classic-and-tiles"])
def test_contradictory_input_is_refused(api_client, task_type, parameters, uploads, error):
    response = api_client.post(CREATE, data={"task_type": task_type, "prompt": "x", "parameters": parameters},
                               files={name: (f"{name}.png", _png()) for name in uploads})
    assert response.status_code == 400 and response.json()["error"].startswith(error), response.text
    assert "parameters" in str(response.json()["details"])


def test_a_style_image_alone_or_a_style_alone_is_fine(api_client):
    for parameters, uploads in (('{"style": "style-3"}', ("image",)), ("{}", ("image", "style_image"))):
        response = api_client.post(CREATE, data={"task_type": "style_transfer", "prompt": "x",
                                                 "parameters": parameters},
                                   files={name: (f"{name}.png", _png()) for name in uploads})
        assert response.status_code == 201, response.text


def _finish_when_created(after_s: float, fail: str | None = None) -> threading.Thread:
    """Finish the next background removal created from now on, `after_s` after it appears."""
    from tasks.db import session_scope
    from tasks.models import AITask

    started = time.time()

    def consumer() -> None:
        import sqlalchemy as sa

        while True:
            with session_scope() as session:
                task = session.exec(sa.select(AITask).where(AITask.prompt == f"wait {started}")).scalar_one_or_none()
            if task is not None:
                break
            time.sleep(0.02)
        time.sleep(after_s)  # the stand-in job's own duration, which the Prefer wait is measured against
        assert state_writes.claim(task.id, f"wait-{task.id}", worker="test:1")
        if fail:
            state_writes.fail(task.id, fail)
        else:
            state_writes.succeed(task.id, get_storage().put("output", _png()), {"metadata": {}},
                                 processing_time=after_s)

    thread = threading.Thread(target=consumer, daemon=True)
    thread.start()
    thread.prompt = f"wait {started}"
    return thread


def _create_waiting(client, prompt: str, prefer: str):
    return client.post(CREATE, headers={"Prefer": prefer}, data={"task_type": "background_removal", "prompt": prompt},
                       files={"image": ("a.png", _png())})


def test_prefer_wait_answers_with_the_finished_status(api_client):
    consumer = _finish_when_created(0.5)
    started = time.monotonic()
    response = _create_waiting(api_client, consumer.prompt, "wait=20")
    elapsed = time.monotonic() - started
    consumer.join(5)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "SUCCESS" and body["result_url"].endswith(f"/api/v1/tasks/{body['task_id']}/result/")
    assert response.headers["Preference-Applied"] == "wait=20"
    assert 0.5 <= elapsed < 5  # woken by the channel, not at the end of the wait


def test_prefer_wait_returns_a_failure_too(api_client):
    consumer = _finish_when_created(0.1, fail="ValueError: no face found")
    response = _create_waiting(api_client, consumer.prompt, "respond-async, wait=10")
    consumer.join(5)
    assert (response.json()["status"], response.json()["error_message"]) == ("FAILURE", "ValueError: no face found")


def test_prefer_wait_that_runs_out_is_the_usual_201(api_client):
    started = time.monotonic()
    response = _create_waiting(api_client, f"never finished {uuid.uuid4()}", "wait=1")
    assert 1 <= time.monotonic() - started < 4
    assert response.status_code == 201 and "Preference-Applied" not in response.headers
    assert set(response.json()) == {"task_id", "status", "message", "created_at"}
    assert response.json()["status"] == "PENDING"


def test_prefer_wait_is_capped():
    from serve.routes import tasks as routes

    assert routes._prefer_wait_s("wait=100000") == routes.MAX_PREFER_WAIT_S
    assert routes._prefer_wait_s("handling=lenient") == 0 and routes._prefer_wait_s(None) == 0
