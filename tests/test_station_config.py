"""Station enrolment: one 0600 JSON file per station, written atomically, never silently replaced."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

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
    with pytest.raises(ConfigError, match="already enrolled.*force=True"):
        enrol(tmp_path, **station_fields(tmp_path, language="en"))
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
        ("printer_url", "10.0.0.7:9100", "printer URL must start with"),
        ("printer_url", "tcp://10.0.0.7", "host and port"),
        ("scanner_url", "usb://scanner", "scanner URL must start with"),
        ("resend_after_s", 0, "greater than 0"),
    ],
)
def test_enrol_rejects_bad_fields_and_writes_nothing(
    tmp_path: Path, field: str, value: object, reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        enrol(tmp_path, **station_fields(tmp_path, **{field: value}))
    assert field in str(info.value)
    assert not (tmp_path / "stations").exists() or not any((tmp_path / "stations").rglob("station.json"))


def test_unknown_fields_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stationid"):
        enrol(tmp_path, stationid="X", **station_fields(tmp_path))


def test_load_config_explains_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="no station is enrolled"):
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
    # a config copied into another station's directory would share that station's replica
    other = station_dir(tmp_path, "ST-DE-LEJ-2") / "station.json"
    other.write_text(json.dumps(station_fields(tmp_path)))
    with pytest.raises(ConfigError, match="lies in the directory of ST-DE-LEJ-2"):
        load_config(other)


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
