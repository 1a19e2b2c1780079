"""The station's local SQLite replica: the site feed as applied here, packing progress, scans, outbox.

It implements :class:`sync.link.StationStore` (what the sync link needs) plus the few
queries and writes the packing engine and the TUI need. Every write that belongs to one
business step is ONE transaction: a feed entry and its ``last_feed_seq``; a counted item
and its scan record; ``order.packed`` and its outbox row.

Durability: WAL with ``synchronous=FULL``. NORMAL would be safe against a crash of the
process but may lose the last commits on a power cut, and the commit we care about most
(``order.packed``, after a label was printed and the parcel sealed) is exactly the one a
station cannot redo. A station commits a few times a minute, so an fsync per commit costs
nothing anyone notices.

Threads: the MQTT callback thread (feed, acks), the engine thread and the UI thread all
call in. One connection guarded by one re-entrant lock serialises them; each call is
short (no device I/O ever happens under this lock).

Schema: ``PRAGMA user_version`` plus the ordered :data:`MIGRATIONS`; a replica made by an
older build is upgraded in place when opened, one transaction per step; a replica made
by a newer build is refused.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

from station.errors import ReplicaError
from sync import contract as c
from sync.contract import (
    ContractError,
    Envelope,
    LabelInfo,
    OrderCancelledBody,
    OrderPackedBody,
    OrderReleasedBody,
    ShipToSummary,
)
from sync.outbox import Outbox, OutboxRow

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "FeedReject",
    "Migration",
    "Order",
    "OrderLine",
    "OrderStatus",
    "PackedCommit",
    "Replica",
    "ScanRecord",
    "connect",
    "migrate",
]

log = logging.getLogger("packline.station")

CLOSED_ELSEWHERE = "closed by the cloud: "
"""Prefix of ``cancel_reason`` for an order another station packed (see :meth:`Replica._apply_updated`)."""

OrderStatus = Literal["released", "packing", "packed", "cancelled"]
OPEN_STATUSES: tuple[OrderStatus, ...] = ("released", "packing")
BUSY_TIMEOUT_MS = 5000


# --- schema ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Migration:
    """One schema step: ``statements`` run in one transaction that also sets ``user_version``.
    ``before`` runs first, outside that transaction, and must be idempotent."""

    version: int
    description: str
    statements: tuple[str, ...]
    before: Callable[[sqlite3.Connection], None] | None = None


_V1 = (
    """CREATE TABLE feed_state (
        id            INTEGER PRIMARY KEY CHECK (id = 1),
        last_feed_seq INTEGER NOT NULL CHECK (last_feed_seq >= 0)
    )""",
    "INSERT INTO feed_state(id, last_feed_seq) VALUES (1, 0)",
    """CREATE TABLE orders (
        order_id        TEXT PRIMARY KEY,
        external_id     TEXT NOT NULL,
        tenant          TEXT NOT NULL,
        status          TEXT NOT NULL CHECK (status IN ('released', 'packing', 'packed', 'cancelled')),
        service_level   TEXT NOT NULL,
        ship_to         TEXT NOT NULL,      -- JSON ShipToSummary
        label           TEXT NOT NULL,      -- JSON LabelInfo: carrier, service, tracking_number, zpl
        tracking_number TEXT NOT NULL,
        released        TEXT NOT NULL,      -- the order.released envelope as applied (JSON)
        feed_seq        INTEGER NOT NULL,
        released_at     REAL NOT NULL,      -- when this replica applied the release
        updated_at      REAL NOT NULL,
        cancel_reason   TEXT
    )""",
    "CREATE INDEX orders_external_id ON orders(external_id)",
    "CREATE INDEX orders_tracking_number ON orders(tracking_number)",
    "CREATE INDEX orders_status ON orders(status)",
    """CREATE TABLE order_lines (
        order_id    TEXT NOT NULL REFERENCES orders(order_id) ON DELETE CASCADE,
        line_no     INTEGER NOT NULL,
        sku         TEXT NOT NULL,
        name        TEXT NOT NULL,
        qty         INTEGER NOT NULL CHECK (qty > 0),
        gtins       TEXT NOT NULL,          -- JSON list of GTIN-14
        lot_tracked INTEGER NOT NULL DEFAULT 0,
        scanned     INTEGER NOT NULL DEFAULT 0 CHECK (scanned >= 0 AND scanned <= qty),
        PRIMARY KEY (order_id, line_no)
    )""",
    """CREATE TABLE scans (
        id        INTEGER PRIMARY KEY,
        at        REAL NOT NULL,
        raw       BLOB NOT NULL,
        text      TEXT NOT NULL,
        symbology TEXT,
        gtin      TEXT,
        lot       TEXT,
        expiry    TEXT,
        order_id  TEXT,                     -- the order open when scanned (no foreign key: may be unknown)
        sku       TEXT,
        verdict   TEXT NOT NULL,
        ok        INTEGER NOT NULL,
        message   TEXT NOT NULL
    )""",
    """CREATE TABLE feed_rejects (
        seq     INTEGER PRIMARY KEY,        -- the feed seq that was skipped
        id      TEXT NOT NULL,
        type    TEXT NOT NULL,
        reason  TEXT NOT NULL,
        payload TEXT NOT NULL,
        at      REAL NOT NULL
    )""",
)

_V2 = (
    "ALTER TABLE orders ADD COLUMN started_at REAL",
    "ALTER TABLE orders ADD COLUMN printed_at REAL",
    "ALTER TABLE orders ADD COLUMN packed_at REAL",
    "ALTER TABLE orders ADD COLUMN packed_event_id TEXT",
    "ALTER TABLE order_lines ADD COLUMN lots TEXT NOT NULL DEFAULT '[]'",  # one entry per lot-tracked unit
    "CREATE INDEX scans_order ON scans(order_id, at)",
)

_V3 = (
    # whose replica this is: the feed position means nothing for another site's feed
    """CREATE TABLE identity (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        station TEXT NOT NULL,
        site    TEXT NOT NULL
    )""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "orders, lines, scans, feed state, outbox", _V1, before=Outbox.create_schema),
    Migration(2, "pack timings, scanned lots per line", _V2),
    Migration(3, "the station and site the replica belongs to", _V3),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1)), "migrations are numbered 1..N"


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, *, target: int | None = None) -> int:
    """Bring the schema to ``target`` (default: :data:`SCHEMA_VERSION`); returns the version reached.

    Safe when two processes open the same file at once: each step re-checks the version
    inside its ``BEGIN IMMEDIATE`` transaction.
    """
    target = SCHEMA_VERSION if target is None else target
    assert 0 <= target <= SCHEMA_VERSION, f"unknown schema version {target}"
    current = _user_version(conn)
    if current > SCHEMA_VERSION:
        raise ReplicaError(
            f"replica schema v{current} is newer than this build understands (v{SCHEMA_VERSION}); "
            "upgrade Packline on this station"
        )
    for step in MIGRATIONS[current:target]:
        if step.before is not None:
            step.before(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _user_version(conn) >= step.version:  # someone else got there first
                conn.execute("COMMIT")
                continue
            for statement in step.statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(step.version)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("replica schema upgraded to v%d (%s)", step.version, step.description)
    return _user_version(conn)


def connect(path: Path | str) -> sqlite3.Connection:
    """Open a replica file with the station's pragmas; no schema work."""
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":  # pragma: no cover - only on filesystems without shared memory
        log.warning("replica %s runs in journal mode %s, not WAL", path, mode)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


# --- values ------------------------------------------------------------------------------
@dataclass(frozen=True)
class OrderLine:
    line_no: int
    sku: str
    name: str
    qty: int
    gtins: tuple[str, ...]
    lot_tracked: bool
    scanned: int
    lots: tuple[str, ...] = ()
    """One entry per lot-tracked unit scanned, in scan order."""

    @property
    def complete(self) -> bool:
        return self.scanned >= self.qty

    @property
    def remaining(self) -> int:
        return max(self.qty - self.scanned, 0)


@dataclass(frozen=True)
class Order:
    order_id: str
    external_id: str
    tenant: str
    status: OrderStatus
    service_level: str
    ship_to: ShipToSummary
    label: LabelInfo
    lines: tuple[OrderLine, ...]
    feed_seq: int
    cancel_reason: str | None = None
    started_at: float | None = None
    printed_at: float | None = None
    packed_at: float | None = None
    packed_event_id: str | None = None

    @property
    def complete(self) -> bool:
        """Every line scanned in full (the label may not have printed yet)."""
        return all(line.complete for line in self.lines)

    @property
    def tracking_number(self) -> str:
        return self.label.tracking_number

    @property
    def units(self) -> tuple[int, int]:
        """(scanned, expected) over all lines."""
        return sum(li.scanned for li in self.lines), sum(li.qty for li in self.lines)


@dataclass(frozen=True)
class ScanRecord:
    """One scan as recorded, with the engine's verdict. Bad scans are recorded too."""

    at: float
    raw: bytes
    text: str
    verdict: str
    ok: bool
    message: str
    symbology: str | None = None
    gtin: str | None = None
    lot: str | None = None
    expiry: date | None = None
    order_id: str | None = None
    sku: str | None = None


@dataclass(frozen=True)
class PackedCommit:
    envelope: Envelope
    """The ``order.packed`` envelope, stored in the outbox."""
    was_cancelled: bool
    """The feed had cancelled the order while its label printed (the cloud will raise an exception)."""


@dataclass(frozen=True)
class FeedReject:
    seq: int
    id: str
    type: str
    reason: str


def _gtin14(value: str) -> str:
    v = value.strip()
    return v.zfill(14) if v.isascii() and v.isdigit() and len(v) in (8, 12, 13, 14) else v


# --- the replica -------------------------------------------------------------------------
class Replica:
    """The station's SQLite replica. Implements :class:`sync.link.StationStore`."""

    def __init__(
        self, path: Path | str, *, station: str, site: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        self.station = station
        self.site = site
        self.outbox = Outbox(station=station, site=site)
        self._clock = clock
        self._lock = threading.RLock()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._conn = connect(self.path)
        try:
            migrate(self._conn)
            if not self._claim_identity():
                self._conn.close()
                self._archive()
                self._conn = connect(self.path)
                migrate(self._conn)
                self._claim_identity()
        except BaseException:
            self._conn.close()
            raise

    def _claim_identity(self) -> bool:
        """Record (station, site) in a new replica (or one made before v3); True when the replica
        is this station's. A replica of another site with an empty outbox is False (it is archived
        and a fresh one made); with events still unacked it is refused: they must not be lost."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT station, site FROM identity WHERE id = 1").fetchone()
            if row is None:
                conn.execute("INSERT INTO identity(id, station, site) VALUES (1, ?, ?)", (self.station, self.site))
                conn.execute("COMMIT")
                return True
            depth = Outbox.depth(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if tuple(row) == (self.station, self.site):
            return True
        if depth:
            raise ReplicaError(
                f"replica {self.path} belongs to station {row[0]} at site {row[1]}, not {self.station} at "
                f"{self.site}, and {depth} of its events are not acked by the cloud yet: run the station "
                f"as {row[0]} at {row[1]} until its outbox is empty, then re-enrol"
            )
        return False

    def _archive(self) -> None:
        """Move another site's (fully synced) replica aside; the new one starts from seq 0."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.stem}.before-{stamp}{self.path.suffix}")
        conn = sqlite3.connect(str(self.path), isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything into the main file
        finally:
            conn.close()
        self.path.rename(target)
        for suffix in ("-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        log.warning("replica %s belonged to another station or site; kept it as %s and started a new one",
                    self.path, target)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @property
    def schema_version(self) -> int:
        with self._lock:
            return _user_version(self._conn)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._conn.execute(sql, params)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    # -- StationStore: outbox -----------------------------------------------------------
    def outbox_due(self, resend_after_s: float, limit: int) -> list[OutboxRow]:
        with self._lock:
            return Outbox.due(self._conn, resend_after_s=resend_after_s, limit=limit)

    def outbox_mark_sent(self, seqs: list[int]) -> None:
        with self._tx() as conn:
            Outbox.mark_sent(conn, seqs)

    def outbox_reset(self) -> None:
        with self._tx() as conn:
            Outbox.reset_sent(conn)

    def outbox_trim(self, event_id: uuid.UUID) -> bool:
        with self._tx() as conn:
            return Outbox.trim(conn, event_id)

    def outbox_depth(self) -> int:
        with self._lock:
            return Outbox.depth(self._conn)

    # -- StationStore: feed -------------------------------------------------------------
    def last_feed_seq(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT last_feed_seq FROM feed_state WHERE id = 1").fetchone()[0])

    def apply_feed(self, env: Envelope) -> None:
        """Apply one feed entry and advance ``last_feed_seq`` in one transaction.

        An entry at or below ``last_feed_seq`` is a no-op (already applied). A malformed
        entry is recorded in ``feed_rejects`` and skipped, so one bad message cannot wedge
        the feed for ever; unknown types are skipped the same way.
        """
        with self._tx() as conn:
            last = int(conn.execute("SELECT last_feed_seq FROM feed_state WHERE id = 1").fetchone()[0])
            if env.seq <= last:
                return
            if env.seq != last + 1:
                raise ReplicaError(f"feed entry {env.seq} applied out of order (last applied {last})")
            now = self._clock()
            try:
                if env.site != self.site:
                    raise ContractError(f"feed entry for site {env.site} reached station of site {self.site}")
                if env.type == c.ORDER_RELEASED:
                    self._apply_released(conn, env, c.parse_body(env, OrderReleasedBody), now)
                elif env.type == c.ORDER_CANCELLED:
                    self._apply_cancelled(conn, c.parse_body(env, OrderCancelledBody), now)
                elif env.type == c.ORDER_UPDATED:
                    self._apply_updated(conn, c.parse_body(env, c.OrderUpdatedBody), now)
                elif env.type == c.FEED_SKIP:
                    c.parse_body(env, c.FeedSkipBody)  # nothing to do here but advance
                else:
                    raise ContractError(f"feed entry type {env.type!r} is not understood by this station")
            except ContractError as e:
                log.warning("station %s skips feed entry %d: %s", self.station, env.seq, e)
                conn.execute(
                    "INSERT OR REPLACE INTO feed_rejects(seq, id, type, reason, payload, at) VALUES (?, ?, ?, ?, ?, ?)",
                    (env.seq, str(env.id), env.type, str(e), env.model_dump_json(by_alias=True), now),
                )
            conn.execute("UPDATE feed_state SET last_feed_seq = ? WHERE id = 1", (env.seq,))

    def _apply_released(
        self, conn: sqlite3.Connection, env: Envelope, body: OrderReleasedBody, now: float
    ) -> None:
        cur = conn.execute(
            "INSERT INTO orders(order_id, external_id, tenant, status, service_level, ship_to, label, "
            "tracking_number, released, feed_seq, released_at, updated_at) "
            "VALUES (?, ?, ?, 'released', ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(order_id) DO NOTHING",
            (
                body.order_id,
                body.external_id,
                body.tenant,
                body.service_level,
                body.ship_to.model_dump_json(),
                body.label.model_dump_json(),
                body.label.tracking_number,
                env.model_dump_json(by_alias=True),
                env.seq,
                now,
                now,
            ),
        )
        if cur.rowcount == 0:
            log.info(
                "station %s: order %s was already released here; feed %d ignored",
                self.station,
                body.order_id,
                env.seq,
            )
            return
        conn.executemany(
            "INSERT INTO order_lines(order_id, line_no, sku, name, qty, gtins, lot_tracked) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    body.order_id,
                    i,
                    li.sku,
                    li.name,
                    li.qty,
                    json.dumps([_gtin14(g) for g in li.gtins]),
                    int(li.lot_tracked),
                )
                for i, li in enumerate(body.lines, start=1)
            ],
        )

    def _apply_cancelled(self, conn: sqlite3.Connection, body: OrderCancelledBody, now: float) -> None:
        # A packed order stays packed: its order.packed event is (or was) on its way, and the
        # cloud turns "packed after cancelled" into an exception a manager resolves.
        cur = conn.execute(
            "UPDATE orders SET status = 'cancelled', cancel_reason = ?, updated_at = ? "
            "WHERE order_id = ? AND status IN ('released', 'packing')",
            (body.reason, now, body.order_id),
        )
        if cur.rowcount == 0:
            log.info("station %s: cancel of %s changes nothing here", self.station, body.order_id)

    def _apply_updated(self, conn: sqlite3.Connection, body: c.OrderUpdatedBody, now: float) -> None:
        """The cloud closed the order (another station shipped it, or it went to exception):
        take it off this station's open orders. A station that packed it itself keeps 'packed';
        one that still has it open although the cloud names this very station (a replica restored
        from a backup taken before the pack) closes it too, or the parcel would go out twice."""
        if body.status not in ("shipped", "delivered", "exception", "cancelled"):
            return
        where = f" at {body.station}" if body.station else ""
        reason = f"{CLOSED_ELSEWHERE}{body.status}{where}" + (f" ({body.reason})" if body.reason else "")
        cur = conn.execute(
            "UPDATE orders SET status = 'cancelled', cancel_reason = ?, updated_at = ? "
            "WHERE order_id = ? AND status IN ('released', 'packing')",
            (reason, now, body.order_id),
        )
        if cur.rowcount:
            log.info("station %s: order %s closed: %s", self.station, body.order_id, reason)

    def feed_rejects(self) -> list[FeedReject]:
        rows = self._query("SELECT seq, id, type, reason FROM feed_rejects ORDER BY seq")
        return [FeedReject(r["seq"], r["id"], r["type"], r["reason"]) for r in rows]

    # -- orders: reads ---------------------------------------------------------------------
    _ORDER_COLS = (
        "order_id, external_id, tenant, status, service_level, ship_to, label, feed_seq, cancel_reason, "
        "started_at, printed_at, packed_at, packed_event_id"
    )

    def _orders(self, where: str, params: Sequence[object] = (), tail: str = "") -> list[Order]:
        with self._lock:
            rows = self._query(f"SELECT {self._ORDER_COLS} FROM orders WHERE {where} {tail}", params)
            if not rows:
                return []
            ids = [r["order_id"] for r in rows]
            marks = ",".join("?" * len(ids))
            line_rows = self._query(
                f"SELECT order_id, line_no, sku, name, qty, gtins, lot_tracked, scanned, lots "
                f"FROM order_lines WHERE order_id IN ({marks}) ORDER BY order_id, line_no",
                ids,
            )
        lines: dict[str, list[OrderLine]] = {}
        for lr in line_rows:
            lines.setdefault(lr["order_id"], []).append(
                OrderLine(
                    line_no=lr["line_no"],
                    sku=lr["sku"],
                    name=lr["name"],
                    qty=lr["qty"],
                    gtins=tuple(json.loads(lr["gtins"])),
                    lot_tracked=bool(lr["lot_tracked"]),
                    scanned=lr["scanned"],
                    lots=tuple(json.loads(lr["lots"])),
                )
            )
        return [
            Order(
                order_id=r["order_id"],
                external_id=r["external_id"],
                tenant=r["tenant"],
                status=r["status"],
                service_level=r["service_level"],
                ship_to=ShipToSummary.model_validate_json(r["ship_to"]),
                label=LabelInfo.model_validate_json(r["label"]),
                lines=tuple(lines.get(r["order_id"], ())),
                feed_seq=r["feed_seq"],
                cancel_reason=r["cancel_reason"],
                started_at=r["started_at"],
                printed_at=r["printed_at"],
                packed_at=r["packed_at"],
                packed_event_id=r["packed_event_id"],
            )
            for r in rows
        ]

    def get_order(self, order_id: str) -> Order | None:
        found = self._orders("order_id = ?", (order_id,))
        return found[0] if found else None

    def find_orders(self, text: str) -> list[Order]:
        """Orders a scanned order barcode may mean: order id, external id or tracking number.

        An exact order id wins; external ids are unique per tenant only, so several
        orders may come back for one external id.
        """
        ref = text.strip()
        if not ref:
            return []
        exact = self._orders("order_id = ?", (ref,))
        if exact:
            return exact
        return self._orders("tracking_number = ? OR external_id = ?", (ref, ref), "ORDER BY feed_seq")

    def find_order(self, text: str) -> Order | None:
        """The one order ``text`` names, or None (unknown or ambiguous)."""
        found = self.find_orders(text)
        return found[0] if len(found) == 1 else None

    def packing_order(self) -> Order | None:
        """The order this station was packing (to resume after a restart)."""
        found = self._orders("status = 'packing'", (), "ORDER BY started_at DESC LIMIT 1")
        return found[0] if found else None

    def open_orders(self, limit: int = 100) -> list[Order]:
        return self._orders("status IN ('released', 'packing')", (), f"ORDER BY feed_seq LIMIT {int(limit)}")

    def counts(self) -> dict[OrderStatus, int]:
        rows = self._query("SELECT status, COUNT(*) AS n FROM orders GROUP BY status")
        result: dict[OrderStatus, int] = {"released": 0, "packing": 0, "packed": 0, "cancelled": 0}
        for r in rows:
            result[r["status"]] = int(r["n"])
        return result

    def scans(self, *, order_id: str | None = None, limit: int = 1000) -> list[ScanRecord]:
        where, params = ("WHERE order_id = ?", (order_id,)) if order_id else ("", ())
        rows = self._query(
            f"SELECT at, raw, text, symbology, gtin, lot, expiry, order_id, sku, verdict, ok, message "
            f"FROM scans {where} ORDER BY id LIMIT {int(limit)}",
            params,
        )
        return [
            ScanRecord(
                at=r["at"],
                raw=bytes(r["raw"]),
                text=r["text"],
                verdict=r["verdict"],
                ok=bool(r["ok"]),
                message=r["message"],
                symbology=r["symbology"],
                gtin=r["gtin"],
                lot=r["lot"],
                expiry=date.fromisoformat(r["expiry"]) if r["expiry"] else None,
                order_id=r["order_id"],
                sku=r["sku"],
            )
            for r in rows
        ]

    # -- orders: writes by the engine -----------------------------------------------------
    @staticmethod
    def _insert_scan(conn: sqlite3.Connection, rec: ScanRecord) -> None:
        conn.execute(
            "INSERT INTO scans(at, raw, text, symbology, gtin, lot, expiry, order_id, sku, verdict, ok, message) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rec.at,
                rec.raw,
                rec.text,
                rec.symbology,
                rec.gtin,
                rec.lot,
                rec.expiry.isoformat() if rec.expiry else None,
                rec.order_id,
                rec.sku,
                rec.verdict,
                int(rec.ok),
                rec.message,
            ),
        )

    def record_scan(self, rec: ScanRecord) -> None:
        """Record a scan that changes nothing else (a bad scan, an order opened, ...)."""
        with self._tx() as conn:
            self._insert_scan(conn, rec)

    def begin_packing(self, order_id: str, *, now: float, scan: ScanRecord | None = None) -> bool:
        """released -> packing (idempotent for an order already being packed); False otherwise."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE orders SET status = 'packing', started_at = COALESCE(started_at, ?), updated_at = ? "
                "WHERE order_id = ? AND status IN ('released', 'packing')",
                (now, now, order_id),
            )
            if scan is not None:
                self._insert_scan(conn, scan)
            return cur.rowcount == 1

    def count_item(self, order_id: str, line_no: int, *, lot: str | None, scan: ScanRecord) -> bool:
        """Count one unit on a line of an order being packed, and record the scan, in one transaction.
        False (and nothing written) if the order is not being packed or the line is already full."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT l.lots FROM order_lines l JOIN orders o USING (order_id) "
                "WHERE l.order_id = ? AND l.line_no = ? AND o.status = 'packing' AND l.scanned < l.qty",
                (order_id, line_no),
            ).fetchone()
            if row is None:
                return False
            lots = json.loads(row[0])
            if lot is not None:
                lots.append(lot)
            conn.execute(
                "UPDATE order_lines SET scanned = scanned + 1, lots = ? WHERE order_id = ? AND line_no = ?",
                (json.dumps(lots), order_id, line_no),
            )
            conn.execute("UPDATE orders SET updated_at = ? WHERE order_id = ?", (scan.at, order_id))
            self._insert_scan(conn, scan)
            return True

    def reset_order(self, order_id: str, *, now: float) -> bool:
        """Abort packing: back to released with nothing scanned. False if it was not being packed."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE orders SET status = 'released', started_at = NULL, printed_at = NULL, updated_at = ? "
                "WHERE order_id = ? AND status = 'packing'",
                (now, order_id),
            )
            if cur.rowcount == 1:
                conn.execute(
                    "UPDATE order_lines SET scanned = 0, lots = '[]' WHERE order_id = ?", (order_id,)
                )
            return cur.rowcount == 1

    def commit_packed(
        self, order_id: str, body: OrderPackedBody, *, tenant: str, printed_at: float, now: float
    ) -> PackedCommit:
        """The order is packed and its label printed: status + outbox row in ONE transaction.

        The order must be ``packing``; ``cancelled`` is accepted too (the cancel arrived while
        the label printed: the parcel exists, so the cloud must hear of it and raise an
        exception rather than never know).
        """
        event_id = uuid.uuid4()  # ids first, then send
        with self._tx() as conn:
            row = conn.execute("SELECT status FROM orders WHERE order_id = ?", (order_id,)).fetchone()
            if row is None or row[0] not in ("packing", "cancelled"):
                state = "unknown" if row is None else row[0]
                raise ReplicaError(f"order {order_id} is {state}, not being packed here; nothing committed")
            conn.execute(
                "UPDATE orders SET status = 'packed', printed_at = ?, packed_at = ?, packed_event_id = ?, "
                "updated_at = ? WHERE order_id = ?",
                (printed_at, now, str(event_id), now, order_id),
            )
            env = self.outbox.append(conn, c.ORDER_PACKED, body, tenant=tenant, id_=event_id)
        return PackedCommit(envelope=env, was_cancelled=row[0] == "cancelled")
