"""The station's composition root: one place that builds and wires everything (STYLE 3).

``StationRuntime(config, bus=..., data_dir=...)`` builds the replica, opens the devices
named in the config (unless the caller passes its own: a simulator, a fake), the sync
link and the packing engine. ``start()`` runs four daemon threads:

* ``scanner``: ``scanner.read(timeout_s=0.2)`` in a loop; every scan goes on the engine queue.
  A scanner that fails (unplugged) is reopened from its URL every couple of seconds.
* ``engine``: takes scans, reprint and abort requests off the queue IN ORDER and runs them
  through the engine; printing happens here, never on the UI loop or the MQTT thread.
* ``pump``: ``StationLink.run_pump_forever``: resends what the cloud has not acked.
* ``notify``: calls the :meth:`StationRuntime.on_change` listeners, in order.

The bus (an MQTT client: ``sync.mqtt.PahoBus``; ``sync.memory.MemoryBus`` in tests) is
passed in and not owned: the caller connects and closes it.

Anyone (the TUI, the demo) may register with :meth:`StationRuntime.on_change`: the callback
gets each engine :class:`~station.engine.Verdict`, or ``None`` for a sync change (feed
applied, ack, reconnect). Callbacks run on the runtime's own ``notify`` thread, never on
the engine or MQTT thread and never under one of their locks: a listener may block (the
TUI's ``call_from_thread`` does) without stalling packing or the broker connection.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from drivers.errors import DeviceError
from drivers.printer import LabelPrinter, open_printer
from drivers.scanner import Scan, Scanner, decode_scan, open_scanner
from station.config import StationConfig, replica_path, station_dir
from station.engine import PackingEngine, Verdict, local_now
from station.errors import AlreadyRunning
from station.replica import Replica
from sync.contract import AckBody, Envelope
from sync.link import Bus, StationLink

__all__ = ["SOFTWARE", "StationRuntime", "StationStatus"]

log = logging.getLogger("packline.station")

SOFTWARE = "packline-station/0.1.0"
Listener = Callable[[Verdict | None], None]
_Request = Scan | Literal["reprint", "abort", "recheck"] | None


class _Stop:
    """Tells the notify thread to finish."""


@dataclass(frozen=True)
class StationStatus:
    station: str
    site: str
    online: bool
    outbox_depth: int
    last_feed_seq: int
    orders_open: int
    orders_packed: int
    orders_cancelled: int
    current_order: str | None
    """External id of the order being packed."""
    scanner: str
    """"ok", "opening", "none" (keyboard wedge only) or the reason the scanner is not working."""
    last_error: str | None
    """The last sync problem (bad message, rejected event), for the header and the logs."""


class StationRuntime:
    """Builds and runs one station. Not restartable: after :meth:`stop`, build a new one."""

    def __init__(
        self,
        config: StationConfig,
        *,
        bus: Bus,
        data_dir: Path,
        scanner: Scanner | None = None,
        printer: LabelPrinter | None = None,
        clock: Callable[[], datetime] = local_now,
        packer: str | None = None,
        pump_interval_s: float = 0.5,
    ) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self.pump_interval_s = pump_interval_s
        self._listeners: list[Listener] = []
        self._listeners_lock = threading.Lock()
        self._events: queue.Queue[Verdict | None | _Stop] = queue.Queue()
        self._requests: queue.Queue[_Request] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._notifier: threading.Thread | None = None
        self._started = False
        self._stopped = False
        self.last_error: str | None = None
        self.scanner_problem: str | None = None

        self._lock_fd = _claim_station(station_dir(self.data_dir, config.station_id), config.station_id)
        try:
            self.replica = Replica(
                replica_path(self.data_dir, config.station_id),
                station=config.station_id,
                site=config.site,
                clock=lambda: clock().timestamp(),
            )
        except BaseException:
            os.close(self._lock_fd)
            raise
        try:
            self._owns_printer = printer is None
            self.printer: LabelPrinter = printer if printer is not None else open_printer(config.printer_url)
        except BaseException:
            self.replica.close()
            os.close(self._lock_fd)
            raise
        # the scanner is opened by its thread (and reopened after a failure), not here:
        # a station whose scanner is unplugged still starts, syncs and takes wedge scans
        self._owns_scanner = scanner is None
        self.scanner: Scanner | None = scanner
        self.link = StationLink(
            station=config.station_id,
            site=config.site,
            bus=bus,
            store=self.replica,
            resend_after_s=config.resend_after_s,
            software=SOFTWARE,
            on_change=self._on_sync_change,
            on_rejected=self._on_rejected,
        )
        self.engine = PackingEngine(
            self.replica,
            self.printer,
            clock=clock,
            on_event=self._notify,
            on_packed=self._on_packed,
            packer=packer,
        )

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self._stopped:
            raise RuntimeError("a stopped StationRuntime cannot be started again; build a new one")
        if self._started:
            return
        self._started = True
        self.link.bus.add_connect_listener(lambda: self._notify(None))
        self.link.start()
        self._notifier = self._spawn(self._notify_loop, "notify")
        targets: list[tuple[Callable[[], None], str]] = [
            (self._engine_loop, "engine"),
            (self._pump_loop, "pump"),
        ]
        if self.scanner is not None or self.config.scanner_url:
            targets.append((self._scanner_loop, "scanner"))
        self._threads = [self._spawn(target, name) for target, name in targets]

    def _spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        t = threading.Thread(target=target, name=f"packline-{self.config.station_id}-{name}", daemon=True)
        t.start()
        return t

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the threads, say offline, close what this runtime opened (devices, replica)."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self._requests.put(None)
        for t in self._threads:  # the scanner thread notices within one read timeout (0.2 s)
            t.join(timeout=timeout_s)
        self._events.put(_Stop())  # after the engine's last verdict
        if self._notifier is not None:
            self._notifier.join(timeout=timeout_s)
        if self.scanner is not None and self._owns_scanner:
            self.scanner.close()
        if self._started and self.link.bus.connected:
            try:
                self.link.publish_presence(online=False)
            except Exception:
                log.exception("station %s: could not publish offline presence", self.config.station_id)
        if self._owns_printer:
            self.printer.close()
        self.replica.close()
        os.close(self._lock_fd)  # the station is free for the next process

    def __enter__(self) -> StationRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- requests (any thread; processed in order on the engine thread) ---------------------
    def submit_scan(self, scan: Scan) -> None:
        self._requests.put(scan)

    def submit_frame(self, frame: bytes) -> None:
        """A raw scan frame, e.g. framed from keyboard-wedge key events."""
        self._requests.put(decode_scan(frame))

    def request_reprint(self) -> None:
        self._requests.put("reprint")

    def request_abort(self) -> None:
        self._requests.put("abort")

    def wait_idle(self, timeout_s: float = 5.0) -> bool:
        """Wait until every request submitted so far has been handled and its verdicts have
        reached the listeners (for tests and the demo)."""
        done = threading.Event()

        def waiter() -> None:
            self._requests.join()
            self._events.join()
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        return done.wait(timeout_s)

    # -- observing ------------------------------------------------------------------------
    def on_change(self, callback: Listener) -> Callable[[], None]:
        """Call ``callback(verdict)`` after every engine event and ``callback(None)`` after a sync
        change. Returns a function that unsubscribes."""
        with self._listeners_lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._listeners_lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def status(self) -> StationStatus:
        counts = self.replica.counts()
        current = self.engine.current_order()
        if self.scanner_problem:
            scanner = self.scanner_problem
        elif self.scanner is not None:
            scanner = "ok"
        else:
            scanner = "opening" if self.config.scanner_url else "none"
        return StationStatus(
            station=self.config.station_id,
            site=self.config.site,
            online=self.link.bus.connected,
            outbox_depth=self.replica.outbox_depth(),
            last_feed_seq=self.replica.last_feed_seq(),
            orders_open=counts["released"] + counts["packing"],
            orders_packed=counts["packed"],
            orders_cancelled=counts["cancelled"],
            current_order=current.external_id if current else None,
            scanner=scanner,
            last_error=self.last_error or self.link.last_error,
        )

    def _notify(self, verdict: Verdict | None) -> None:
        self._events.put(verdict)

    def _notify_loop(self) -> None:
        while True:
            item = self._events.get()
            try:
                if isinstance(item, _Stop):
                    return
                with self._listeners_lock:
                    listeners = list(self._listeners)
                for listener in listeners:
                    try:
                        listener(item)
                    except Exception:
                        log.exception("station %s: listener failed", self.config.station_id)
            finally:
                self._events.task_done()

    def _on_packed(self, env: Envelope) -> None:
        try:
            self.link.pump()  # publish now; the pump thread resends if this does not get through
        except Exception:
            log.exception("station %s: immediate publish failed; the pump retries", self.config.station_id)

    def _on_rejected(self, ack: AckBody) -> None:
        self.last_error = f"cloud rejected event {ack.event_id}: {ack.reason or 'no reason given'}"
        log.error("station %s: %s", self.config.station_id, self.last_error)

    # -- threads --------------------------------------------------------------------------
    def _on_sync_change(self) -> None:
        self._requests.put("recheck")  # on the engine's thread: did the feed close the open order?
        self._notify(None)

    def _engine_loop(self) -> None:
        while True:
            request = self._requests.get()
            try:
                if request is None:
                    return
                if request == "reprint":
                    self.engine.reprint()
                elif request == "abort":
                    self.engine.abort_order()
                elif request == "recheck":
                    self.engine.check_open_order()
                else:
                    self.engine.handle_scan(request)
            except Exception:
                log.exception("station %s: engine failed on %r", self.config.station_id, request)
            finally:
                self._requests.task_done()

    def _pump_loop(self) -> None:
        self.link.run_pump_forever(self._stop, self.pump_interval_s)

    def _scanner_loop(self) -> None:
        retry_s = 2.0
        while not self._stop.is_set():
            scanner = self.scanner
            if scanner is None:
                if not self.config.scanner_url:
                    return
                try:
                    scanner = self.scanner = open_scanner(self.config.scanner_url)
                    self._set_scanner_problem(None)
                except DeviceError as e:
                    self._set_scanner_problem(f"scanner: {e}")
                    self._stop.wait(retry_s)
                    continue
            try:
                scan = scanner.read(timeout_s=0.2)
            except DeviceError as e:
                if self._stop.is_set():
                    return
                self._set_scanner_problem(f"scanner: {e}")
                if not self._owns_scanner:
                    log.error(
                        "station %s: scanner failed and is not ours to reopen: %s", self.config.station_id, e
                    )
                    return
                scanner.close()
                self.scanner = None
                self._stop.wait(retry_s)
                continue
            if scan is not None:
                self._requests.put(scan)

    def _set_scanner_problem(self, problem: str | None) -> None:
        if problem != self.scanner_problem:
            self.scanner_problem = problem
            if problem:
                log.warning("station %s: %s", self.config.station_id, problem)
            self._notify(None)


def _claim_station(folder: Path, station_id: str) -> int:
    """Hold an exclusive lock on ``folder/station.lock`` for this runtime's life (released by
    :meth:`StationRuntime.stop`, or by the OS when the process dies): two processes of one
    station would share a replica and take each other's MQTT session over and over."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / "station.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise AlreadyRunning(f"station {station_id} is already running (process {holder}); "
                             f"stop it first, or run another station id") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd

