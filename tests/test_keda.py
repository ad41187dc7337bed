"""deploy/kubernetes/consumer-autoscaling.yaml, checked without a cluster: every model queue's consumer Deployment
scales on its own Redis list through KEDA, with the Redis credentials from the Secret, and enough consumers at most
that consumer slots never bound the replicas of config/serve.yaml."""

import json
import math

import jsonschema
import pytest

from tasks.registry import TASK_SPECS
from tests.test_deploy_files import _consumed_queues, _simple_commands
from tests.test_kuberay import DEPLOYMENTS, ROOT, SERVE_CONFIG, _documents, _env

SCALING = _documents("consumer-autoscaling.yaml")
SCALED_OBJECTS = [document for document in SCALING if document["kind"] == "ScaledObject"]
AUTHENTICATIONS = {document["metadata"]["name"]: document for document in SCALING
                   if document["kind"] == "TriggerAuthentication"}
# The openAPIV3Schema of KEDA's ScaledObject CRD (keda.sh_scaledobjects.yaml of kedacore/keda, v1alpha1) is not
# part of this repository; a checkout may have a copy beside it, as for KubeRay's.
CRD_SCHEMA = ROOT.parent / "shared" / "schemas" / "keda-scaledobject-v1alpha1.schema.json"


def _consumer_queue_and_slots(deployment: dict) -> tuple[str, int]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    for argv in _simple_commands(container["command"], _env(container)):
        if queues := _consumed_queues(argv):
            (queue,) = queues
            return queue, int(argv[argv.index("-c") + 1])
    raise AssertionError(f"{deployment['metadata']['name']} runs no consumer")


def _max_slots_wanted(queue: str) -> int:
    """Every replica of every deployment the queue's tasks call, full: max_replicas x max_ongoing_requests."""
    deployments = {(application["name"], deployment["name"]): deployment
                   for application in SERVE_CONFIG["applications"] for deployment in application["deployments"]}
    return sum(deployments[(stage.app_name, stage.deployment_name)]["autoscaling_config"]["max_replicas"]
               * deployments[(stage.app_name, stage.deployment_name)]["max_ongoing_requests"]
               for spec in TASK_SPECS.values() if spec.queue == queue for stage in spec.stages)


def test_every_model_queue_has_a_scaled_object_on_its_list_targeting_its_consumer():
    by_target = {scaled["spec"]["scaleTargetRef"]["name"]: scaled for scaled in SCALED_OBJECTS}
    assert len(by_target) == len(SCALED_OBJECTS), "two ScaledObjects target one Deployment"
    model_queues = {spec.queue for spec in TASK_SPECS.values()}
    covered = set()
    for name, deployment in DEPLOYMENTS.items():
        if name not in by_target:
            continue
        scaled = by_target[name]
        assert scaled["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert "replicas" not in deployment["spec"], f"{name}: KEDA owns its replica count"
        queue, slots = _consumer_queue_and_slots(deployment)
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == queue, name
        assert int(trigger["metadata"]["listLength"]) == slots, f"{name}: one consumer per its slots of backlog"
        assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
        assert scaled["spec"]["maxReplicaCount"] >= math.ceil(_max_slots_wanted(queue) / slots), (
            f"{name}: its consumers at most hold fewer requests than its deployments' replicas at most take")
        covered.add(queue)
    assert covered == model_queues


def test_redis_credentials_come_from_the_secret_never_the_manifest():
    for scaled in SCALED_OBJECTS:
        (trigger,) = scaled["spec"]["triggers"]
        assert not {"password", "address", "host", "passwordFromEnv"} & trigger["metadata"].keys()
        authentication = AUTHENTICATIONS[trigger["authenticationRef"]["name"]]
        references = {ref["parameter"]: ref for ref in authentication["spec"]["secretTargetRef"]}
        assert references.keys() == {"address", "password"}
        # The Secret every pod reads (tests/test_kuberay.py): one place for the settings.
        assert {ref["name"] for ref in references.values()} == {"backendai"}
    assert "redis://" not in json.dumps(SCALING)


def test_scaled_objects_validate_against_kedas_crd_schema():
    if not CRD_SCHEMA.is_file():
        pytest.skip(f"no copy of KEDA's ScaledObject CRD schema (openAPIV3Schema of keda.sh_scaledobjects.yaml, "
                    f"v1alpha1) at {CRD_SCHEMA} (outside this repository)")
    schema = json.loads(CRD_SCHEMA.read_text())
    for scaled in SCALED_OBJECTS:
        jsonschema.validate(scaled, schema)

