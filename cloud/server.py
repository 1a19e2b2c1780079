"""The cloud process's composition root: API (uvicorn) + MQTT ingest + webhook delivery.

``packline cloud serve`` and the demo both build a :class:`CloudServer`; tests can too.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlalchemy import Engine, func, select
from sqlmodel import Session

from cloud.api.app import create_app
from cloud.db import check_database_url, make_engine, upgrade
from cloud.ingest import SqlCloudStore
from cloud.ledger.store import check_invariants
from cloud.loader import load_dir, read_seed
from cloud.models import Order, WebhookDelivery
from cloud.webhooks import WebhookDispatcher
from sync.link import Bus, CloudLink
from sync.mqtt import PahoBus
from sync.settings import Settings, parse_mqtt_url

__all__ = ["CloudProcess", "CloudServer", "load_folder", "migrate", "serve"]

log = logging.getLogger("packline.cloud")


def migrate(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def load_folder(database_url: str, folder: Path) -> dict[str, dict[str, Any]]:
    read_seed(folder)  # a wrong folder is refused before any database is created or migrated
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        return load_dir(engine, folder)
    finally:
        engine.dispose()


class CloudProcess:
    """The cloud's moving parts on a given engine and bus: API app, MQTT ingest, webhook delivery.
    No network listener of its own (tests drive ``app`` with TestClient)."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine,
        bus: Bus,
        shared_group: str | None = None,
        webhook_interval_s: float = 0.2,
        migrate: bool = True,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.bus = bus
        self.store = SqlCloudStore(engine)
        self.link = CloudLink(bus=bus, store=self.store, shared_group=shared_group)
        self.app = create_app(settings, engine=engine, on_feed=self.link.notify_feed, migrate=migrate)
        self.http = httpx.Client(timeout=settings.webhook_timeout_s)
        self.webhooks = WebhookDispatcher(engine, self.http, base_delay_s=1.0)
        self.webhook_interval_s = webhook_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> CloudProcess:
        self.link.start()
        self._thread = threading.Thread(
            target=lambda: self.webhooks.run_forever(self._stop, self.webhook_interval_s),
            name="packline-cloud-webhooks", daemon=True,
        )
        self._thread.start()
        return self

    def undelivered_webhooks(self) -> int:
        """Messages still to be attempted (not delivered, not given up)."""
        with Session(self.engine) as s:
            return int(s.execute(
                select(func.count()).select_from(WebhookDelivery).where(
                    WebhookDelivery.delivered_at.is_(None),  # type: ignore[union-attr]
                    WebhookDelivery.next_attempt_at.is_not(None),  # type: ignore[union-attr]
                )
            ).scalar_one())

    def drain_webhooks(self, timeout_s: float) -> bool:
        """Wait until every webhook message is delivered or given up (the demo summarises after)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.webhooks.deliver_due()
            if self.undelivered_webhooks() == 0:
                return True
            time.sleep(0.05)
        return False

    def ledger_problems(self) -> list[str]:
        with Session(self.engine) as s:
            return check_invariants(s)

    def is_empty(self) -> bool:
        with Session(self.engine) as s:
            return int(s.execute(select(func.count()).select_from(Order)).scalar_one()) == 0

    def stop(self) -> None:
        self._stop.set()
        self.link.stop()
        if self._thread:
            self._thread.join(timeout=5)
        self.http.close()


class CloudServer:
    """``CloudProcess`` + a real listener (uvicorn) + a paho MQTT connection: start() / stop()."""

    def __init__(
        self,
        settings: Settings,
        *,
        database_url: str,
        mqtt_url: str,
        protocol: int = 5,
        host: str = "127.0.0.1",
        port: int = 8000,
        client_id: str | None = None,
    ) -> None:
        self.host = host
        self.port = port  # 0: any free port; the bound one is here once start() returns
        self.engine: Engine = make_engine(database_url)
        try:
            upgrade(self.engine)
            # no persistent session: with a shared subscription a dead worker's session would hoard
            # its share of events; the stations' outboxes resend whatever was in flight
            # workers of one deployment share the ingest through one group; another deployment on the
            # same broker (another group) gets its own copy instead of stealing this one's events
            group = settings.cloud_group
            client_id = client_id or f"{group}-{uuid.uuid4().hex[:8]}"
            self.bus = PahoBus(parse_mqtt_url(mqtt_url), client_id, protocol=protocol, persistent=False)
            self.process = CloudProcess(settings, engine=self.engine, bus=self.bus,
                                        shared_group=group if protocol == 5 else None, migrate=False)
        except BaseException:
            self.engine.dispose()
            raise
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def database_kind(self) -> str:
        return self.engine.dialect.name

    def start(self, *, wait_s: float = 15.0) -> None:
        config = uvicorn.Config(self.process.app, host=self.host, port=self.port, log_level="warning",
                                access_log=False, lifespan="on")
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uvicorn.run, name="packline-cloud-api", daemon=True)
        self._thread.start()
        self.process.start()
        self.bus.start()
        started = time.monotonic()
        deadline = started + wait_s
        while not self._uvicorn.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise ConnectionError(f"the API did not start on {self.api_url} (see the log above)")
            time.sleep(0.02)
        self.port = self._bound_port() or self.port
        if not self.bus.wait_connected(max(0.1, deadline - time.monotonic())):
            reason = self.bus.why_not_connected(round(time.monotonic() - started, 1))
            raise ConnectionError(f"no connection to the MQTT broker at {self.bus.url}: {reason}")

    def _bound_port(self) -> int | None:
        """The port uvicorn listens on (the real one when asked for port 0)."""
        for server in getattr(self._uvicorn, "servers", None) or []:
            for sock in server.sockets or []:
                name = sock.getsockname()
                if isinstance(name, tuple):
                    return int(name[1])
        return None

    def load_dir(self, folder: Path) -> dict[str, dict[str, Any]]:
        return load_dir(self.engine, folder)

    def stop(self) -> None:
        if self._uvicorn:
            self._uvicorn.should_exit = True
        self.process.stop()
        with contextlib.suppress(Exception):
            self.bus.stop()
        if self._thread:
            self._thread.join(timeout=5)
        self.engine.dispose()


def serve(settings: Settings, *, host: str, port: int) -> None:
    """``packline cloud serve``: run until interrupted (KeyboardInterrupt; the ``packline`` command
    turns SIGTERM into one); start a private broker if none is configured.

    What can be refused is checked before anything starts: the database URL (ValueError), the
    configured broker (a quick probe, ConnectionError), then the database itself (migrated;
    OperationalError when unreachable). Only then the private broker, the API and the ingest
    start, and every way out of here stops what was started.
    """
    from sync.broker import probe_mqtt_broker, start_process_broker

    database_url = settings.cloud_database_url()
    check_database_url(database_url)
    mqtt_url, protocol = settings.mqtt_url, settings.mqtt_protocol
    if mqtt_url:
        probe_mqtt_broker(parse_mqtt_url(mqtt_url))  # seconds, not the API's start-up plus a CONNACK wait
    migrate(database_url)
    with contextlib.ExitStack() as stack:
        if not mqtt_url:
            # a folder of this process's own: two `cloud serve` on one data dir must not share one
            broker = start_process_broker(settings.data_dir / "broker")
            stack.callback(broker.stop)
            mqtt_url, protocol = broker.url, broker.protocol
            log.info("no PACKLINE_MQTT_URL: started a broker at %s for this process", mqtt_url)
        server = CloudServer(settings, database_url=database_url, mqtt_url=mqtt_url,
                             protocol=protocol, host=host, port=port)
        stack.callback(server.stop)
        server.start()
        log.info("API on %s (OpenAPI at %s/openapi.json); MQTT ingest on %s", server.api_url, server.api_url,
                 mqtt_url)
        while True:
            time.sleep(3600)
