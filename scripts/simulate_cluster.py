"""Multi-node scaling on one machine, with Ray's own machinery, and a preemption mid-backlog (docs/scaling.md).

    flock /tmp/backendai-integration.lock python -m scripts.simulate_cluster --json [--policy ours|ray]

Starts Ray's `AutoscalingCluster` (the fake multi-node provider of Ray's autoscaler tests: every "node" is a local
raylet that the real autoscaler launches and terminates) with the node types of cluster.yaml (1-GPU and 4-GPU
workers), deploys config/serve.simulated.yaml (GPU deployments that scale from zero, tiny CPU models) with our
autoscaling policy or Ray's AsyncInferenceAutoscalingPolicy, runs the real API, Redis and consumers against it,
submits a backlog of image generations, style transfers and background removals through the API and samples every
second: queue depth, tasks in flight, replicas, GPU nodes. Once generation runs its max_replicas (or half the
backlog is done) it SIGKILLs the raylets of the two GPU nodes hosting the most replicas, as a preemption would. It
draws the timeline (docs/scaling-timeline.png) and prints a summary; with --json its last stdout line is one JSON
object. Exit status 1 when a requirement fails: every task SUCCESS with one result file, the nodes killed,
generation at its max_replicas, at least two GPU nodes launched and none left at the end.
"""

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml
from ray.cluster_utils import AutoscalingCluster

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
SERVE_CONFIG = ROOT / "config" / "serve.simulated.yaml"
PLOT = ROOT / "docs" / "scaling-timeline.png"
CREATE = "/api/v1/tasks/create/"
QUEUES = ("image_generation", "style_transfer", "background_removal")  # the backlog's types (tasks/registry.py)
FINAL = {"SUCCESS", "FAILURE"}
GENERATION = "ImageGeneration"  # the deployment that must reach its max_replicas
# Ray's queue-length policy, with its defaults (a 10 s broker poll), for `--policy ray`.
RAY_POLICY = "ray.serve.async_inference_autoscaling_policy:AsyncInferenceAutoscalingPolicy"

# Ray's fake_multi_node/example.yaml without its node types (AutoscalingCluster fills them in); the Ray wheel
# leaves that file out, so AutoscalingCluster cannot read it from Ray's package.
FAKE_MULTINODE_BASE: dict[str, Any] = {
    "cluster_name": "fake_multinode",
    "max_workers": 8,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "head_node_type": "ray.head.default",
    "auth": {},
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 0.1,
    "docker": {},
    "initialization_commands": [],
    "setup_commands": [],
    "head_setup_commands": [],
    "worker_setup_commands": [],
    "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
    "file_mounts": {},
    "cluster_synced_files": [],
    "file_mounts_sync_continuously": False,
    "rsync_exclude": [],
    "rsync_filter": [],
}
# A fake node is a raylet with its agents on this machine: a small object store each.
NODE_OBJECT_STORE_BYTES = 200 * 2**20


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- the cluster ---------------------------------------------------------------------------------------------------


def node_types(cluster_yaml: Path, max_workers: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The head's resources and the worker node types of the cluster launcher's config, for AutoscalingCluster:
    same resources and minimums, at most `max_workers` nodes of a type (fake nodes share this machine's cores)."""
    config = yaml.safe_load(cluster_yaml.read_text())
    types = config["available_node_types"]
    head = {**types[config["head_node_type"]]["resources"], "object_store_memory": NODE_OBJECT_STORE_BYTES}
    workers = {
        name: {"resources": {**spec["resources"], "object_store_memory": NODE_OBJECT_STORE_BYTES},
               "node_config": {}, "min_workers": spec.get("min_workers", 0),
               "max_workers": min(spec.get("max_workers", max_workers), max_workers)}
        for name, spec in types.items() if name != config["head_node_type"]
    }
    return head, workers


class SimulatedCluster(AutoscalingCluster):
    """Ray's AutoscalingCluster (autoscaler v1, fake multi-node provider), started so that it shares the machine:

    - its `start` runs `ray stop --force` (every Ray process on the machine, other people's clusters included) and
      puts the GCS on 6379 (Redis's port), where the fake nodes then look for it: here the head gets free ports,
      runs as our child in a session of its own, and the provider is told the GCS address;
    - `shutdown` stops that session only (the head, its autoscaler and the fake nodes it launched);
    - the base config comes from FAKE_MULTINODE_BASE (the wheel lacks Ray's example.yaml). Autoscaler v2 would
      read that missing file again, so this is v1.
    """

    def __init__(self, head_resources: dict[str, Any], worker_node_types: dict[str, Any], work_dir: Path,
                 head_env: dict[str, str] | None = None, **config_kwargs: Any) -> None:
        self.head_env = head_env or {}  # for the head's processes alone, the Serve controller's among them
        self.gcs_address = f"127.0.0.1:{free_port()}"
        self.dashboard_url = f"http://127.0.0.1:{free_port()}"
        self.work_dir = work_dir
        self.process: subprocess.Popen | None = None
        super().__init__(dict(head_resources), worker_node_types, autoscaler_v2=False, **config_kwargs)

    def _generate_config(self, head_resources: dict[str, Any], worker_node_types: dict[str, Any],
                         autoscaler_v2: bool = False, **config_kwargs: Any) -> dict[str, Any]:
        config = json.loads(json.dumps(FAKE_MULTINODE_BASE))
        config["provider"]["gcs_address"] = self.gcs_address
        config["available_node_types"] = {
            **worker_node_types,
            "ray.head.default": {"resources": head_resources, "node_config": {}, "max_workers": 0},
        }
        # The fake provider's launch cap: every node the types allow (Ray's example config says 8).
        config["max_workers"] = sum(spec["max_workers"] for spec in worker_node_types.values())
        config.update(config_kwargs)
        return config

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        autoscaling_config = self.work_dir / "autoscaling.json"
        autoscaling_config.write_text(json.dumps(self._config, indent=1))
        head = dict(self._head_resources)
        from cli.stack import _bin  # the `ray` next to this Python, or on PATH (a venv may lack its own)

        command = [_bin("ray"), "start", "--head", "--block",
                   f"--autoscaling-config={autoscaling_config}", f"--num-cpus={head.pop('CPU')}",
                   f"--num-gpus={head.pop('GPU', 0)}", f"--object-store-memory={head.pop('object_store_memory')}",
                   "--node-ip-address=127.0.0.1", f"--port={self.gcs_address.rsplit(':', 1)[1]}",
                   "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_url.rsplit(':', 1)[1]}",
                   "--include-dashboard=true", "--disable-usage-stats",
                   f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"]
        if head:
            command.append(f"--resources={json.dumps(head)}")
        # AutoscalingCluster's environment: the fake provider refuses to run without RAY_FAKE_CLUSTER.
        env = {**os.environ, **self.head_env, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"}
        log_file = open(self.work_dir / "ray-head.log", "ab")  # noqa: SIM115  (the head's for its lifetime)
        self.process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 120
        while not _answers(f"{self.dashboard_url}/api/version"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not start; see {self.work_dir / 'ray-head.log'}")
            time.sleep(0.5)

    def shutdown(self) -> None:
        if self.process is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(wait_s)
        self.process = None


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


# -- sampling -------------------------------------------------------------------------------------------------------


@dataclass
class Probes:
    """Where each figure of a sample comes from: Redis (queue lengths), the database (rows by status), the
    dashboard (Serve replicas and where they run, nodes)."""

    redis_url: str
    database_url: str
    dashboard_url: str
    queues: tuple[str, ...]
    placements: list[dict[str, Any]] = field(default_factory=list)  # the running replicas at the last sample

    def __post_init__(self) -> None:
        import redis
        import sqlalchemy as sa

        self._redis = redis.Redis.from_url(self.redis_url)
        self._engine = sa.create_engine(self.database_url)
        self._count = sa.text("SELECT status, COUNT(*) FROM ai_tasks GROUP BY status")
        self._rows = sa.text("SELECT id, status, result_image, retry_count FROM ai_tasks")

    def sample(self, t: float) -> dict[str, Any]:
        queues = {queue: self._redis.llen(queue) for queue in self.queues}
        with self._engine.connect() as connection:
            statuses = dict(connection.execute(self._count).all())
        applications = httpx.get(f"{self.dashboard_url}/api/serve/applications/", timeout=10).json()["applications"]
        replicas, targets, placements = {}, {}, []
        for application in applications.values():
            for name, deployment in application["deployments"].items():
                running = [replica for replica in deployment["replicas"] if replica["state"] == "RUNNING"]
                replicas[name] = len(running)
                targets[name] = deployment["target_num_replicas"]
                placements += [{"deployment": name, "node_id": replica["node_id"], "pid": replica["pid"]}
                               for replica in running]
        self.placements = placements
        # Ray's state API over HTTP (ray.util.state would follow RAY_ADDRESS, which names the GCS here).
        nodes = httpx.get(f"{self.dashboard_url}/api/v0/nodes", params={"detail": 1, "limit": 1000},
                          timeout=10).json()["data"]["result"]["result"]
        gpus = [int(node["resources_total"].get("GPU", 0)) for node in nodes if node["state"] == "ALIVE"]
        return {"t": round(t, 1), "queued": sum(queues.values()), "in_flight": statuses.get("PROCESSING", 0),
                "replicas": replicas, "gpu_nodes": sum(count > 0 for count in gpus), "gpus": sum(gpus),
                "gpu_nodes_by_size": dict(Counter(f"{count}-GPU" for count in gpus if count)),
                "queues": queues, "done": sum(statuses.get(status, 0) for status in FINAL),
                "target_replicas": targets}

    def rows(self) -> list[dict[str, Any]]:
        """Every task's final row: status, result file, retries spent."""
        with self._engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(self._rows)]


# -- preemption -----------------------------------------------------------------------------------------------------


def select_nodes_to_kill(placements: list[dict[str, Any]], count: int) -> list[str]:
    """The `count` nodes hosting the most running replicas (ties: those hosting generation, then by id): the
    preemptions that hurt most. Fewer when fewer nodes host replicas."""
    hosted = Counter(placement["node_id"] for placement in placements)
    generation = {placement["node_id"] for placement in placements if placement["deployment"] == GENERATION}
    return sorted(hosted, key=lambda node: (-hosted[node], node not in generation, node))[:count]


def raylet_of(replica_pid: int) -> psutil.Process:
    """The raylet of the node a replica runs on: it starts its node's worker processes."""
    parent = psutil.Process(replica_pid).parent()
    if parent is None or parent.name() != "raylet":
        raise RuntimeError(f"replica process {replica_pid} is not a raylet's child ({parent})")
    return parent


def kill_nodes(placements: list[dict[str, Any]], count: int, t: float) -> list[dict[str, Any]]:
    """SIGKILL the raylets of the nodes select_nodes_to_kill picks, as a spot preemption does: no drain, no
    goodbye to the GCS; the node's workers die with it."""
    killed = []
    for node_id in select_nodes_to_kill(placements, count):
        on_node = [placement for placement in placements if placement["node_id"] == node_id]
        raylet = raylet_of(on_node[0]["pid"])
        raylet.send_signal(signal.SIGKILL)
        killed.append({"t": t, "node_id": node_id, "raylet_pid": raylet.pid,
                       "replicas": sorted(placement["deployment"] for placement in on_node)})
        log(f"[simulate] t={t:6.1f}s killed node {node_id[:8]} (raylet {raylet.pid}) with {killed[-1]['replicas']}")
    return killed


# -- the run --------------------------------------------------------------------------------------------------------


@dataclass
class Backlog:
    """The tasks submitted at once: generations on the tiny random-weight model, style transfers and background
    removals of a small picture."""

    generations: int
    styles: int
    removals: int
    size: int
    steps: int
    task_ids: list[str] = field(default_factory=list)

    def submit(self, api_url: str) -> None:
        from PIL import Image

        photo = io.BytesIO()
        Image.radial_gradient("L").convert("RGB").resize((64, 64)).save(photo, "PNG")
        upload = {"image": ("photo.png", photo.getvalue(), "image/png")}
        generation = {"width": self.size, "height": self.size, "num_inference_steps": self.steps}
        # (place in the submission order, form fields, files): the types spread evenly over the backlog.
        forms = [(index / self.generations, {"task_type": "image_generation",
                                             "prompt": f"a lighthouse at dusk, study {index}",
                                             "parameters": json.dumps({**generation, "seed": index})}, None)
                 for index in range(self.generations)]
        forms += [(index / self.styles, {"task_type": "style_transfer", "prompt": "restyle it",
                                         "parameters": json.dumps({"style": f"style-{index % 26}"})}, upload)
                  for index in range(self.styles)]
        forms += [(index / self.removals, {"task_type": "background_removal", "prompt": "cut it out",
                                           "parameters": "{}"}, upload) for index in range(self.removals)]
        with httpx.Client(base_url=api_url, timeout=30) as client:
            for _, data, files in sorted(forms, key=lambda form: form[0]):
                created = client.post(CREATE, data=data, files=files)
                created.raise_for_status()
                self.task_ids.append(created.json()["task_id"])

    @property
    def total(self) -> int:
        return self.generations + self.styles + self.removals


def sample_until(probes: Probes, done: Callable[[dict[str, Any]], bool], timeout_s: float,
                 started: float) -> Iterator[dict[str, Any]]:
    """One sample a second until `done(sample)` or the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        tick = time.monotonic()
        sample = probes.sample(tick - started)
        yield sample
        if done(sample) or tick > deadline:
            return
        time.sleep(max(0.0, 1 - (time.monotonic() - tick)))


def deployment_queues() -> dict[str, str]:
    """Each deployment's queue: the task type whose stages call it (tasks/registry.py)."""
    from tasks.registry import TASK_SPECS

    return {stage.deployment_name: str(spec.queue) for spec in TASK_SPECS.values() for stage in spec.stages}


def configured_max_replicas(config: dict[str, Any]) -> dict[str, int]:
    return {deployment["name"]: deployment["autoscaling_config"]["max_replicas"]
            for application in config["applications"] for deployment in application["deployments"]}


def with_ray_policy(config: dict[str, Any], broker_url: str, queue_of: dict[str, str]) -> dict[str, Any]:
    """The Serve config with every deployment on Ray's AsyncInferenceAutoscalingPolicy (its defaults), watching
    the queue that feeds it; the rest (replica bounds, targets, delays) unchanged."""
    config = json.loads(json.dumps(config))
    for application in config["applications"]:
        for deployment in application["deployments"]:
            deployment["autoscaling_config"]["policy"] = {
                "policy_function": RAY_POLICY,
                "policy_kwargs": {"broker_url": broker_url, "queue_name": queue_of[deployment["name"]]}}
    return config


def run(args: argparse.Namespace) -> dict[str, Any]:
    work_dir = Path(tempfile.mkdtemp(prefix="backendai-simulated-"))
    head_resources, worker_types = node_types(CLUSTER_YAML, args.max_nodes_per_type)
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"  # the stack's embedded Redis (tasks/config.py)
    # Our policy reads the Redis URL from the Serve controller's environment, so from the head's.
    cluster = SimulatedCluster(head_resources, worker_types, work_dir / "ray", head_env={"REDIS_URL": redis_url},
                               idle_timeout_minutes=args.idle_timeout_min)
    serve_config = yaml.safe_load(SERVE_CONFIG.read_text())
    queue_of = deployment_queues()
    if args.policy == "ray":
        serve_config = with_ray_policy(serve_config, redis_url, queue_of)
    config_path = work_dir / "serve.yaml"
    config_path.write_text(yaml.safe_dump(serve_config, sort_keys=False))
    # Every process of the stack reads its settings from the environment (tasks/config.py): set before importing.
    os.environ.update(DATA_DIR=str(work_dir / "data"), RAY_ADDRESS=cluster.gcs_address,
                      RAY_DASHBOARD_PORT=cluster.dashboard_url.rsplit(":", 1)[1], SERVE_CONFIG=str(config_path),
                      API_PORT=str(free_port()), EMBEDDED_REDIS_PORT=str(redis_port), RATE_LIMIT_PER_MINUTE="0",
                      CONSUMER_CONCURRENCY=str(args.consumer_concurrency),
                      # Empty, not unset: a developer's .env must not point the run at a shared database or bucket.
                      DATABASE_URL="", REDIS_URL="", STORAGE_URL="",
                      # Every process (the `ray` and `serve` commands, nodes, replicas, the Serve controller that
                      # imports the policy) imports this checkout, whichever one the Python installation points at.
                      PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    from cli.stack import Stack
    from tasks.config import get_settings

    class QueuesStack(Stack):
        """The stack with consumers for the simulated queues only: idle ones would take cores from the nodes."""

        def start_workers(self) -> None:
            for queue in QUEUES:
                self.start_worker(queue, self.settings.consumer_concurrency)

    settings = get_settings()
    backlog = Backlog(args.generations, args.styles, args.removals, args.size, args.steps)
    max_replicas = configured_max_replicas(serve_config)
    timeline: list[dict[str, Any]] = []
    killed: list[dict[str, Any]] = []
    finished_at: float | None = None  # seconds from submission to the last task's end
    began = time.monotonic()
    log(f"[simulate] work folder {work_dir}; policy {args.policy}; starting the autoscaling cluster "
        f"(GCS {cluster.gcs_address})")
    try:
        cluster.start()
        with (QueuesStack(settings, echo=lambda line: log(f"[stack] {line}")) as stack,
              ThreadPoolExecutor(1) as submitter):
            probes = Probes(settings.effective_redis_url, settings.effective_database_url, cluster.dashboard_url,
                            QUEUES)
            log(f"[simulate] stack up after {time.monotonic() - began:.0f} s; submitting {backlog.total} tasks")
            started = time.monotonic()
            submitted = submitter.submit(backlog.submit, stack.api_url)

            def over(sample: dict[str, Any]) -> bool:
                nonlocal finished_at
                if submitted.done():
                    submitted.result()  # a refused create ends the run here
                log(f"[simulate] t={sample['t']:6.1f}s queued {sample['queued']:3d} in flight "
                    f"{sample['in_flight']:3d} done {sample['done']:3d}/{backlog.total} replicas "
                    f"{sample['replicas']} GPU nodes {sample['gpu_nodes_by_size']}")
                # Mid-backlog: once generation runs its max_replicas (or enough is done) and tasks still wait.
                busy = (sample["replicas"].get(GENERATION, 0) >= max_replicas[GENERATION]
                        or sample["done"] >= args.kill_after * backlog.total)
                if (not killed and args.kill_nodes and busy and sample["queued"]
                        and len({placement["node_id"] for placement in probes.placements}) >= args.kill_nodes):
                    killed.extend(kill_nodes(probes.placements, args.kill_nodes, sample["t"]))
                    sample["killed"] = [node["node_id"] for node in killed]
                if sample["done"] == backlog.total and finished_at is None:
                    finished_at = sample["t"]
                return (finished_at is not None and sample["gpu_nodes"] == 0
                        and not any(sample["replicas"].values()))

            timeline.extend(sample_until(probes, over, args.timeout, started))
            rows = probes.rows()
            outputs = {path.relative_to(settings.data_dir / "media").as_posix()
                       for path in (settings.data_dir / "media" / "tasks" / "output").rglob("*")
                       if path.is_file()}
            log("[simulate] stopping the stack and the cluster")
    finally:
        cluster.shutdown()
    run_facts = {"policy": args.policy, "killed_nodes": killed, "kills_wanted": args.kill_nodes,
                 "max_replicas_configured": max_replicas, "queue_of": queue_of,
                 "result_files": sorted(outputs), "submitted": len(backlog.task_ids)}
    return summarize(timeline, rows, run_facts, finished_at, time.monotonic() - began)


# -- the figures ----------------------------------------------------------------------------------------------------


def first_t(timeline: list[dict[str, Any]], condition: Callable[[dict[str, Any]], bool],
            after: float = float("-inf")) -> float | None:
    return next((sample["t"] for sample in timeline if sample["t"] >= after and condition(sample)), None)


def decision_latencies(timeline: list[dict[str, Any]], queue_of: dict[str, str]) -> dict[str, float]:
    """Per deployment: seconds from its queue's first queued task to Serve's first target above zero."""
    latencies = {}
    for name in sorted({name for sample in timeline for name in sample["target_replicas"]}):
        backlog = first_t(timeline, lambda sample, name=name: sample["queues"].get(queue_of.get(name), 0) > 0)
        decided = first_t(timeline, lambda sample, name=name: sample["target_replicas"].get(name, 0) > 0)
        if backlog is not None and decided is not None:
            latencies[name] = round(max(0.0, decided - backlog), 1)
    return latencies


def replica_ready_times(timeline: list[dict[str, Any]]) -> list[float]:
    """Seconds from Serve raising a deployment's target to a replica RUNNING at that level, one figure per level
    raised (a level dropped again before it was met counts nowhere; replacements after a kill are not raises)."""
    waits = []
    for name in sorted({name for sample in timeline for name in sample["target_replicas"]}):
        pending: dict[int, float] = {}  # level -> when the target reached it
        previous = 0
        for sample in timeline:
            target, running = sample["target_replicas"].get(name, 0), sample["replicas"].get(name, 0)
            for level in range(previous + 1, target + 1):
                pending.setdefault(level, sample["t"])
            for level in sorted(pending):
                if running >= level:
                    waits.append(round(sample["t"] - pending.pop(level), 1))
                elif level > target:
                    pending.pop(level)
            previous = target
    return waits


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def integral(timeline: list[dict[str, Any]], key: str) -> float:
    """∫ sample[key] dt over the timeline, each sample's value held until the next (what the nodes cost)."""
    return round(sum(before[key] * (after["t"] - before["t"]) for before, after in pairwise(timeline)), 1)


def phases(timeline: list[dict[str, Any]], max_replicas: dict[str, int], finished_at: float | None
           ) -> dict[str, tuple[float, float]]:
    """The run's phases, (start, end) in seconds: `ramp` until generation first runs its max_replicas, `full`
    from there to the kill, `recovering` from the kill until every deployment runs its target again after the
    replicas lost, `recovered` from there to the last task. A phase that did not happen is left out."""
    end = finished_at if finished_at is not None else (timeline[-1]["t"] if timeline else 0.0)
    at_max = first_t(timeline, lambda sample: sample["replicas"].get(GENERATION, 0) >= max_replicas.get(GENERATION, 1))
    kill = first_t(timeline, lambda sample: "killed" in sample)
    recovered = None
    if kill is not None:
        before = next(sample for sample in timeline if sample["t"] == kill)
        dipped = first_t(timeline, lambda sample: sum(sample["replicas"].values()) < sum(before["replicas"].values()),
                         after=kill)
        if dipped is not None:
            recovered = first_t(timeline, lambda sample: all(sample["replicas"].get(name, 0) >= target
                                                            for name, target in sample["target_replicas"].items()),
                                after=dipped)
    marks = [("ramp", 0.0), ("full", at_max), ("recovering", kill), ("recovered", recovered)]
    bounds = sorted((t, name) for name, t in marks if t is not None and t < end)
    return {name: (start, stop) for (start, name), (stop, _) in pairwise([*bounds, (end, "")]) if stop > start}


def tasks_per_s(timeline: list[dict[str, Any]], start: float, stop: float) -> float:
    """Tasks finished per second between two sample times."""
    def done_at(t: float) -> int:
        return max((sample["done"] for sample in timeline if sample["t"] <= t), default=0)

    return round((done_at(stop) - done_at(start)) / (stop - start), 2)


def summarize(timeline: list[dict[str, Any]], rows: list[dict[str, Any]], facts: dict[str, Any],
              finished_at: float | None, duration_s: float) -> dict[str, Any]:
    """The run's figures and whether it met the requirements. `rows` are the tasks' final database rows; `facts`
    what the run did: policy, killed_nodes, kills_wanted, max_replicas_configured, queue_of, result_files (storage
    keys of the files under the outputs folder), submitted."""
    deployments = sorted({name for sample in timeline for name in sample["replicas"]})
    max_gpu_nodes = max((sample["gpu_nodes"] for sample in timeline), default=0)
    final_gpu_nodes = timeline[-1]["gpu_nodes"] if timeline else 0
    succeeded = sum(row["status"] == "SUCCESS" for row in rows)
    results = sorted(row["result_image"] for row in rows if row["result_image"])
    one_result_each = results == facts["result_files"] and len(results) == succeeded
    max_replicas = {name: max(sample["replicas"].get(name, 0) for sample in timeline) for name in deployments}
    configured = facts["max_replicas_configured"]
    first_replica = next((sample["t"] for sample in timeline if any(sample["replicas"].values())), None)
    ready = replica_ready_times(timeline)
    periods = phases(timeline, configured, finished_at)
    requirements = {
        "every_task_success": bool(rows) and succeeded == len(rows) == facts["submitted"],
        "one_result_file_each": one_result_each,
        "nodes_killed": len(facts["killed_nodes"]) == facts["kills_wanted"],
        "generation_at_max_replicas": max_replicas.get(GENERATION, 0) == configured.get(GENERATION),
        "several_gpu_nodes": max_gpu_nodes >= 2,
        "no_gpu_node_left": final_gpu_nodes == 0,
    }
    return {
        "ok": all(requirements.values()),
        "requirements": requirements,
        "policy": facts["policy"],
        "tasks": len(rows),
        "succeeded": succeeded,
        "retries_spent": sum(row["retry_count"] for row in rows),
        "killed_nodes": facts["killed_nodes"],
        "max_gpu_nodes": max_gpu_nodes,
        "gpu_nodes_launched": _nodes_launched(timeline),
        "final_gpu_nodes": final_gpu_nodes,
        "max_replicas": max_replicas,
        "first_replica_s": first_replica,
        "decision_latency_s": decision_latencies(timeline, facts["queue_of"]),
        "replica_ready_s": {"p50": percentile(ready, 0.5), "max": max(ready, default=None), "count": len(ready)},
        # Serve wanting the maximum (the policy's decision), then running it (the nodes and the replicas' start).
        "time_to_max_target_s": {name: first_t(timeline, lambda sample, name=name:
                                               sample["target_replicas"].get(name, 0) >= configured[name])
                                 for name in deployments if name in configured},
        "time_to_max_replicas_s": {name: first_t(timeline, lambda sample, name=name:
                                                 sample["replicas"].get(name, 0) >= configured[name])
                                   for name in deployments if name in configured},
        "tasks_per_s_by_phase": {name: {"from_s": start, "to_s": stop,
                                        "tasks_per_s": tasks_per_s(timeline, start, stop)}
                                 for name, (start, stop) in periods.items()},
        "all_done_s": finished_at,
        "scaled_to_zero_s": timeline[-1]["t"] if timeline and final_gpu_nodes == 0 else None,
        "gpu_node_seconds": integral(timeline, "gpu_nodes"),
        "gpu_seconds": integral(timeline, "gpus"),
        "run_s": round(duration_s, 1),
        "timeline": timeline,
    }


def _nodes_launched(timeline: list[dict[str, Any]]) -> int:
    """GPU nodes that came up over the run: each rise of the alive count (kills and terminations lower it)."""
    return sum(max(0, after["gpu_nodes"] - before["gpu_nodes"]) for before, after in pairwise(timeline))


def plot(summary: dict[str, Any], path: Path) -> None:
    """Queue depth and tasks in flight, replicas (running and Serve's target) and GPU nodes by size against time,
    the node kills marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = summary["timeline"]
    t = [sample["t"] for sample in timeline]
    figure, (tasks, replicas, nodes) = plt.subplots(3, 1, sharex=True, figsize=(11, 7.5),
                                                    gridspec_kw={"height_ratios": [3, 3, 2]})
    for queue in timeline[0]["queues"]:
        tasks.step(t, [sample["queues"][queue] for sample in timeline], where="post", label=f"queued: {queue}")
    tasks.step(t, [sample["in_flight"] for sample in timeline], where="post", label="in flight (PROCESSING)")
    tasks.step(t, [sample["done"] for sample in timeline], where="post", label="finished", color="grey",
               linestyle=":")
    tasks.set_ylabel("tasks")
    for index, name in enumerate(summary["max_replicas"]):
        colour = f"C{index}"
        replicas.step(t, [sample["replicas"].get(name, 0) for sample in timeline], where="post", color=colour,
                      label=f"{name} running")
        replicas.step(t, [sample["target_replicas"].get(name, 0) for sample in timeline], where="post",
                      color=colour, linestyle="--", alpha=0.6, label=f"{name} target")
    replicas.set_ylabel("replicas")
    nodes.step(t, [sample["gpu_nodes"] for sample in timeline], where="post", color="black", label="GPU nodes")
    for index, size in enumerate(sorted({size for sample in timeline for size in sample["gpu_nodes_by_size"]})):
        nodes.step(t, [sample["gpu_nodes_by_size"].get(size, 0) for sample in timeline], where="post",
                   color=f"C{index + 4}", linestyle="--", label=f"{size} nodes")
    nodes.set_ylabel("nodes alive")
    nodes.set_xlabel("seconds since the backlog was submitted")
    for axis in (tasks, replicas, nodes):
        for kill_index, kill in enumerate(summary["killed_nodes"]):
            axis.axvline(kill["t"], color="black", linestyle="-.", linewidth=1.2,
                         label="node killed (raylet SIGKILL)" if kill_index == 0 else None)
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
        axis.grid(alpha=0.3)
        axis.yaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(f"policy {summary['policy']}: {summary['tasks']} tasks, {summary['succeeded']} SUCCESS; "
                    f"{len(summary['killed_nodes'])} busy GPU nodes killed; up to {summary['max_gpu_nodes']} "
                    f"GPU nodes, {summary['final_gpu_nodes']} at the end")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.simulate_cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line, last on stdout")
    parser.add_argument("--policy", choices=("ours", "ray"), default="ours",
                        help="ours: config/serve.simulated.yaml as it is; ray: every deployment on Ray's "
                             "AsyncInferenceAutoscalingPolicy (its defaults), same bounds and targets")
    parser.add_argument("--generations", type=int, default=300, help="image generation tasks in the backlog")
    parser.add_argument("--styles", type=int, default=150, help="style transfer tasks in the backlog")
    parser.add_argument("--removals", type=int, default=150, help="background removal tasks in the backlog")
    parser.add_argument("--size", type=int, default=64, help="generated image side, pixels")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per generation")
    parser.add_argument("--kill-nodes", type=int, default=2, help="busy GPU nodes to kill mid-backlog (0: none)")
    parser.add_argument("--kill-after", type=float, default=0.5,
                        help="kill once generation runs its max_replicas, or this fraction of the backlog is finished")
    parser.add_argument("--consumer-concurrency", type=int, default=16, help="tasks in flight per consumer")
    parser.add_argument("--idle-timeout-min", type=float, default=0.25,
                        help="minutes an idle node lives before the autoscaler terminates it")
    parser.add_argument("--max-nodes-per-type", type=int, default=8, help="cap on each worker node type")
    parser.add_argument("--timeout", type=float, default=780, help="seconds to wait for the backlog and scale-down")
    parser.add_argument("--plot", type=Path, default=PLOT, help="where to draw the timeline")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = run(args)
    plot(summary, args.plot)
    log(f"[simulate] timeline drawn in {args.plot}")
    brief = {key: value for key, value in summary.items() if key != "timeline"}
    print(json.dumps(summary) if args.json else json.dumps(brief, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
