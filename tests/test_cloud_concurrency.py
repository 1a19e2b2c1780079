"""Two merchants' requests race for the last unit through a real HTTP server (uvicorn), on both databases."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from cloud import ledger
from cloud.api import create_app
from cloud.db import make_engine, read_session, upgrade
from cloud.loader import load_dir
from sync.settings import Settings
from tests.support import SAMPLE_DATA, free_port


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any], Any]]:
    engine = make_engine(db_url)
    upgrade(engine)
    keys = load_dir(engine, SAMPLE_DATA)
    app = create_app(Settings(data_dir=tmp_path), engine=engine)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", keys, engine
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        engine.dispose()


@pytest.mark.parametrize("racers", [2, 8])
def test_orders_racing_for_the_last_unit(server: tuple[str, dict[str, Any], Any], racers: int) -> None:
    base, keys, engine = server
    auth = {"Authorization": f"Bearer {keys['nordic-tea']['api_key']}"}
    template = next(o for o in json.loads((SAMPLE_DATA / "orders.json").read_text("utf-8"))
                    if o["external_id"] == "NT-5005")  # the case of six: 20 in Venlo, nowhere else
    with httpx.Client(base_url=base, headers=auth, timeout=30) as client:
        for i in range(19):  # leave exactly one case
            o = {**template, "external_id": f"NT-FILL-{i}"}
            assert client.post("/v1/orders", json=o).json()["status"] == "released"

    n = racers
    barrier = threading.Barrier(n)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def place(i: int) -> None:
        o = {**template, "external_id": f"NT-LAST-{i}"}
        with httpx.Client(base_url=base, headers=auth, timeout=30) as client:
            barrier.wait(timeout=30)
            r = client.post("/v1/orders", json=o)
        with lock:
            results.append({"code": r.status_code, **r.json()})

    threads = [threading.Thread(target=place, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [r["code"] for r in results] == [201] * n
    assert sorted(r["status"] for r in results) == ["backordered"] * (n - 1) + ["released"]
    with read_session(engine) as s:
        (level,) = ledger.stock_levels(s, "nordic-tea", sku="TEA-EG-100-CS6", site="NL-VNL")
        assert (level.on_hand, level.reserved) == (20, 20)
        assert ledger.check_invariants(s) == []
