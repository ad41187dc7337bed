"""A backlog becomes replicas and back (docs/scaling.md): the deployment scales on its queue's backlog
(tasks/autoscaling.py), and `up`'s consumers follow its replicas. Replica counts come from Serve's state (the
dashboard REST API)."""

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


def deployment_state(dashboard: str) -> tuple[int, int]:
    """Serve's target replicas and its running replicas."""
    applications = httpx.get(f"{dashboard}/api/serve/applications/", timeout=10).json()["applications"]
    details = applications[APP]["deployments"][DEPLOYMENT]
    return details["target_num_replicas"], sum(replica["state"] == "RUNNING" for replica in details["replicas"])


def test_replicas_rise_past_what_the_consumer_slots_could_feed_and_the_slots_follow(http, stack, settings,
                                                                                    astronaut, monkeypatch):
    """One consumer slot, and no room for another (a memory ceiling of 0): its requests in flight alone could ask for
    at most 1 x 1 / target_ongoing_requests = 1 replica. The backlog policy counts the queue, so the deployment runs
    its maximum all the same. With the ceiling lifted, `up` adds consumers to feed those replicas and the backlog
    drains (docs/scaling.md)."""
    limits = autoscaling(settings)
    old_bound = 1 * 1 / limits["target_ongoing_requests"]
    assert limits["max_replicas"] > old_bound
    dashboard = settings.ray_dashboard_url
    consumer = f"consumer-{APP}"
    ceiling = settings.consumer_memory_ceiling_mb
    monkeypatch.setattr(settings, "consumer_memory_ceiling_mb", 0)
    _replace_consumers(stack, consumer, slots=1)
    image = io.BytesIO()
    astronaut.resize((64, 64)).save(image, format="PNG")
    seen: list[tuple[float, int, int, int]] = []  # (s since the first create, target, running, consumer slots)
    sampling = threading.Event()
    start = time.monotonic()

    def sample() -> None:
        while not sampling.wait(0.5):
            seen.append((round(time.monotonic() - start, 1), *deployment_state(dashboard), stack.consumer_slots(APP)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        task_ids = [http.post("/api/v1/tasks/create/", data={"prompt": "backlog", "task_type": APP},
                              files={"image": ("in.png", image.getvalue())}).json()["task_id"] for _ in range(200)]
        deadline = time.monotonic() + 180
        while not any(running == limits["max_replicas"] for _, _, running, _ in seen):
            assert time.monotonic() < deadline, f"not at {limits['max_replicas']} replicas: {seen[-5:]}"
            time.sleep(0.5)
        one_slot = list(seen)  # every sample so far: no room for a second consumer
        monkeypatch.setattr(settings, "consumer_memory_ceiling_mb", ceiling)
        statuses = [wait_for(http, task_id, {"SUCCESS", "FAILURE"}, timeout_s=300)["status"]
                    for task_id in task_ids]
    finally:
        sampling.set()
        sampler.join(5)
        monkeypatch.setattr(settings, "consumer_memory_ceiling_mb", ceiling)
        _replace_consumers(stack, consumer, slots=settings.consumer_concurrency)
    print("samples (s, target, running, slots):", seen)
    assert statuses == ["SUCCESS"] * len(task_ids)
    # One slot the whole time, yet Serve wanted and ran the maximum: past the old bound of 1.
    assert all(slots == 1 for *_, slots in one_slot), one_slot
    assert max(running for _, _, running, _ in one_slot) == limits["max_replicas"] > old_bound, seen
    # Once room was made, consumers were added to feed those replicas.
    assert max(slots for *_, slots in seen) > 1, seen


def _replace_consumers(stack, consumer: str, slots: int) -> None:
    """Stop every consumer of the queue (the stack's own and any it added) and start one with `slots`."""
    for name in [name for name in list(stack.processes) if name == consumer or name.startswith(f"{consumer}+")]:
        process = stack.forget(name)
        process.terminate()
        process.wait(60)
    stack.start_worker(APP, slots, name=consumer)
