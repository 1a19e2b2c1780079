"""Seed loading (all-or-nothing, idempotent), tracking serials, ids and small pure helpers."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cloud.db import make_engine, read_session, upgrade, write_session
from cloud.errors import pointer
from cloud.ids import new_ulid, order_id, stable_uuid
from cloud.loader import LoadError, load_dir
from cloud.serials import SerialSource
from cloud.tenants import authenticate, hash_api_key, new_webhook_secret, normalise_vat_id
from tests.support import SAMPLE_DATA


def _seed(tmp_path: Path, edit: Callable[[Path], None] | None = None) -> Path:
    seed = tmp_path / "seed"
    shutil.copytree(SAMPLE_DATA, seed)
    if edit:
        edit(seed)
    return seed


def _patch(file: str, change: Callable[[list[dict[str, Any]]], None]) -> Callable[[Path], None]:
    def edit(seed: Path) -> None:
        rows = json.loads((seed / file).read_text("utf-8"))
        change(rows)
        (seed / file).write_text(json.dumps(rows), "utf-8")

    return edit


def _counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with read_session(engine) as s:
            conn = s.connection()
            return {t: int(conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one())
                    for t in ("tenants", "sites", "products", "balances", "movements", "packers")}
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        ("stock.json", lambda rows: rows[3].update(sku="NOPE"), "stock.json[3]: unknown product acme-outdoor/NOPE"),
        ("stock.json", lambda rows: rows[5].update(qty=-1), "stock.json[5]: qty"),
        ("products.json", lambda rows: rows[2].update(gtins=["5901234123458"]), "products.json[2]: gtins.0"),
        ("tenants.json", lambda rows: rows[1].update(vat_id="SE556036079401"), "tenants.json[1]: VAT id"),
        ("packers.json", lambda rows: rows[0].update(site="XX-NOWHERE"), "packers.json[0]: unknown site"),
        ("sites.json", lambda rows: rows.append(dict(rows[0])), "sites.json[3]: duplicate of record 0"),
    ],
)
def test_a_bad_record_names_file_and_index_and_writes_nothing(
    db_url: str, tmp_path: Path, file: str, change: Callable[[list[dict[str, Any]]], None], message: str
) -> None:
    upgrade(db_url)
    with pytest.raises(LoadError) as err:
        engine = make_engine(db_url)
        try:
            load_dir(engine, _seed(tmp_path, _patch(file, change)))
        finally:
            engine.dispose()
    assert message in str(err.value)
    assert set(_counts(db_url).values()) == {0}


def test_load_is_idempotent_and_skips_zero_stock(db_url: str, tmp_path: Path) -> None:
    seed = _seed(tmp_path, _patch("stock.json", lambda rows: rows.append(
        {"tenant": "acme-outdoor", "sku": "GAS-230", "site": "PL-POZ", "qty": 0})))
    (seed / "orders.json").unlink()  # not read anyway; optional files may be missing
    (seed / "packers.json").unlink()
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        first = load_dir(engine, seed)
        counts = _counts(db_url)
        assert counts == {"tenants": 2, "sites": 3, "products": 10, "balances": 13, "movements": 13, "packers": 0}
        second = load_dir(engine, seed)
        assert _counts(db_url) == counts
        assert first["acme-outdoor"]["webhook_secret"].startswith("whsec_")
        with read_session(engine) as s:
            for keys in (first, second):
                tenant = authenticate(s, keys["nordic-tea"]["api_key"])
                assert tenant is not None and tenant.id == "nordic-tea" and tenant.country == "SE"
            stored = s.connection().execute(sa.text("SELECT key_hash FROM api_keys")).scalars().all()
        assert hash_api_key(first["nordic-tea"]["api_key"]) in stored
        assert first["nordic-tea"]["api_key"] not in stored  # only digests are kept
    finally:
        engine.dispose()


def test_missing_directory_and_bad_json(tmp_path: Path, sqlite_url: str) -> None:
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        with pytest.raises(LoadError, match="not a directory"):
            load_dir(engine, tmp_path / "nope")
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "sites.json").write_text("{", "utf-8")
        with pytest.raises(LoadError, match=r"^sites.json: cannot read JSON"):
            load_dir(engine, tmp_path / "d")
    finally:
        engine.dispose()


def test_tracking_serials_are_unique_across_engines(db_url: str) -> None:
    """Two engines stand in for two processes; each draws serials inside its own transactions."""
    upgrade(db_url)
    engines = [make_engine(db_url) for _ in range(2)]
    drawn: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def draw(i: int) -> None:
        source = SerialSource("sandbox")
        barrier.wait(timeout=30)
        for _ in range(25):
            with write_session(engines[i % 2]) as s, source.bound(s):
                value = source()
            with lock:
                drawn.append(value)

    threads = [threading.Thread(target=draw, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for e in engines:
        e.dispose()
    assert len(drawn) == 100 and len(set(drawn)) == 100
    with pytest.raises(RuntimeError):
        SerialSource()()  # outside a transaction: a programming error


def test_small_helpers() -> None:
    assert pointer("lines", 0, "qty") == "/lines/0/qty"
    assert pointer("a/b", "c~d") == "/a~1b/c~0d"
    ulid = new_ulid(0)
    assert len(ulid) == 26 and ulid.startswith("0000000000")
    assert order_id().startswith("ord_") and order_id() != order_id()
    assert stable_uuid("a", "b") == stable_uuid("a", "b") != stable_uuid("ab")
    assert normalise_vat_id("DE 136 695 976") == "DE136695976"
    with pytest.raises(ValueError):
        normalise_vat_id("DE136695977")
    assert new_webhook_secret().startswith("whsec_")
