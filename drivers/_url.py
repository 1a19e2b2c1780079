"""Small helpers to pick device URLs apart (``scheme://...?...``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from drivers.errors import UnsupportedURL


@dataclass(frozen=True)
class DeviceURL:
    scheme: str
    netloc: str
    path: str
    params: dict[str, str]
    url: str

    def allow_only(self, *names: str) -> None:
        """Reject unknown query options, so typos fail loudly instead of being ignored."""
        for key in self.params:
            if key not in names:
                if not names:
                    raise UnsupportedURL(f"{self.url!r}: a {self.scheme}:// URL takes no options (got {key!r})")
                known = ", ".join(names)
                raise UnsupportedURL(f"unknown option {key!r} in {self.url!r} (allowed options: {known})")


def parse_device_url(url: str) -> DeviceURL:
    if not isinstance(url, str) or "://" not in url:
        raise UnsupportedURL(f"not a device URL (expected scheme://...): {url!r}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed [IPv6 literal
        raise UnsupportedURL(f"malformed device URL {url!r}: {exc}") from None
    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in params:
            raise UnsupportedURL(f"option {key!r} given twice in {url!r}")
        params[key] = value
    return DeviceURL(
        scheme=parts.scheme.lower(),
        netloc=unquote(parts.netloc),
        path=unquote(parts.path),
        params=params,
        url=url,
    )


def int_param(
    dev: DeviceURL,
    name: str,
    default: int,
    *,
    choices: Iterable[int] | None = None,
    what: str | None = None,
    maximum: int | None = None,
) -> int:
    """The integer option ``name`` (``default`` when absent): positive, one of ``choices`` if given
    (``what`` names that set in the message, e.g. "a standard serial rate"), at most ``maximum``."""
    raw = dev.params.get(name)
    if raw is None:
        return default
    allowed = None if choices is None else tuple(choices)
    one_of = "" if allowed is None else f"; use one of {', '.join(map(str, allowed))}"
    try:
        value = int(raw)
    except ValueError:
        kind = what or "an integer"
        raise UnsupportedURL(f"option {name}={raw!r} in {dev.url!r} is not {kind}{one_of}") from None
    if allowed is not None and value not in allowed:
        kind = what or "allowed"
        raise UnsupportedURL(f"option {name}={value} in {dev.url!r} is not {kind}{one_of}")
    if value <= 0:
        raise UnsupportedURL(f"option {name}={value} in {dev.url!r} must be positive")
    if maximum is not None and value > maximum:
        raise UnsupportedURL(f"option {name}={value} in {dev.url!r} must be at most {maximum}")
    return value


def serial_port_path(dev: DeviceURL) -> str:
    """The port of ``serial:///dev/ttyACM0`` (or ``serial://COM3`` on Windows)."""
    if dev.netloc and dev.path:
        raise UnsupportedURL(
            f"{dev.url!r}: write serial URLs with three slashes, e.g. serial:///dev/ttyUSB0?baud=9600"
        )
    port = dev.path or dev.netloc
    if not port or port == "/":
        raise UnsupportedURL(f"{dev.url!r} names no serial port, e.g. serial:///dev/ttyUSB0?baud=9600")
    return port
