"""The dataset store: SQLAlchemy models, Alembic migrations (run at open), sessions.

``Store.open()`` (settings: ``settings.store.url``, default a SQLite file in the data dir;
``settings.store.blob_root`` for image bytes). Writing a pull: :func:`labelloop.sync.ingest.ingest`.
"""

from labelloop.sync.store.engine import Store, default_url, migrate

__all__ = ["Store", "default_url", "migrate"]
