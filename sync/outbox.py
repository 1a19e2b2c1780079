"""The station outbox: events written in the same SQLite transaction as the state change.

The producer creates the envelope (id + seq) and stores it *before* anything is sent
(STYLE 10: ids first, then send). Rows stay until the cloud acks their id; sending
again is always safe because the cloud applies each id once.

The caller owns the connection and the transaction::

    with conn:                      # one transaction
        conn.execute("UPDATE orders SET state='packed' ...")
        outbox.append(conn, ORDER_PACKED, body, tenant="acme-outdoor")
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from sync.contract import Envelope, encode, new_envelope

__all__ = ["OUTBOX_SCHEMA", "Outbox", "OutboxRow"]

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY,           -- the envelope's seq: monotonic, never reused
    id           TEXT NOT NULL UNIQUE,          -- the envelope id (UUID)
    type         TEXT NOT NULL,
    payload      BLOB NOT NULL,                 -- the exact bytes that go on the wire
    created_at   REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_sent_at REAL
);
CREATE TABLE IF NOT EXISTS outbox_stream (
    stream   TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    id: uuid.UUID
    type: str
    payload: bytes
    attempts: int
    created_at: float


class Outbox:
    """One producer stream (one station). Stateless apart from its identity: safe across threads
    as long as each thread brings its own connection."""

    def __init__(self, *, station: str, site: str) -> None:
        self.station = station
        self.site = site

    @staticmethod
    def create_schema(conn: sqlite3.Connection) -> None:
        conn.executescript(OUTBOX_SCHEMA)

    def _next_seq(self, conn: sqlite3.Connection) -> int:
        conn.execute(
            "INSERT INTO outbox_stream(stream, last_seq) VALUES (?, 0) ON CONFLICT(stream) DO NOTHING",
            (self.station,),
        )
        row = conn.execute(
            "UPDATE outbox_stream SET last_seq = last_seq + 1 WHERE stream = ? RETURNING last_seq",
            (self.station,),
        ).fetchone()
        return int(row[0])

    def append(
        self,
        conn: sqlite3.Connection,
        type_: str,
        body: BaseModel | dict[str, Any],
        *,
        tenant: str | None = None,
        id_: uuid.UUID | None = None,
    ) -> Envelope:
        """Store an event inside the caller's transaction and return its envelope."""
        if not conn.in_transaction:
            raise RuntimeError("Outbox.append must run inside the caller's transaction (BEGIN first)")
        seq = self._next_seq(conn)
        env = new_envelope(type_, site=self.site, station=self.station, tenant=tenant, seq=seq, body=body, id_=id_)
        conn.execute(
            "INSERT INTO outbox(seq, id, type, payload, created_at) VALUES (?, ?, ?, ?, ?)",
            (seq, str(env.id), env.type, encode(env), time.time()),
        )
        return env

    @staticmethod
    def due(conn: sqlite3.Connection, *, resend_after_s: float, limit: int = 100, now: float | None = None) -> list[OutboxRow]:
        """Rows never sent, or sent more than ``resend_after_s`` ago without an ack, oldest first."""
        now = time.time() if now is None else now
        rows = conn.execute(
            "SELECT seq, id, type, payload, attempts, created_at FROM outbox "
            "WHERE last_sent_at IS NULL OR last_sent_at <= ? ORDER BY seq LIMIT ?",
            (now - resend_after_s, limit),
        ).fetchall()
        return [OutboxRow(r[0], uuid.UUID(r[1]), r[2], bytes(r[3]), r[4], r[5]) for r in rows]

    @staticmethod
    def mark_sent(conn: sqlite3.Connection, seqs: list[int], *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        conn.executemany(
            "UPDATE outbox SET attempts = attempts + 1, last_sent_at = ? WHERE seq = ?", [(now, s) for s in seqs]
        )

    @staticmethod
    def reset_sent(conn: sqlite3.Connection) -> None:
        """After a reconnect everything unacked is due again at once."""
        conn.execute("UPDATE outbox SET last_sent_at = NULL")

    @staticmethod
    def trim(conn: sqlite3.Connection, event_id: uuid.UUID | str) -> bool:
        """Drop an acked row; False if it was already gone (a duplicate ack)."""
        return conn.execute("DELETE FROM outbox WHERE id = ?", (str(event_id),)).rowcount == 1

    @staticmethod
    def depth(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
