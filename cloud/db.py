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

import re
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
    "check_database_url",
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


_EXPECTED = "expected sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"


def _shown(url: str) -> str:
    """``url`` for an error message, with any password masked."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def check_database_url(url: str) -> sa.engine.URL:
    """Parse and check a cloud database URL without connecting or creating anything.

    Raises ValueError (bad input) naming what is wrong: not a URL, a database the cloud does
    not run on, a driver other than psycopg 3, a SQLite URL without a file, a driver that is
    not installed. Whether the server answers is for the first connection to tell
    (``OperationalError``).
    """
    try:
        u = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise ValueError(f"bad database URL {_shown(url)!r}: {_EXPECTED}") from None
    backend = u.get_backend_name()
    if backend == "sqlite":
        if u.get_driver_name() not in ("pysqlite", "sqlite"):
            raise ValueError(f"bad database URL {_shown(url)!r}: use plain sqlite:///PATH, not {u.drivername}")
        if not u.database or u.database == ":memory:" or "mode=memory" in str(u):
            raise ValueError(f"bad database URL {_shown(url)!r}: the cloud needs a SQLite file, e.g. "
                             "sqlite:///cloud.db (each pooled connection to :memory: is its own database)")
        return u
    if backend in ("postgresql", "postgres"):
        if u.drivername in ("postgresql", "postgres"):
            u = u.set(drivername="postgresql+psycopg")
        if u.get_driver_name() != "psycopg":
            raise ValueError(f"bad database URL {_shown(url)!r}: use postgresql+psycopg:// (psycopg 3) "
                             f"for the cloud database, not {u.drivername}")
        try:
            u.get_dialect().import_dbapi()
        except ImportError as e:
            raise ValueError(f"database URL {_shown(url)!r} needs the psycopg driver, which is not "
                             f"installed ({e}): pip install 'psycopg[binary]'") from None
        return u
    raise ValueError(f"bad database URL {_shown(url)!r}: the cloud runs on SQLite or PostgreSQL, "
                     f"not {u.drivername!r}; {_EXPECTED}")


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20, busy_timeout_ms: int = 30_000) -> Engine:
    """Build the cloud's engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://…``).

    A bad URL raises ValueError (see :func:`check_database_url`) before anything is created.
    Pool sizes fit a threaded server (uvicorn's threadpool runs sync handlers on up to 40
    threads): ``pool_size`` connections are kept, ``max_overflow`` more may be opened.
    """
    u = check_database_url(url)
    if u.get_backend_name() == "sqlite":
        assert u.database
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
