"""A thin paho-mqtt 2.x adapter implementing :class:`sync.link.Bus`.

* Always ``CallbackAPIVersion.VERSION2``.
* ``TCP_NODELAY`` on the socket (paho does not set it; Nagle adds ~40 ms stalls).
* MQTT 5 by default with a persistent session (session expiry > 0, clean start only the
  first time); MQTT 3.1.1 with ``clean_session=False``. The contract does not depend on
  either: durability is end to end (outbox + acks + dedup + feed replay).
* ``persistent=False`` for consumers on a shared subscription (the cloud ingest): a dead
  worker's persistent session would keep its share of the messages queued for nobody.
* paho's unsent messages live only in memory, so :meth:`publish` reports False while
  offline and the caller keeps the message (outbox) instead of trusting paho's queue.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sync.settings import MqttUrl

__all__ = ["PahoBus"]

log = logging.getLogger("packline.mqtt")

Handler = Callable[[str, bytes], None]


def _matches(pattern: str, topic: str) -> bool:
    if pattern.startswith("$share/"):
        pattern = pattern.split("/", 2)[2]
    return bool(mqtt.topic_matches_sub(pattern, topic))


class PahoBus:
    def __init__(
        self,
        url: MqttUrl,
        client_id: str,
        *,
        protocol: int = 5,
        will: tuple[str, bytes] | None = None,
        session_expiry_s: int = 24 * 3600,
        keepalive_s: int = 30,
        max_inflight: int = 100,
        persistent: bool = True,
    ) -> None:
        if protocol not in (5, 4, 311):
            raise ValueError("protocol must be 5 (MQTT 5) or 311 (MQTT 3.1.1)")
        self.url = url
        self.client_id = client_id
        self.v5 = protocol == 5
        self.session_expiry_s = session_expiry_s if persistent else 0
        self.persistent = persistent
        self.keepalive_s = keepalive_s
        kwargs: dict[str, Any] = {"client_id": client_id, "protocol": mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311}
        if not self.v5:
            kwargs["clean_session"] = not persistent
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        if url.username:
            self.client.username_pw_set(url.username, url.password)
        if url.tls:
            self.client.tls_set()
        if will:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_socket_open = self._on_socket_open
        self.client.on_connect_fail = self._on_connect_fail
        self._subs: list[tuple[str, Handler, int]] = []
        self._listeners: list[Callable[[], None]] = []
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.connects = 0

    # -- lifecycle ------------------------------------------------------------------
    def start(self, *, wait_s: float | None = None) -> PahoBus:
        """Connect in the background (reconnecting forever); optionally wait for the first CONNACK."""
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s
            self.client.connect_async(
                self.url.host, self.url.port, self.keepalive_s,
                clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY if self.persistent else True,
                properties=props,
            )
        else:
            self.client.connect_async(self.url.host, self.url.port, self.keepalive_s)
        self.client.loop_start()
        if wait_s is not None and not self._connected.wait(wait_s):
            raise ConnectionError(f"no connection to the MQTT broker at {self.url}: {self.why_not_connected(wait_s)}")
        return self

    def why_not_connected(self, waited_s: float) -> str:
        """Why no CONNACK arrived while waiting ``waited_s`` seconds, for an error message."""
        if self.last_error:
            return self.last_error
        if self.client.socket() is not None:  # TCP is up, the broker just never answered CONNECT
            hint = "" if self.url.tls else " (a TLS port needs mqtts://)"
            return f"no CONNACK within {waited_s:g} s: is this an MQTT broker?{hint}"
        return f"no TCP connection within {waited_s:g} s"

    def stop(self, *, graceful: bool = True) -> None:
        """Disconnect (graceful: no Last Will) and stop the network thread."""
        if graceful:
            self.client.disconnect()
        self.client.loop_stop()
        if not graceful:
            sock = self.client.socket()
            if sock is not None:
                sock.close()
        self._connected.clear()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    # -- Bus ------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        if not self.connected:
            return False
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def subscribe(self, topic: str, handler: Handler, *, qos: int = 1) -> None:
        with self._lock:
            self._subs.append((topic, handler, qos))
        if self.connected:
            self.client.subscribe(topic, qos=qos)

    def add_connect_listener(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    # -- paho callbacks -------------------------------------------------------------
    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):  # TLS wrappers without setsockopt
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused connection: {reason_code}"
            log.warning("%s: %s", self.client_id, self.last_error)
            return
        self.connects += 1
        with self._lock:
            subs = list(self._subs)
        if subs:
            client.subscribe([(t, q) for t, _h, q in subs])
        self._connected.set()
        # listeners may publish and block on storage: never on paho's network thread
        threading.Thread(target=self._notify_listeners, name=f"{self.client_id}-connected", daemon=True).start()

    def _notify_listeners(self) -> None:
        time.sleep(0.05)  # let the SUBACK arrive before hello/replay traffic
        for cb in list(self._listeners):
            try:
                cb()
            except Exception:
                log.exception("%s: connect listener failed", self.client_id)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.last_error = f"cannot connect to {self.url}"

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected.clear()
        self.last_error = f"disconnected: {reason_code}"
        log.info("%s: %s", self.client_id, self.last_error)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            subs = list(self._subs)
        for pattern, handler, _qos in subs:
            if _matches(pattern, msg.topic):
                try:
                    handler(msg.topic, msg.payload)
                except Exception:
                    log.exception("%s: handler for %s failed", self.client_id, msg.topic)
