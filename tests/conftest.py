"""Shared fixtures.

Databases: every DB-facing test takes ``db_url`` and runs on SQLite, and on PostgreSQL
when ``PACKLINE_TEST_POSTGRES_URL`` is set (``.ci/run`` sets it). Each test gets a fresh
database. Without the variable the PostgreSQL variant skips locally and FAILS under CI=true.

Brokers: ``mqtt_url`` is the broker for MQTT tests: ``PACKLINE_TEST_MQTT_URL`` when set
(CI: the Mosquitto at 127.0.0.1:1883), else a private ``mosquitto`` on a free port, else the
embedded MQTT 3.1.1 broker.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import in_ci, need

POSTGRES_ENV = "PACKLINE_TEST_POSTGRES_URL"
MQTT_ENV = "PACKLINE_TEST_MQTT_URL"


def _postgres_db(admin_url: str) -> Iterator[str]:
    import sqlalchemy as sa

    name = f"pl_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # pragma: no cover - environment problem
        admin.dispose()
        need(False, f"PostgreSQL at {admin_url} is not reachable: {e}")
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL (SQLite file, or a new PostgreSQL database)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cloud.db'}"
        return
    admin_url = os.environ.get(POSTGRES_ENV)
    need(bool(admin_url), f"{POSTGRES_ENV} is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    assert admin_url
    yield from _postgres_db(admin_url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cloud.db'}"


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"packline: CI={in_ci()} postgres={'on' if os.environ.get(POSTGRES_ENV) else 'off (sqlite only)'} "
        f"mqtt={os.environ.get(MQTT_ENV) or 'private broker'}"
    ]


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """(url, protocol) of the broker for MQTT tests; protocol 5 or 311."""
    url = os.environ.get(MQTT_ENV)
    if url:
        yield url, 5
        return
    from sync.broker import BrokerError, EmbeddedBroker, MosquittoProcess

    if shutil.which("mosquitto"):
        try:
            with MosquittoProcess(tmp_path_factory.mktemp("mosquitto")) as m:
                yield m.url, 5
            return
        except BrokerError as e:
            need(False, f"private mosquitto failed to start: {e}")
    need(not in_ci(), "CI must run MQTT tests against Mosquitto")
    with EmbeddedBroker() as b:
        yield b.url, 311


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[object]:
    """A private mosquitto this test may stop, kill and restart (same port, same persistence)."""
    need(shutil.which("mosquitto") is not None, "mosquitto is not on PATH")
    from sync.broker import MosquittoProcess

    m = MosquittoProcess(tmp_path / "mosquitto")
    m.start()
    try:
        yield m
    finally:
        m.stop()
