"""Ledger: pure rules, the SQL adapter, and the invariant under concurrency (SQLite and PostgreSQL)."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cloud import ledger
from cloud.db import make_engine, read_session, upgrade, write_session
from cloud.ledger import Balance, StockRuleError, apply_movement
from cloud.models import Hold, Product, Site, Tenant

T, SITE, SITE2 = "t1", "S1", "S2"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url, pool_size=20, max_overflow=10)
    upgrade(eng)
    with write_session(eng) as s:
        s.add(Tenant(id=T, name="T one", country="DE", webhook_secret="whsec_AAAA"))
        for sid in (SITE, SITE2):
            s.add(
                Site(
                    id=sid, name=sid, country="DE", postal_code="04435", city="X", street="Y",
                    lat=51.0, lon=12.0, timezone="Europe/Berlin",
                )
            )
        s.flush()
        for sku in ("A", "B"):
            s.add(Product(tenant=T, sku=sku, name=sku, gtins=[], weight_g=100))
    yield eng
    eng.dispose()


def _receive(engine: Engine, sku: str, qty: int, site: str = SITE, mid: uuid.UUID | None = None) -> bool:
    with write_session(engine) as s:
        return ledger.receive(s, tenant=T, sku=sku, site=site, qty=qty, movement_id=mid or uuid.uuid4())


def _level(engine: Engine, sku: str, site: str = SITE) -> tuple[int, int]:
    with read_session(engine) as s:
        (lv,) = ledger.stock_levels(s, T, sku=sku, site=site)
        return lv.on_hand, lv.reserved


def _invariants(engine: Engine) -> list[str]:
    with read_session(engine) as s:
        return ledger.check_invariants(s)


# --- pure rules ------------------------------------------------------------------------------
def test_rules_follow_two_phase_reservations() -> None:
    b = apply_movement(Balance(), "receipt", 5)
    b = apply_movement(b, "reserve", 3)
    assert (b.on_hand, b.reserved, b.available) == (5, 3, 2)
    with pytest.raises(StockRuleError):
        apply_movement(b, "reserve", 3)
    b = apply_movement(b, "post", 2)
    assert (b.on_hand, b.reserved) == (3, 1)
    b = apply_movement(b, "void", 1)
    assert (b.on_hand, b.reserved) == (3, 0)
    with pytest.raises(StockRuleError):
        apply_movement(b, "void", 1)
    with pytest.raises(StockRuleError):
        apply_movement(Balance(2, 2), "adjust", -1)
    assert apply_movement(Balance(2, 1), "adjust", -1) == Balance(1, 1)
    with pytest.raises(StockRuleError):
        apply_movement(b, "receipt", 0)


def test_invariant_violations_name_the_key() -> None:
    bad = ledger.invariant_violations({("t", "s", "x"): Balance(1, 2)}, {})
    assert any("reserved 2 > on_hand 1" in v for v in bad)
    assert any("on_hand 1 != receipts 0" in v for v in bad)


# --- SQL adapter ----------------------------------------------------------------------------------
def test_receipt_is_idempotent_by_movement_id(engine: Engine) -> None:
    mid = uuid.uuid4()
    assert _receive(engine, "A", 5, mid=mid) is True
    assert _receive(engine, "A", 5, mid=mid) is False
    assert _level(engine, "A") == (5, 0)
    assert _invariants(engine) == []


def test_a_movement_id_booked_for_something_else_is_refused(engine: Engine) -> None:
    mid = uuid.uuid4()
    assert _receive(engine, "A", 5, mid=mid) is True
    with pytest.raises(ledger.MovementIdReused):
        _receive(engine, "A", 6, mid=mid)
    with pytest.raises(ledger.MovementIdReused):
        _receive(engine, "B", 5, mid=mid)
    with pytest.raises(ledger.MovementIdReused), write_session(engine) as s:
        ledger.adjust(s, tenant=T, sku="A", site=SITE, delta=5, movement_id=mid, reason="found")
    adj = uuid.uuid4()
    with write_session(engine) as s:
        assert ledger.adjust(s, tenant=T, sku="A", site=SITE, delta=-1, movement_id=adj, reason="damaged")
    with pytest.raises(ledger.MovementIdReused), write_session(engine) as s:
        ledger.adjust(s, tenant=T, sku="A", site=SITE, delta=-2, movement_id=adj, reason="damaged")
    assert _level(engine, "A") == (4, 0)
    assert _invariants(engine) == []


def test_reserve_post_void_roundtrip(engine: Engine) -> None:
    _receive(engine, "A", 5)
    _receive(engine, "B", 1)
    with write_session(engine) as s:
        holds = ledger.reserve(s, tenant=T, site=SITE, order_id="o1", lines=[("A", 2), ("B", 1), ("A", 1)])
    assert holds is not None and sorted((h.sku, h.qty) for h in holds) == [("A", 3), ("B", 1)]
    assert _level(engine, "A") == (5, 3)
    # all-or-nothing: B is short, so A must not stay reserved
    with write_session(engine) as s:
        assert ledger.reserve(s, tenant=T, site=SITE, order_id="o2", lines=[("A", 1), ("B", 1)]) is None
    assert _level(engine, "A") == (5, 3)
    hold_a = next(h for h in holds if h.sku == "A")
    with write_session(engine) as s:
        assert ledger.post_hold(s, hold_a.id) is True
    with write_session(engine) as s:
        assert ledger.post_hold(s, hold_a.id) is False  # double post: no-op
        assert ledger.void_hold(s, hold_a.id) is False  # posted holds cannot be voided
    assert _level(engine, "A") == (2, 0)
    with write_session(engine) as s:
        assert [h.sku for h in ledger.void_order(s, "o1")] == ["B"]
        assert ledger.void_order(s, "o1") == []
    assert _level(engine, "B") == (1, 0)
    assert _invariants(engine) == []


def test_adjustments_respect_reservations(engine: Engine) -> None:
    _receive(engine, "A", 3)
    with write_session(engine) as s:
        assert ledger.reserve(s, tenant=T, site=SITE, order_id="o1", lines=[("A", 2)])
    with pytest.raises(StockRuleError), write_session(engine) as s:
        ledger.adjust(s, tenant=T, sku="A", site=SITE, delta=-2, movement_id=uuid.uuid4(), reason="damaged")
    mid = uuid.uuid4()
    for _ in range(2):
        with write_session(engine) as s:
            ledger.adjust(s, tenant=T, sku="A", site=SITE, delta=-1, movement_id=mid, reason="damaged")
    assert _level(engine, "A") == (2, 2)
    with write_session(engine) as s:
        ledger.adjust(s, tenant=T, sku="B", site=SITE2, delta=4, movement_id=uuid.uuid4(), reason="found")
    assert _level(engine, "B", SITE2) == (4, 0)
    assert _invariants(engine) == []


def test_check_constraint_guards_the_balance(engine: Engine) -> None:
    _receive(engine, "A", 1)
    with pytest.raises(sa.exc.IntegrityError), write_session(engine) as s:
        s.connection().execute(sa.text("UPDATE balances SET reserved = 2 WHERE sku = 'A'"))


def test_invariants_catch_a_tampered_balance(engine: Engine) -> None:
    _receive(engine, "A", 4)
    with write_session(engine) as s:
        s.connection().execute(sa.text("UPDATE balances SET on_hand = 5 WHERE sku = 'A'"))
    assert any("on_hand 5 != receipts 4" in v for v in _invariants(engine))


# --- concurrency -------------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", [12])
def test_last_unit_is_reserved_exactly_once(engine: Engine, threads: int) -> None:
    _receive(engine, "A", 1)
    barrier = threading.Barrier(threads)
    results: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            with write_session(engine) as s:
                got = ledger.reserve(s, tenant=T, site=SITE, order_id=f"o{i}", lines=[("A", 1)])
            with lock:
                results.append(got is not None)
        except BaseException as e:  # surfaced below
            with lock:
                errors.append(e)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    assert errors == []
    assert sorted(results) == [False] * (threads - 1) + [True]
    assert _level(engine, "A") == (1, 1)
    with read_session(engine) as s:
        assert s.connection().execute(sa.select(sa.func.count()).select_from(Hold)).scalar_one() == 1
    assert _invariants(engine) == []


def _reserve_in_own_process(url: str, order_id: str, barrier: Any, results: Any) -> None:
    """One racer = one OS process with its own engine, as two cloud API workers would be: on
    SQLite nothing in-process serialises them, only the database does."""
    eng = make_engine(url)
    try:
        barrier.wait(timeout=60)
        with write_session(eng) as s:
            got = ledger.reserve(s, tenant=T, site=SITE, order_id=order_id, lines=[("A", 1)])
        results.put((order_id, got is not None))
    except BaseException as e:  # reported by the parent
        results.put((order_id, repr(e)))
    finally:
        eng.dispose()


def test_last_unit_across_processes_is_reserved_exactly_once(engine: Engine, db_url: str) -> None:
    _receive(engine, "A", 1)
    ctx = multiprocessing.get_context("spawn")
    n = 4
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [ctx.Process(target=_reserve_in_own_process, args=(db_url, f"p{i}", barrier, results))
             for i in range(n)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert sorted(got.values(), key=str) == [False] * (n - 1) + [True], got
    assert _level(engine, "A") == (1, 1)
    assert _invariants(engine) == []


def test_concurrent_multi_line_orders_never_oversell(engine: Engine) -> None:
    """Opposite line orders (A,B) and (B,A) race: no deadlock, no oversell."""
    _receive(engine, "A", 3)
    _receive(engine, "B", 3)
    n = 8
    barrier = threading.Barrier(n)
    ok: list[bool] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        lines = [("A", 1), ("B", 1)] if i % 2 else [("B", 1), ("A", 1)]
        barrier.wait(timeout=30)
        with write_session(engine) as s:
            got = ledger.reserve(s, tenant=T, site=SITE, order_id=f"o{i}", lines=lines)
        with lock:
            ok.append(got is not None)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    assert ok.count(True) == 3 and len(ok) == n
    assert _level(engine, "A") == (3, 3) and _level(engine, "B") == (3, 3)
    assert _invariants(engine) == []
