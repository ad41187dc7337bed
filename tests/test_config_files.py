"""The deploy configs load with Ray's own schemas, and their applications match the task registry."""

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from cli.stack import render_serve_config
from tasks.registry import TASK_SPECS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["serve.yaml", "serve.local.yaml"])
def test_serve_config_validates_and_deploys_every_registered_service(name, settings):
    config = ServeDeploySchema.model_validate(render_serve_config(settings, ROOT / "config" / name))
    deployments = {(app.name, deployment.name) for app in config.applications for deployment in app.deployments}
    for spec in TASK_SPECS.values():
        for stage in spec.stages:
            assert (stage.app_name, stage.deployment_name) in deployments
    for app in config.applications:
        assert app.runtime_env["env_vars"]["DATABASE_URL"] == settings.effective_database_url


def test_production_config_puts_models_on_gpus_and_scales_them_to_zero():
    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "config" / "serve.yaml").read_text()))
    for app in config.applications:
        if app.name in {stage.app_name for spec in TASK_SPECS.values() for stage in spec.stages}:
            for deployment in app.deployments:
                assert deployment.ray_actor_options.num_gpus > 0
                assert deployment.autoscaling_config["min_replicas"] == 0


def test_cluster_yaml_validates_against_rays_cluster_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(cluster, schema)
    assert "--port=6379" not in json.dumps(cluster["head_start_ray_commands"])


@pytest.mark.parametrize("name", ["serve.yaml", "serve.local.yaml"])
def test_deployments_that_scale_follow_the_backlog_of_the_queue_that_calls_them(name):
    """tasks/autoscaling.py's policy, on the queue of the task type whose stages call the deployment, with no delay
    before scaling up; the Redis URL never in the file."""
    from ray.serve.config import AutoscalingConfig

    from tasks.autoscaling import BacklogPolicy

    queue_of = {(stage.app_name, stage.deployment_name): spec.queue
                for spec in TASK_SPECS.values() for stage in spec.stages}
    config = yaml.safe_load((ROOT / "config" / name).read_text())
    scaling = 0
    for app in config["applications"]:
        for deployment in app["deployments"]:
            autoscaling = AutoscalingConfig(**deployment["autoscaling_config"])
            if autoscaling.max_replicas == autoscaling.min_replicas:
                continue
            scaling += 1
            assert autoscaling.policy.policy_function == "tasks.autoscaling:BacklogPolicy"
            policy = autoscaling.policy.get_policy()(**autoscaling.policy.policy_kwargs)
            assert isinstance(policy, BacklogPolicy) and policy.queue == queue_of[(app["name"], deployment["name"])]
            assert autoscaling.upscale_delay_s == 0
            assert "redis://" not in json.dumps(autoscaling.policy.policy_kwargs)
    assert scaling
