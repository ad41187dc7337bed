"""The simulation's pure parts (scripts/simulate_cluster.py), without starting a cluster: the node types it takes
from cluster.yaml, the autoscaler config it hands Ray, the Serve configs it deploys (ours, Ray's policy), which
nodes it kills, its figures, its verdict and its plot."""

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import validate_config
from ray.serve.schema import ServeDeploySchema

from scripts.simulate_cluster import (
    CLUSTER_YAML,
    RAY_POLICY,
    SERVE_CONFIG,
    SimulatedCluster,
    decision_latencies,
    deployment_queues,
    integral,
    node_types,
    percentile,
    phases,
    plot,
    replica_ready_times,
    select_nodes_to_kill,
    summarize,
    with_ray_policy,
)

ROOT = Path(__file__).resolve().parents[1]


def _sample(t: float, queued: int, done: int, generation: int, gpu_nodes: int, target: int | None = None,
            **extra) -> dict:
    return {"t": t, "queued": queued, "in_flight": 0, "done": done, "gpu_nodes": gpu_nodes, "gpus": gpu_nodes,
            "gpu_nodes_by_size": {"1-GPU": gpu_nodes} if gpu_nodes else {},
            "queues": {"image_generation": queued}, "replicas": {"ImageGeneration": generation},
            "target_replicas": {"ImageGeneration": generation if target is None else target}, **extra}


def _facts(rows: list[dict], killed: int = 2, max_replicas: int = 2) -> dict:
    return {"policy": "ours", "killed_nodes": [{"t": 5, "node_id": f"n{index}", "raylet_pid": 1, "replicas": []}
                                               for index in range(killed)],
            "kills_wanted": 2, "max_replicas_configured": {"ImageGeneration": max_replicas},
            "queue_of": {"ImageGeneration": "image_generation"}, "submitted": len(rows),
            "result_files": sorted(row["result_image"] for row in rows if row["result_image"])}


def _rows(*statuses: str) -> list[dict]:
    return [{"id": index, "status": status, "result_image": f"tasks/output/{index}.png" if status == "SUCCESS"
             else None, "retry_count": 0} for index, status in enumerate(statuses)]


def test_node_types_are_cluster_yamls_with_the_count_capped():
    head, workers = node_types(CLUSTER_YAML, max_workers=3)
    launcher = yaml.safe_load(CLUSTER_YAML.read_text())["available_node_types"]
    assert head["CPU"] == launcher["head"]["resources"]["CPU"]
    assert set(workers) == set(launcher) - {"head"}
    gpu = workers["gpu_worker"]
    assert gpu["resources"]["GPU"] == launcher["gpu_worker"]["resources"]["GPU"] >= 1
    assert (gpu["min_workers"], gpu["max_workers"]) == (0, 3)


def test_two_gpu_node_types_offer_at_least_ten_gpu_nodes():
    _, workers = node_types(CLUSTER_YAML, max_workers=8)
    gpu_types = {name: spec for name, spec in workers.items() if spec["resources"].get("GPU", 0) > 0}
    assert sorted(spec["resources"]["GPU"] for spec in gpu_types.values()) == [1, 4]
    assert sum(spec["max_workers"] for spec in gpu_types.values()) >= 10


def test_the_autoscaler_config_is_valid_and_points_the_fake_nodes_at_our_gcs(tmp_path):
    head, workers = node_types(CLUSTER_YAML, max_workers=2)
    cluster = SimulatedCluster(head, workers, tmp_path, idle_timeout_minutes=0.25)
    config = cluster._config
    validate_config(config)  # Ray's own schema check, as its autoscaler does on start
    assert config["provider"]["type"] == "fake_multinode"
    assert config["provider"]["gcs_address"] == cluster.gcs_address != "127.0.0.1:6379"
    assert config["idle_timeout_minutes"] == 0.25
    assert config["available_node_types"]["ray.head.default"]["max_workers"] == 0
    assert config["max_workers"] == sum(spec["max_workers"] for spec in workers.values())  # every type can fill up
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
    queues = deployment_queues()
    assert {queues[deployment.name] for application in simulated.applications
            for deployment in application.deployments} >= {"image_generation", "style_transfer", "background_removal"}


def _policies(config: dict) -> dict[str, dict]:
    return {deployment["name"]: deployment["autoscaling_config"]["policy"]
            for application in config["applications"] for deployment in application["deployments"]}


def test_every_simulated_deployment_scales_on_the_backlog_of_its_own_queue():
    queues = deployment_queues()
    for name, policy in _policies(yaml.safe_load(SERVE_CONFIG.read_text())).items():
        assert policy == {"policy_function": "tasks.autoscaling:BacklogPolicy",
                          "policy_kwargs": {"queue": queues[name]}}


def test_rays_policy_replaces_only_the_policy_and_watches_each_deployments_queue():
    ours = yaml.safe_load(SERVE_CONFIG.read_text())
    theirs = with_ray_policy(ours, "redis://127.0.0.1:1234/0", deployment_queues())
    ServeDeploySchema.model_validate(yaml.safe_load(yaml.safe_dump(theirs)))  # as the run writes and deploys it
    assert {name: policy["policy_kwargs"] for name, policy in _policies(theirs).items()} == {
        name: {"broker_url": "redis://127.0.0.1:1234/0", "queue_name": deployment_queues()[name]}
        for name in _policies(ours)}
    assert {policy["policy_function"] for policy in _policies(theirs).values()} == {RAY_POLICY}
    for config in (ours, theirs):  # the rest as it was, and the input untouched
        for application in config["applications"]:
            for deployment in application["deployments"]:
                deployment["autoscaling_config"].pop("policy")
    assert theirs == ours == {**yaml.safe_load(SERVE_CONFIG.read_text()), "applications": ours["applications"]}


def test_the_kill_takes_the_nodes_hosting_most_replicas_generation_first():
    placements = [{"deployment": "StyleTransfer", "node_id": "a", "pid": 1},
                  {"deployment": "BackgroundRemoval", "node_id": "a", "pid": 2},
                  {"deployment": "ImageGeneration", "node_id": "b", "pid": 3},
                  {"deployment": "StyleTransfer", "node_id": "c", "pid": 4},
                  {"deployment": "ImageGeneration", "node_id": "d", "pid": 5},
                  {"deployment": "PromptRefinement", "node_id": "d", "pid": 6}]
    assert select_nodes_to_kill(placements, 2) == ["d", "a"]  # two replicas each; d hosts generation
    assert select_nodes_to_kill(placements, 3) == ["d", "a", "b"]  # then generation's node before c
    assert select_nodes_to_kill(placements[:1], 2) == ["a"]  # no more nodes than host replicas
    assert select_nodes_to_kill([], 2) == []


def test_decision_latency_runs_from_the_queues_backlog_to_the_first_target():
    timeline = [_sample(0, 0, 0, 0, 0), _sample(1, 5, 0, 0, 0), _sample(2, 8, 0, 0, 0),
                _sample(4, 8, 0, 0, 1, target=1), _sample(6, 3, 5, 1, 1)]
    assert decision_latencies(timeline, {"ImageGeneration": "image_generation"}) == {"ImageGeneration": 3}


def test_replica_ready_times_count_each_level_the_target_was_raised_to():
    timeline = [_sample(0, 9, 0, 0, 0, target=0), _sample(1, 9, 0, 0, 1, target=1),
                _sample(3, 9, 0, 1, 1, target=3),  # level 1 ready after 2 s; 2 and 3 wanted
                _sample(4, 9, 0, 2, 2, target=3),  # level 2 after 1 s
                _sample(6, 9, 0, 2, 2, target=2),  # level 3 dropped before it ran: not counted
                _sample(9, 9, 0, 1, 2, target=2),  # a replica lost (a kill): no raise, no figure
                _sample(12, 9, 0, 2, 2, target=2)]
    assert sorted(replica_ready_times(timeline)) == [1, 2]
    assert percentile([1, 2, 9, 4], 0.5) == 2 and percentile([5], 0.5) == 5 and percentile([], 0.5) is None


def test_gpu_node_seconds_hold_each_sample_until_the_next():
    timeline = [_sample(0, 0, 0, 0, 0), _sample(2, 0, 0, 0, 3), _sample(5, 0, 0, 0, 1), _sample(6, 0, 0, 0, 0)]
    assert integral(timeline, "gpu_nodes") == 3 * 3 + 1 * 1


def test_phases_split_the_drain_at_max_replicas_the_kill_and_the_recovery():
    timeline = [_sample(0, 9, 0, 0, 0, target=1), _sample(10, 9, 5, 2, 2), _sample(20, 9, 15, 2, 2, killed=["a"]),
                _sample(25, 9, 16, 1, 1, target=2), _sample(30, 9, 20, 2, 2), _sample(40, 0, 40, 2, 2)]
    periods = phases(timeline, {"ImageGeneration": 2}, finished_at=40)
    assert periods == {"ramp": (0, 10), "full": (10, 20), "recovering": (20, 30), "recovered": (30, 40)}
    summary = summarize(timeline, _rows(*["SUCCESS"] * 40), _facts(_rows(*["SUCCESS"] * 40)), 40, 60)
    assert {name: phase["tasks_per_s"] for name, phase in summary["tasks_per_s_by_phase"].items()} == {
        "ramp": 0.5, "full": 1.0, "recovering": 0.5, "recovered": 2.0}
    assert phases(timeline[:2], {"ImageGeneration": 3}, finished_at=10) == {"ramp": (0, 10)}  # never at max


@pytest.mark.parametrize(("statuses", "peak", "last", "killed", "max_replicas", "failed"), [
    (("SUCCESS", "SUCCESS"), 2, 0, 2, 2, set()),
    (("SUCCESS", "FAILURE"), 2, 0, 2, 2, {"every_task_success"}),
    (("SUCCESS", "SUCCESS"), 1, 0, 2, 2, {"several_gpu_nodes"}),  # one GPU node is no multi-node proof
    (("SUCCESS", "SUCCESS"), 2, 1, 2, 2, {"no_gpu_node_left"}),
    (("SUCCESS", "SUCCESS"), 2, 0, 1, 2, {"nodes_killed"}),
    (("SUCCESS", "SUCCESS"), 2, 0, 2, 3, {"generation_at_max_replicas"}),
    ((), 2, 0, 2, 2, {"every_task_success"}),  # nothing ran
])
def test_the_verdict_names_each_requirement_missed(statuses, peak, last, killed, max_replicas, failed):
    timeline = [_sample(0, 2, 0, 0, 0), _sample(5, 0, 1, 2, peak), _sample(9, 0, 2, 0, last)]
    rows = _rows(*statuses)
    summary = summarize(timeline, rows, _facts(rows, killed, max_replicas), finished_at=9, duration_s=30)
    assert {name for name, met in summary["requirements"].items() if not met} == failed
    assert summary["ok"] is not failed
    assert (summary["max_gpu_nodes"], summary["final_gpu_nodes"]) == (peak, last)
    assert summary["max_replicas"] == {"ImageGeneration": 2} and summary["first_replica_s"] == 5
    reached = 5 if max_replicas == 2 else None
    assert summary["time_to_max_target_s"] == summary["time_to_max_replicas_s"] == {"ImageGeneration": reached}


def test_a_missing_or_extra_result_file_fails_the_verdict():
    timeline = [_sample(0, 2, 0, 0, 0), _sample(5, 0, 1, 2, 2), _sample(9, 0, 2, 0, 0)]
    rows = _rows("SUCCESS", "SUCCESS")
    for files in (["tasks/output/0.png"], ["tasks/output/0.png", "tasks/output/1.png", "tasks/output/x.png"]):
        summary = summarize(timeline, rows, {**_facts(rows), "result_files": files}, 9, 30)
        assert not summary["requirements"]["one_result_file_each"] and not summary["ok"]


def test_the_plot_is_a_png(tmp_path):
    timeline = [_sample(0, 2, 0, 0, 0), _sample(1, 1, 1, 1, 1, killed=["n0"]), _sample(2, 0, 2, 0, 0)]
    path = tmp_path / "timeline.png"
    rows = _rows("SUCCESS", "SUCCESS")
    plot(summarize(timeline, rows, _facts(rows), 2, 3), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
