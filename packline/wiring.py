"""Composition for the CLI and the demo: builds stations with their simulated devices and a
simulated packer. Station and cloud are wired here and only here (they never import each other)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from drivers.sim.scanner import SimulatedScanner
from drivers.sim.zebra import SimulatedZebra
from station.config import enrol, load_config, station_dir
from station.replica import Order
from station.runtime import StationRuntime
from sync import contract as c
from sync.mqtt import PahoBus
from sync.settings import parse_mqtt_url

__all__ = ["DemoStation", "SimulatedPacker", "offline_will", "run_station_app", "station_bus"]

log = logging.getLogger("packline.wiring")


def offline_will(station: str, site: str) -> tuple[str, bytes]:
    """The retained Last Will that flips a station's presence to offline if it vanishes."""
    body = c.PresenceBody(station=station, site=site, online=False)
    env = c.new_envelope(c.PRESENCE, site=site, station=station, seq=0, body=body)
    return c.station_state_topic(station), c.encode(env)


def station_bus(station: str, site: str, mqtt_url: str, protocol: int, *, username: str | None = None,
                password: str | None = None) -> PahoBus:
    url = parse_mqtt_url(mqtt_url)
    if username:
        url = url.with_credentials(username, password)
    return PahoBus(url, station, protocol=protocol, will=offline_will(station, site))


class SimulatedPacker:
    """A packer who scans each released order, then every unit, through the real serial path.

    Lot-tracked units are scanned as GS1-128 with GTIN, expiry and lot, like the pallet label of
    a real tea case; the rest as their EAN/UPC/ITF barcode. One order at a time, as at a bench.
    """

    def __init__(self, runtime: StationRuntime, scanner: SimulatedScanner, *, poll_s: float = 0.02) -> None:
        self.runtime = runtime
        self.scanner = scanner
        self.poll_s = poll_s
        self.packed: list[str] = []
        self.failed: dict[str, str] = {}
        """Orders this packer set aside, with the reason."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"packer-{runtime.config.station_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            # an order this packer could not pack is set aside (as a person would call a
            # supervisor), never retried in a loop that keeps every later order waiting
            orders = [o for o in self.runtime.replica.open_orders(limit=len(self.failed) + 1)
                      if o.order_id not in self.failed]
            if not orders:
                self._stop.wait(self.poll_s)
                continue
            try:
                self.pack(orders[0])
            except Exception as e:
                self.failed[orders[0].order_id] = f"{type(e).__name__}: {e}"
                log.error("simulated packer at %s set order %s aside: %s", self.runtime.config.station_id,
                          orders[0].external_id, self.failed[orders[0].order_id])
                self.runtime.request_abort()  # free the bench: the next slip may be scanned
                self.runtime.wait_idle(5.0)

    def pack(self, order: Order, timeout_s: float = 30.0) -> None:
        unscannable = [line.sku for line in order.lines if not line.gtins]
        if unscannable:
            raise ValueError(f"no barcode to scan for {', '.join(unscannable)}")
        self.scanner.scan_text(order.external_id)
        for line in order.lines:
            gtin = line.gtins[0]
            for unit in range(line.remaining):
                if line.lot_tracked:
                    self.scanner.scan_gs1({"01": gtin, "17": "281231", "10": f"L{line.line_no:02d}{unit % 3}"})
                else:
                    self.scanner.scan_gtin(gtin)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            current = self.runtime.replica.get_order(order.order_id)
            if current is None or current.status in ("packed", "cancelled"):
                self.packed.append(order.order_id)
                return
            if self._stop.is_set():  # shutting down: the order stays open on the bench, no error
                return
            self._stop.wait(self.poll_s)
        raise TimeoutError(f"order {order.external_id} not packed within {timeout_s}s "
                           f"(last verdict: {self.runtime.engine.last_verdict if hasattr(self.runtime.engine, 'last_verdict') else '?'})")


class DemoStation:
    """One enrolled station with a simulated scanner (pty) and Zebra (TCP), and a simulated packer."""

    def __init__(self, *, data_dir: Path, site: str, station_id: str, mqtt_url: str, protocol: int,
                 cloud_url: str, auto_pack: bool = True) -> None:
        self.data_dir = data_dir
        self.site = site
        self.station_id = station_id
        self.mqtt_url = mqtt_url
        self.protocol = protocol
        self.cloud_url = cloud_url
        self.scanner: SimulatedScanner | None = None
        self.zebra: SimulatedZebra | None = None
        self.runtime: StationRuntime | None = None
        self.bus: PahoBus | None = None
        self.packer: SimulatedPacker | None = None
        self.auto_pack = auto_pack

    def start(self) -> None:
        self.scanner = SimulatedScanner()
        self.zebra = SimulatedZebra(spool_dir=station_dir(self.data_dir, self.station_id) / "printed").start()
        path = enrol(self.data_dir, station_id=self.station_id, site=self.site, cloud_url=self.cloud_url,
                     mqtt_url=self.mqtt_url, mqtt_protocol=self.protocol, scanner_url=self.scanner.url,
                     printer_url=self.zebra.url, force=True)
        config = load_config(path)
        self.bus = station_bus(self.station_id, self.site, config.mqtt_url, config.mqtt_protocol)
        self.runtime = StationRuntime(config, bus=self.bus, data_dir=self.data_dir, packer="SIM-PACKER")
        self.runtime.start()
        self.bus.start()
        # pyserial flushes input when it opens the port: scan only once the scanner is open
        deadline = time.monotonic() + 10
        while self.runtime.status().scanner != "ok" and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.runtime.status().scanner != "ok":
            raise RuntimeError(f"{self.station_id}: scanner {self.scanner.url} did not open: "
                               f"{self.runtime.status().scanner}")
        self.packer = SimulatedPacker(self.runtime, self.scanner)
        if self.auto_pack:
            self.packer.start()

    def wait_online(self, timeout_s: float) -> bool:
        return self.bus is not None and self.bus.wait_connected(timeout_s)

    def printed_jobs(self) -> list[bytes]:
        return self.zebra.jobs if self.zebra else []

    def summary(self) -> dict[str, Any]:
        status = self.runtime.status() if self.runtime else None
        return {
            "station": self.station_id,
            "site": self.site,
            "printer": self.zebra.url if self.zebra else None,
            "scanner": self.scanner.url if self.scanner else None,
            "packed": len(self.packer.packed) if self.packer else 0,
            "labels_printed": len(self.printed_jobs()),
            "outbox_depth": status.outbox_depth if status else None,
            "last_feed_seq": status.last_feed_seq if status else None,
        }

    def stop(self) -> None:
        if self.packer:
            self.packer.stop()
        if self.bus:  # first the messages stop coming, then the replica closes
            self.bus.stop()
        if self.runtime:
            self.runtime.stop()
        if self.zebra:
            self.zebra.stop()
        if self.scanner:
            self.scanner.close()


def run_station_app(data_dir: Path, station_id: str) -> int:
    """``packline station run``: the packing screen on a real terminal."""
    from station.tui import PackingApp

    config = load_config(station_dir(data_dir, station_id))
    # the screen owns the terminal: logs go to a file next to the station's config, not to stderr
    log_file = station_dir(data_dir, station_id) / "station.log"
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            root.removeHandler(h)
    root.addHandler(handler)
    bus = station_bus(config.station_id, config.site, config.mqtt_url, config.mqtt_protocol,
                      username=config.mqtt_username,
                      password=config.mqtt_password.get_secret_value() if config.mqtt_password else None)
    runtime = StationRuntime(config, bus=bus, data_dir=data_dir)
    runtime.start()
    bus.start()
    try:
        PackingApp(runtime).run()
    finally:
        bus.stop()
        runtime.stop()
    return 0
