"""Database engine, sessions and migrations for the cloud.

One code path for SQLite (the laptop default) and PostgreSQL (at scale):

* SQLite runs in WAL mode with a busy timeout and foreign keys on. SQLAlchemy, not the
  ``sqlite3`` driver, emits ``BEGIN`` (the "pysqlite serializable" recipe), and write
  transactions start with ``BEGIN IMMEDIATE``: the write lock is taken up front, so
  concurrent writers queue on ``busy_timeout`` instead of failing half-way with
  "database is locked". Read-only sessions (:func:`read_session`) use a plain
  ``BEGIN`` and never wait for writers (WAL).
* PostgreSQL runs through psycopg 3 at READ COMMITTED; correctness under concurrency
  comes from conditional updates (see :mod:`cloud.ledger`), not from isolation level.

Nothing here is built at import time: the composition root calls :func:`make_engine`
and :func:`upgrade`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

__all__ = [
    "MIGRATIONS",
    "dialect_insert",
    "is_sqlite",
    "make_engine",
    "read_session",
    "upgrade",
    "write_session",
]

MIGRATIONS = "cloud:migrations"
_READ_ONLY = "packline_read_only"


def is_sqlite(bind: Engine | Connection) -> bool:
    return bind.dialect.name == "sqlite"


def dialect_insert(bind: Engine | Connection, table: sa.Table) -> postgresql.Insert | sqlite_dialect.Insert:
    """``INSERT`` with ``ON CONFLICT`` support for the bind's dialect (both speak the same clause)."""
    if bind.dialect.name == "postgresql":
        return postgresql.insert(table)
    if bind.dialect.name == "sqlite":
        return sqlite_dialect.insert(table)
    raise NotImplementedError(f"the cloud runs on SQLite or PostgreSQL, not {bind.dialect.name}")


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20, busy_timeout_ms: int = 30_000) -> Engine:
    """Build the cloud's engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://…``).

    Pool sizes fit a threaded server (uvicorn's threadpool runs sync handlers on up to 40
    threads): ``pool_size`` connections are kept, ``max_overflow`` more may be opened.
    """
    u = sa.engine.make_url(url)
    if u.get_backend_name() == "sqlite":
        if not u.database or u.database == ":memory:" or "mode=memory" in str(u):
            raise ValueError("the cloud needs a SQLite file (each pooled connection to :memory: is its own database)")
        Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            u,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=False,
            connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
        )
        _configure_sqlite(engine, busy_timeout_ms)
        return engine
    if u.get_backend_name() == "postgresql" and u.get_driver_name() in ("psycopg2", "pg8000", "asyncpg"):
        raise ValueError(f"use postgresql+psycopg:// (psycopg 3) for the cloud database, not {u.drivername}")
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    return sa.create_engine(
        u,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


_HOLDS_WRITE_LOCK = "packline_holds_write_lock"


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # sqlite3 must not emit BEGIN itself (it skips it for SELECT and DDL); we do, below.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cur.execute("PRAGMA foreign_keys=ON")
            # FULL: a commit is on disk before it returns. The ingest acks a station's event after
            # its commit and the station then drops it from its outbox; with NORMAL a power cut
            # could lose an acked order.packed for good.
            cur.execute("PRAGMA synchronous=FULL")
        finally:
            cur.close()

    # SQLite's busy handler makes waiting writers sleep and retry (up to 100 ms a nap), so under
    # load one thread can starve behind others. Writers of this process queue on a lock instead
    # and are woken the moment the previous one finishes; other processes still meet busy_timeout.
    write_lock = threading.Lock()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_READ_ONLY):
            conn.exec_driver_sql("BEGIN")
            return
        if not write_lock.acquire(timeout=busy_timeout_ms / 1000):
            raise sa.exc.OperationalError("BEGIN IMMEDIATE", {}, TimeoutError("database write lock timeout"))
        conn.info[_HOLDS_WRITE_LOCK] = True
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _release(conn.info)
            raise

    def _release(info: dict[Any, Any]) -> None:
        if info.pop(_HOLDS_WRITE_LOCK, False):
            write_lock.release()

    event.listen(engine, "commit", lambda conn: _release(conn.info))
    event.listen(engine, "rollback", lambda conn: _release(conn.info))
    # a connection returned to the pool mid-transaction is rolled back by the pool, not by Connection
    event.listen(engine.pool, "reset", lambda _dbapi, record, _reset_state: _release(record.info))
    event.listen(engine.pool, "invalidate", lambda _dbapi, record, *_a: _release(record.info))


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """One write transaction: commit on success, roll back on any exception.

    On SQLite the transaction holds the write lock from its first statement
    (``BEGIN IMMEDIATE``), so everything read inside it is current.
    """
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A read-only transaction that never queues behind writers."""
    with Session(engine, expire_on_commit=False) as session:
        session.connection(execution_options={_READ_ONLY: True})  # before BEGIN: see _on_begin
        try:
            yield session
        finally:
            session.rollback()


def upgrade(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (programmatic ``alembic upgrade``); safe to run at every
    start and from several processes at once (SQLite: write lock; PostgreSQL: advisory lock)."""
    from alembic import command
    from alembic.config import Config

    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        cfg = Config()
        cfg.set_main_option("script_location", MIGRATIONS)
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()
