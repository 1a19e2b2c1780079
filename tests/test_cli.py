"""The `packline` command as a user runs it: a real subprocess, stdout and exit codes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support import SAMPLE_DATA, free_port

PACKLINE = [sys.executable, "-m", "packline.cli"]


def run(*args: str, data_dir: Path, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PACKLINE_")}
    full_env.update({"PACKLINE_DATA_DIR": str(data_dir), **(env or {})})  # env may override the data dir
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


def test_cloud_load_of_a_folder_without_seed_files_creates_no_database(tmp_path: Path) -> None:
    wrong = tmp_path / "etc"
    wrong.mkdir()
    (wrong / "hosts").write_text("127.0.0.1 localhost\n", "utf-8")
    p = run("cloud", "load", str(wrong), "--database-url", f"sqlite:///{tmp_path / 'c.db'}", data_dir=tmp_path / "data")
    assert p.returncode == 2 and p.stdout == ""
    assert "tenants.json" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "c.db").exists()


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


# -- exit paths, settings and private brokers, as a new user meets them ----------------------------------


def mosquittos_of(folder: Path) -> list[int]:
    """Live mosquitto processes whose command line names ``folder`` (a zombie's cmdline is empty)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and b"mosquitto" in args[0] and any(str(folder).encode() in a for a in args):
            found.append(int(cmdline.parent.name))
    return found


def wait_for(pred: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def no_mosquitto_left(folder: Path, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while mosquittos_of(folder):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def need_proc_and_mosquitto() -> None:
    from tests.support import need, need_binary

    need(Path("/proc/self/cmdline").exists(), "needs /proc to find leftover processes")
    need_binary("mosquitto")


def start_serve(data_dir: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PACKLINE_")}
    full_env.update(PACKLINE_DATA_DIR=str(data_dir), **(env or {}))
    with log.open("w") as f:
        return subprocess.Popen([*PACKLINE, "cloud", "serve", *args], env=full_env, stdout=subprocess.DEVNULL,
                                stderr=f, text=True, cwd=data_dir.parent)


def api_port_of(proc: subprocess.Popen[str], log: Path, timeout_s: float = 30) -> tuple[int, str]:
    """The port ``cloud serve`` says it listens on, and that log line."""
    import re

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if m := re.search(r"API on http://127\.0\.0\.1:(\d+) ", line):
                return int(m.group(1)), line
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"cloud serve did not log its API address:\n{log.read_text()}")


def test_cloud_serve_stops_its_private_broker_on_sigterm_and_even_on_sigkill(tmp_path: Path) -> None:
    need_proc_and_mosquitto()
    data = tmp_path / "data"
    first = start_serve(data, tmp_path / "first.log", "--port", "0")
    second = start_serve(data, tmp_path / "second.log", "--port", "0")  # same data dir
    try:
        port1, line = api_port_of(first, tmp_path / "first.log")
        port2, _ = api_port_of(second, tmp_path / "second.log")
        # --port 0 logs the port really bound, as information (visible by default), not as a warning
        assert port1 != 0 and " INFO " in line and "WARNING" not in line
        for port in (port1, port2):
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        # each process has a live broker of its own (no shared config, none left <defunct>)
        pids = mosquittos_of(data)
        assert len(pids) == 2, pids
        configs = {Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids}
        assert len(configs) == 2
        assert all(Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z" for pid in pids)

        first.send_signal(signal.SIGTERM)  # the ordinary way a service is stopped: clean, exit 0
        assert first.wait(timeout=20) == 0, (tmp_path / "first.log").read_text()
        assert "Traceback" not in (tmp_path / "first.log").read_text()
        assert wait_for(lambda: len(mosquittos_of(data)) == 1, 5)
        assert httpx.get(f"http://127.0.0.1:{port2}/healthz", timeout=5).status_code == 200  # the other one runs on

        second.kill()  # SIGKILL: no clean-up runs, yet the broker goes with its parent
        second.wait(timeout=10)
        assert no_mosquitto_left(data), mosquittos_of(data)
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


@pytest.mark.parametrize("case", ["bad database URL", "database unreachable", "API port taken"])
def test_cloud_serve_that_cannot_start_leaves_no_broker_behind(tmp_path: Path, case: str) -> None:
    import socket

    need_proc_and_mosquitto()
    data = tmp_path / "data"
    args = ["--port", "0"]
    holder = None
    if case == "bad database URL":
        args += ["--database-url", "garbage"]
    elif case == "database unreachable":
        args += ["--database-url", f"postgresql+psycopg://u:secret@127.0.0.1:{free_port()}/x"]
    else:
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        args = ["--port", str(holder.getsockname()[1])]
    try:
        p = run("cloud", "serve", *args, data_dir=data, timeout=60)
    finally:
        if holder:
            holder.close()
    assert p.returncode == {"bad database URL": 2}.get(case, 3), p.stderr
    assert "Traceback" not in p.stderr and "secret" not in p.stderr
    assert no_mosquitto_left(data), mosquittos_of(data)
    if case == "bad database URL":
        assert p.stderr.strip().splitlines() == [
            "packline: --database-url: bad database URL 'garbage': "
            "expected sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"]
        assert not data.exists()  # nothing was made, not even the data dir
    if case == "API port taken":
        assert not any((data / "broker").iterdir())  # its broker's folder went with it


@pytest.mark.slow
def test_demo_stopped_by_sigterm_stops_its_broker(tmp_path: Path) -> None:
    need_proc_and_mosquitto()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACKLINE_")}
    env.update(PACKLINE_DATA_DIR=str(data))
    log = tmp_path / "demo.log"
    with log.open("w") as f:
        proc = subprocess.Popen([*PACKLINE, "demo", "--orders", "200", "--out", str(tmp_path / "out")], env=env,
                                stdout=subprocess.DEVNULL, stderr=f, cwd=tmp_path)
    try:
        assert wait_for(lambda: "broker: mqtt://" in log.read_text() or proc.poll() is not None, 60)
        assert mosquittos_of(data / "demo" / "broker"), log.read_text()
        time.sleep(2)  # the stations are starting or packing by now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        assert "SIGTERM: stopping" in log.read_text()  # the clean-up ran: Python did not just die
        assert no_mosquitto_left(data), mosquittos_of(data)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["demo", "--database-url", "foo://bar"], {}, "--database-url: bad database URL 'foo://bar'"),
        (["demo", "--database-url", "notaurl"], {}, "--database-url: bad database URL 'notaurl'"),
        (["cloud", "serve", "--database-url", "garbage"], {}, "--database-url: bad database URL 'garbage'"),
        (["cloud", "migrate", "--database-url", "garbage"], {}, "--database-url: bad database URL 'garbage'"),
        (["cloud", "migrate"], {"PACKLINE_DATABASE_URL": "mysql://u:pw@h/db"}, "PACKLINE_DATABASE_URL: bad database"),
        (["cloud", "load", str(SAMPLE_DATA), "--database-url", "postgresql+psycopg2://u:pw@h/db"], {},
         "use postgresql+psycopg://"),
    ],
)
def test_a_bad_database_url_is_one_line_and_exit_2(tmp_path: Path, args: list[str], env: dict[str, str],
                                                    named: str) -> None:
    p = run(*args, data_dir=tmp_path / "data", env=env, timeout=60)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("packline: ") and named in lines[0], p.stderr
    assert "sqlite:///PATH or postgresql+psycopg://" in lines[0] or "psycopg" in lines[0]
    assert ":pw@" not in p.stderr
    assert not (tmp_path / "data").exists()  # the demo did not even clear or make its folder


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PACKLINE_MQTT_URL": "http://x"}, ["packline: PACKLINE_MQTT_URL: MQTT URL must start with mqtt://"]),
        ({"PACKLINE_MQTT_PROTOCOL": "4", "PACKLINE_API_PORT": "abc"},
         ["packline: PACKLINE_MQTT_PROTOCOL='4': must be 5 (MQTT 5) or 311 (MQTT 3.1.1)",
          "packline: PACKLINE_API_PORT='abc': Input should be a valid integer"]),
        ({"PACKLINE_API_PORT": "70000"}, ["packline: PACKLINE_API_PORT='70000': Input should be less than or equal to 65535"]),
    ],
)
def test_bad_settings_are_named_and_nothing_is_created(tmp_path: Path, env: dict[str, str],
                                                       expected: list[str]) -> None:
    db = tmp_path / "x1.db"
    p = run("cloud", "serve", "--database-url", f"sqlite:///{db}", data_dir=tmp_path / "data", env=env, timeout=60)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == len(expected)
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(start), p.stderr
    assert "pydantic" not in p.stderr and "Traceback" not in p.stderr
    assert not db.exists() and not (tmp_path / "data").exists()


def test_port_option_version_and_help(tmp_path: Path) -> None:
    p = run("cloud", "serve", "--port", "70000", data_dir=tmp_path / "data", timeout=60)
    assert p.returncode == 2
    assert "'70000' is not a TCP port: 0..65535" in p.stderr and "Traceback" not in p.stderr
    help_text = run("cloud", "serve", "--help", data_dir=tmp_path / "data", timeout=60).stdout
    assert "default: 8000" in " ".join(help_text.split()) and "default: 127.0.0.1" in " ".join(help_text.split())
    from importlib.metadata import version

    v = run("--version", data_dir=tmp_path / "data", timeout=60)
    assert v.returncode == 0 and v.stdout.strip() == f"packline {version('packline')}"


def test_config_treats_empty_variables_as_unset_and_flags_invalid_urls(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    p = run("config", data_dir=tmp_path / "data", env={"PACKLINE_DATA_DIR": "", "XDG_DATA_HOME": str(xdg)})
    assert p.returncode == 0, p.stderr
    shown = json.loads(p.stdout)
    assert shown["data_dir"] == {"value": str(xdg / "packline"), "source": "default"}  # not the current directory

    bad = run("config", data_dir=tmp_path / "data",
              env={"PACKLINE_MQTT_URL": "http://u:secret@x", "PACKLINE_DATABASE_URL": "notaurl"})
    assert bad.returncode == 2
    shown = json.loads(bad.stdout)
    assert shown["mqtt_url"]["value"] == "http://u:***@x"
    assert "mqtt://" in shown["mqtt_url"]["error"]
    assert shown["database_url"]["value"] == "notaurl" and "bad database URL" in shown["database_url"]["error"]
    assert "error" not in shown["data_dir"]
    assert sorted(bad.stderr.strip().splitlines()) == sorted(
        f"packline: {shown[k]['error']}" for k in ("mqtt_url", "database_url"))
    assert ":secret@" not in bad.stdout + bad.stderr


def test_cloud_serve_refuses_a_missing_or_mute_broker_quickly(tmp_path: Path) -> None:
    import socket

    started = time.monotonic()
    p = run("cloud", "serve", "--port", "0", "--mqtt", f"mqtt://127.0.0.1:{free_port()}", data_dir=tmp_path / "data",
            timeout=60)
    assert p.returncode == 3
    assert "no MQTT broker answers at mqtt://127.0.0.1:" in p.stderr
    assert time.monotonic() - started < 10
    assert not (tmp_path / "data" / "cloud.db").exists()  # checked before the database was touched

    with socket.socket() as mute:  # accepts TCP (the kernel does), never speaks MQTT
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        started = time.monotonic()
        p = run("cloud", "serve", "--port", "0", "--mqtt", f"mqtt://127.0.0.1:{mute.getsockname()[1]}",
                data_dir=tmp_path / "data", timeout=60)
    assert p.returncode == 3
    assert "sent no CONNACK within 3 s: is this an MQTT broker?" in p.stderr, p.stderr
    assert time.monotonic() - started < 10


@pytest.mark.slow
def test_demo_names_a_real_reason_for_a_mute_broker(tmp_path: Path) -> None:
    import socket

    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        p = run("demo", "--mqtt", f"mqtt://127.0.0.1:{mute.getsockname()[1]}", data_dir=tmp_path / "data", timeout=120)
    assert p.returncode == 3
    last = p.stderr.strip().splitlines()[-1]
    assert "CONNACK" in last and "is this an MQTT broker?" in last and not last.endswith("None"), p.stderr
