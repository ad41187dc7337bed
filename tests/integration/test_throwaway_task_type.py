"""A task type that exists only in tests/: its deployment (tests/throwaway_deployment.py) is deployed with Serve's
Python API onto the test stack's cluster, and its registry entry (tests/throwaway_task_type.py) is loaded by an API
and a consumer started with BACKENDAI_EXTRA_TASK_TYPES. A task then goes API → its queue → the deployment's handle
→ result with its own upload field and parameters, and no file outside tests/ names the type."""

import io
import json
import runpy
from pathlib import Path
from unittest import mock

import httpx
import pytest
from PIL import Image

from tests import throwaway_deployment
from tests.helpers import png_bytes, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# What every process that serves the type is started with: the module that registers it, importable.
SERVING_IT = {"BACKENDAI_EXTRA_TASK_TYPES": "tests.throwaway_task_type", "PYTHONPATH": str(ROOT)}
# The entry as those processes register it, read here without registering it in this one (the stack's own API
# and consumers, started from this process, must not know the type).
with mock.patch("tasks.registry.register", side_effect=lambda spec: spec):
    SPEC = runpy.run_module("tests.throwaway_task_type")["SPEC"]
(OVERLAY_IMAGE,) = SPEC.extra_images


@pytest.fixture
def application(stack):
    """The deployment on the stack's cluster, under the application and deployment names of the entry's stage.
    The replicas get its class by value: the tests package is not installed where they run."""
    from ray import cloudpickle, serve

    from tasks import ray_client

    (stage,) = SPEC.stages
    ray_client.connect()
    cloudpickle.register_pickle_by_value(throwaway_deployment)
    serve.run(throwaway_deployment.ThrowawayOverlay.options(name=stage.deployment_name).bind(),
              name=stage.app_name, route_prefix=None)
    yield
    serve.delete(stage.app_name)
    ray_client.disconnect()


@pytest.fixture
def consumer(stack):
    process = stack.start_worker(SPEC.queue, 2, **SERVING_IT)
    yield process
    stack.forget(f"consumer-{SPEC.queue}")
    process.terminate()
    process.wait(60)


def test_a_task_type_defined_only_in_the_tests_runs_from_api_to_result(stack, application, consumer, uvicorn_api,
                                                                      settings, astronaut_png):
    api = uvicorn_api(STORAGE_URL=settings.effective_storage_url, **SERVING_IT)
    red = png_bytes(Image.new("RGB", (64, 64), (255, 0, 0)))
    form = {"task_type": SPEC.task_type, "prompt": "lay it over", "parameters": json.dumps({"opacity": 1})}
    with httpx.Client(base_url=api, timeout=30) as http:
        described = {entry["task_type"]: entry for entry in http.get("/api/v1/task-types/").json()}[SPEC.task_type]
        assert [upload["name"] for upload in described["uploads"]] == ["image", OVERLAY_IMAGE]
        assert described["queue"] == SPEC.queue and "opacity" in described["parameters_schema"]["properties"]

        missing = http.post("/api/v1/tasks/create/", data=form, files={"image": ("a.png", astronaut_png)})
        assert (missing.status_code, missing.json()["error"]) == (400, f"{SPEC.task_type} needs {OVERLAY_IMAGE}")
        too_much = {**form, "parameters": json.dumps({"opacity": 2})}
        assert http.post("/api/v1/tasks/create/", data=too_much, files={
            "image": ("a.png", astronaut_png), OVERLAY_IMAGE: ("o.png", red)}).status_code == 400

        created = http.post("/api/v1/tasks/create/", data=form, files={
            "image": ("a.png", astronaut_png), OVERLAY_IMAGE: ("o.png", red)})
        assert created.status_code == 201, created.text
        task_id = created.json()["task_id"]
        final = wait_for(http, task_id, {"SUCCESS", "FAILURE"}, timeout_s=120)
        assert final["status"] == "SUCCESS", final
        result = http.get(f"/api/v1/tasks/{task_id}/result/").json()["result"]
        assert result["metadata"] == {"model": "pillow-blend", "model_version": "pillow-blend",
                                      "overlay_upload": OVERLAY_IMAGE, "opacity": 1.0, "size": [512, 512]}
        laid = Image.open(io.BytesIO(http.get(result["image_url"]).content))
        assert laid.getcolors() == [(512 * 512, (255, 0, 0, 255))]  # the overlay alone, at the image's size

    # The stack's own API was started without the variable: to it the type does not exist.
    unknown = httpx.post(f"{stack.api_url}/api/v1/tasks/create/", data=form, timeout=30)
    assert unknown.status_code == 400 and unknown.json()["error"] == f"Unknown task_type {SPEC.task_type!r}"
