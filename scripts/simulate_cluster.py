"""Multi-node scaling on one machine, with Ray's own machinery (docs/scaling.md).

    flock /tmp/backendai-integration.lock python -m scripts.simulate_cluster --json

Starts Ray's `AutoscalingCluster` (the fake multi-node provider of Ray's autoscaler tests: every "node" is a local
raylet that the real autoscaler launches and terminates) with the node types of cluster.yaml, deploys
config/serve.simulated.yaml (GPU deployments that scale from zero, tiny CPU models), runs the real API, Redis and
consumers against it, submits a backlog of image generation and style transfer through the API and samples every
second: queue depth, tasks in flight, replicas, GPU nodes. It draws the timeline (docs/scaling-timeline.png) and
prints a summary; with --json its last stdout line is one JSON object. Exit status 1 when a requirement fails:
every task SUCCESS, at least two GPU nodes launched for the backlog, none left at the end.
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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from ray.cluster_utils import AutoscalingCluster

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
SERVE_CONFIG = ROOT / "config" / "serve.simulated.yaml"
PLOT = ROOT / "docs" / "scaling-timeline.png"
CREATE = "/api/v1/tasks/create/"
QUEUES = ("image_generation", "style_transfer")  # the task types of the backlog (tasks/registry.py)
FINAL = {"SUCCESS", "FAILURE"}

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
                 **config_kwargs: Any) -> None:
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
        config.update(config_kwargs)
        return config

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        autoscaling_config = self.work_dir / "autoscaling.json"
        autoscaling_config.write_text(json.dumps(self._config, indent=1))
        head = dict(self._head_resources)
        command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                   f"--autoscaling-config={autoscaling_config}", f"--num-cpus={head.pop('CPU')}",
                   f"--num-gpus={head.pop('GPU', 0)}", f"--object-store-memory={head.pop('object_store_memory')}",
                   "--node-ip-address=127.0.0.1", f"--port={self.gcs_address.rsplit(':', 1)[1]}",
                   "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_url.rsplit(':', 1)[1]}",
                   "--include-dashboard=true", "--disable-usage-stats",
                   f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"]
        if head:
            command.append(f"--resources={json.dumps(head)}")
        # AutoscalingCluster's environment: the fake provider refuses to run without RAY_FAKE_CLUSTER.
        env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"}
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
    dashboard (Serve replicas, nodes)."""

    redis_url: str
    database_url: str
    dashboard_url: str
    queues: tuple[str, ...]

    def __post_init__(self) -> None:
        import redis
        import sqlalchemy as sa

        self._redis = redis.Redis.from_url(self.redis_url)
        self._engine = sa.create_engine(self.database_url)
        self._count = sa.text("SELECT status, COUNT(*) FROM ai_tasks GROUP BY status")

    def sample(self, t: float) -> dict[str, Any]:
        queues = {queue: self._redis.llen(queue) for queue in self.queues}
        with self._engine.connect() as connection:
            statuses = dict(connection.execute(self._count).all())
        applications = httpx.get(f"{self.dashboard_url}/api/serve/applications/", timeout=10).json()["applications"]
        replicas, targets = {}, {}
        for application in applications.values():
            for name, deployment in application["deployments"].items():
                replicas[name] = sum(replica["state"] == "RUNNING" for replica in deployment["replicas"])
                targets[name] = deployment["target_num_replicas"]
        # Ray's state API over HTTP (ray.util.state would follow RAY_ADDRESS, which names the GCS here).
        nodes = httpx.get(f"{self.dashboard_url}/api/v0/nodes", params={"detail": 1, "limit": 1000},
                          timeout=10).json()["data"]["result"]["result"]
        gpu_nodes = sum(node["state"] == "ALIVE" and node["resources_total"].get("GPU", 0) > 0 for node in nodes)
        return {"t": round(t, 1), "queued": sum(queues.values()), "in_flight": statuses.get("PROCESSING", 0),
                "replicas": replicas, "gpu_nodes": gpu_nodes,
                "queues": queues, "done": sum(statuses.get(status, 0) for status in FINAL),
                "target_replicas": targets}


# -- the run --------------------------------------------------------------------------------------------------------


@dataclass
class Backlog:
    """The tasks submitted at once: generations on the tiny random-weight model, and style transfers."""

    generations: int
    styles: int
    size: int
    steps: int
    task_ids: list[str] = field(default_factory=list)

    def submit(self, api_url: str) -> None:
        from PIL import Image

        photo = io.BytesIO()
        Image.radial_gradient("L").convert("RGB").resize((64, 64)).save(photo, "PNG")
        generation = {"width": self.size, "height": self.size, "num_inference_steps": self.steps}
        # (place in the submission order, form fields, files): the two types spread evenly over the backlog.
        forms = [(index / self.generations, {"task_type": "image_generation",
                                             "prompt": f"a lighthouse at dusk, study {index}",
                                             "parameters": json.dumps({**generation, "seed": index})}, None)
                 for index in range(self.generations)]
        forms += [(index / self.styles, {"task_type": "style_transfer", "prompt": "restyle it",
                                         "parameters": json.dumps({"style": f"style-{index % 26}"})},
                   {"image": ("photo.png", photo.getvalue(), "image/png")}) for index in range(self.styles)]
        with httpx.Client(base_url=api_url, timeout=30) as client:
            for _, data, files in sorted(forms, key=lambda form: form[0]):
                created = client.post(CREATE, data=data, files=files)
                created.raise_for_status()
                self.task_ids.append(created.json()["task_id"])


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    work_dir = Path(tempfile.mkdtemp(prefix="backendai-simulated-"))
    head_resources, worker_types = node_types(CLUSTER_YAML, args.max_nodes_per_type)
    cluster = SimulatedCluster(head_resources, worker_types, work_dir / "ray",
                               idle_timeout_minutes=args.idle_timeout_min)
    # Every process of the stack reads its settings from the environment (tasks/config.py): set before importing.
    os.environ.update(DATA_DIR=str(work_dir / "data"), RAY_ADDRESS=cluster.gcs_address,
                      RAY_DASHBOARD_PORT=cluster.dashboard_url.rsplit(":", 1)[1], SERVE_CONFIG=str(SERVE_CONFIG),
                      API_PORT=str(free_port()), EMBEDDED_REDIS_PORT=str(free_port()), RATE_LIMIT_PER_MINUTE="0",
                      CONSUMER_CONCURRENCY=str(args.consumer_concurrency),
                      # Empty, not unset: a developer's .env must not point the run at a shared database or bucket.
                      DATABASE_URL="", REDIS_URL="", STORAGE_URL="")
    from serve.stack import Stack
    from tasks.config import get_settings

    class QueuesStack(Stack):
        """The stack with consumers for the simulated queues only: idle ones would take cores from the nodes."""

        def start_workers(self) -> None:
            for queue in QUEUES:
                self.start_worker(queue, self.settings.consumer_concurrency)

    settings = get_settings()
    backlog = Backlog(args.generations, args.styles, args.size, args.steps)
    timeline: list[dict[str, Any]] = []
    finished_at: float | None = None  # seconds from submission to the last task's end
    began = time.monotonic()
    log(f"[simulate] work folder {work_dir}; starting the autoscaling cluster (GCS {cluster.gcs_address})")
    try:
        cluster.start()
        with (QueuesStack(settings, echo=lambda line: log(f"[stack] {line}")) as stack,
              ThreadPoolExecutor(1) as submitter):
            probes = Probes(settings.effective_redis_url, settings.effective_database_url, cluster.dashboard_url,
                            QUEUES)
            total = args.generations + args.styles
            log(f"[simulate] stack up after {time.monotonic() - began:.0f} s; submitting {total} tasks")
            started = time.monotonic()
            submitted = submitter.submit(backlog.submit, stack.api_url)

            def over(sample: dict[str, Any]) -> bool:
                nonlocal finished_at
                if submitted.done():
                    submitted.result()  # a refused create ends the run here
                log(f"[simulate] t={sample['t']:6.1f}s queued {sample['queued']:3d} in flight "
                    f"{sample['in_flight']:3d} done {sample['done']:3d}/{total} replicas {sample['replicas']} "
                    f"GPU nodes {sample['gpu_nodes']}")
                if sample["done"] == total and finished_at is None:
                    finished_at = sample["t"]
                return (finished_at is not None and sample["gpu_nodes"] == 0
                        and not any(sample["replicas"].values()))

            timeline.extend(sample_until(probes, over, args.timeout, started))
            statuses = _statuses(stack.api_url, backlog.task_ids)
            log("[simulate] stopping the stack and the cluster")
    finally:
        cluster.shutdown()
    return summarize(timeline, statuses, finished_at, time.monotonic() - began)


def _statuses(api_url: str, task_ids: list[str]) -> dict[str, str]:
    with httpx.Client(base_url=api_url, timeout=30) as client:
        return {task_id: client.get(f"/api/v1/tasks/{task_id}/status/").json()["status"] for task_id in task_ids}


def summarize(timeline: list[dict[str, Any]], statuses: dict[str, str], finished_at: float | None,
              duration_s: float) -> dict[str, Any]:
    """The run's figures and whether it met the requirements."""
    deployments = sorted({name for sample in timeline for name in sample["replicas"]})
    max_gpu_nodes = max((sample["gpu_nodes"] for sample in timeline), default=0)
    final_gpu_nodes = timeline[-1]["gpu_nodes"] if timeline else 0
    succeeded = sum(status == "SUCCESS" for status in statuses.values())
    first_replica = next((sample["t"] for sample in timeline if any(sample["replicas"].values())), None)
    return {
        "ok": bool(statuses) and succeeded == len(statuses) and max_gpu_nodes >= 2 and final_gpu_nodes == 0,
        "tasks": len(statuses),
        "succeeded": succeeded,
        "max_gpu_nodes": max_gpu_nodes,
        "final_gpu_nodes": final_gpu_nodes,
        "max_replicas": {name: max(sample["replicas"].get(name, 0) for sample in timeline) for name in deployments},
        "first_replica_s": first_replica,
        "all_done_s": finished_at,
        "scaled_to_zero_s": timeline[-1]["t"] if timeline and final_gpu_nodes == 0 else None,
        "run_s": round(duration_s, 1),
        "timeline": timeline,
    }


def plot(summary: dict[str, Any], path: Path) -> None:
    """Queue depth and tasks in flight, replicas (running and Serve's target) and GPU nodes against time."""
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
    nodes.step(t, [sample["gpu_nodes"] for sample in timeline], where="post", color="black", label="fake GPU nodes")
    nodes.set_ylabel("nodes alive")
    nodes.set_xlabel("seconds since the backlog was submitted")
    for axis in (tasks, replicas, nodes):
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
        axis.grid(alpha=0.3)
        axis.yaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(f"{summary['tasks']} tasks: {summary['succeeded']} SUCCESS, up to {summary['max_gpu_nodes']} "
                    f"fake GPU nodes, {summary['final_gpu_nodes']} at the end")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.simulate_cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line, last on stdout")
    parser.add_argument("--generations", type=int, default=96, help="image generation tasks in the backlog")
    parser.add_argument("--styles", type=int, default=24, help="style transfer tasks in the backlog")
    parser.add_argument("--size", type=int, default=256, help="generated image side, pixels")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per generation")
    parser.add_argument("--consumer-concurrency", type=int, default=16, help="tasks in flight per consumer")
    parser.add_argument("--idle-timeout-min", type=float, default=0.25,
                        help="minutes an idle node lives before the autoscaler terminates it")
    parser.add_argument("--max-nodes-per-type", type=int, default=4, help="cap on each worker node type")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the backlog and scale-down")
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
