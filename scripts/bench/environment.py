"""The benchmark's own stack environment and a description of the machine it runs on.

`isolate` must run before anything calls `tasks.config.get_settings()` (importing `cli.stack` or
`tasks.celery_app` does): every process of the stack reads its settings from the environment. With DATABASE_URL
and REDIS_URL set it takes what the test fixtures take (tests/conftest.py): a throwaway database on that Postgres
server and a numbered Redis db that it locks, so that it never writes into anyone's data.
"""

import os
import platform
import socket
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis
import sqlalchemy as sa

# The key tests/conftest.py holds on the Redis db of a run: test runs and benchmarks never share a db.
REDIS_LOCK = "backendai:test-run"
REDIS_LOCK_TTL_S = 3 * 3600


class IsolationError(RuntimeError):
    pass


def free_port() -> int:
    """A free TCP port. Not cli.stack's: importing that module reads the settings, before `isolate` sets them."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Isolation:
    """What `isolate` took, so that `release` gives back exactly that."""

    name: str
    server_database_url: str | None = None  # the Postgres server the throwaway database was created on
    redis_url: str | None = None  # the locked db

    @property
    def database(self) -> str | None:
        return self.name if self.server_database_url else None

    @property
    def redis_port(self) -> int | None:
        return redis.connection.parse_url(self.redis_url).get("port", 6379) if self.redis_url else None

    def release(self) -> None:
        """Drop the database (FORCE: the stack's last connections may linger) and empty the Redis db, which also
        releases its lock; each is tried even if the other fails."""
        try:
            if self.redis_url:
                redis.Redis.from_url(self.redis_url).flushdb()
        finally:
            if self.server_database_url:
                with _server(self.server_database_url).connect() as connection:
                    connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


def _server(url: str) -> sa.Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def throwaway_database(server_url: str, name: str) -> str:
    with _server(server_url).connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return str(sa.make_url(server_url).set(database=name))


def lock_a_redis_db(server_url: str, holder: str) -> str:
    """The first numbered db (1-15; never 0, the default of everyone's `backendai up`) that nobody holds and that is
    empty, locked for this run: a non-empty db without the lock may still be someone's, so it is left alone."""
    server = server_url.rsplit("/", 1)[0]
    for number in range(1, 16):
        client = redis.Redis.from_url(f"{server}/{number}")
        if client.set(REDIS_LOCK, holder, nx=True, ex=REDIS_LOCK_TTL_S):
            if client.dbsize() == 1:
                return f"{server}/{number}"
            client.delete(REDIS_LOCK)
    raise IsolationError(f"no free and empty Redis db among 1-15 on {server} ({REDIS_LOCK} held or data present)")


def isolate() -> Isolation:
    """A fresh DATA_DIR and free ports; a throwaway Postgres database and a locked Redis db when DATABASE_URL /
    REDIS_URL name servers, the embedded SQLite and Redis otherwise. The rate limit and the cap on queued tasks are
    off (RATE_LIMIT_PER_MINUTE=0, MAX_QUEUED_PER_KEY=0): eight clients from one address, and a backlog of 1000 from
    it, would otherwise be refused."""
    isolation = Isolation(f"backendai_bench_{uuid.uuid4().hex[:10]}")
    data_dir = Path(tempfile.gettempdir()) / isolation.name  # made when the stack starts
    database_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    if database_url and sa.make_url(database_url).get_backend_name() == "postgresql":
        os.environ["DATABASE_URL"] = throwaway_database(database_url, isolation.name)
        isolation.server_database_url = database_url
    else:
        os.environ["DATABASE_URL"] = ""  # empty, not unset: a developer's .env must not point elsewhere
    if redis_url:
        try:
            isolation.redis_url = os.environ["REDIS_URL"] = lock_a_redis_db(redis_url, isolation.name)
        except BaseException:
            isolation.release()
            raise
    os.environ.update(
        DATA_DIR=str(data_dir),
        API_PORT=str(free_port()),
        RAY_HEAD_PORT=str(free_port()),
        RAY_DASHBOARD_PORT=str(free_port()),
        EMBEDDED_REDIS_PORT=str(free_port()),
        RATE_LIMIT_PER_MINUTE="0",
        MAX_QUEUED_PER_KEY="0",
        # Empty, not unset, so that a developer's .env cannot point the benchmark at a shared cluster or bucket.
        RAY_ADDRESS="",
        STORAGE_URL="",
        OMP_NUM_THREADS="1",  # the bare model calls run with one thread, as the replicas do
    )
    return isolation


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    memory_gib = psutil.virtual_memory().total / 2**30
    return (f"{os.cpu_count()} cores ({cpu_model()}), {memory_gib:.0f} GiB RAM, no GPU used; "
            f"{platform.system()} {platform.release()}, Python {sys.version.split()[0]}")


def load_average() -> str:
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())
