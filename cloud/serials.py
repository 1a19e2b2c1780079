"""Tracking serials that are unique across processes, for carriers that number their own labels.

:class:`SerialSource` is the ``next_serial`` callable handed to
:class:`cloud.carriers.SandboxCarrier`. It draws from the database *in the transaction of the
order being released*, bound with :meth:`SerialSource.bound`:

* PostgreSQL: ``nextval('carrier_serial_seq')`` (never blocks, never rolled back: a rolled-back
  order leaves a gap, never a duplicate);
* SQLite: the ``carrier_serials`` counter row, incremented in the writer's transaction (SQLite
  has one writer at a time, so this costs nothing and rolls back with the order).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import Session

from cloud.db import dialect_insert
from cloud.models import CarrierSerial, carrier_serial_seq, table

__all__ = ["S10_SERIAL_SPACE", "SerialSource", "next_serial"]

S10_SERIAL_SPACE = 100_000_000
_SERIALS = table(CarrierSerial)
_BOUND: ContextVar[Connection | None] = ContextVar("packline_serial_connection", default=None)


def next_serial(conn: Connection, name: str = "sandbox") -> int:
    """Draw the next serial on ``conn`` (inside its transaction)."""
    if conn.dialect.name == "postgresql":
        return int(conn.execute(sa.select(carrier_serial_seq.next_value())).scalar_one())
    ins = dialect_insert(conn, _SERIALS).values(carrier=name, last_value=1)
    stmt = ins.on_conflict_do_update(
        index_elements=["carrier"], set_={"last_value": _SERIALS.c.last_value + 1}
    ).returning(_SERIALS.c.last_value)
    return int(conn.execute(stmt).scalar_one())


class SerialSource:
    """``next_serial`` for a carrier; call it only inside :meth:`bound`."""

    def __init__(self, name: str = "sandbox", modulo: int = S10_SERIAL_SPACE) -> None:
        self.name = name
        self.modulo = modulo

    @contextmanager
    def bound(self, session: Session) -> Iterator[None]:
        token = _BOUND.set(session.connection())
        try:
            yield
        finally:
            _BOUND.reset(token)

    def __call__(self) -> int:
        conn = _BOUND.get()
        if conn is None:
            raise RuntimeError("SerialSource used outside SerialSource.bound(session)")
        return next_serial(conn, self.name) % self.modulo
