"""Opening the store: an engine for the URL (SQLite file by default, PostgreSQL by URL), the
schema brought to the newest migration at open (``alembic upgrade head``, no alembic.ini needed),
and sessions.

Concurrency: several processes may open one store at once. On PostgreSQL the upgrade runs under an
advisory lock; on SQLite (one host by nature) under a file lock beside the database. SQLite runs
in WAL mode with a busy timeout, so a reader never blocks the sync's writer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from labelloop.errors import ConfigError, StoreError
from labelloop.fsutil import file_lock

if TYPE_CHECKING:
    from labelloop.settings import Settings
    from labelloop.sync.blobs import BlobStore

log = logging.getLogger("labelloop.store")
MIGRATIONS = Path(__file__).parent / "migrations"
_PG_LOCK = 0x6C6C_5354  # advisory lock id for migrations ("llST")
WRITE_OPTION = "labelloop_write"  # execution option: this transaction writes


def default_url(settings: Settings) -> str:
    """The store URL: ``settings.store.url``, else a SQLite file ``store.db`` in the data dir."""
    if settings.store.url:
        return settings.store.url
    return f"sqlite:///{settings.data_dir / 'store.db'}"


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def make_engine(url: str) -> Engine:
    try:
        u = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"store URL {url!r} is not a database URL (LABELLOOP_STORE_URL); e.g. "
            "sqlite:////path/store.db or postgresql+psycopg://user@host/db"
        ) from None
    if u.drivername == "postgresql":  # psycopg 3 is the driver we ship, not psycopg2
        u = u.set(drivername="postgresql+psycopg")
    try:
        if u.get_backend_name() == "sqlite":
            if u.database and u.database != ":memory:":
                Path(u.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(u, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
            # let SQLAlchemy, not pysqlite, decide when a transaction begins; a write transaction
            # takes the write lock at once (BEGIN IMMEDIATE), so a second writer waits for it
            # (busy_timeout) instead of failing when its read snapshot turns stale
            event.listen(engine, "begin", _sqlite_begin)
            return engine
        # no server-side prepared statements: their generic plans made IN-list lookups ~50x slower
        return create_engine(u, pool_pre_ping=True, connect_args={"prepare_threshold": None})
    except NoSuchModuleError:
        raise ConfigError(f"store URL {safe_url(url)}: no driver for {u.drivername!r}") from None


def _sqlite_begin(conn) -> None:  # type: ignore[no-untyped-def]
    write = conn.get_execution_options().get(WRITE_OPTION)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    dbapi_conn.isolation_level = None  # autocommit at the driver; transactions via the begin hook
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _alembic_config():  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (``alembic upgrade head``), under a lock between processes."""
    from alembic import command

    if revision == "head" and current_revision(engine) == head_revision():
        return
    cfg = _alembic_config()

    def upgrade(conn) -> None:  # type: ignore[no-untyped-def]
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK})
            try:
                conn.commit()
                upgrade(conn)
                conn.commit()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK})
                conn.commit()
    else:
        db = engine.url.database
        lock = Path(f"{db}.lock") if db and db != ":memory:" else None
        if lock is None:
            with engine.begin() as conn:
                upgrade(conn)
        else:
            with file_lock(lock), engine.begin() as conn:
                upgrade(conn)
    log.info("store %s migrated to %s", safe_url(str(engine.url)), revision)


class Store:
    """The dataset store: a database (metadata, revisions, versions) and a blob store (bytes).

    ``Store.open()`` with no arguments uses the settings (``settings.store.url`` /
    ``settings.store.blob_root``, defaults in the data dir). Use ``with store.transaction() as s``
    for writes (committed at the end, rolled back on error) and ``with store.session() as s`` for
    reads.
    """

    def __init__(self, engine: Engine, blobs: BlobStore) -> None:
        self.engine = engine
        self.blobs = blobs
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._writers = sessionmaker(engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False)

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        blob_root: str | None = None,
        settings: Settings | None = None,
        migrate_schema: bool = True,
    ) -> Store:
        from labelloop.sync.blobs import BlobStore

        if url is None or blob_root is None:
            if settings is None:
                from labelloop.settings import load_settings

                settings = load_settings()
            url = url or default_url(settings)
            blob_root = blob_root or settings.store.blob_root or str(settings.data_dir / "blobs")
        engine = make_engine(url)
        try:
            if migrate_schema:
                migrate(engine)
            else:
                with engine.connect():
                    pass
        except (OperationalError, DBAPIError) as e:
            engine.dispose()
            raise StoreError(f"store {safe_url(url)} is unreachable: {_first_line(e)}") from e
        return cls(engine, BlobStore(blob_root))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def url(self) -> str:
        return safe_url(str(self.engine.url))

    def session(self) -> Session:
        return self._sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One write transaction: committed when the block ends, rolled back when it raises. On
        SQLite it holds the write lock from its start (other writers wait, readers do not)."""
        with self._writers() as s, s.begin():
            yield s

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]
