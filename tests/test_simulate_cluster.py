"""The simulation's pure parts (scripts/simulate_cluster.py), without starting a cluster: the node types it takes
from cluster.yaml, the autoscaler config it hands Ray, the Serve config it deploys, its verdict and its plot."""

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import validate_config
from ray.serve.schema import ServeDeploySchema

from scripts.simulate_cluster import CLUSTER_YAML, SERVE_CONFIG, SimulatedCluster, node_types, plot, summarize

ROOT = Path(__file__).resolve().parents[1]


def _sample(t: float, queued: int, done: int, generation: int, gpu_nodes: int) -> dict:
    return {"t": t, "queued": queued, "in_flight": 0, "done": done, "gpu_nodes": gpu_nodes,
            "queues": {"image_generation": queued}, "replicas": {"ImageGeneration": generation},
            "target_replicas": {"ImageGeneration": generation}}


def test_node_types_are_cluster_yamls_with_the_count_capped():
    head, workers = node_types(CLUSTER_YAML, max_workers=3)
    launcher = yaml.safe_load(CLUSTER_YAML.read_text())["available_node_types"]
    assert head["CPU"] == launcher["head"]["resources"]["CPU"]
    assert set(workers) == set(launcher) - {"head"}
    gpu = workers["gpu_worker"]
    assert gpu["resources"]["GPU"] == launcher["gpu_worker"]["resources"]["GPU"] >= 1
    assert (gpu["min_workers"], gpu["max_workers"]) == (0, 3)


def test_the_autoscaler_config_is_valid_and_points_the_fake_nodes_at_our_gcs(tmp_path):
    head, workers = node_types(CLUSTER_YAML, max_workers=2)
    cluster = SimulatedCluster(head, workers, tmp_path, idle_timeout_minutes=0.25)
    config = cluster._config
    validate_config(config)  # Ray's own schema check, as its autoscaler does on start
    assert config["provider"]["type"] == "fake_multinode"
    assert config["provider"]["gcs_address"] == cluster.gcs_address != "127.0.0.1:6379"
    assert config["idle_timeout_minutes"] == 0.25
    assert config["available_node_types"]["ray.head.default"]["max_workers"] == 0
    assert cluster.process is None  # nothing started


def test_the_simulated_serve_config_is_production_shaped():
    simulated = ServeDeploySchema.model_validate(yaml.safe_load(SERVE_CONFIG.read_text()))
    production = {app.name: app for app in ServeDeploySchema.model_validate(
        yaml.safe_load((ROOT / "config" / "serve.yaml").read_text())).applications}
    for application in simulated.applications:
        assert application.import_path == production[application.name].import_path
        for deployment in application.deployments:
            assert deployment.ray_actor_options.num_gpus > 0, deployment.name
            autoscaling = deployment.autoscaling_config
            assert autoscaling["min_replicas"] == autoscaling["initial_replicas"] == 0, deployment.name
    generation = next(app for app in simulated.applications if app.name == "image_generation").deployments[0]
    assert generation.ray_actor_options.num_gpus == 1 and generation.autoscaling_config["max_replicas"] >= 2


@pytest.mark.parametrize(("statuses", "peak", "last", "ok"), [
    ({"a": "SUCCESS", "b": "SUCCESS"}, 2, 0, True),
    ({"a": "SUCCESS", "b": "FAILURE"}, 2, 0, False),  # a task failed
    ({"a": "SUCCESS", "b": "SUCCESS"}, 1, 0, False),  # one GPU node is no multi-node proof
    ({"a": "SUCCESS", "b": "SUCCESS"}, 2, 1, False),  # a node left behind
    ({}, 2, 0, False),  # nothing ran
])
def test_the_verdict_needs_every_task_two_nodes_and_none_at_the_end(statuses, peak, last, ok):
    timeline = [_sample(0, 2, 0, 0, 0), _sample(5, 0, 1, 2, peak), _sample(9, 0, 2, 0, last)]
    summary = summarize(timeline, statuses, finished_at=9, duration_s=30)
    assert summary["ok"] is ok
    assert (summary["max_gpu_nodes"], summary["final_gpu_nodes"]) == (peak, last)
    assert summary["max_replicas"] == {"ImageGeneration": 2} and summary["first_replica_s"] == 5


def test_the_plot_is_a_png(tmp_path):
    timeline = [_sample(0, 2, 0, 0, 0), _sample(1, 1, 1, 1, 1), _sample(2, 0, 2, 0, 0)]
    path = tmp_path / "timeline.png"
    plot(summarize(timeline, {"a": "SUCCESS", "b": "SUCCESS"}, 2, 3), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
