"""Alembic environment: run by :func:`tiller.feedback.db.init_db` (``alembic upgrade head``)."""

from __future__ import annotations

from alembic import context

from tiller.feedback.db import make_engine
from tiller.feedback.models import Base

config = context.config


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as connection:
            # render_as_batch: SQLite cannot ALTER most things, batch mode rebuilds the table instead.
            context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
