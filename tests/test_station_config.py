"""Station enrolment: one 0600 JSON file per station, written atomically, never silently replaced."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from drivers import UnsupportedURL, open_printer, open_scanner, parse_printer_url, parse_scanner_url
from station.config import StationConfig, enrol, load_config, replica_path, station_dir
from station.errors import ConfigError
from tests.test_station_helpers import SITE, STATION, station_fields


def test_enrol_writes_one_private_file_that_loads_back(tmp_path: Path) -> None:
    path = enrol(tmp_path, **station_fields(tmp_path))
    assert path == tmp_path / "stations" / STATION / "station.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0  # the replica will live here too
    assert [p.name for p in path.parent.iterdir()] == ["station.json"]  # no temp file left behind
    raw = json.loads(path.read_text())
    assert raw["mqtt_password"] == "s3cret-pw"  # the file is the secret store; the model hides it
    for where in (path, path.parent, tmp_path):
        config = load_config(where)
        assert config.station_id == STATION and config.site == SITE
        assert config.mqtt_password is not None and config.mqtt_password.get_secret_value() == "s3cret-pw"
    assert "s3cret-pw" not in repr(config) and "s3cret-pw" not in str(config.mqtt())
    assert config.mqtt().username == STATION and config.mqtt().port == 1883
    assert replica_path(tmp_path, STATION) == station_dir(tmp_path, STATION) / "replica.db"


def test_enrol_refuses_to_replace_a_station_unless_forced(tmp_path: Path) -> None:
    path = enrol(tmp_path, **station_fields(tmp_path))
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="already enrolled") as refused:
        enrol(tmp_path, **station_fields(tmp_path, language="en"))
    # said to a person at a terminal: the option to type, not the Python keyword
    assert str(refused.value).endswith("pass --force to replace it")
    assert "force=True" not in str(refused.value)
    assert path.read_bytes() == before
    enrol(tmp_path, force=True, **station_fields(tmp_path, language="en"))
    assert load_config(path).language == "en"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["station.json"]


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("station_id", "ST/1", "cannot be used in an MQTT topic"),
        ("station_id", "ST+1", "cannot be used in an MQTT topic"),
        ("station_id", "$SYS", "cannot be used in an MQTT topic"),
        ("station_id", "..", "letters, digits"),
        ("station_id", "ST 1", "letters, digits"),
        ("site", "DE#LEJ", "cannot be used in an MQTT topic"),
        ("site", "", "cannot be used in an MQTT topic"),
        ("mqtt_url", "http://broker:1883", "mqtt://"),
        ("mqtt_url", "mqtt://user:pw@broker:1883", "credentials"),
        ("cloud_url", "ftp://cloud", "http"),
        ("printer_url", "10.0.0.7:9100", "printer URL '10.0.0.7:9100' is not supported: use tcp://"),
        ("printer_url", "tcp://10.0.0.7:0", "port must be a number from 1 to 65535"),
        ("printer_url", "tcp://10.0.0.7:65536", "port must be a number from 1 to 65535"),
        ("printer_url", "tcp://10.0.0.7:", "port must be a number from 1 to 65535"),
        ("printer_url", "tcp://:9100", "names no host"),
        ("printer_url", "tcp://10.0.0.7:9100?keepalive=1", "takes no options"),
        ("printer_url", "serial:///dev/ttyUSB0?baud=xyz", "baud='xyz' .* is not a standard serial rate"),
        ("printer_url", "serial:///dev/ttyUSB0?idle_ms=50", "unknown option 'idle_ms'"),
        ("printer_url", "cups://", "name one CUPS queue"),
        ("printer_url", "file://relative/labels/", "absolute path"),
        ("scanner_url", "usb://scanner", "scanner URL 'usb://scanner' is not supported: use serial://"),
        ("scanner_url", "tcp://10.0.0.7:9100", "scanner URL .* is not supported"),
        ("scanner_url", "serial:///dev/ttyACM0?baud=abc", "baud='abc' .* is not a standard serial rate"),
        ("scanner_url", "serial:///dev/ttyACM0?baud=-5", "baud=-5 .* is not a standard serial rate"),
        ("scanner_url", "serial:///dev/ttyACM0?baud=123456789", "baud=123456789 .* not a standard serial rate"),
        ("scanner_url", "serial:///dev/ttyACM0?parity=Nonsense", "parity='Nonsense'"),
        ("scanner_url", "serial://dev/ttyACM0", "three slashes"),
        ("mqtt_password", "s3cret-pw", "a password needs a user name too"),
        ("resend_after_s", 0, "greater than 0"),
    ],
)
def test_enrol_rejects_bad_fields_and_writes_nothing(
    tmp_path: Path, field: str, value: object, reason: str
) -> None:
    fields = station_fields(tmp_path, **{field: value})
    if field == "mqtt_password":
        fields["mqtt_username"] = None  # the password would be dropped silently when connecting
    with pytest.raises(ConfigError, match=reason) as info:
        enrol(tmp_path, **fields)
    assert f"  {field}: " in str(info.value)
    assert "Value error" not in str(info.value)  # pydantic's decoration does not reach the user
    assert not (tmp_path / "stations").exists() or not any((tmp_path / "stations").rglob("station.json"))


@pytest.mark.parametrize(
    ("scanner_url", "printer_url"),
    [
        ("serial:///dev/ttyACM0", "tcp://10.0.0.7:9100"),
        ("serial:///dev/ttyACM0?baud=115200&parity=E&bytesize=7&stopbits=2&idle_ms=50", "tcp://10.0.0.7"),
        ("serial:///dev/ttyACM0?baudrate=19200&parity=even", "serial:///dev/ttyUSB0?baud=9600"),
        ("serial:///dev/ttyACM0?baud=9600", "cups://Zebra_ZT411"),
        ("serial:///dev/ttyACM0?baud=9600", "tcp://[2001:db8::7]:9100"),
    ],
)
def test_enrol_accepts_what_the_drivers_open(tmp_path: Path, scanner_url: str, printer_url: str) -> None:
    path = enrol(tmp_path, **station_fields(tmp_path, scanner_url=scanner_url, printer_url=printer_url))
    config = load_config(path)
    assert (config.scanner_url, config.printer_url) == (scanner_url, printer_url)
    # the same parsers the openers start with: what enrol accepted, open will read the same way
    assert parse_scanner_url(scanner_url).port == "/dev/ttyACM0"
    parse_printer_url(printer_url)


def test_enrol_and_open_agree_on_every_url(tmp_path: Path) -> None:
    """A URL enrolment refuses is refused by the opener with the same reason, and vice versa."""
    scanner_urls = ["serial:///dev/ttyACM0?baud=abc", "serial:///dev/ttyACM0?bogus=1", "usb://scanner"]
    printer_urls = ["tcp://10.0.0.7:0", "serial:///dev/ttyUSB0?baud=xyz", "lpd://printer/queue"]
    for url in scanner_urls:
        with pytest.raises(UnsupportedURL) as opened:
            open_scanner(url)
        with pytest.raises(ConfigError) as enrolled:
            enrol(tmp_path, **station_fields(tmp_path, scanner_url=url))
        assert str(opened.value) in str(enrolled.value)
    for url in printer_urls:
        with pytest.raises(UnsupportedURL) as opened:
            open_printer(url)
        with pytest.raises(ConfigError) as enrolled:
            enrol(tmp_path, **station_fields(tmp_path, printer_url=url))
        assert str(opened.value) in str(enrolled.value)
    assert not (tmp_path / "stations").exists()


def test_unknown_query_options_name_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        enrol(tmp_path, **station_fields(tmp_path, scanner_url="serial:///dev/ttyACM0?bogus=1"))
    assert str(info.value) == (
        "cannot enrol station:\n"
        "  scanner_url: unknown option 'bogus' in 'serial:///dev/ttyACM0?bogus=1' "
        "(allowed options: baud, baudrate, bytesize, parity, stopbits, idle_ms)"
    )


def test_a_user_name_without_a_password_is_fine(tmp_path: Path) -> None:
    config = load_config(enrol(tmp_path, **station_fields(tmp_path, mqtt_password=None)))
    assert config.mqtt().username == STATION and config.mqtt_password is None


def test_unknown_fields_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stationid"):
        enrol(tmp_path, stationid="X", **station_fields(tmp_path))


def test_load_config_explains_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="no station is enrolled.*packline station enrol --station-id"):
        load_config(tmp_path)
    path = enrol(tmp_path, **station_fields(tmp_path))
    enrol(tmp_path, **station_fields(tmp_path, station_id="ST-DE-LEJ-2"))
    with pytest.raises(ConfigError, match="several stations.*ST-DE-LEJ-1, ST-DE-LEJ-2"):
        load_config(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path)
    path.write_text(json.dumps({**station_fields(tmp_path), "printer_url": "lp0"}))
    with pytest.raises(ConfigError, match="printer_url"):
        load_config(path)
    # a file edited by hand (or written by an older version) is checked like an enrolment
    path.write_text(json.dumps({**station_fields(tmp_path), "scanner_url": "serial:///dev/ttyACM0?baud=abc"}))
    with pytest.raises(ConfigError, match=r"is invalid:\n  scanner_url: option baud='abc'"):
        load_config(path)
    # a config copied into another station's directory would share that station's replica
    other = station_dir(tmp_path, "ST-DE-LEJ-2") / "station.json"
    other.write_text(json.dumps(station_fields(tmp_path)))
    with pytest.raises(ConfigError, match="lies in the directory of ST-DE-LEJ-2"):
        load_config(other)


@pytest.mark.parametrize("how", ["station dir missing", "station dir without config", "config path"])
def test_load_config_of_a_station_not_enrolled_says_how_to_enrol(tmp_path: Path, how: str) -> None:
    """What `packline station run --station-id ST-9` says when ST-9 was never enrolled here."""
    where = station_dir(tmp_path, "ST-9")
    if how == "station dir without config":
        where.mkdir(parents=True)
        (where / "station.log").write_text("")  # e.g. left from an earlier run
    if how == "config path":
        where = where / "station.json"
    with pytest.raises(ConfigError) as info:
        load_config(where)
    expected = tmp_path / "stations" / "ST-9" / "station.json"
    assert str(info.value) == (
        f"station ST-9 is not enrolled: {expected} does not exist; enrol it with: "
        "packline station enrol --station-id ST-9 --site SITE --scanner URL --printer URL"
    )


def test_config_round_trips_exactly(tmp_path: Path) -> None:
    fields = station_fields(
        tmp_path, scanner_url="serial:///dev/ttyACM0?baud=9600", printer_url="tcp://10.0.0.7:9100"
    )
    path = enrol(tmp_path, **fields)
    loaded = load_config(path)
    assert loaded == StationConfig.model_validate(fields)
    assert loaded.cloud_url == "http://127.0.0.1:8000"
    assert os.access(path, os.R_OK)


def test_two_simultaneous_enrolments_of_one_station_have_one_winner(tmp_path: Path) -> None:
    barrier = threading.Barrier(8)
    results: list[str] = []

    def enrol_one(i: int) -> None:
        barrier.wait()
        try:
            enrol(tmp_path, **station_fields(tmp_path, language="de" if i % 2 else "en"))
            results.append("won")
        except ConfigError:
            results.append("refused")

    threads = [threading.Thread(target=enrol_one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["refused"] * 7 + ["won"]
    path = tmp_path / "stations" / STATION / "station.json"
    assert load_config(path).station_id == STATION  # whole, never a mix of two writers
    assert [p.name for p in path.parent.iterdir()] == ["station.json"]
