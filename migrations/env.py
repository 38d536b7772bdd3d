"""Alembic environment: runs the revisions in ``versions/`` against one URL.

The URL is, in order: ``-x url=...``, the ``sqlalchemy.url`` option set by
``server.db.alembic_config``, or the server Settings (env ``OTA_*`` /
``DATABASE_URL``).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from server.orm import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    x = context.get_x_argument(as_dictionary=True)
    if x.get("url"):
        return x["url"]
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from server.config import Settings

    return Settings().sqlalchemy_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url())
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
