"""Typed settings shared by every Packline process.

Precedence (highest first): command-line option > ``PACKLINE_*`` environment variable >
default. Names are flat: ``PACKLINE_DATABASE_URL``, ``PACKLINE_MQTT_URL``,
``PACKLINE_DATA_DIR``. An empty variable (``PACKLINE_DATA_DIR=``) counts as unset. Every
file Packline writes lives under ``data_dir`` unless an option says otherwise.

Every value is checked when :class:`Settings` is built (an MQTT URL must parse, ports are
0..65535, ...), so a command can refuse bad input before it touches anything. The
database URL's dialect is the cloud's business: ``cloud.db.check_database_url``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["MqttUrl", "Settings", "parse_mqtt_url"]


def _default_data_dir() -> Path:
    """``$XDG_DATA_HOME/packline`` (``~/.local/share/packline``): works from any directory."""
    import os

    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "packline"


class Settings(BaseSettings):
    # an empty PACKLINE_DATA_DIR= must not mean "the current directory"
    model_config = SettingsConfigDict(env_prefix="PACKLINE_", extra="ignore", env_ignore_empty=True)

    data_dir: Path = Field(default_factory=_default_data_dir, description="where databases, configs and labels live")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the cloud database; default: SQLite file under data_dir"
    )
    mqtt_url: str | None = Field(default=None, description="mqtt[s]://[user:pass@]host:port; default: start one")
    cloud_group: str = Field(
        default="packline-cloud", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="MQTT 5 shared-subscription group of this deployment's cloud workers; also their client-id prefix",
    )
    mqtt_protocol: int = Field(default=5, description="MQTT version to speak: 5, or 311 for 3.1.1")
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535, description="TCP port of the API; 0: any free port")
    webhook_timeout_s: float = 5.0
    signing_secret_bytes: int = 24

    @field_validator("mqtt_protocol")
    @classmethod
    def _protocol(cls, v: int) -> int:
        if v not in (5, 311):
            raise ValueError("must be 5 (MQTT 5) or 311 (MQTT 3.1.1)")
        return v

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, v: str | None) -> str | None:
        if v is not None:
            parse_mqtt_url(v)  # ValueError with the reason
        return v

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    def cloud_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'cloud.db'}"

    def sources(self) -> dict[str, str]:
        """Which values were set explicitly (env or options), for `packline config`."""
        return {k: "set" for k in self.model_fields_set}


@dataclass(frozen=True)
class MqttUrl:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:  # never prints the password
        auth = f"{self.username}:***@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{self.host}:{self.port}"

    def with_credentials(self, username: str | None, password: str | None) -> MqttUrl:
        return MqttUrl(self.host, self.port, self.tls, username, password)

    def to_url(self) -> str:
        from urllib.parse import quote

        auth = ""
        if self.username:
            auth = quote(self.username, safe="")
            if self.password is not None:
                auth += ":" + quote(self.password, safe="")
            auth += "@"
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> MqttUrl:
    """Parse ``mqtt[s]://[user:pass@]host:port``; raise ValueError with a clear reason."""
    parts = urlsplit(url)
    shown = url.replace(f":{parts.password}@", ":***@") if parts.password else url  # never echo a password
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://, got {shown!r}")
    if not parts.hostname:
        raise ValueError(f"MQTT URL has no host: {shown!r}")
    try:
        port = parts.port if parts.port is not None else (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ValueError(f"MQTT URL has a bad port (1..65535): {shown!r}")
    return MqttUrl(
        host=parts.hostname,
        port=port,
        tls=parts.scheme == "mqtts",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )
