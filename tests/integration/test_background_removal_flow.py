"""The whole real chain: HTTP → API → Postgres row → Celery on Redis → worker → Serve deployment by
handle → rembg → stored result → status/result endpoints → media URL."""

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from deployments.catalogue import BACKGROUND_MODELS, MEDIAPIPE_SELFIE
from tests.helpers import BACKGROUND_BOXES, PERSON_BOXES, alpha_of, published_events, wait_for

pytestmark = pytest.mark.integration

CREATE = "/api/v1/tasks/create/"


def test_seed_frontend_flow_removes_the_background(http, redis_client, astronaut_png):
    """create → poll status → result, exactly as the seed's frontend example does it (no parameters field)."""
    pubsub = redis_client.pubsub()
    pubsub.psubscribe("backendai:task:*")
    created = http.post(CREATE, data={"prompt": "remove the background", "task_type": "background_removal"},
                        files={"image": ("astronaut.png", astronaut_png, "image/png")})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "PENDING" and body["message"] == "Task queued successfully"
    task_id = body["task_id"]

    status = wait_for(http, task_id, {"SUCCESS", "FAILURE"})
    assert status["status"] == "SUCCESS", status
    assert status["progress"] == 100 and status["error_message"] is None
    assert status["result_url"].endswith(f"/api/v1/tasks/{task_id}/result/")
    assert status["started_at"] <= status["completed_at"] and status["processing_time"] > 0

    progress = [event["progress"] for event in published_events(pubsub, task_id) if "progress" in event]
    assert progress == sorted(progress) and progress[-1] == 100
    assert any(0 < value < 100 for value in progress), progress

    result = http.get(f"/api/v1/tasks/{task_id}/result/").json()
    assert result["status"] == "SUCCESS" and result["prompt"] == "remove the background"
    assert result["result"]["metadata"]["model"] == "u2netp"
    image_url = result["result"]["image_url"]
    assert image_url.startswith("http://") and result["image_url"] == image_url
    image = http.get(image_url)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    alpha = alpha_of(image.content)
    for box in PERSON_BOXES:
        assert alpha[box].mean() > 200, box
    for box in BACKGROUND_BOXES:
        assert alpha[box].mean() < 20, box


def test_return_mask_gives_a_single_channel_mask(http, astronaut_png):
    created = http.post(CREATE, data={"prompt": "mask", "task_type": "background_removal",
                                      "parameters": json.dumps({"return_mask": True})},
                        files={"image": ("astronaut.png", astronaut_png)})
    task_id = created.json()["task_id"]
    assert wait_for(http, task_id, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
    mask = Image.open(io.BytesIO(http.get(http.get(f"/api/v1/tasks/{task_id}/result/").json()["image_url"]).content))
    values = np.asarray(mask)
    assert mask.mode == "L" and mask.size == (512, 512)
    assert values[PERSON_BOXES[0]].mean() > 200 and values[BACKGROUND_BOXES[0]].mean() < 20


def test_cancelled_pending_task_never_runs(http, redis_client, astronaut_png):
    """With the cpu worker paused the task stays PENDING; cancelled, it is never picked up afterwards."""
    from tasks.celery_app import celery_app

    assert celery_app.control.cancel_consumer("background_removal", reply=True, timeout=5)
    try:
        created = http.post(CREATE, data={"prompt": "never", "task_type": "background_removal"},
                            files={"image": ("astronaut.png", astronaut_png)})
        task_id = created.json()["task_id"]
        assert http.get(f"/api/v1/tasks/{task_id}/status/").json()["status"] == "PENDING"
        early = http.get(f"/api/v1/tasks/{task_id}/result/")
        assert early.status_code == 400 and early.json()["error"] == "Task not completed. Status: PENDING"

        cancelled = http.post(f"/api/v1/tasks/{task_id}/cancel/")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "FAILURE"
    finally:
        assert celery_app.control.add_consumer("background_removal", reply=True, timeout=5)

    # A task queued after it completes, so the cancelled one has been delivered and turned away by then.
    later = http.post(CREATE, data={"prompt": "after", "task_type": "background_removal"},
                      files={"image": ("astronaut.png", astronaut_png)}).json()["task_id"]
    assert wait_for(http, later, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
    deadline = time.monotonic() + 30
    while redis_client.llen("background_removal") and time.monotonic() < deadline:
        time.sleep(0.1)

    status = http.get(f"/api/v1/tasks/{task_id}/status/").json()
    assert status["status"] == "FAILURE" and status["error_message"] == "Cancelled by user"
    assert status["error"] == "Cancelled by user" and status["failed_at"] is not None
    assert status["started_at"] is None and status["progress"] == 0
    again = http.post(f"/api/v1/tasks/{task_id}/cancel/")
    assert again.status_code == 400 and "already completed" in again.json()["error"]


def test_openapi_docs_are_served(http):
    assert http.get("/docs").status_code == 200
    paths = http.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/tasks/create/", "/api/v1/tasks/{task_id}/status/", "/api/v1/tasks/{task_id}/result/",
                 "/api/v1/tasks/{task_id}/cancel/"):
        assert path in paths


def _removal(http, astronaut_png: bytes, **parameters) -> str:
    created = http.post(CREATE, data={"prompt": "cut out", "task_type": "background_removal",
                                      "parameters": json.dumps(parameters)},
                        files={"image": ("astronaut.png", astronaut_png)})
    assert created.status_code == 201, created.text
    return created.json()["task_id"]


def _installed_models(settings) -> list[str]:
    return [model for model in BACKGROUND_MODELS
            if model == MEDIAPIPE_SELFIE or (settings.models_dir / "rembg" / f"{model}.onnx").is_file()]


def test_each_installed_model_removes_the_background(http, settings, astronaut_png):
    models = _installed_models(settings)
    assert {"u2netp", MEDIAPIPE_SELFIE} <= set(models)
    task_ids = {model: _removal(http, astronaut_png, model=model) for model in models}
    for model, task_id in task_ids.items():
        assert wait_for(http, task_id, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS", model
        result = http.get(f"/api/v1/tasks/{task_id}/result/").json()
        assert result["result"]["metadata"]["model"] == model
        alpha = alpha_of(http.get(result["image_url"]).content)
        for box in PERSON_BOXES:
            assert alpha[box].mean() > 200, (model, box)
        for box in BACKGROUND_BOXES:
            assert alpha[box].mean() < 20, (model, box)


def test_a_model_that_is_not_installed_fails_at_once_naming_its_file(http, settings, astronaut_png):
    absent = next(model for model in BACKGROUND_MODELS if model not in _installed_models(settings))
    status = wait_for(http, _removal(http, astronaut_png, model=absent), {"SUCCESS", "FAILURE"})
    assert status["status"] == "FAILURE" and f"{absent}.onnx" in status["error"]
    assert status["retry_count"] == 0


def test_background_colour_replaces_the_transparency(http, astronaut_png):
    task_id = _removal(http, astronaut_png, bgcolor="#00ff00")
    assert wait_for(http, task_id, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
    output = np.asarray(Image.open(io.BytesIO(
        http.get(http.get(f"/api/v1/tasks/{task_id}/result/").json()["image_url"]).content)))
    assert (output[..., 3] == 255).all()
    for box in BACKGROUND_BOXES:
        assert np.abs(output[box][..., :3].astype(int) - (0, 255, 0)).mean() < 15, box


def test_unknown_model_or_colour_is_refused_before_queueing(http, astronaut_png):
    for parameters in ({"model": "u2net_x"}, {"bgcolor": "green"}):
        refused = http.post(CREATE, data={"prompt": "cut out", "task_type": "background_removal",
                                          "parameters": json.dumps(parameters)},
                            files={"image": ("astronaut.png", astronaut_png)})
        assert refused.status_code == 400 and refused.json()["error"] == "Invalid parameters for background_removal"
