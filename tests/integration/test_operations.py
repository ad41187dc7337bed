"""What an operator watches, on the real stack: Prometheus counters that move when a real task runs, `serve status`
reporting every application of the deployed config RUNNING, and Flower seeing the workers."""

import shutil
import subprocess
import time

import httpx
import pytest
import yaml

from cli.stack import free_port
from serve.metrics import TASK_DURATION_BUCKETS_S
from tests.api.test_metrics import parse, scrape, value
from tests.helpers import wait_for
from tests.serve_rollout import applied, edited, running_config, serve_deploy

pytestmark = pytest.mark.integration

CREATE = "/api/v1/tasks/create/"


def test_metrics_move_when_tasks_run(http, redis_client, astronaut_png):
    """Two tasks wait in the cpu queue (its consumer paused) while scraped, then run to SUCCESS. Two, because a
    worker's pending fetch may still take one after the pause."""
    from tasks.celery_app import celery_app

    before = scrape(http)
    # Retried: `up` returns once the API answers, and the workers may still be starting.
    _eventually(lambda: celery_app.control.cancel_consumer("background_removal", reply=True, timeout=2))
    try:
        created = [http.post(CREATE, data={"prompt": "remove the background", "task_type": "background_removal"},
                             files={"image": ("astronaut.png", astronaut_png, "image/png")}) for _ in range(2)]
        assert [response.status_code for response in created] == [201, 201]
        queued = scrape(http)
        waiting = redis_client.llen("background_removal")
    finally:
        assert celery_app.control.add_consumer("background_removal", reply=True, timeout=5)
    statuses = [wait_for(http, response.json()["task_id"], {"SUCCESS", "FAILURE"}) for response in created]
    assert [status["status"] for status in statuses] == ["SUCCESS", "SUCCESS"], statuses
    after = scrape(http)

    def moved(samples, name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    assert value(queued, "backendai_queue_depth", queue="background_removal") == waiting >= 1
    assert moved(queued, "backendai_tasks", task_type="background_removal", status="PENDING") >= 1

    create = {"method": "POST", "route": CREATE}
    assert moved(after, "backendai_http_requests_total", status="201", **create) == 2
    assert moved(after, "backendai_http_request_duration_seconds_count", **create) == 2
    removal = {"task_type": "background_removal"}
    assert moved(after, "backendai_tasks", status="SUCCESS", **removal) >= 2
    # Each bucket counted the tasks whose processing_time it holds.
    times = [status["processing_time"] for status in statuses]
    for bound in TASK_DURATION_BUCKETS_S:
        held = sum(seconds <= bound for seconds in times)
        assert moved(after, "backendai_task_processing_seconds_bucket", le=str(bound), **removal) >= held, bound
    assert moved(after, "backendai_task_processing_seconds_sum", **removal) >= sum(times) - 1e-6


def test_serve_status_reports_every_deployed_application_running(stack, settings):
    serve = shutil.which("serve")
    assert serve, "the `serve` CLI is not on PATH"
    result = subprocess.run([serve, "status", "--address", settings.ray_dashboard_url], env=stack.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    applications = yaml.safe_load(result.stdout)["applications"]
    config = yaml.safe_load(settings.serve_config.read_text())
    deployed = [application["name"] for application in config["applications"]]
    assert {name: applications[name]["status"] for name in deployed} == dict.fromkeys(deployed, "RUNNING")
    for name in deployed:
        assert {deployment["status"] for deployment in applications[name]["deployments"].values()} == {"HEALTHY"}


def _eventually(check, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s} s")


def test_flower_sees_the_workers(stack):
    url = stack.start_flower(free_port())

    def online_workers() -> set[str]:
        samples = parse(httpx.get(f"{url}/metrics", timeout=5).text)
        return {dict(labels)["worker"].split("@")[0] for (name, labels), online in samples.items()
                if name == "flower_worker_online" and online == 1}

    _eventually(lambda: httpx.get(f"{url}/healthcheck", timeout=5).text == "OK")
    # From the workers' heartbeat events.
    expected = {"consumer-background_removal", "consumer-image_generation", "housekeeping"}
    _eventually(lambda: expected <= online_workers())


def test_a_model_rolled_out_in_user_config_switches_in_place(stack, settings, http, astronaut_png, tmp_path):
    """`serve deploy` of the running config with only BackgroundRemoval's user_config changed: the same replica
    process (no restart) serves the next task with the new default model."""
    import psutil

    original = running_config(settings)
    switched = edited(original, "background_removal", "BackgroundRemoval", user_config={"model": "mediapipe-selfie"})

    def replica_pids() -> list[int]:
        """This stack's replica processes (descendants of its Ray head: other local clusters have their own)."""
        cluster = psutil.Process(stack.processes["ray-head"].pid).children(recursive=True)
        return [process.pid for process in cluster
                if "ServeReplica:background_removal:BackgroundRemoval" in " ".join(process.cmdline())]

    def rolled_out(config: dict) -> bool:
        return applied(settings, config, "background_removal", "BackgroundRemoval")

    def removal_model() -> str:
        created = http.post(CREATE, data={"prompt": "remove the background", "task_type": "background_removal"},
                            files={"image": ("astronaut.png", astronaut_png, "image/png")})
        assert created.status_code == 201, created.text
        task_id = created.json()["task_id"]
        assert wait_for(http, task_id, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
        return http.get(f"/api/v1/tasks/{task_id}/result/").json()["result"]["metadata"]["model"]

    replicas = set(replica_pids())
    assert replicas
    serve_deploy(stack, settings, switched, tmp_path)
    try:
        _eventually(lambda: rolled_out(switched))
        assert removal_model() == "mediapipe-selfie"
        # No replica was started for it (the deployment autoscales, so an idle one may have been retired meanwhile).
        assert set(replica_pids()) <= replicas and set(replica_pids())
    finally:
        serve_deploy(stack, settings, original, tmp_path)
        _eventually(lambda: rolled_out(original))
    assert set(replica_pids()) <= replicas and set(replica_pids())
