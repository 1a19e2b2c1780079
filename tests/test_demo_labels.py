"""The demo writes each printed label into the output folder under a name made from the merchant's
external id: never outside that folder, never over another order's label."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from cloud.server import CloudProcess
from packline.demo import DemoOptions, label_file_name, run_demo
from packline.wiring import SimulatedPacker
from station.replica import Order
from sync.settings import Settings
from tests.support import SAMPLE_DATA


def test_label_file_names_are_plain_names_and_unique() -> None:
    taken: set[str] = set()
    names = [label_file_name(t, e, taken) for t, e in [
        ("acme", "ACME-1"), ("tea", "ACME-1"), ("acme", "../../etc/passwd"), ("acme", "sub/dir"),
        ("acme", ".."), ("acme", "Zürich #5"), ("acme", "acme-1"), ("acme", "ACME-1"),
    ]]
    assert names == ["ACME-1.zpl", "tea_ACME-1.zpl", "_.._etc_passwd.zpl", "sub_dir.zpl", "order.zpl",
                     "Z_rich_5.zpl", "acme_acme-1.zpl", "ACME-1_2.zpl"]
    assert all("/" not in n and not n.startswith(".") for n in names)
    assert len({n.lower() for n in names}) == len(names)


@pytest.mark.slow
def test_hostile_and_shared_external_ids_keep_every_label_inside_out(
    tmp_path: Path, mqtt_broker: tuple[str, int]
) -> None:
    samples = tmp_path / "samples"
    shutil.copytree(SAMPLE_DATA, samples)
    orders = json.loads((samples / "orders.json").read_text("utf-8"))
    renamed = {"ACME-10001": "../escape-1", "ACME-10002": "sub/dir-1", "NT-5001": "ACME-10003"}
    for o in orders:
        o["external_id"] = renamed.get(o["external_id"], o["external_id"])
    (samples / "orders.json").write_text(json.dumps(orders, ensure_ascii=False), "utf-8")

    url, protocol = mqtt_broker
    out = tmp_path / "work" / "out"
    result = run_demo(DemoOptions(settings=Settings(data_dir=tmp_path / "data"), out=out, mqtt_url=url,
                                  mqtt_protocol=protocol, sample_dir=samples))
    assert result.ok, result.problems
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == len(orders) == len({o.label_file for o in result.orders})
    assert not (tmp_path / "work" / "escape-1.zpl").exists()
    for o in result.orders:
        assert o.label_file in files and o.tracking_number
        assert o.tracking_number.encode() in (out / o.label_file).read_bytes(), o.external_id


@pytest.mark.slow
def test_a_demo_that_times_out_reports_the_orders_not_a_false_ledger_error(
    tmp_path: Path, mqtt_broker: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_pack = SimulatedPacker.pack

    def pack(self: SimulatedPacker, order: Order, timeout_s: float = 30.0) -> None:
        time.sleep(0.4)  # a slow packer: orders are still being packed when the demo stops waiting
        slow_pack(self, order, timeout_s)

    monkeypatch.setattr(SimulatedPacker, "pack", pack)
    drain = CloudProcess.drain_webhooks

    def slow_drain(self: CloudProcess, timeout_s: float) -> bool:
        time.sleep(1.5)  # a merchant's slow webhook endpoint: packing would go on meanwhile
        return drain(self, timeout_s)

    monkeypatch.setattr(CloudProcess, "drain_webhooks", slow_drain)
    url, protocol = mqtt_broker
    result = run_demo(DemoOptions(settings=Settings(data_dir=tmp_path / "data"), out=tmp_path / "out",
                                  mqtt_url=url, mqtt_protocol=protocol, timeout_s=0.0))
    assert not result.ok
    unshipped = [o for o in result.orders if o.status != "shipped"]
    assert unshipped and all(o.reason for o in unshipped)
    # the packers stopped and what they packed reached the cloud before the ledger was compared
    assert [p for p in result.problems if p.startswith("ledger")] == []


@pytest.mark.slow
def test_a_load_run_checks_the_ledger_against_opening_stock_plus_its_receipts(
    tmp_path: Path, mqtt_broker: tuple[str, int]
) -> None:
    url, protocol = mqtt_broker
    result = run_demo(DemoOptions(settings=Settings(data_dir=tmp_path / "data"), out=tmp_path / "out",
                                  mqtt_url=url, mqtt_protocol=protocol, orders=30))
    assert result.ok, result.problems
    assert result.stats["load"]["shipped"] == 30 and result.stats["load"]["p99_ms"] > 0
    assert result.stats["ledger_checked"].startswith("on hand = opening + receipts - shipped")
    assert len({o.label_file for o in result.orders}) == 30
