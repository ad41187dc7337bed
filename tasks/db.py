"""Database engine, sessions and migrations."""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlmodel import Session

from tasks.config import get_settings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


@lru_cache
def get_engine() -> sa.Engine:
    url = get_settings().effective_database_url
    if url.startswith("sqlite"):
        _make_sqlite_folder(url)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # Past the pool's size SQLAlchemy opens and closes an overflow connection per use (a new Postgres backend each);
    # the connections kept stay few, since every consumer, API worker and beat holds a pool of its own.
    return sa.create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=16,
                            connect_args={"application_name": application_name()})


def application_name() -> str:
    """What `pg_stat_activity` shows for this process's connections: the program and its pid (an operator, or the
    connection-kill test, can tell consumers from the API)."""
    return f"backendai:{Path(sys.argv[0]).name or 'python'}:{os.getpid()}"[:63]


def _make_sqlite_folder(url: str) -> None:
    Path(sa.make_url(url).database or "").parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the API read while a worker writes progress; several processes share the file.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@contextmanager
def session_scope() -> Iterator[Session]:
    with Session(get_engine(), expire_on_commit=False) as session:
        yield session


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url or get_settings().effective_database_url)
    return config


def migrate(database_url: str | None = None) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    config = alembic_config(database_url)
    url = config.get_main_option("sqlalchemy.url") or ""
    if url.startswith("sqlite"):
        _make_sqlite_folder(url)
    command.upgrade(config, "head")
