"""The seed's Django + Celery design, run as its own run.sh runs it (gunicorn with 2 sync workers, a prefork Celery
worker with concurrency 2 on `cpu,gpu,celery`, its stand-in model at AI_WORK_MS=0), but on a throwaway database
and a locked Redis db of the benchmark's (scripts/bench/environment.py) and on a free port, so that the same
clients drive it as drive this project."""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import sqlalchemy as sa

from scripts.bench import environment
from scripts.bench.clients import BenchError
from scripts.bench.jobs import Job
from scripts.bench.report import Outcome

TABLE = "tasks_aitask"
API_WORKERS = 2
WORKER_CONCURRENCY = 2
QUEUES = "cpu,gpu,celery"  # the seed routes its one task to the default queue `celery`
READY_S = 120
# What the peer's own benchmark sends: generation without an image (the seed's create fails on an upload), which
# its stand-in model answers at once with an 8x8 PNG.
PEER_JOB = Job("image_generation", "benchmark", {"width": 512, "height": 512})


def make_venv(python: Path, requirements: Path) -> None:
    """The peer's venv, made with this Python and filled with the peer's pinned requirements."""
    venv = python.parent.parent
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)


class PeerRows:
    """The peer's tasks table, read directly (as the project's rows are read by the benchmark)."""

    def __init__(self, database_url: str):
        self.engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)

    def _query(self, sql: str, task_ids: list[str]) -> list:
        with self.engine.connect() as connection:
            return connection.execute(sa.text(sql).bindparams(sa.bindparam("ids", expanding=True)),
                                      {"ids": [uuid.UUID(task_id) for task_id in task_ids]}).all()

    def outcome(self, task_ids: list[str]) -> Outcome:
        rows = self._query(f"SELECT status, count(*) FROM {TABLE} WHERE id IN :ids GROUP BY status", task_ids)
        return Outcome(len(task_ids), dict(rows))

    def last_completion(self, task_ids: list[str]) -> float:
        return float(self._query(f"SELECT extract(epoch FROM max(completed_at)) FROM {TABLE} WHERE id IN :ids",
                                 task_ids)[0][0])

    def row_times(self, task_ids: list[str]) -> list[tuple[float, float, float]]:
        return [tuple(map(float, row)) for row in self._query(
            f"SELECT extract(epoch FROM created_at), extract(epoch FROM started_at), extract(epoch FROM completed_at) "
            f"FROM {TABLE} WHERE id IN :ids AND status = 'SUCCESS'", task_ids)]


class PeerStack:
    """Starts the peer's API and worker from its folder (read only: nothing is written there) and stops them."""

    def __init__(self, folder: Path, python: Path, server_database_url: str, redis_url: str, data_dir: Path):
        self.folder, self.python, self.data_dir = folder, python, data_dir
        self.server_database_url, self.server_redis_url = server_database_url, redis_url
        self.name = f"backendai_peer_{uuid.uuid4().hex[:10]}"
        self.database_url: str | None = None
        self.redis_url: str | None = None
        self.port = environment.free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        django_url = sa.make_url(self.database_url).set(drivername="postgresql")
        return {**os.environ, "DATABASE_URL": django_url.render_as_string(hide_password=False),
                "REDIS_URL": self.redis_url, "AI_WORK_MS": "0", "MEDIA_ROOT": str(self.data_dir / "media"),
                "DJANGO_SETTINGS_MODULE": "backendAI.settings", "PYTHONDONTWRITEBYTECODE": "1"}

    def _tool(self, name: str) -> str:
        return str(self.python.parent / name)

    def _start(self, name: str, command: list[str]) -> None:
        with open(self.data_dir / f"{name}.log", "ab") as output:
            self.processes[name] = subprocess.Popen(command, cwd=self.folder, env=self.env, stdout=output,
                                                    stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = environment.throwaway_database(self.server_database_url, self.name)
        self.redis_url = environment.lock_a_redis_db(self.server_redis_url, self.name)
        subprocess.run([str(self.python), "manage.py", "migrate", "--noinput", "-v", "0"], cwd=self.folder,
                       env=self.env, check=True)
        self._start("gunicorn", [self._tool("gunicorn"), "backendAI.wsgi:application", "--bind",
                                 f"127.0.0.1:{self.port}", "--workers", str(API_WORKERS), "--worker-class", "sync"])
        self._start("celery", [self._tool("celery"), "-A", "backendAI", "worker", "-Q", QUEUES, "--concurrency",
                               str(WORKER_CONCURRENCY), "-n", f"{self.name}@%h", "--loglevel=info"])
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Until the worker says `ready.` and the API answers (a status of an unknown id: 404)."""
        deadline = time.monotonic() + READY_S
        probe = f"{self.base_url}/api/v1/tasks/{uuid.uuid4()}/status/"
        while time.monotonic() < deadline:
            if any(process.poll() is not None for process in self.processes.values()):
                break
            try:
                answered = httpx.get(probe, timeout=2).status_code == 404
            except httpx.TransportError:
                answered = False
            if answered and " ready." in (self.data_dir / "celery.log").read_text(errors="replace"):
                return
            time.sleep(0.3)
        raise BenchError(f"the seed design's API or worker did not start; see {self.data_dir}/*.log")

    def roots(self) -> dict[str, int]:
        return {f"seed design: {name}": process.pid for name, process in self.processes.items()
                if process.poll() is None}

    def stop(self) -> None:
        """Stops the API and the worker (TERM, then KILL after 30 s), then gives back the database and Redis db."""
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        environment.Isolation(self.name, self.server_database_url if self.database_url else None,
                              self.redis_url).release()
