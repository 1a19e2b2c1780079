"""The sync protocol logic on a deterministic in-memory bus: outbox -> ack -> trim, feed order,
gap -> replay, duplicates, dead letters. No MQTT client involved (STYLE 9)."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from pathlib import Path

import pytest

from sync import contract as c
from sync.contract import AckBody, Envelope
from sync.link import CloudLink, FeedEntry, StationLink
from sync.memory import MemoryBroker, topic_matches
from sync.outbox import Outbox, OutboxRow


class SqliteStationStore:
    """A minimal StationStore over sqlite3 (the real one lives in station/)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.lock = threading.Lock()
        self.outbox = Outbox(station="ST-1", site="DE-LEJ")
        Outbox.create_schema(self.conn)
        self.conn.execute("CREATE TABLE IF NOT EXISTS feed_state (id INTEGER PRIMARY KEY CHECK (id = 1), last INTEGER)")
        self.conn.execute("INSERT OR IGNORE INTO feed_state VALUES (1, 0)")
        self.conn.execute("CREATE TABLE IF NOT EXISTS applied (seq INTEGER PRIMARY KEY, type TEXT)")

    def pack(self, order_id: str) -> Envelope:
        with self.lock:
            self.conn.execute("BEGIN")
            env = self.outbox.append(self.conn, c.ORDER_PACKED, {"order_id": order_id}, tenant="t")
            self.conn.execute("COMMIT")
        return env

    def outbox_due(self, resend_after_s: float, limit: int) -> list[OutboxRow]:
        with self.lock:
            return Outbox.due(self.conn, resend_after_s=resend_after_s, limit=limit)

    def outbox_mark_sent(self, seqs: list[int]) -> None:
        with self.lock:
            Outbox.mark_sent(self.conn, seqs)

    def outbox_reset(self) -> None:
        with self.lock:
            Outbox.reset_sent(self.conn)

    def outbox_trim(self, event_id: uuid.UUID) -> bool:
        with self.lock:
            return Outbox.trim(self.conn, event_id)

    def outbox_depth(self) -> int:
        with self.lock:
            return Outbox.depth(self.conn)

    def last_feed_seq(self) -> int:
        with self.lock:
            return int(self.conn.execute("SELECT last FROM feed_state").fetchone()[0])

    def apply_feed(self, env: Envelope) -> None:
        with self.lock:
            self.conn.execute("BEGIN")
            self.conn.execute("INSERT INTO applied VALUES (?, ?)", (env.seq, env.type))
            self.conn.execute("UPDATE feed_state SET last = ?", (env.seq,))
            self.conn.execute("COMMIT")

    def applied(self) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT seq FROM applied ORDER BY seq")]



def release_body(order_id: str) -> dict[str, object]:
    return c.OrderReleasedBody(
        order_id=order_id, external_id=f"EXT-{order_id}", tenant="t",
        ship_to=c.ShipToSummary(name="Jan Novák", city="Praha", country="CZ"),
        lines=[c.ReleasedLine(sku="SKU-1", name="Mug", qty=1, gtins=["04006381333948"])],
        label=c.LabelInfo(carrier="sandbox", service="standard", tracking_number="CP000000014DE", zpl="^XA^XZ"),
    ).model_dump(mode="json")


class FakeCloudStore:
    def __init__(self) -> None:
        self.applied: dict[uuid.UUID, int] = {}
        self.feed: list[FeedEntry] = []
        self.published: set[int] = set()
        self.dead: list[str] = []
        self.presence: dict[str, dict[str, object]] = {}

    def add_release(self, site: str, order_id: str) -> None:
        self.add_entry(site, c.ORDER_RELEASED, release_body(order_id))

    def add_entry(self, site: str, type_: str, body: dict[str, object]) -> None:
        seq = len(self.feed) + 1
        env = c.new_envelope(type_, site=site, seq=seq, body=body)
        self.feed.append(FeedEntry(site, seq, c.encode(env)))


    def apply_station_event(self, env: Envelope) -> AckBody:
        if env.id in self.applied:
            return AckBody(event_id=env.id, status="duplicate")
        self.applied[env.id] = 1
        return AckBody(event_id=env.id, status="applied")

    def feed_since(self, site: str, from_seq: int, limit: int) -> list[FeedEntry]:
        return [e for e in self.feed if e.site == site and e.seq > from_seq][:limit]

    def unpublished_feed(self, limit: int) -> list[FeedEntry]:
        return [e for e in self.feed if e.seq not in self.published][:limit]

    def mark_feed_published(self, entries: list[FeedEntry]) -> None:  # type: ignore[override]
        self.published |= {e.seq for e in entries}

    def record_dead_letter(self, topic: str, payload: bytes, reason: str) -> None:
        self.dead.append(reason)

    def record_presence(self, station: str, site: str, payload: dict[str, object]) -> None:
        self.presence[station] = payload


@pytest.fixture
def world(tmp_path: Path):
    broker = MemoryBroker()
    store = SqliteStationStore(tmp_path / "replica.db")
    cloud_store = FakeCloudStore()
    station_bus = broker.bus("station")
    cloud_bus = broker.bus("cloud")
    link = StationLink(station="ST-1", site="DE-LEJ", bus=station_bus, store=store, resend_after_s=0)
    cloud = CloudLink(bus=cloud_bus, store=cloud_store)
    # drive the cloud synchronously: no ingest thread
    cloud_bus.subscribe(c.cloud_events_subscription(), cloud.handle)
    cloud_bus.subscribe(f"{c.TOPIC_ROOT}/stations/+/state", cloud._on_presence)
    link.start()
    return broker, store, cloud_store, station_bus, link, cloud


def test_topics_are_versioned_and_reject_wildcards() -> None:
    assert c.station_events_topic("ST-1") == "packline/v1/stations/ST-1/events"
    assert c.site_feed_topic("DE-LEJ") == "packline/v1/sites/DE-LEJ/feed"
    assert c.cloud_events_subscription("cloud") == "$share/cloud/packline/v1/stations/+/events"
    assert c.parse_topic("packline/v1/stations/ST-1/events") == ("stations", "ST-1", "events")
    for bad in ("a/b", "+", "#", "", "$SYS"):
        with pytest.raises(c.ContractError):
            c.station_events_topic(bad)
    with pytest.raises(c.ContractError):
        c.parse_topic("packline/v2/stations/ST-1/events")
    assert topic_matches("$share/g/packline/v1/stations/+/events", "packline/v1/stations/ST-9/events")


def test_envelope_roundtrip_and_bad_payloads() -> None:
    env = c.new_envelope(c.ORDER_PACKED, site="DE-LEJ", station="ST-1", seq=3, body={"x": "Γιώργος ^XZ"})
    assert c.decode(c.encode(env)) == env
    assert b'"schema":1' in c.encode(env)
    for bad in (b"\xff\xfe", b"[]", b"{}", b'{"id": "nope"}', b'{"schema": 99}', b'{"schema": "1"}', b'{"schema": null}'):
        with pytest.raises(c.ContractError):
            c.decode(bad)


def test_packed_event_is_acked_and_trimmed_exactly_once(world) -> None:
    broker, store, cloud_store, _bus, link, _cloud = world
    env = store.pack("ord_1")
    assert store.outbox_depth() == 1
    assert link.pump() == 1
    assert store.outbox_depth() == 0
    assert cloud_store.applied == {env.id: 1}


def test_same_event_delivered_twice_changes_nothing(world) -> None:
    broker, store, cloud_store, station_bus, link, cloud = world
    env = store.pack("ord_1")
    payload = Outbox.due(store.conn, resend_after_s=0)[0].payload
    topic = c.station_events_topic("ST-1")
    station_bus.publish(topic, payload)
    station_bus.publish(topic, payload)
    assert cloud_store.applied == {env.id: 1}
    assert cloud.stats.feed_applied == 1 and cloud.stats.feed_duplicates == 1
    assert store.outbox_depth() == 0  # first ack trimmed it; second ack was a no-op
    assert link.stats.duplicate_acks == 1


def test_offline_packing_is_kept_then_sent_once_on_reconnect(world) -> None:
    broker, store, cloud_store, station_bus, link, _cloud = world
    station_bus.disconnect()
    envs = [store.pack(f"ord_{i}") for i in range(5)]
    assert link.pump() == 0
    assert store.outbox_depth() == 5
    station_bus.reconnect()  # hello + pump
    assert store.outbox_depth() == 0
    assert set(cloud_store.applied) == {e.id for e in envs}
    assert [e.seq for e in envs] == [1, 2, 3, 4, 5]


def test_lost_ack_means_resend_and_duplicate_ack(world) -> None:
    broker, store, cloud_store, station_bus, link, _cloud = world
    env = store.pack("ord_1")
    broker.hold = True
    link.pump()
    # drop everything in flight (the event reaches nobody)
    broker.pending.clear()
    broker.hold = False
    assert store.outbox_depth() == 1
    link.pump()  # resend_after_s=0: due again
    assert store.outbox_depth() == 0
    assert cloud_store.applied == {env.id: 1}


def test_feed_applies_in_order_and_repairs_gaps_by_replay(world) -> None:
    broker, store, cloud_store, station_bus, link, cloud = world
    for i in range(1, 6):
        cloud_store.add_release("DE-LEJ", f"ord_{i}")
    entries = cloud_store.feed
    feed_topic = c.site_feed_topic("DE-LEJ")
    cloud_bus = broker.buses[1]
    cloud_bus.publish(feed_topic, entries[0].payload)
    cloud_bus.publish(feed_topic, entries[0].payload)  # duplicate
    cloud_bus.publish(feed_topic, entries[3].payload)  # gap: 2, 3 missing -> replay from 1
    assert store.applied() == [1, 2, 3, 4, 5]
    assert link.stats.replays_requested == 1
    assert link.stats.feed_duplicates >= 1


def test_reconnect_replays_what_the_station_missed(world) -> None:
    broker, store, cloud_store, station_bus, link, cloud = world
    station_bus.disconnect()
    for i in range(1, 4):
        cloud_store.add_release("DE-LEJ", f"ord_{i}")
    cloud.publish_feed()  # published while the station is away: it misses them
    assert store.applied() == []
    station_bus.reconnect()  # hello(last_feed_seq=0) -> replay 1..3
    assert store.applied() == [1, 2, 3]


def test_malformed_messages_go_to_dead_letters_and_do_not_crash(world) -> None:
    broker, store, cloud_store, station_bus, link, cloud = world
    topic = c.station_events_topic("ST-1")
    station_bus.publish(topic, b"not json")
    other = c.new_envelope(c.ORDER_PACKED, site="DE-LEJ", station="ST-2", seq=1, body={})
    station_bus.publish(topic, c.encode(other))  # claims another station's identity
    assert len(cloud_store.dead) == 2
    assert "not UTF-8 JSON" in cloud_store.dead[0]
    assert "ST-2" in cloud_store.dead[1]
    env = store.pack("ord_ok")
    link.pump()
    assert env.id in cloud_store.applied


def test_presence_is_recorded(world) -> None:
    broker, store, cloud_store, station_bus, link, cloud = world
    link.publish_presence(online=True)
    assert cloud_store.presence["ST-1"]["online"] is True


def test_a_gap_stays_asked_for_until_it_closes(world) -> None:
    """The answer to a replay request can be read before a later entry is committed; an entry
    that arrives while the request is throttled must be asked for again, not dropped for good."""
    broker, store, cloud_store, station_bus, link, cloud = world
    cloud_bus = broker.buses[1]
    asked: list[int] = []
    cloud_bus.subscribe(c.station_events_topic("ST-1"), lambda _t, p: asked.append(
        c.decode(p).body.get("from_seq", -1)) if c.decode(p).type == c.REPLAY_REQUEST else None)

    def entry(seq: int) -> bytes:
        skip = c.FeedSkipBody(replaces=c.ORDER_RELEASED, reason="test")
        return c.encode(c.new_envelope(c.FEED_SKIP, site="DE-LEJ", seq=seq, body=skip))

    feed, cmd = c.site_feed_topic("DE-LEJ"), c.station_cmd_topic("ST-1")
    cloud_store.feed_since = lambda *_a: []  # type: ignore[method-assign]  # answer by hand below
    cloud_bus.publish(feed, entry(2))  # 1 missing -> ask from 0
    cloud_bus.publish(feed, entry(3))  # still a gap, within the throttle: not asked again yet
    assert asked == [0]
    cloud_bus.publish(cmd, entry(1))
    cloud_bus.publish(cmd, entry(2))  # the replay answer stops at 2
    assert store.last_feed_seq() == 2
    link._replay_asked_at = 0.0  # the throttle (1 s) has passed
    link.pump()
    assert asked == [0, 2]  # 3 is asked for again
    cloud_bus.publish(cmd, entry(3))
    assert store.last_feed_seq() == 3
    link._replay_asked_at = 0.0
    link.pump()
    assert asked == [0, 2]  # gap closed: no more asking


def test_a_feed_entry_lost_before_the_broker_reaches_a_quiet_site_at_the_next_hello(tmp_path: Path) -> None:
    """The cloud marked an entry published, but it never reached the broker (the cloud died with
    it in paho's memory). No later entry shows the gap; the station's periodic hello repairs it."""
    now = [1000.0]
    broker = MemoryBroker()
    store = SqliteStationStore(tmp_path / "replica.db")
    cloud_store = FakeCloudStore()
    station_bus, cloud_bus = broker.bus("station"), broker.bus("cloud")
    link = StationLink(station="ST-1", site="DE-LEJ", bus=station_bus, store=store, hello_interval_s=30,
                       clock=lambda: now[0])
    cloud = CloudLink(bus=cloud_bus, store=cloud_store)
    cloud_bus.subscribe(c.cloud_events_subscription(), cloud.handle)
    link.start()
    hellos = []
    cloud_bus.subscribe(c.station_events_topic("ST-1"),
                        lambda _t, p: hellos.append(1) if c.decode(p).type == c.STATION_HELLO else None)
    cloud_store.add_release("DE-LEJ", "ord_1")
    cloud_store.mark_feed_published(cloud_store.feed)  # "published": lost on the way
    now[0] += 29
    link.pump()
    assert store.applied() == [] and hellos == []
    now[0] += 1
    link.pump()
    assert hellos == [1] and store.applied() == [1]
    link.pump()
    assert hellos == [1]  # not again until the next interval


def test_a_malformed_entry_on_the_feed_cannot_take_the_seq_of_the_real_one(world) -> None:
    broker, store, cloud_store, station_bus, link, cloud = world
    cloud_store.add_release("DE-LEJ", "ord_1")
    cloud.publish_feed()
    assert store.applied() == [1]
    rogue = broker.bus("rogue")
    junk = c.new_envelope(c.ORDER_RELEASED, site="DE-LEJ", seq=2, body={"junk": True})
    rogue.publish(c.site_feed_topic("DE-LEJ"), c.encode(junk))
    assert store.last_feed_seq() == 1 and store.applied() == [1]  # refused: seq 2 is still free
    assert link.stats.dead_letters == 1 and "body invalid" in str(link.last_error)
    assert link.stats.replays_requested == 1  # asked the cloud what stands at 2 (nothing yet)
    cloud_store.add_release("DE-LEJ", "ord_2")  # the cloud's real entry 2
    cloud.publish_feed()
    assert store.applied() == [1, 2]


def test_an_entry_the_cloud_itself_replays_is_stepped_past_even_if_unreadable(world) -> None:
    broker, store, cloud_store, station_bus, link, cloud = world
    cloud_store.add_entry("DE-LEJ", c.ORDER_RELEASED, {"order_id": "ord_1"})  # a cloud bug: no lines
    cloud_store.add_release("DE-LEJ", "ord_2")
    cloud.publish_feed()  # 1 is refused from the feed and replayed; the replayed copy does not wedge
    assert store.last_feed_seq() == 2
    assert store.applied() == [1, 2]  # this fake store records every seq it steps past


def test_junk_is_refused_before_parsing_and_reasons_stay_short() -> None:
    with pytest.raises(c.ContractError, match="over the 262144-byte limit"):
        c.decode(b'{"x": "' + b"a" * (c.MAX_PAYLOAD_BYTES + 1) + b'"}')
    with pytest.raises(c.ContractError, match="nested too deeply"):
        c.decode(b"[" * 100_000)
    env = c.new_envelope(c.ORDER_RELEASED, site="DE-LEJ", seq=1, body={"order_id": "x" * 200_000})
    with pytest.raises(c.ContractError) as err:
        c.check_feed_entry(env)
    assert len(str(err.value)) <= c.MAX_REASON_CHARS + 40 and "xxxxxxxxxx" not in str(err.value)


def test_a_huge_junk_event_is_dead_lettered_briefly(world) -> None:
    broker, store, cloud_store, station_bus, link, cloud = world
    station_bus.publish(c.station_events_topic("ST-1"), b'{"x": "' + b"a" * (10 << 20) + b'"}')
    [reason] = cloud_store.dead
    assert "limit" in reason and len(reason) < 200
    env = store.pack("ord_after")  # the ingest goes on
    link.pump()
    assert cloud_store.applied == {env.id: 1}


def test_an_absurd_seq_does_not_keep_the_station_asking_for_ever(tmp_path: Path) -> None:
    broker = MemoryBroker()
    store = SqliteStationStore(tmp_path / "replica.db")
    cloud_store = FakeCloudStore()
    now = [1000.0]
    link = StationLink(station="ST-1", site="DE-LEJ", bus=broker.bus("station"), store=store,
                       hello_interval_s=30.0, clock=lambda: now[0])
    cloud = CloudLink(bus=broker.bus("cloud"), store=cloud_store)
    broker.buses[1].subscribe(c.cloud_events_subscription(), cloud.handle)
    link.start()
    rogue = c.new_envelope(c.ORDER_RELEASED, site="DE-LEJ", seq=10**12, body=release_body("ord_x"))
    broker.bus("rogue").publish(c.site_feed_topic("DE-LEJ"), c.encode(rogue))
    asked = link.stats.replays_requested
    assert asked == 1
    for _ in range(10):  # while the gap looks open, at most one ask a second
        now[0] += 1.5
        link.pump()
    assert link.stats.replays_requested == asked + 10
    now[0] += 30  # the periodic hello asks for everything after last anyway, then the asking stops
    link.pump()
    settled = link.stats.replays_requested
    for _ in range(10):
        now[0] += 1.5
        link.pump()
    assert link.stats.replays_requested == settled
    cloud_store.add_release("DE-LEJ", "ord_1")  # the feed goes on as usual
    cloud.publish_feed()
    assert store.applied() == [1]


def test_sequence_numbers_beyond_64_bits_are_dead_lettered(world) -> None:
    broker, store, cloud_store, station_bus, link, cloud = world
    hello = c.new_envelope(c.STATION_HELLO, site="DE-LEJ", station="ST-1", seq=0, body={"last_feed_seq": 0})
    raw = c.encode(hello).replace(b'"last_feed_seq":0', b'"last_feed_seq":' + str(10**40).encode())
    station_bus.publish(c.station_events_topic("ST-1"), raw)
    packed = c.encode(c.new_envelope(c.ORDER_PACKED, site="DE-LEJ", station="ST-1", seq=1, body={}))
    station_bus.publish(c.station_events_topic("ST-1"), packed.replace(b'"seq":1', b'"seq":' + str(10**30).encode()))
    assert len(cloud_store.dead) == 2 and all("less than or equal" in r for r in cloud_store.dead)
