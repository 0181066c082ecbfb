"""Alembic environment for the dataset store. Run programmatically by
:func:`labelloop.sync.store.engine.migrate` (which hands over its connection); it also works
from the ``alembic`` command with ``-x url=...`` for a maintainer writing a new migration."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from labelloop.sync.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # ALTER on SQLite needs batch mode
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
