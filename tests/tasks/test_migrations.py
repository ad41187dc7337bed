"""The Alembic migration builds the seed's table, choices and indexes on SQLite and on Postgres."""

import uuid

import pytest
import sqlalchemy as sa

from tasks.db import migrate


@pytest.fixture(params=["sqlite", "postgres"])
def migrated_url(request, tmp_path, database) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
        migrate(url)
        migrate(url)  # idempotent
        return url
    return database


def test_table_has_the_seed_fields_and_indexes(migrated_url):
    inspector = sa.inspect(sa.create_engine(migrated_url))
    columns = {column["name"] for column in inspector.get_columns("ai_tasks")}
    seed_fields = {"id", "celery_task_id", "task_type", "status", "prompt", "input_image", "parameters",
                   "result_image", "result_data", "progress", "error_message", "retry_count", "max_retries",
                   "created_at", "started_at", "completed_at", "processing_time"}
    assert seed_fields <= columns
    indexes = {tuple(index["column_names"]) for index in inspector.get_indexes("ai_tasks")}
    assert {("status", "created_at"), ("celery_task_id",)} <= indexes


def test_database_refuses_a_status_outside_the_choices(migrated_url):
    engine = sa.create_engine(migrated_url)
    insert = sa.text("INSERT INTO ai_tasks (id, task_type, status, prompt, parameters, progress, retry_count, "
                     "max_retries, created_at, updated_at) VALUES (:id, 'background_removal', :status, 'p', '{}', "
                     "0, 0, 3, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)")
    with engine.begin() as connection:
        connection.execute(insert, {"id": uuid.uuid4().hex, "status": "PENDING"})
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.execute(insert, {"id": uuid.uuid4().hex, "status": "HALF_DONE"})


def test_migrations_match_the_models(tmp_path):
    from alembic import command

    from tasks.db import alembic_config

    url = f"sqlite:///{tmp_path / 'check.db'}"
    migrate(url)
    command.check(alembic_config(url))  # raises if the models hold changes no migration makes
