"""deploy/kubernetes/, checked without a cluster: the RayService validates against KubeRay's CRD schema, its
serveConfigV2 is config/serve.yaml and every replica fits a GPU worker; the API and the consumers run the design of
docs/architecture.md with the cluster's image, the same Secret, and the RayService's head as their Ray address."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.version import Version
from ray._private.ray_constants import DEFAULT_DASHBOARD_AGENT_LISTEN_PORT
from ray.scripts.scripts import cli as ray_cli
from ray.serve.schema import ServeDeploySchema

from tests.test_deploy_files import CHECKS, HOUSEKEEPING_QUEUE, QUEUES, _check_click, _consumed_queues, _simple_commands

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
# The openAPIV3Schema of KubeRay's RayService CRD is not part of this repository; a checkout may have a copy beside it.
CRD_SCHEMA = ROOT.parent / "shared" / "schemas" / "kuberay-rayservice-v1.schema.json"
KUBERAY_GCS_PORT = 6379  # the head's `ray start --port` unless its rayStartParams say otherwise


def _documents(name: str) -> list[dict]:
    return [document for document in yaml.safe_load_all((KUBERNETES / name).read_text()) if document]


(RAYSERVICE,) = _documents("rayservice.yaml")
CLUSTER = RAYSERVICE["spec"]["rayClusterConfig"]
SERVE_CONFIG = yaml.safe_load(RAYSERVICE["spec"]["serveConfigV2"])
DEPLOYMENTS = {document["metadata"]["name"]: document for name in ("api.yaml", "consumers.yaml")
               for document in _documents(name) if document["kind"] == "Deployment"}


def _pod_specs() -> dict[str, dict]:
    specs = {"ray-head": CLUSTER["headGroupSpec"]["template"]["spec"]}
    specs |= {f"ray-{group['groupName']}": group["template"]["spec"] for group in CLUSTER["workerGroupSpecs"]}
    return specs | {name: deployment["spec"]["template"]["spec"] for name, deployment in DEPLOYMENTS.items()}


def _env(container: dict) -> dict[str, str]:
    return {variable["name"]: variable["value"] for variable in container.get("env", [])}


def _cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _unknown_fields(instance: object, schema: dict, path: str = "") -> list[str]:
    """Fields the API server would drop without a word: a CRD's structural schema prunes what it does not declare,
    so a misspelt field passes validation and is simply gone."""
    if isinstance(instance, list) and "items" in schema:
        return [field for index, item in enumerate(instance)
                for field in _unknown_fields(item, schema["items"], f"{path}[{index}]")]
    if not isinstance(instance, dict) or ("properties" not in schema and "additionalProperties" not in schema):
        return []
    fields = []
    for key, value in instance.items():
        if key in schema.get("properties", {}):
            fields += _unknown_fields(value, schema["properties"][key], f"{path}.{key}")
        elif isinstance(schema.get("additionalProperties"), dict):
            fields += _unknown_fields(value, schema["additionalProperties"], f"{path}.{key}")
        else:
            fields.append(f"{path}.{key}")
    return fields


def test_rayservice_validates_against_kuberays_crd_schema():
    if not CRD_SCHEMA.is_file():
        pytest.skip(f"no copy of KubeRay's RayService CRD schema at {CRD_SCHEMA} (outside this repository)")
    schema = json.loads(CRD_SCHEMA.read_text())
    jsonschema.validate(RAYSERVICE, schema)
    assert _unknown_fields(RAYSERVICE, schema) == []


def test_serve_config_v2_is_the_production_serve_config():
    ServeDeploySchema.model_validate(SERVE_CONFIG)
    assert SERVE_CONFIG == yaml.safe_load((ROOT / "config" / "serve.yaml").read_text())


def test_gpu_workers_scale_from_zero_and_fit_every_replica():
    assert CLUSTER["enableInTreeAutoscaling"] is True and CLUSTER["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    # KubeRay checks pods over HTTP from Ray 2.53 on; before that with wget, which the image does not have.
    assert Version(CLUSTER["rayVersion"]) >= Version("2.53")
    head = CLUSTER["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"].get("limits", {})

    nodes = []
    for group in CLUSTER["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        limits = container["resources"]["limits"]
        gpus = int(group["rayStartParams"]["num-gpus"])
        assert group["minReplicas"] == 0 < group["maxReplicas"] and gpus == int(limits["nvidia.com/gpu"]) > 0
        nodes.append((_cpus(group["rayStartParams"].get("num-cpus", limits["cpu"])), gpus))
        # Replicas read MODELS_DIR: it is where the weights are mounted.
        mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
        assert mounts[_env(container)["MODELS_DIR"]].get("readOnly") is True
        probe = container["readinessProbe"]["httpGet"]  # KubeRay's default waits for a Serve proxy
        assert (probe["path"], probe["port"]) == ("/api/healthz", DEFAULT_DASHBOARD_AGENT_LISTEN_PORT)

    assert SERVE_CONFIG["proxy_location"] == "Disabled"
    for application in ServeDeploySchema.model_validate(SERVE_CONFIG).applications:
        for deployment in application.deployments:
            options = deployment.ray_actor_options
            assert any(options.num_cpus <= cpus and options.num_gpus <= gpus for cpus, gpus in nodes), (
                f"{application.name}/{deployment.name} fits no worker group: the autoscaler could never place it")


def test_every_pod_runs_the_clusters_image_with_the_same_secret():
    containers = [(name, container) for name, spec in _pod_specs().items()
                  for container in [*spec.get("initContainers", []), *spec["containers"]]]
    # A consumer's Ray node and driver must be the cluster's exact Ray and Python.
    assert len({container["image"] for _, container in containers}) == 1
    secrets = {name: [source["secretRef"]["name"] for source in container["envFrom"]] for name, container in containers}
    assert len({tuple(names) for names in secrets.values()}) == 1 and len(next(iter(secrets.values()))) == 1, secrets
    for name, container in containers:
        if name.startswith("ray-") or "RAY_ADDRESS" in _env(container):
            assert _env(container)["RAY_AUTH_MODE"] == "disabled", name  # alike in every Ray process


def test_deployments_select_their_own_pods():
    for name, deployment in DEPLOYMENTS.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    selectors = [tuple(sorted(deployment["spec"]["selector"]["matchLabels"].items()))
                 for deployment in DEPLOYMENTS.values()]
    assert len(selectors) == len(set(selectors))


def test_the_api_runs_uvicorn_outside_ray():
    pod = DEPLOYMENTS["backendai-api"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert CHECKS["uvicorn"](container["command"][1:]).params["app"] == "serve.app:app"
    assert "RAY_ADDRESS" not in _env(container)
    for init in pod["spec"]["initContainers"]:
        CHECKS[init["command"][0]](init["command"][1:])
    from serve.app import create_app

    assert container["readinessProbe"]["httpGet"]["path"] in create_app().openapi()["paths"]
    (service,) = [document for document in _documents("api.yaml") if document["kind"] == "Service"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= set(ports)


def test_one_consumer_per_queue_and_one_beat():
    head_service = f"{RAYSERVICE['metadata']['name']}-head-svc"
    gcs_port = int(CLUSTER["headGroupSpec"]["rayStartParams"].get("port", KUBERAY_GCS_PORT))
    consumed, beats = [], []
    for name, deployment in DEPLOYMENTS.items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            env = _env(container)
            commands = _simple_commands(container["command"], env)
            for argv in commands:
                CHECKS[argv[0]](argv[1:])
            queues = [queue for argv in commands for queue in _consumed_queues(argv)]
            consumed += queues
            if any(argv[:4] == ["celery", "-A", "tasks.celery_app", "beat"] for argv in commands):
                beats.append(deployment)
            if not queues:
                continue
            joins_ray = [argv for argv in commands if argv[:2] == ["ray", "start"]]
            if queues == [HOUSEKEEPING_QUEUE]:  # housekeeping never calls Ray: it runs on while Ray restarts
                assert not joins_ray and "RAY_ADDRESS" not in env, name
                continue
            # Ray's GCS behind KubeRay's head Service, which follows the RayService's current cluster.
            assert env["RAY_ADDRESS"] == f"{head_service}:{gcs_port}", name
            options = _check_click(ray_cli, joins_ray[0][1:]).params
            assert (options["address"], options["num_cpus"], options["num_gpus"]) == (env["RAY_ADDRESS"], 0, 0)
            probe = container["livenessProbe"]["httpGet"]  # the pod's own Ray node, gone with its cluster
            assert (probe["path"], probe["port"]) == ("/api/healthz", DEFAULT_DASHBOARD_AGENT_LISTEN_PORT)
    assert sorted(consumed) == sorted(QUEUES)
    (beat,) = beats  # two would schedule every periodic job twice, also during a rollout
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
