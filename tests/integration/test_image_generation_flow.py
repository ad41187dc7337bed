"""Image generation through the whole real chain (HTTP → Postgres → Celery gpu queue → prompt refinement and
generation deployments by handle → stored PNG), on the tiny random-weight Stable Diffusion: sizes, seeds,
streamed step progress, 400s, cancel inside the denoising loop, and batching of concurrent requests."""

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from tests.helpers import published_events, wait_for

pytestmark = pytest.mark.integration

CREATE = "/api/v1/tasks/create/"
SEED_PROMPT = "beautiful sunset over mountains"


def _create(http, prompt: str = SEED_PROMPT, **parameters) -> str:
    created = http.post(CREATE, data={"task_type": "image_generation", "prompt": prompt,
                                      "parameters": json.dumps(parameters)})
    assert created.status_code == 201, created.text
    return created.json()["task_id"]


def _result(http, task_id: str) -> tuple[dict, np.ndarray]:
    """The finished task's result JSON and its image's pixels."""
    status = wait_for(http, task_id, {"SUCCESS", "FAILURE"})
    assert status["status"] == "SUCCESS", status
    result = http.get(f"/api/v1/tasks/{task_id}/result/").json()
    image = http.get(result["result"]["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    return result, np.asarray(Image.open(io.BytesIO(image.content)), dtype=np.int16)


def test_generation_refines_the_prompt_then_streams_every_step(http, redis_client):
    pubsub = redis_client.pubsub()
    pubsub.psubscribe("backendai:task:*")
    task_id = _create(http, width=96, height=64, num_inference_steps=12, seed=42)
    result, pixels = _result(http, task_id)

    assert pixels.shape == (64, 96, 3) and pixels.std() > 5
    assert result["result"]["prompt_used"] == "beautiful sunset over mountains, highly detailed, 8k"
    metadata = result["result"]["metadata"]
    assert {key: metadata[key] for key in ("model", "random_weights", "seed", "steps", "guidance_scale", "scheduler",
                                           "size", "refined_prompt", "refiner", "negative_prompt")} == {
        "model": "tiny-sd-random-noise", "random_weights": True, "seed": 42, "steps": 12, "guidance_scale": 7.5,
        "scheduler": "pndm", "size": [96, 64], "refined_prompt": result["result"]["prompt_used"],
        "refiner": "template", "negative_prompt": "blurry, low quality, distorted, watermark"}

    events = [event for event in published_events(pubsub, task_id) if "progress" in event]
    progress = [event["progress"] for event in events]
    assert progress == sorted(progress) and progress[-1] == 100
    assert {10, 30} <= set(progress)  # refinement began at 10, generation at 30 (the seed's 10 → 30 → 90)
    steps = [event for event in events if event.get("message") == "Generating image"]
    assert len(steps) >= 11 and all(30 < event["progress"] < 90 for event in steps)
    assert len({event["progress"] for event in steps}) >= 10  # the bar moves with the steps


def test_the_same_seed_gives_the_same_pixels_and_another_seed_does_not(http):
    # One after another: each runs alone, as batch composition may move a pixel by one level (float sums).
    (first_result, first_pixels), (_, again_pixels), (_, other_pixels) = (
        _result(http, _create(http, width=64, height=64, num_inference_steps=4, seed=seed, refine_prompt=False))
        for seed in (7, 7, 8))
    assert np.array_equal(first_pixels, again_pixels)
    assert np.abs(first_pixels - other_pixels).mean() > 5
    assert first_result["result"]["prompt_used"] == SEED_PROMPT  # refine_prompt false: used as given
    assert first_result["result"]["metadata"]["refiner"] == "skipped"


def test_a_missing_seed_is_drawn_and_reported(http):
    result, _ = _result(http, _create(http, width=64, height=64, num_inference_steps=2))
    assert isinstance(result["result"]["metadata"]["seed"], int)


@pytest.mark.parametrize(("parameters", "field"), [
    ({"width": 100}, "width"),  # not a multiple of 8
    ({"height": 32}, "height"),
    ({"width": 2048}, "width"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"num_inference_steps": 500}, "num_inference_steps"),
    ({"guidance_scale": -1}, "guidance_scale"),
    ({"seed": -5}, "seed"),
    ({"scheduler": "magic"}, "scheduler"),
    ({"strength": 0.5}, "strength"),  # not a parameter of this type
])
def test_bad_parameters_are_refused_with_400(http, parameters, field):
    response = http.post(CREATE, data={"task_type": "image_generation", "prompt": SEED_PROMPT,
                                       "parameters": json.dumps(parameters)})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "Invalid parameters for image_generation"
    assert [detail["field"] for detail in body["details"]] == [f"parameters.{field}"]


def _wait_until_generating(http, task_id: str) -> None:
    deadline = time.monotonic() + 60
    while (status := http.get(f"/api/v1/tasks/{task_id}/status/").json())["message"] != "Generating image":
        assert time.monotonic() < deadline and status["status"] in ("PENDING", "PROCESSING"), status
        time.sleep(0.05)


def _replica_log(settings) -> str:
    """The generation replica's log, read through the Ray dashboard's log API (as an operator would)."""
    import httpx

    api = f"{settings.ray_dashboard_url}/api/v0"
    nodes = httpx.get(f"{api}/nodes", timeout=30).json()["data"]["result"]["result"]
    on_head = {"node_id": next(node["node_id"] for node in nodes if node["is_head_node"])}
    listing = httpx.get(f"{api}/logs", params={**on_head, "glob": "serve/replica_image_generation_ImageGeneration_*"},
                        timeout=30)
    files = [name for names in listing.json()["data"]["result"].values() for name in names]
    assert files, listing.text
    return "".join(httpx.get(f"{api}/logs/file", params={**on_head, "filename": name, "lines": 100_000},
                             timeout=30).text for name in files)


def test_cancel_stops_the_denoising_loop_and_the_next_task_runs(http, settings):
    """The seed's own request (512x512) with many steps would run for a minute; cancelled, it stops at once."""
    task_id = _create(http, width=512, height=512, num_inference_steps=150)
    _wait_until_generating(http, task_id)
    cancelled = http.post(f"/api/v1/tasks/{task_id}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "FAILURE"

    next_result, pixels = _result(http, _create(http, width=64, height=64, num_inference_steps=2, seed=1))
    assert pixels.shape == (64, 64, 3)
    status = http.get(f"/api/v1/tasks/{task_id}/status/").json()
    assert status["status"] == "FAILURE" and status["error_message"] == "Cancelled by user"

    stops = [line for line in _replica_log(settings).splitlines() if "every caller cancelled" in line]
    assert stops, "the replica never stopped a pipeline call"
    done, total = stops[-1].split("stopped at step ")[1].split(":")[0].split("/")
    assert total == "151" and int(done) < 50  # stopped early in the loop, not run to the end


def test_concurrent_compatible_requests_run_in_fewer_pipeline_calls(http):
    """One consumer holds many calls in flight, so concurrent tasks reach the deployment together and merge."""
    # A longer generation occupies the replica while the others arrive, so they wait together and merge.
    blocker = _create(http, width=128, height=128, num_inference_steps=150, seed=99, refine_prompt=False)
    _wait_until_generating(http, blocker)
    seeds = (1, 2, 3, 4)
    tasks = [_create(http, f"prompt {seed}", width=64, height=64, num_inference_steps=8, seed=seed) for seed in seeds]
    results = [_result(http, task) for task in tasks]
    _result(http, blocker)

    calls = [result["result"]["metadata"]["pipeline_call"] for result, _ in results]
    assert len(set(calls)) < len(tasks), calls
    assert max(result["result"]["metadata"]["batch_size"] for result, _ in results) > 1
    for seed, (result, pixels) in zip(seeds, results, strict=True):
        assert result["result"]["metadata"]["seed"] == seed and pixels.shape == (64, 64, 3)
        assert result["result"]["prompt_used"] == f"prompt {seed}, highly detailed, 8k"
    for index, (_, pixels) in enumerate(results):
        for _, other in results[index + 1:]:
            assert np.abs(pixels - other).mean() > 5  # each caller got its own image
