"""Fast writes of many rows, per database, in the caller's transaction: PostgreSQL gets ``COPY``
(about 5x faster than an executemany of the same rows), SQLite an executemany. Ids of new rows are
allocated up front (a sequence on PostgreSQL; on SQLite, the only writer holds the write lock),
so the hot path needs no ``RETURNING``.

Only for fresh rows: ``COPY`` cannot skip conflicts, so callers read what exists first (one query
per batch) and insert the rest. A concurrent writer that inserted the same key in between makes
the transaction fail as a whole (IntegrityError -> StoreError, retryable), never half-write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, Table, func, select, text
from sqlalchemy.orm import Session


def is_postgres(s: Session) -> bool:
    return s.get_bind().dialect.name == "postgresql"


def next_ids(s: Session, table: Table, n: int) -> list[int]:
    """``n`` fresh values of ``table``'s integer primary key ``id``."""
    if n <= 0:
        return []
    if is_postgres(s):
        rows = s.execute(
            text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
            {"t": table.name, "n": n},
        )
        return [int(r[0]) for r in rows]
    start = int(s.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()) + 1
    return list(range(start, start + n))


def insert_rows(s: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (dicts with the same keys) into ``table``."""
    if not rows:
        return
    if not is_postgres(s):
        _sqlite_executemany(s, table, rows)
        return
    cols = list(rows[0])
    json_cols = {c for c in cols if isinstance(table.c[c].type, JSON)}
    raw = s.connection().connection.driver_connection
    names = ", ".join(f'"{c}"' for c in cols)
    with raw.cursor() as cur, cur.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:  # type: ignore[union-attr]
        for r in rows:
            copy.write_row([json.dumps(r[c]) if c in json_cols and r[c] is not None else r[c] for c in cols])


def _sqlite_executemany(s: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """The DBAPI's executemany with the columns' own bind processors (what SQLAlchemy applies), without
    its per-row parameter bookkeeping (half the time of a 10,000-row insert)."""
    conn = s.connection()
    cols = list(rows[0])
    procs = [table.c[c].type.bind_processor(conn.dialect) for c in cols]
    names = ", ".join(f'"{c}"' for c in cols)
    sql = f'INSERT INTO "{table.name}" ({names}) VALUES ({", ".join("?" * len(cols))})'
    params = [tuple(p(r[c]) if p else r[c] for c, p in zip(cols, procs, strict=True)) for r in rows]
    conn.exec_driver_sql(sql, params)
