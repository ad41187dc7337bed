"""The Alembic migrations build the v1 task table, its statuses and indexes on SQLite and on Postgres."""

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tasks.db import migrate


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def migrated_url(request, tmp_path, database) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
        migrate(url)
        migrate(url)  # idempotent
        return url
    return database


def test_table_has_the_v1_fields_and_indexes(migrated_url):
    inspector = sa.inspect(sa.create_engine(migrated_url))
    columns = {column["name"] for column in inspector.get_columns("ai_tasks")}
    v1_fields = {"id", "celery_task_id", "task_type", "status", "prompt", "input_image", "parameters",
                   "result_image", "result_data", "progress", "error_message", "retry_count", "max_retries",
                   "created_at", "started_at", "completed_at", "processing_time"}
    assert v1_fields <= columns
    indexes = {tuple(index["column_names"]) for index in inspector.get_indexes("ai_tasks")}
    assert {("status", "created_at"), ("celery_task_id",)} | LOOKUP_INDEXES <= indexes


# Migration 0007: the lookups requests (and the expiry job) make.
LOOKUP_INDEXES = {("result_image",), ("task_type", "status", "created_at"), ("task_type", "status", "completed_at"),
                  ("api_key_id", "created_at", "id"), ("submitter", "status"), ("completed_at",)}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def scratch_url(request, tmp_path, database) -> Iterator[str]:
    """An empty database of its own, to migrate up and down without touching the run's."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'scratch.db'}"
        return
    url = sa.make_url(database)
    scratch = f"{url.database}_scratch"
    server = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with server.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{scratch}"'))
    try:
        yield url.set(database=scratch).render_as_string(hide_password=False)
    finally:
        with server.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))


def test_the_lookup_indexes_migrate_down_and_up_again(scratch_url):
    from alembic import command

    from tasks.db import alembic_config

    def indexes() -> set[tuple[str, ...]]:
        engine = sa.create_engine(scratch_url, poolclass=sa.pool.NullPool)
        return {tuple(index["column_names"]) for index in sa.inspect(engine).get_indexes("ai_tasks")}

    migrate(scratch_url)
    assert LOOKUP_INDEXES <= indexes()
    command.downgrade(alembic_config(scratch_url), "0006")
    assert not LOOKUP_INDEXES & indexes() and ("api_key_id",) in indexes()
    migrate(scratch_url)
    assert LOOKUP_INDEXES <= indexes()
    command.check(alembic_config(scratch_url))


INSERT = sa.text("INSERT INTO ai_tasks (id, task_type, status, prompt, parameters, progress, retry_count, max_retries, "
                 "created_at, updated_at) VALUES (:id, :task_type, :status, 'p', '{}', 0, 0, 3, CURRENT_TIMESTAMP, "
                 "CURRENT_TIMESTAMP)")


def test_database_refuses_a_status_outside_the_choices(migrated_url):
    engine = sa.create_engine(migrated_url)
    with engine.begin() as connection:
        connection.execute(INSERT, {"id": uuid.uuid4().hex, "task_type": "background_removal", "status": "PENDING"})
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.execute(INSERT, {"id": uuid.uuid4().hex, "task_type": "background_removal", "status": "HALF_DONE"})


def test_a_task_type_no_migration_names_is_stored(migrated_url):
    """The registry says which types exist: a new one needs no migration."""
    engine = sa.create_engine(migrated_url)
    with engine.begin() as connection:
        connection.execute(INSERT, {"id": uuid.uuid4().hex, "task_type": "a_type_added_later", "status": "PENDING"})


def test_migrations_match_the_models(tmp_path):
    from alembic import command

    from tasks.db import alembic_config

    url = f"sqlite:///{tmp_path / 'check.db'}"
    migrate(url)
    command.check(alembic_config(url))  # raises if the models hold changes no migration makes
