"""Alembic environment: the URL comes from the caller's config, else from the settings."""

import sqlalchemy as sa
from alembic import context
from sqlmodel import SQLModel

import tasks.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from tasks.config import get_settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().effective_database_url
target_metadata = SQLModel.metadata


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
