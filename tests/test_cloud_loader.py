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
from cloud.loader import LoadError, load_dir, read_seed
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
        ("products.json", lambda rows: rows[1].update(gtins=rows[0]["gtins"]),
         "products.json[0]: GTIN 04006381333931 is already acme-outdoor's MUG-TI-450"),
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


# -- loading again into a database in use ------------------------------------------------------


def _active_keys(engine: sa.Engine) -> dict[str, set[str]]:
    with read_session(engine) as s:
        rows = s.connection().execute(sa.text("SELECT tenant, key_hash FROM api_keys WHERE revoked_at IS NULL"))
        out: dict[str, set[str]] = {}
        for tenant, key_hash in rows:
            out.setdefault(tenant, set()).add(key_hash)
        return out


def _client(engine: sa.Engine, tmp_path: Path) -> Any:
    from fastapi.testclient import TestClient

    from cloud.api.app import create_app
    from sync.settings import Settings

    return TestClient(create_app(Settings(data_dir=tmp_path / "data"), engine=engine, migrate=False))


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_reload_keeps_the_webhook_url_a_merchant_set(db_url: str, tmp_path: Path) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        keys = load_dir(engine, SAMPLE_DATA)
        client = _client(engine, tmp_path)
        auth = _bearer(keys["acme-outdoor"]["api_key"])
        set_url = client.put("/v1/webhook", json={"url": "https://shop.example/hooks"}, headers=auth)
        assert set_url.status_code == 200, set_url.text
        again = load_dir(engine, SAMPLE_DATA)  # tenants.json gives no webhook_url: null
        auth = _bearer(again["acme-outdoor"]["api_key"])
        assert client.get("/v1/webhook", headers=auth).json() == {
            "url": "https://shop.example/hooks", "secret": keys["acme-outdoor"]["webhook_secret"]}
        # a URL in the file is the operator's decision: it replaces the merchant's
        seed = _seed(tmp_path, _patch("tenants.json", lambda rows: rows[0].update(
            webhook_url="https://ops.example/acme")))
        load_dir(engine, seed)
        assert client.get("/v1/webhook", headers=auth).json()["url"] == "https://ops.example/acme"
        with read_session(engine) as s:  # the other tenant never had one and still has none
            urls = dict(s.connection().execute(sa.text("SELECT id, webhook_url FROM tenants")).all())
        assert urls == {"acme-outdoor": "https://ops.example/acme", "nordic-tea": None}
    finally:
        engine.dispose()


def test_reload_rotates_keys_keeping_this_and_the_previous_load_valid(db_url: str, tmp_path: Path) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        loads = [load_dir(engine, SAMPLE_DATA) for _ in range(2)]
        assert [load["acme-outdoor"]["revoked_api_keys"] for load in loads] == [0, 0]
        client = _client(engine, tmp_path)

        def works(key: str) -> bool:
            return client.get("/v1/webhook", headers=_bearer(key)).status_code == 200

        first, second = (load["acme-outdoor"]["api_key"] for load in loads)
        assert works(first) and works(second)  # the integration on the first key survives one re-load
        third = load_dir(engine, SAMPLE_DATA)
        assert third["acme-outdoor"]["revoked_api_keys"] == 1 and third["nordic-tea"]["revoked_api_keys"] == 1
        assert not works(first)
        assert works(second) and works(third["acme-outdoor"]["api_key"])
        assert {t: len(k) for t, k in _active_keys(engine).items()} == {"acme-outdoor": 2, "nordic-tea": 2}
        assert _active_keys(engine)["acme-outdoor"] == {
            hash_api_key(second), hash_api_key(third["acme-outdoor"]["api_key"])}
        with read_session(engine) as s:  # revoked, not deleted: who held which key stays on record
            assert s.connection().execute(sa.text("SELECT count(*) FROM api_keys")).scalar_one() == 6

        # a folder naming one tenant rotates that tenant's keys only
        only_tea = _seed(tmp_path, _patch("tenants.json", lambda rows: rows.pop(0)))
        for name in ("products.json", "stock.json"):  # they name acme-outdoor's products
            (only_tea / name).unlink()
        fourth = load_dir(engine, only_tea)
        assert set(fourth) == {"nordic-tea"} and fourth["nordic-tea"]["revoked_api_keys"] == 1
        assert works(second) and not works(loads[1]["nordic-tea"]["api_key"])
        assert works(third["nordic-tea"]["api_key"]) and works(fourth["nordic-tea"]["api_key"])
    finally:
        engine.dispose()


def test_keep_api_keys_is_configurable_and_at_least_one(sqlite_url: str) -> None:
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        with pytest.raises(ValueError, match="at least 1"):
            load_dir(engine, SAMPLE_DATA, keep_api_keys=0)
        load_dir(engine, SAMPLE_DATA)
        load_dir(engine, SAMPLE_DATA)
        last = load_dir(engine, SAMPLE_DATA, keep_api_keys=1)  # a real rotation: only the new key works
        assert last["acme-outdoor"]["revoked_api_keys"] == 2
        assert _active_keys(engine)["acme-outdoor"] == {hash_api_key(last["acme-outdoor"]["api_key"])}
    finally:
        engine.dispose()


def test_reload_sets_products_back_to_the_file(db_url: str, tmp_path: Path) -> None:
    """Documented: the file wins for what it describes (an API edit of a loaded product is undone)."""
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        keys = load_dir(engine, SAMPLE_DATA)
        client = _client(engine, tmp_path)
        product = next(p for p in json.loads((SAMPLE_DATA / "products.json").read_text("utf-8"))
                       if p["sku"] == "MUG-TI-450")
        edited = {k: v for k, v in product.items() if k != "tenant"} | {"name": "Titanium mug, renamed"}
        r = client.post("/v1/products", json=edited, headers=_bearer(keys["acme-outdoor"]["api_key"]))
        assert r.status_code == 200, r.text

        def name() -> str:
            with read_session(engine) as s:
                return str(s.connection().execute(sa.text(
                    "SELECT name FROM products WHERE tenant = 'acme-outdoor' AND sku = 'MUG-TI-450'")).scalar_one())

        assert name() == "Titanium mug, renamed"
        load_dir(engine, SAMPLE_DATA)
        assert name() == product["name"]
    finally:
        engine.dispose()


@pytest.mark.parametrize("contents", [[], ["hosts", "passwd"], ["orders.json"]])
def test_a_folder_without_seed_files_is_refused_naming_them(
    db_url: str, tmp_path: Path, contents: list[str]
) -> None:
    folder = tmp_path / "not-seed"
    folder.mkdir()
    for name in contents:
        (folder / name).write_text("[]", "utf-8")
    expected = (f"{folder}: holds none of the seed files tenants.json, sites.json, products.json, stock.json, "
                "packers.json: is this the right folder?")
    with pytest.raises(LoadError) as checked:
        read_seed(folder)  # needs no database: a caller can refuse before it creates one
    assert str(checked.value) == expected
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with pytest.raises(LoadError) as loaded:
            load_dir(engine, folder)
        assert str(loaded.value) == expected
    finally:
        engine.dispose()
    assert set(_counts(db_url).values()) == {0}


def test_read_seed_checks_the_files_without_a_database(tmp_path: Path) -> None:
    seed = read_seed(SAMPLE_DATA)
    assert [t.id for t in seed.tenants] == ["acme-outdoor", "nordic-tea"]
    assert (len(seed.sites), len(seed.products)) == (3, 10)
    assert seed.vat_ids["acme-outdoor"] == "DE136695976"
    bad = _seed(tmp_path, _patch("tenants.json", lambda rows: rows[1].update(vat_id="SE556036079401")))
    with pytest.raises(LoadError, match=r"^tenants.json\[1\]: VAT id"):
        read_seed(bad)
    one_file = tmp_path / "one"
    one_file.mkdir()
    shutil.copy(SAMPLE_DATA / "sites.json", one_file / "sites.json")  # any one of the files will do
    assert len(read_seed(one_file).sites) == 3
