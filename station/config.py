"""Station enrolment: one JSON file per station, written once, read at every start.

Layout under the data directory (the replica lives next to its config)::

    <data_dir>/stations/<station_id>/station.json    this config, mode 0600 (holds the MQTT password)
    <data_dir>/stations/<station_id>/replica.db      the local SQLite replica (station.replica)

:func:`enrol` validates everything before it writes, writes atomically (temp file +
fsync + link/rename, then fsync of the directory) and refuses to replace an enrolled
station unless ``force=True``. :func:`load_config` turns every problem into a
:class:`~station.errors.ConfigError` that names the file and the field.

The scanner and printer URLs are checked by the drivers' own parsers
(:func:`drivers.parse_scanner_url`, :func:`drivers.parse_printer_url`), the very functions
``open_scanner`` / ``open_printer`` start with: a URL enrolment accepts is never refused for its
form at ``station run`` (only a device that is missing or unreachable can still fail there).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator

from drivers import UnsupportedURL, parse_printer_url, parse_scanner_url
from station.errors import ConfigError
from sync import contract
from sync.settings import MqttUrl, parse_mqtt_url

__all__ = [
    "CONFIG_FILE",
    "REPLICA_FILE",
    "StationConfig",
    "enrol",
    "load_config",
    "replica_path",
    "station_dir",
]

log = logging.getLogger("packline.station")

CONFIG_FILE = "station.json"
REPLICA_FILE = "replica.db"
# Ids become MQTT topic levels (sync.contract rules) AND a directory name here, so on top of
# the contract's rules (no / + # NUL, no leading $) they must be a safe, portable file name.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENROL_HINT = "packline station enrol --station-id {station} --site SITE --scanner URL --printer URL"


def _check_id(value: str, what: str) -> str:
    # the contract's own check first (ContractError is a ValueError: pydantic reports it)
    if what == "site":
        contract.site_feed_topic(value)
    else:
        contract.station_events_topic(value)
    if not _ID.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def _check_device_url(url: str, parse: Callable[[str], object]) -> str:
    """``url`` if the driver that will open it accepts it; its reason as a ValueError otherwise."""
    try:
        parse(url)
    except UnsupportedURL as e:
        raise ValueError(str(e)) from None
    return url


class StationConfig(BaseModel):
    """Everything a station needs to start. Written by :func:`enrol`, read by :func:`load_config`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config_version: Literal[1] = 1
    station_id: str = Field(description="e.g. ST-DE-LEJ-1; an MQTT topic level and a directory name")
    site: str = Field(description="the site whose feed this station applies, e.g. DE-LEJ")
    cloud_url: str = Field(description="http(s):// base URL of the Packline cloud API")
    mqtt_url: str = Field(
        description="mqtt[s]://host:port of the broker (credentials go in the fields below)"
    )
    mqtt_protocol: Literal[5, 311] = Field(default=5, description="MQTT version the broker speaks: 5 or 311 (3.1.1)")
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    scanner_url: str | None = Field(
        default=None, description="serial:///dev/ttyACM0?baud=9600; None: keyboard-wedge scanner only"
    )
    printer_url: str = Field(description="tcp://10.0.0.7:9100, cups://Zebra_ZT411, file:///srv/labels/")
    resend_after_s: float = Field(
        default=5.0, gt=0, le=3600, description="resend an unacked event after this"
    )
    language: str = Field(default="en", pattern=r"^[a-z]{2}(-[A-Z]{2})?$")

    @field_validator("station_id")
    @classmethod
    def _station_id(cls, v: str) -> str:
        return _check_id(v, "station id")

    @field_validator("site")
    @classmethod
    def _site(cls, v: str) -> str:
        return _check_id(v, "site")

    @field_validator("cloud_url")
    @classmethod
    def _cloud_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"cloud URL must be http(s)://host[:port], got {v!r}")
        return v.rstrip("/")

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, v: str) -> str:
        parsed = parse_mqtt_url(v)  # ValueError with a clear reason
        if parsed.username or parsed.password:
            raise ValueError("put MQTT credentials in mqtt_username / mqtt_password, not in the URL")
        return v

    @field_validator("mqtt_password")
    @classmethod
    def _mqtt_password(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # a password is sent only with a user name (MQTT 3.1.1 requires one for the other): alone
        # it would be dropped without a word and the broker would refuse the station at `station run`
        if v is not None and not info.data.get("mqtt_username"):
            raise ValueError("a password needs a user name too (--mqtt-username)")
        return v

    @field_validator("printer_url")
    @classmethod
    def _printer_url(cls, v: str) -> str:
        return _check_device_url(v, parse_printer_url)

    @field_validator("scanner_url")
    @classmethod
    def _scanner_url(cls, v: str | None) -> str | None:
        return None if v is None else _check_device_url(v, parse_scanner_url)

    def mqtt(self) -> MqttUrl:
        """The broker address with this station's own credentials (printing it hides the password)."""
        password = self.mqtt_password.get_secret_value() if self.mqtt_password else None
        return parse_mqtt_url(self.mqtt_url).with_credentials(self.mqtt_username, password)

    def to_json(self) -> bytes:
        """The file content: the password in clear text (the file is 0600), keys in a stable order."""
        data = self.model_dump(mode="json")
        data["mqtt_password"] = self.mqtt_password.get_secret_value() if self.mqtt_password else None
        return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8")


def station_dir(data_dir: Path, station_id: str) -> Path:
    return Path(data_dir) / "stations" / station_id


def replica_path(data_dir: Path, station_id: str) -> Path:
    return station_dir(data_dir, station_id) / REPLICA_FILE


def _errors_text(e: ValidationError) -> str:
    """One ``  field: reason`` line per error, without pydantic's "Value error, " decoration."""
    lines = []
    for err in e.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(config)"
        cause = (err.get("ctx") or {}).get("error")
        msg = str(cause) if err["type"] == "value_error" and cause is not None else err["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` with mode 0600 so a reader sees the old file or the new one, whole."""
    # the station directory also holds the replica (customer names): private to the station's user
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # 0600
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic create-if-absent: two enrolments cannot both win
            except FileExistsError:
                raise ConfigError(f"{path} already exists; pass --force to replace it") from None
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def enrol(data_dir: Path, *, force: bool = False, **fields: Any) -> Path:
    """Validate ``fields`` as a :class:`StationConfig` and write ``<data_dir>/stations/<id>/station.json``.

    Returns the path written. Raises :class:`ConfigError` for invalid fields or an already
    enrolled station (unless ``force``).
    """
    try:
        config = StationConfig.model_validate(fields)
    except ValidationError as e:
        raise ConfigError(f"cannot enrol station:\n{_errors_text(e)}") from None
    path = station_dir(data_dir, config.station_id) / CONFIG_FILE
    if path.exists() and not force:
        raise ConfigError(
            f"station {config.station_id} is already enrolled at {path}; pass --force to replace it"
        )
    _write_atomic(path, config.to_json(), overwrite=force)
    log.info("enrolled station %s (site %s) at %s", config.station_id, config.site, path)
    return path


def _not_enrolled(station_id: str, config: Path) -> ConfigError:
    hint = _ENROL_HINT.format(station=station_id)
    return ConfigError(f"station {station_id} is not enrolled: {config} does not exist; enrol it with: {hint}")


def _find_config_file(path_or_dir: Path) -> Path:
    p = Path(path_or_dir)
    if p.is_file():
        return p
    if p.parent.name == "stations" and not (p.is_dir() and (p / "stations").is_dir()):
        # <data_dir>/stations/<station_id>: one station's directory (it may not exist yet)
        if not (p / CONFIG_FILE).is_file():
            raise _not_enrolled(p.name, p / CONFIG_FILE)
        return p / CONFIG_FILE
    if p.is_dir():
        if (p / CONFIG_FILE).is_file():
            return p / CONFIG_FILE
        stations = p / "stations"
        found = (
            sorted(d / CONFIG_FILE for d in stations.iterdir() if (d / CONFIG_FILE).is_file())
            if stations.is_dir()
            else []
        )
        if len(found) == 1:
            return found[0]
        if not found:
            hint = _ENROL_HINT.format(station="ST-…")
            raise ConfigError(
                f"no station is enrolled under {p} (expected {p}/stations/<station_id>/{CONFIG_FILE}); "
                f"enrol one with: {hint}"
            )
        names = ", ".join(f.parent.name for f in found)
        raise ConfigError(f"several stations are enrolled under {p} ({names}); pass the station's directory")
    if p.name == CONFIG_FILE and p.parent.parent.name == "stations":
        raise _not_enrolled(p.parent.name, p)
    raise ConfigError(f"station config {p} does not exist")


def load_config(path_or_dir: Path | str) -> StationConfig:
    """Read a station config: a ``station.json``, a station directory, or a data directory with one station."""
    path = _find_config_file(Path(path_or_dir))
    try:
        raw = json.loads(path.read_bytes())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    try:
        config = StationConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path} is invalid:\n{_errors_text(e)}") from None
    if path.parent.parent.name == "stations" and path.parent.name != config.station_id:
        raise ConfigError(
            f"{path} is for station {config.station_id} but lies in the directory of {path.parent.name}"
        )
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning(
            "%s is readable by others (mode %o) and holds the MQTT password; chmod 600 it", path, mode
        )
    return config
