"""The built-in sandbox carrier: offline, realistic labels and UPU S10 tracking numbers.

Latency and failures are configurable so failover and circuit breaking can be tested; randomness,
sleeping, the clock and the serial-number source are injected, so a seeded test replays exactly.
Serial numbers must never repeat for the same database: in production pass ``next_serial`` backed by a
database sequence. Without it every instance shares one process-wide :class:`SerialCounter`, unique
within the process and, with high probability only, across processes and restarts.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from cloud.carriers.base import SERVICE_LEVELS, CarrierError, Label, Rate, Shipment
from cloud.carriers.s10 import format_s10, is_valid_s10, s10_check_digit
from cloud.carriers.zpl import render_label
from cloud.routing import needs_customs

__all__ = ["SandboxCarrier", "SerialCounter", "default_serials", "is_valid_s10", "s10_check_digit"]

S10_SERIAL_SPACE = 100_000_000


class SerialCounter:
    """A thread-safe counter of S10 serials (0..99 999 999, wrapping), started from the clock plus a random
    offset so that two processes or a restart are unlikely to hand out the same serials soon.

    It is a stand-in: uniqueness across processes needs a shared sequence (pass ``next_serial``)."""

    def __init__(self, start: int | None = None, rng: random.Random | None = None) -> None:
        if start is None:
            rnd = rng or random.SystemRandom()
            start = (time.time_ns() // 1_000_000 + rnd.randrange(S10_SERIAL_SPACE)) % S10_SERIAL_SPACE
        self._next = start % S10_SERIAL_SPACE
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            serial = self._next
            self._next = (self._next + 1) % S10_SERIAL_SPACE
            return serial


_default_serials_lock = threading.Lock()
_default_serials: SerialCounter | None = None


def default_serials() -> SerialCounter:
    """The process-wide counter shared by every carrier built without ``next_serial``."""
    global _default_serials
    with _default_serials_lock:
        if _default_serials is None:
            _default_serials = SerialCounter()
        return _default_serials


# Tariff: (base EUR, EUR per started kg, transit days) per zone and service.
_TARIFF: dict[str, dict[str, tuple[Decimal, Decimal, int]]] = {
    "domestic": {"standard": (Decimal("4.20"), Decimal("0.35"), 1),
                 "express": (Decimal("8.90"), Decimal("0.60"), 1)},
    "eu": {"standard": (Decimal("8.50"), Decimal("0.90"), 3), "express": (Decimal("17.40"), Decimal("1.60"), 1)},
    "world": {"standard": (Decimal("16.90"), Decimal("2.10"), 5),
              "express": (Decimal("34.00"), Decimal("3.20"), 2)},
}
MAX_WEIGHT_G = 31_500


class SandboxCarrier:
    """Offline carrier that behaves like a postal operator (S10 tracking numbers, CN22 when needed)."""

    code = "sandbox"
    display_name = "Packline Sandbox"

    def __init__(
        self,
        seed_prefix: str = "CP",  # S10 service indicator C*: parcels
        country: str = "DE",
        latency_s: float = 0.0,
        fail_rate: float = 0.0,
        rng: random.Random | None = None,
        *,
        next_serial: Callable[[], int] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not re.fullmatch(r"[A-Z]{2}", seed_prefix) or not re.fullmatch(r"[A-Z]{2}", country):
            raise ValueError("seed_prefix (S10 service indicator) and country are two upper-case letters")
        if latency_s < 0 or not 0.0 <= fail_rate <= 1.0:
            raise ValueError("latency_s >= 0 and 0 <= fail_rate <= 1")
        self.seed_prefix = seed_prefix
        self.country = country
        self.latency_s = latency_s
        self.fail_rate = fail_rate
        self._rng = rng or random.Random()
        self._next_serial = next_serial or default_serials()
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._status: dict[str, str] = {}  # tracking number -> status, for labels this instance issued

    # --- simulated network ---------------------------------------------------------------------------
    def _call(self, operation: str) -> None:
        if self.latency_s:
            self._sleep(self.latency_s)
        with self._lock:
            failed = self.fail_rate > 0 and self._rng.random() < self.fail_rate
        if failed:
            raise CarrierError(f"sandbox: simulated failure during {operation}")

    # --- the carrier protocol -------------------------------------------------------------------------
    def _zone(self, s: Shipment) -> str:
        if needs_customs(s.ship_from.country, s.ship_to.country, dest_postal_code=s.ship_to.postal_code,
                         origin_postal_code=s.ship_from.postal_code):
            return "world"
        return "domestic" if s.ship_from.country == s.ship_to.country else "eu"

    def _check(self, s: Shipment) -> None:
        if not 0 < s.weight_g <= MAX_WEIGHT_G:
            raise CarrierError(f"sandbox: weight {s.weight_g} g outside 1..{MAX_WEIGHT_G} g")
        if self._zone(s) == "world" and not s.customs:
            raise CarrierError(f"sandbox: {s.ship_to.country} needs customs items for {s.reference}")

    def rates(self, s: Shipment) -> list[Rate]:
        self._call("rates")
        self._check(s)
        zone = self._zone(s)
        started_kg = -(-s.weight_g // 1000)
        out = []
        for service in SERVICE_LEVELS:
            base, per_kg, days = _TARIFF[zone][service]
            out.append(Rate(self.code, service, (base + per_kg * started_kg).quantize(Decimal("0.01")), "EUR",
                            days))
        return out

    def buy(self, s: Shipment, service: str) -> Label:
        self._call("buy")
        if service not in SERVICE_LEVELS:
            raise CarrierError(f"sandbox: unknown service {service!r}")
        self._check(s)
        serial = self._next_serial()
        if not 0 <= serial < S10_SERIAL_SPACE:
            raise CarrierError(f"sandbox: serial {serial} outside the S10 range 0..99999999")
        tracking = format_s10(self.seed_prefix, serial, self.country)
        zpl = render_label(s, carrier_name=self.display_name, service=service, tracking_number=tracking,
                           printed_at=self._clock())
        with self._lock:
            self._status[tracking] = "label_created"
        return Label(self.code, service, tracking, zpl)

    def void(self, label: Label) -> None:
        self._call("void")
        with self._lock:
            status = self._status.get(label.tracking_number)
            if label.carrier != self.code or status is None:
                raise CarrierError(f"sandbox: unknown label {label.tracking_number!r}")
            self._status[label.tracking_number] = "voided"  # voiding twice is a no-op

    def track(self, tracking_number: str) -> str:
        """``"label_created"`` or ``"voided"`` for labels this instance issued."""
        self._call("track")
        if not is_valid_s10(tracking_number):
            raise CarrierError(f"sandbox: {tracking_number!r} is not an S10 tracking number")
        with self._lock:
            status = self._status.get(tracking_number)
        if status is None:
            raise CarrierError(f"sandbox: unknown tracking number {tracking_number!r}")
        return status
