"""The `packline` command as a user runs it: a real subprocess, stdout and exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import SAMPLE_DATA, free_port

PACKLINE = [sys.executable, "-m", "packline.cli"]


def run(*args: str, data_dir: Path, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PACKLINE_")}
    full_env.update(PACKLINE_DATA_DIR=str(data_dir), **(env or {}))
    return subprocess.run([*PACKLINE, *args], capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=data_dir.parent)


@pytest.mark.slow
def test_demo_json_puts_only_json_on_stdout_and_exits_0(tmp_path: Path, mqtt_broker: tuple[str, int]) -> None:
    url, protocol = mqtt_broker
    out = tmp_path / "labels"
    p = run("demo", "--json", "--out", str(out), "--mqtt", url, "--mqtt-protocol", str(protocol),
            data_dir=tmp_path / "data")
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout)  # nothing else on stdout
    assert len(result["orders"]) == 12
    for o in result["orders"]:
        assert set(o) >= {"id", "external_id", "status", "site", "tracking_number", "label_file", "reason"}
        assert o["status"] == "shipped" and o["reason"] is None
        assert (out / o["label_file"]).read_text("utf-8").count("^XA") == 1
    assert result["webhooks"]["verified"] == 24
    assert "INFO" in p.stderr  # the logs went to stderr


def test_cloud_load_prints_only_credentials_json(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    p = run("cloud", "load", str(SAMPLE_DATA), "--database-url", db, data_dir=tmp_path / "data")
    assert p.returncode == 0, p.stderr
    creds = json.loads(p.stdout)
    assert set(creds) == {"acme-outdoor", "nordic-tea"}
    assert all(c["api_key"].startswith("pl_") for c in creds.values())


def test_cloud_load_of_a_bad_folder_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "seed"
    shutil.copytree(SAMPLE_DATA, bad)
    stock = json.loads((bad / "stock.json").read_text("utf-8"))
    stock[3]["sku"] = "NO-SUCH-SKU"
    (bad / "stock.json").write_text(json.dumps(stock), "utf-8")
    db = f"sqlite:///{tmp_path / 'c.db'}"
    p = run("cloud", "load", str(bad), "--database-url", db, data_dir=tmp_path / "data")
    assert p.returncode == 2
    assert p.stdout == ""
    assert "stock.json[3]" in p.stderr and "Traceback" not in p.stderr
    import sqlalchemy as sa

    engine = sa.create_engine(db)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM tenants")).scalar_one() == 0
    engine.dispose()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--station-id", "../x", "--site", "DE-LEJ"], "station_id"),
        (["--station-id", "ST-1", "--site", "DE-LEJ", "--printer", "ftp://x"], "printer"),
    ],
)
def test_station_enrol_refuses_bad_input_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    base = {"--scanner": "serial:///dev/ttyACM0", "--printer": "tcp://127.0.0.1:9100"}
    merged = dict(base)
    it = iter(args)
    for k in it:
        merged[k] = next(it)
    p = run("station", "enrol", *[x for kv in merged.items() for x in kv], data_dir=tmp_path / "data")
    assert p.returncode == 2
    assert message in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "data" / "stations").exists() or not any((tmp_path / "data" / "stations").rglob("*.json"))


def test_station_enrol_writes_one_config_under_the_data_dir_and_refuses_twice(tmp_path: Path) -> None:
    args = ["station", "enrol", "--station-id", "ST-DE-LEJ-9", "--site", "DE-LEJ",
            "--scanner", "serial:///dev/ttyACM0?baud=9600", "--printer", "tcp://127.0.0.1:9100"]
    p = run(*args, data_dir=tmp_path / "data")
    assert p.returncode == 0, p.stderr
    path = Path(p.stdout.strip())
    assert path == tmp_path / "data" / "stations" / "ST-DE-LEJ-9" / "station.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    saved = json.loads(path.read_text("utf-8"))
    assert (saved["mqtt_url"], saved["mqtt_protocol"]) == ("mqtt://127.0.0.1:1883", 5)
    again = run(*args, data_dir=tmp_path / "data")
    assert again.returncode == 2 and "--force" in again.stderr
    # the broker's MQTT version is the station's to remember: `station run` reads it from the config
    v311 = run(*args, "--force", "--mqtt", "mqtt://10.1.2.3:1883", data_dir=tmp_path / "data",
               env={"PACKLINE_MQTT_PROTOCOL": "311"})
    assert v311.returncode == 0, v311.stderr
    saved = json.loads(path.read_text("utf-8"))
    assert (saved["mqtt_url"], saved["mqtt_protocol"]) == ("mqtt://10.1.2.3:1883", 311)


def test_demo_refuses_an_unreachable_broker_quickly(tmp_path: Path) -> None:
    started = time.monotonic()
    p = run("demo", "--mqtt", f"mqtt://127.0.0.1:{free_port()}", data_dir=tmp_path / "data")
    assert p.returncode == 3
    assert "no MQTT broker answers" in p.stderr
    assert time.monotonic() - started < 30


def test_cloud_serve_answers_http_and_config_shows_sources(tmp_path: Path, mqtt_broker: tuple[str, int]) -> None:
    url, protocol = mqtt_broker
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACKLINE_")}
    env.update(PACKLINE_DATA_DIR=str(tmp_path / "data"), PACKLINE_MQTT_URL=url, PACKLINE_MQTT_PROTOCOL=str(protocol),
               PACKLINE_CLOUD_GROUP=f"cli-test-{port}")
    proc = subprocess.Popen([*PACKLINE, "cloud", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "cloud serve did not answer"
                time.sleep(0.2)
        assert r.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()["info"]["title"] == "Packline cloud API"
        assert httpx.get(f"http://127.0.0.1:{port}/v1/orders/x").status_code == 401
        assert (tmp_path / "data" / "cloud.db").exists()  # the default database lives under the data dir
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    cfg = run("config", "--database-url", "sqlite:///x.db", data_dir=tmp_path / "data",
              env={"PACKLINE_MQTT_URL": "mqtt://u:secret@h:1883"})
    shown = json.loads(cfg.stdout)
    assert shown["database_url"] == {"value": "sqlite:///x.db", "source": "option"}
    assert shown["mqtt_url"] == {"value": "mqtt://u:***@h:1883", "source": "env PACKLINE_MQTT_URL"}
    assert ":secret@" not in cfg.stdout
    assert shown["data_dir"]["source"] == "env PACKLINE_DATA_DIR"
