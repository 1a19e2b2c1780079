"""The Alembic migrations produce exactly the models' schema, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cloud.db import make_engine, upgrade
from cloud.models import metadata


def _diffs(engine: sa.engine.Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))


def test_upgrade_builds_the_model_schema_and_is_idempotent(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade(db_url)  # by URL, as `packline cloud serve` does at startup
        tables = set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
        assert tables == set(metadata.tables)
        assert _diffs(engine) == []
        with engine.connect() as conn:
            head = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
        upgrade(engine)  # again: a no-op
        assert _diffs(engine) == []
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
    finally:
        engine.dispose()


def test_sqlite_engine_settings(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert (conn.exec_driver_sql("PRAGMA busy_timeout").scalar() or 0) >= 1000
    finally:
        engine.dispose()


def test_migrations_ship_with_the_package() -> None:
    from importlib import resources

    versions = resources.files("cloud.migrations").joinpath("versions")
    assert versions.joinpath("0001_initial.py").is_file()
    assert resources.files("cloud.migrations").joinpath("env.py").is_file()


def test_sqlite_readers_do_not_queue_behind_a_writer(sqlite_url: str) -> None:
    """Writers take the lock at BEGIN IMMEDIATE; read sessions use a plain BEGIN and see the last commit."""
    import threading
    import time

    from cloud.db import read_session, write_session
    from cloud.models import Site

    upgrade(sqlite_url)
    engine = make_engine(sqlite_url, busy_timeout_ms=5000)
    try:
        with write_session(engine) as s:
            s.add(Site(id="S", name="old", country="DE", postal_code="1", city="c", street="s", lat=0, lon=0,
                       timezone="UTC"))
        locked, release = threading.Event(), threading.Event()

        def writer() -> None:
            with write_session(engine) as s:
                s.connection().execute(sa.text("UPDATE sites SET name = 'new'"))
                locked.set()
                release.wait(10)

        t = threading.Thread(target=writer)
        t.start()
        assert locked.wait(10)
        started = time.monotonic()
        with read_session(engine) as s:
            assert s.connection().execute(sa.text("SELECT name FROM sites")).scalar_one() == "old"
        assert time.monotonic() - started < 1.0
        release.set()
        t.join(10)
        with read_session(engine) as s:
            assert s.connection().execute(sa.text("SELECT name FROM sites")).scalar_one() == "new"
    finally:
        engine.dispose()


def test_a_sqlite_cloud_database_commits_durably(sqlite_url: str) -> None:
    """WAL with synchronous=FULL: an event the ingest acked survives a power cut (NORMAL may lose it)."""
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    finally:
        engine.dispose()
