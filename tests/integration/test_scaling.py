"""A backlog becomes replicas and back (docs/scaling.md): the consumers hold many calls in flight, so the
deployment's own autoscaler sees the backlog. Replica counts come from Serve's state (the dashboard REST API)."""

import io
import threading
import time

import httpx
import pytest

from tests.helpers import wait_for

pytestmark = pytest.mark.integration

APP, DEPLOYMENT = "background_removal", "BackgroundRemoval"


def running_replicas(dashboard: str) -> int:
    applications = httpx.get(f"{dashboard}/api/serve/applications/", timeout=10).json()["applications"]
    replicas = applications[APP]["deployments"][DEPLOYMENT]["replicas"]
    return sum(replica["state"] == "RUNNING" for replica in replicas)


def autoscaling(settings) -> dict:
    import yaml

    config = yaml.safe_load(settings.serve_config.read_text())
    application = next(app for app in config["applications"] if app["name"] == APP)
    return application["deployments"][0]["autoscaling_config"]


def test_a_backlog_grows_the_deployment_to_its_maximum_and_idleness_shrinks_it_back(http, stack, settings,
                                                                                    astronaut):
    limits = autoscaling(settings)
    assert limits["max_replicas"] >= 3
    dashboard = settings.ray_dashboard_url
    image = io.BytesIO()
    astronaut.resize((64, 64)).save(image, format="PNG")
    seen: list[tuple[float, int]] = []
    sampling = threading.Event()

    def sample() -> None:
        start = time.monotonic()
        while not sampling.wait(0.5):
            seen.append((time.monotonic() - start, running_replicas(dashboard)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        task_ids = [http.post("/api/v1/tasks/create/", data={"prompt": "scale", "task_type": APP},
                              files={"image": ("in.png", image.getvalue())}).json()["task_id"] for _ in range(300)]
        statuses = [wait_for(http, task_id, {"SUCCESS", "FAILURE"}, timeout_s=300)["status"]
                    for task_id in task_ids]
        assert statuses == ["SUCCESS"] * len(task_ids)
        peak = max(count for _, count in seen)
        assert peak == limits["max_replicas"], seen
        deadline = time.monotonic() + limits["downscale_delay_s"] + 90
        while running_replicas(dashboard) > limits["min_replicas"]:
            assert time.monotonic() < deadline, f"still {running_replicas(dashboard)} replicas: {seen[-5:]}"
            time.sleep(1)
    finally:
        sampling.set()
        sampler.join(5)
