"""Fixtures: a throw-away Postgres database and Redis db per run, and the real stack (Ray, Serve, Celery).

Which Postgres and Redis servers the run uses is tests/services.py's rule: the ones DATABASE_URL and REDIS_URL
name, else the local ones if they answer, else the run brings its own (embedded redis-server; a throwaway Postgres
cluster where PostgreSQL is installed, else SQLite with the tests marked `postgres` skipped). On a server a fresh
database is created and dropped afterwards, and a free numbered Redis db is locked for the run. Both are taken
lazily, by the `database` and `redis_client` fixtures: tests that need neither (the unit tier, tests/unit/) run
with no server reachable. The stack takes free ports, so a developer's `backendai up` or another test run can
keep running.
"""

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image

from tests.helpers import png_bytes
from tests.services import (
    SERVICES_SETTING,
    EmbeddedRedis,
    ThrowawayPostgres,
    can_run_postgres,
    database_server_url,
    free_port,
    redis_server_url,
)

TEST_DATABASE = f"backendai_test_{uuid.uuid4().hex[:10]}"
DATA_DIR = Path(tempfile.mkdtemp(prefix="backendai-test-"))

SERVER_DATABASE_URL = database_server_url()
THROWAWAY_POSTGRES = ThrowawayPostgres(free_port()) if SERVER_DATABASE_URL is None and can_run_postgres() else None
if THROWAWAY_POSTGRES is not None:
    SERVER_DATABASE_URL = THROWAWAY_POSTGRES.url
USES_SQLITE = SERVER_DATABASE_URL is None or SERVER_DATABASE_URL.startswith("sqlite")
SQLITE_BECAUSE = ("DATABASE_URL names it" if SERVER_DATABASE_URL else "BACKENDAI_TEST_SERVICES=sqlite"
                  if os.environ.get(SERVICES_SETTING) == "sqlite" else
                  "no DATABASE_URL, none answering on 127.0.0.1:5432, no pg_ctl to start one")
RUN_DATABASE_URL = (f"sqlite:///{DATA_DIR / 'backendai-test.db'}" if SERVER_DATABASE_URL is None
                    else SERVER_DATABASE_URL if USES_SQLITE
                    else str(sa.make_url(SERVER_DATABASE_URL).set(database=TEST_DATABASE)))
SERVER_REDIS_URL = redis_server_url()
EMBEDDED_REDIS = EmbeddedRedis(free_port()) if SERVER_REDIS_URL is None else None

# Held on the Redis db of a run (scripts/bench honours it too): test runs and benchmarks never share a db.
REDIS_LOCK = "backendai:test-run"
REDIS_LOCK_TTL_S = 3 * 3600
# Where Redis is until the `redis_client` fixture locks a db: a port nothing listens on, so a test that uses Redis
# without asking for it fails at once instead of writing into somebody's db.
NO_REDIS_YET = "redis://127.0.0.1:9/0"


# Read by every process of the stack (Settings come from the environment), so set before anything imports it.
os.environ.update(
    DATABASE_URL=RUN_DATABASE_URL,
    REDIS_URL=NO_REDIS_YET,
    DATA_DIR=str(DATA_DIR),
    API_PORT=str(free_port()),
    RAY_HEAD_PORT=str(free_port()),
    RAY_DASHBOARD_PORT=str(free_port()),
    RETRY_BACKOFF_BASE_S="1",
    # Tasks here take seconds: a short visibility timeout lets a killed worker's tasks come back quickly.
    BROKER_VISIBILITY_TIMEOUT_S="15",
    PROGRESS_MIN_INTERVAL_S="0",
    RATE_LIMIT_PER_MINUTE="0",  # tests poll hard; the limit itself is tested with per-key limits
    MAX_QUEUED_PER_KEY="0",  # tests queue many tasks no worker runs; the cap itself is tested with a low one
    WEBHOOK_ALLOW_PRIVATE="true",  # the webhook receiver in the tests listens on 127.0.0.1
)


def pytest_report_header(config) -> list[str]:
    database = ("SQLite (no PostgreSQL configured, answering or installed)" if SERVER_DATABASE_URL is None
                else f"throwaway PostgreSQL on port {THROWAWAY_POSTGRES.port}" if THROWAWAY_POSTGRES
                else sa.make_url(SERVER_DATABASE_URL).render_as_string())
    redis = "embedded redis-server" if EMBEDDED_REDIS else SERVER_REDIS_URL
    return [f"backendai test services: database {database}; redis {redis}"]


def pytest_collection_modifyitems(config, items) -> None:
    if not USES_SQLITE:
        return
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=f"{item.nodeid} needs PostgreSQL; this run uses SQLite "
                                                    f"({SQLITE_BECAUSE})"))


def _server_engine() -> sa.Engine:
    return sa.create_engine(SERVER_DATABASE_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def _lock_a_redis_db() -> str:
    """A numbered Redis db that no other test run or benchmark holds (runs may overlap on one machine)."""
    import redis

    server = (EMBEDDED_REDIS.url if EMBEDDED_REDIS else SERVER_REDIS_URL).rsplit("/", 1)[0]
    for number in range(1, 16):
        client = redis.Redis.from_url(f"{server}/{number}")
        if client.set(REDIS_LOCK, TEST_DATABASE, nx=True, ex=REDIS_LOCK_TTL_S):
            return f"{server}/{number}"
    raise RuntimeError(f"all Redis dbs 1-15 on {server} are held by other test runs ({REDIS_LOCK})")


def _use_redis(url: str) -> None:
    """Point this process, and every process it starts from now on, at `url`. Modules read the Redis URL when
    imported (the Celery app) or keep the settings object (fixtures, the app): those are updated in place."""
    from tasks.celery_app import celery_app
    from tasks.config import get_settings
    from tasks.redis_client import redis_client

    os.environ["REDIS_URL"] = url
    get_settings().redis_url = url
    redis_client.cache_clear()
    celery_app.conf.update(broker_url=url, result_backend=url)


@pytest.fixture(scope="session")
def settings():
    from tasks.config import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def database(settings) -> Iterator[str]:
    """The per-run Postgres database, created on first use, migrated to the newest schema, dropped at the end."""
    from tasks.db import get_engine, migrate

    if USES_SQLITE:
        migrate()
        yield settings.effective_database_url
        get_engine().dispose()
        return
    if THROWAWAY_POSTGRES:
        THROWAWAY_POSTGRES.start()
    try:
        with _server_engine().connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{TEST_DATABASE}"'))
        try:
            migrate()
            yield settings.effective_database_url
        finally:
            get_engine().dispose()
            with _server_engine().connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{TEST_DATABASE}" WITH (FORCE)'))
    finally:
        if THROWAWAY_POSTGRES:
            THROWAWAY_POSTGRES.stop()


@pytest.fixture(scope="session")
def redis_client():
    """The per-run Redis db, locked on first use and emptied before and after (which also releases the lock)."""
    import redis

    if EMBEDDED_REDIS:
        EMBEDDED_REDIS.start()
    try:
        url = _lock_a_redis_db()
        client = redis.Redis.from_url(url)
        try:
            _use_redis(url)
            client.flushdb()
            client.set(REDIS_LOCK, TEST_DATABASE, ex=REDIS_LOCK_TTL_S)
            yield client
        finally:
            client.flushdb()
    finally:
        if EMBEDDED_REDIS:
            EMBEDDED_REDIS.stop()


@pytest.fixture(scope="session")
def api_client(database, redis_client):
    """The real FastAPI app in-process, on the real database and Redis (for checks that need no worker)."""
    from fastapi.testclient import TestClient

    from serve.app import create_app

    with TestClient(create_app()) as client:
        yield client


@pytest.fixture
def uvicorn_api(database, redis_client, tmp_path):
    """Start the real API under plain uvicorn with some settings changed; yields a function env → base URL."""
    import subprocess
    import sys
    import time

    import httpx

    processes = []

    def start(**env_overrides: str) -> str:
        port = free_port()
        env = {**os.environ, "DATA_DIR": str(tmp_path), **env_overrides}
        processes.append(subprocess.Popen([sys.executable, "-m", "uvicorn", "serve.app:app", "--port", str(port)],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60  # a loaded 2-core machine takes a while to import the app
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/openapi.json", timeout=1)
                return url
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("uvicorn did not start")

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def stack(database, redis_client, settings):
    """Ray head, `serve deploy` of config/serve.local.yaml, a consumer per queue, the API under uvicorn."""
    from cli.stack import Stack

    with Stack(settings, echo=lambda line: print(line, flush=True)) as running:
        yield running


@pytest.fixture(scope="session")
def http(stack) -> Iterator:
    import httpx

    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="session")
def astronaut_png(astronaut) -> bytes:
    return png_bytes(astronaut)
