"""Protocol logic of the sync contract, independent of any MQTT client (STYLE 9).

:class:`StationLink` runs inside a station: it publishes the outbox, trims on ack,
applies the site feed in ``seq`` order and asks for a replay when it sees a gap or
reconnects. :class:`CloudLink` runs inside the cloud: it ingests station events,
applies each once (the cloud's own dedup), acks, publishes the feed and answers replays.

Both take a :class:`Bus` (``sync.mqtt.PahoBus`` in production, ``sync.memory.MemoryBus``
in deterministic tests) and plain callables/protocols for storage.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sync import contract as c
from sync.contract import AckBody, ContractError, Envelope
from sync.outbox import OutboxRow

__all__ = ["Bus", "CloudLink", "CloudStore", "FeedEntry", "StationLink", "StationStore"]

log = logging.getLogger("packline.sync")

Handler = Callable[[str, bytes], None]


class Bus(Protocol):
    """What the links need from a broker connection."""

    @property
    def connected(self) -> bool: ...

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Hand a message to the client; False when it could not be queued (offline)."""
        ...

    def subscribe(self, topic: str, handler: Handler, *, qos: int = 1) -> None:
        """Subscribe now and after every reconnect."""
        ...

    def add_connect_listener(self, callback: Callable[[], None]) -> None:
        """Called after every (re)connect, once subscriptions are restored."""
        ...


# ---------------------------------------------------------------------------------------
# Station side
# ---------------------------------------------------------------------------------------
class StationStore(Protocol):
    """The station replica as the link sees it (implemented in station/)."""

    def outbox_due(self, resend_after_s: float, limit: int) -> list[OutboxRow]: ...

    def outbox_mark_sent(self, seqs: list[int]) -> None: ...

    def outbox_reset(self) -> None: ...

    def outbox_trim(self, event_id: uuid.UUID) -> bool: ...

    def outbox_depth(self) -> int: ...

    def last_feed_seq(self) -> int: ...

    def apply_feed(self, env: Envelope) -> None:
        """Apply one feed entry and record ``env.seq`` as the last applied, in ONE transaction.
        Called only with ``env.seq == last_feed_seq() + 1``. An entry the store cannot apply
        (bad body) must still be recorded (e.g. as a reject) and ``seq`` advanced: otherwise
        one bad entry would block the feed forever."""
        ...


@dataclass
class LinkStats:
    published: int = 0
    acked: int = 0
    duplicate_acks: int = 0
    feed_applied: int = 0
    feed_duplicates: int = 0
    replays_requested: int = 0
    rejected: int = 0
    dead_letters: int = 0


class StationLink:
    def __init__(
        self,
        *,
        station: str,
        site: str,
        bus: Bus,
        store: StationStore,
        resend_after_s: float = 5.0,
        software: str | None = None,
        on_change: Callable[[], None] | None = None,
        on_rejected: Callable[[AckBody], None] | None = None,
        hello_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.station = station
        self.site = site
        self.bus = bus
        self.store = store
        self.resend_after_s = resend_after_s
        self.software = software
        self.stats = LinkStats()
        self._on_change = on_change or (lambda: None)
        self._on_rejected = on_rejected or (lambda ack: None)
        self._lock = threading.RLock()  # feed application and outbox pumping are serialised
        self._replay_asked_at = float("-inf")
        self._seen_high = 0  # highest feed seq seen; above last_feed_seq means a gap is still open
        # hello again every hello_interval_s: the heartbeat on the state topic, and the repair for
        # a feed entry lost on its way to the broker at a quiet site (no later entry shows the gap)
        self.hello_interval_s = hello_interval_s
        self._clock = clock
        self._hello_at: float | None = None
        self.last_error: str | None = None

    # -- wiring ---------------------------------------------------------------------
    def start(self) -> None:
        self.bus.subscribe(c.site_feed_topic(self.site), self._on_message)
        self.bus.subscribe(c.station_cmd_topic(self.station), self._on_message)
        self.bus.add_connect_listener(self._on_connect)
        if self.bus.connected:
            self._on_connect()

    def _on_connect(self) -> None:
        with self._lock:
            self.store.outbox_reset()
            self._say_hello()
        self.pump()

    def _say_hello(self) -> None:
        self._hello_at = self._clock()
        last = self.store.last_feed_seq()
        # the hello asks for everything after ``last`` anyway: forget the highest seq seen, so an
        # entry with an absurd seq (a rogue publisher) cannot keep the station asking every second
        self._seen_high = min(self._seen_high, last)
        body = c.HelloBody(
            last_feed_seq=last,
            outbox_depth=self.store.outbox_depth(),
            software=self.software,
        )
        # hello is not an outbox event: it is state, resent on every connect, never acked
        env = c.new_envelope(c.STATION_HELLO, site=self.site, station=self.station, seq=0, body=body)
        self.bus.publish(c.station_events_topic(self.station), c.encode(env))
        self.publish_presence(online=True)

    def publish_presence(self, *, online: bool) -> None:
        body = c.PresenceBody(
            station=self.station,
            site=self.site,
            online=online,
            outbox_depth=self.store.outbox_depth(),
            last_feed_seq=self.store.last_feed_seq(),
        )
        env = c.new_envelope(c.PRESENCE, site=self.site, station=self.station, seq=0, body=body)
        self.bus.publish(c.station_state_topic(self.station), c.encode(env), retain=True)

    # -- outbound -------------------------------------------------------------------
    def pump(self, limit: int = 200) -> int:
        """Publish what is due; returns how many were handed to the client. Cheap when idle.
        Also re-asks for a replay while a feed gap stays open (the answer to the first ask may
        have been read before the missing entry was committed), and says hello again when the
        last one is ``hello_interval_s`` old."""
        if not self.bus.connected:
            return 0
        with self._lock:
            if self._hello_at is not None and self._clock() - self._hello_at >= self.hello_interval_s:
                self._say_hello()
            self._ask_replay_if_gap()
            rows = self.store.outbox_due(self.resend_after_s, limit)
            sent: list[int] = []
            topic = c.station_events_topic(self.station)
            for row in rows:
                if not self.bus.publish(topic, row.payload):
                    break
                sent.append(row.seq)
            if sent:
                self.store.outbox_mark_sent(sent)
                self.stats.published += len(sent)
        return len(sent)

    # -- inbound --------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            env = c.decode(payload)
            if env.type == c.ACK:
                self._handle_ack(c.parse_body(env, AckBody))
            elif env.type in c.FEED_TYPES:
                self._handle_feed(env, replayed=topic == c.station_cmd_topic(self.station))
            else:
                log.info("station %s ignores %s on %s", self.station, env.type, topic)
        except ContractError as e:
            self.stats.dead_letters += 1
            self.last_error = str(e)[: c.MAX_REASON_CHARS]
            log.warning("station %s: bad message on %s: %s", self.station, topic, self.last_error)
        except Exception as e:  # never kill the client's network thread
            self.last_error = f"{type(e).__name__}: {e}"[: c.MAX_REASON_CHARS]
            log.exception("station %s: failed to handle message on %s", self.station, topic)

    def _handle_ack(self, ack: AckBody) -> None:
        with self._lock:
            trimmed = self.store.outbox_trim(ack.event_id)
        if trimmed:
            self.stats.acked += 1
        else:
            self.stats.duplicate_acks += 1
        if ack.status == "rejected":
            self.stats.rejected += 1
            self._on_rejected(ack)
        self._on_change()

    def _handle_feed(self, env: Envelope, *, replayed: bool = False) -> None:
        if env.site != self.site:
            raise ContractError(f"feed entry for site {env.site} reached station of {self.site}")
        with self._lock:
            last = self.store.last_feed_seq()
            if env.seq <= last:
                self.stats.feed_duplicates += 1
                return
            if not replayed:
                # anyone who can publish on the site feed could send this: a malformed entry must
                # not take the seq of the cloud's real one. Ask the cloud for what stands there;
                # only its own replay may make the station step past an entry it cannot apply.
                try:
                    c.check_feed_entry(env)
                except ContractError:
                    self._ask_replay_now(last)
                    raise
            if env.seq > last + 1:
                # a gap: ask for everything after what we have; this entry comes again in order
                self._seen_high = max(self._seen_high, env.seq)
                self._ask_replay_if_gap(last)
                return
            self.store.apply_feed(env)
            self.stats.feed_applied += 1
        self._on_change()

    def _ask_replay_now(self, last: int) -> None:
        now = self._clock()
        if now - self._replay_asked_at > 1.0:
            self._replay_asked_at = now
            self.request_replay(last)

    def _ask_replay_if_gap(self, last: int | None = None) -> None:
        last = self.store.last_feed_seq() if last is None else last
        now = self._clock()
        if self._seen_high > last and now - self._replay_asked_at > 1.0:
            self._replay_asked_at = now
            self.request_replay(last)

    def request_replay(self, from_seq: int) -> None:
        self.stats.replays_requested += 1
        env = c.new_envelope(
            c.REPLAY_REQUEST,
            site=self.site,
            station=self.station,
            seq=0,
            body=c.ReplayRequestBody(from_seq=from_seq),
        )
        self.bus.publish(c.station_events_topic(self.station), c.encode(env))

    def run_pump_forever(self, stop: threading.Event, interval_s: float = 0.5) -> None:
        """Background loop: resend what is due (unacked rows come again after resend_after_s)."""
        while not stop.wait(interval_s):
            try:
                self.pump()
            except Exception:
                log.exception("station %s: pump failed", self.station)


# ---------------------------------------------------------------------------------------
# Cloud side
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeedEntry:
    site: str
    seq: int
    payload: bytes  # the encoded envelope, exactly as first published


class CloudStore(Protocol):
    """The cloud's side of the contract (implemented in cloud/)."""

    def apply_station_event(self, env: Envelope) -> AckBody:
        """Apply an event once (dedup by ``env.id`` in the same DB transaction as the effect).
        Return ``applied``, ``duplicate`` (seen before: no effect) or ``rejected`` (permanent:
        the event is recorded with its reason and never retried)."""
        ...

    def feed_since(self, site: str, from_seq: int, limit: int) -> list[FeedEntry]: ...

    def unpublished_feed(self, limit: int) -> list[FeedEntry]: ...

    def mark_feed_published(self, entries: Sequence[FeedEntry]) -> None: ...

    def record_dead_letter(self, topic: str, payload: bytes, reason: str) -> None: ...

    def record_presence(self, station: str, site: str, payload: dict[str, object]) -> None: ...


class CloudLink:
    """Ingest worker: one thread applies events in arrival order (per-station order is kept)."""

    def __init__(self, *, bus: Bus, store: CloudStore, shared_group: str | None = None, replay_batch: int = 500):
        self.bus = bus
        self.store = store
        self.shared_group = shared_group
        self.replay_batch = replay_batch
        self.stats = LinkStats()
        # events and presence share one queue: nothing touches the database on paho's network thread
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._stop = threading.Event()
        self._wake_feed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._feed_lock = threading.Lock()

    def start(self) -> None:
        self.bus.subscribe(c.cloud_events_subscription(self.shared_group), self._enqueue)
        self.bus.subscribe(f"{c.TOPIC_ROOT}/stations/+/state", self._enqueue)
        self.bus.add_connect_listener(self.notify_feed)
        for target, name in ((self._ingest_loop, "ingest"), (self._feed_loop, "feed")):
            t = threading.Thread(target=target, name=f"packline-cloud-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self._wake_feed.set()
        for t in self._threads:
            t.join(timeout=5)

    def notify_feed(self) -> None:
        """Call after committing new feed entries: they are published at once."""
        self._wake_feed.set()

    # -- presence -------------------------------------------------------------------
    def _on_presence(self, topic: str, payload: bytes) -> None:
        if not payload:  # retained message cleared
            return
        try:
            env = c.decode(payload)
            kind, station, _leaf = c.parse_topic(topic)
            body = c.parse_body(env, c.PresenceBody)
            if body.station != station:
                raise ContractError(f"presence for {body.station} published on {topic}")
            self.store.record_presence(station, body.site, body.model_dump(mode="json"))
        except ContractError as e:
            self._dead_letter(topic, payload, str(e))
        except Exception:
            log.exception("cloud: presence on %s failed", topic)

    # -- ingest ---------------------------------------------------------------------
    def _enqueue(self, topic: str, payload: bytes) -> None:
        self._queue.put((topic, payload))

    def _ingest_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            topic, payload = item
            try:
                self.handle(topic, payload)
            except Exception as e:  # a DB outage must not kill ingest: the station resends
                log.exception("cloud: ingest failed on %s", topic)
                self.stats.rejected += 1
                del e

    def handle(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/state"):
            self._on_presence(topic, payload)
            return
        try:
            _kind, station, _leaf = c.parse_topic(topic)
            env = c.decode(payload)
            if env.station != station:
                raise ContractError(f"envelope says station {env.station!r} but came on {topic}")
            # hello (every reconnect) and replay requests (a gap) both ask: "send me the feed after N"
            if env.type == c.STATION_HELLO:
                replay_from: int | None = c.parse_body(env, c.HelloBody).last_feed_seq
            elif env.type == c.REPLAY_REQUEST:
                replay_from = c.parse_body(env, c.ReplayRequestBody).from_seq
            else:
                replay_from = None
        except ContractError as e:
            self._dead_letter(topic, payload, str(e))
            return
        if replay_from is not None:
            self.replay(station, env.site, replay_from)
            return
        ack = self.store.apply_station_event(env)
        self.notify_feed()  # applying may have added feed entries (order.updated)
        if ack.status == "applied":
            self.stats.feed_applied += 1
        elif ack.status == "duplicate":
            self.stats.feed_duplicates += 1
        else:
            self.stats.rejected += 1
        reply = c.new_envelope(c.ACK, site=env.site, station=station, tenant=env.tenant, seq=0, body=ack)
        self.bus.publish(c.station_cmd_topic(station), c.encode(reply))
        self.stats.acked += 1

    def _dead_letter(self, topic: str, payload: bytes, reason: str) -> None:
        """Record what was refused and why, bounded: junk on the bus must not fill the disk."""
        self.stats.dead_letters += 1
        reason = reason[: c.MAX_REASON_CHARS]
        log.warning("cloud: dead letter from %s (%d bytes): %s", topic, len(payload), reason)
        try:
            self.store.record_dead_letter(topic, payload[: c.MAX_PAYLOAD_BYTES], reason)
        except Exception:
            log.exception("cloud: could not record dead letter")

    def replay(self, station: str, site: str, from_seq: int) -> int:
        """Send a station every feed entry of its site after ``from_seq``, on its own topic."""
        sent = 0
        topic = c.station_cmd_topic(station)
        while True:
            entries = self.store.feed_since(site, from_seq, self.replay_batch)
            for e in entries:
                self.bus.publish(topic, e.payload)
                sent += 1
            if len(entries) < self.replay_batch:
                break
            from_seq = entries[-1].seq
        return sent

    # -- feed -----------------------------------------------------------------------
    def publish_feed(self) -> int:
        if not self.bus.connected:
            return 0
        with self._feed_lock:
            entries = self.store.unpublished_feed(500)
            done: list[FeedEntry] = []
            for e in entries:
                if not self.bus.publish(c.site_feed_topic(e.site), e.payload):
                    break
                done.append(e)
            if done:
                self.store.mark_feed_published(done)
        return len(done)

    def _feed_loop(self) -> None:
        while not self._stop.is_set():
            self._wake_feed.wait(timeout=1.0)
            self._wake_feed.clear()
            if self._stop.is_set():
                return
            try:
                while self.publish_feed() == 500:
                    pass
            except Exception:
                log.exception("cloud: feed publishing failed")
