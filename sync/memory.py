"""A deterministic in-memory bus for unit tests of the sync logic (STYLE 9, 12).

It implements :class:`sync.link.Bus` with MQTT topic matching (``+``/``#``, ``$share``),
retained messages and an explicit connected/disconnected switch. Messages published while
disconnected are refused (``publish`` returns False), like a client whose socket is down.
Delivery is synchronous unless ``hold`` is set, in which case messages queue until
:meth:`MemoryBroker.deliver` (so tests can drop, duplicate or reorder them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["MemoryBroker", "MemoryBus", "topic_matches"]

Handler = Callable[[str, bytes], None]


def topic_matches(pattern: str, topic: str) -> bool:
    if pattern.startswith("$share/"):
        pattern = pattern.split("/", 2)[2]
    p, t = pattern.split("/"), topic.split("/")
    for i, part in enumerate(p):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(p) == len(t)


@dataclass
class MemoryBroker:
    hold: bool = False
    pending: list[tuple[str, bytes]] = field(default_factory=list)
    retained: dict[str, bytes] = field(default_factory=dict)
    buses: list[MemoryBus] = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def bus(self, name: str) -> MemoryBus:
        b = MemoryBus(self, name)
        self.buses.append(b)
        return b

    def route(self, topic: str, payload: bytes, retain: bool) -> None:
        with self._lock:
            if retain:
                self.retained[topic] = payload
            if self.hold:
                self.pending.append((topic, payload))
                return
        self._fanout(topic, payload)

    def _fanout(self, topic: str, payload: bytes) -> None:
        for b in list(self.buses):
            b._deliver(topic, payload)

    def deliver(self, *, limit: int | None = None) -> int:
        """Deliver held messages in order; returns how many."""
        n = 0
        while self.pending and (limit is None or n < limit):
            with self._lock:
                topic, payload = self.pending.pop(0)
            self._fanout(topic, payload)
            n += 1
        return n


class MemoryBus:
    def __init__(self, broker: MemoryBroker, name: str) -> None:
        self.broker = broker
        self.name = name
        self._connected = True
        self._subs: list[tuple[str, Handler]] = []
        self._listeners: list[Callable[[], None]] = []
        self.sent: list[tuple[str, bytes]] = []

    @property
    def connected(self) -> bool:
        return self._connected

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        if not self._connected:
            return False
        self.sent.append((topic, payload))
        self.broker.route(topic, payload, retain)
        return True

    def subscribe(self, topic: str, handler: Handler, *, qos: int = 1) -> None:
        self._subs.append((topic, handler))
        if self._connected:
            for t, p in list(self.broker.retained.items()):
                if topic_matches(topic, t):
                    handler(t, p)

    def add_connect_listener(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def disconnect(self) -> None:
        self._connected = False

    def reconnect(self) -> None:
        self._connected = True
        for cb in list(self._listeners):
            cb()

    def _deliver(self, topic: str, payload: bytes) -> None:
        if not self._connected:
            return  # a clean-session client misses what is published while it is away
        for pattern, handler in list(self._subs):
            if topic_matches(pattern, topic):
                handler(topic, payload)
