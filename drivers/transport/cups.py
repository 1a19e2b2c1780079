"""``cups://QueueName``: a raw CUPS queue, through the ``zebra`` package (``lpr -o raw``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from drivers._url import DeviceURL
from drivers.errors import DeviceError, UnsupportedURL

__all__ = ["CupsPrinter", "CupsTarget", "parse_cups_url"]


@dataclass(frozen=True)
class CupsTarget:
    """A checked ``cups://Queue`` printer URL; whether the queue exists is only known at open."""

    url: str
    queue: str


def parse_cups_url(dev: DeviceURL) -> CupsTarget:
    """Check ``cups://QueueName`` (one CUPS queue name, no options) without asking CUPS."""
    dev.allow_only()
    queue = dev.netloc or dev.path.strip("/")
    if not queue or "/" in queue or any(c.isspace() for c in queue) or len(queue) > 127:
        raise UnsupportedURL(f"{dev.url!r}: name one CUPS queue, e.g. cups://Zebra_ZT411")
    return CupsTarget(url=dev.url, queue=queue)


class _Zebra(Protocol):
    """The part of ``zebra.Zebra`` we use (its stub ships as zebra/zebra.pyi, which type
    checkers do not pick up for the ``zebra`` module)."""

    def output(self, commands: str | bytes, encoding: str = ...) -> None: ...
    def getqueues(self) -> list[str]: ...


def _zebra(queue: str | None = None) -> _Zebra:
    # Imported lazily: the zebra package is only needed where CUPS printing is used.
    from zebra import Zebra

    zebra: _Zebra = Zebra(queue)
    return zebra


class CupsPrinter:
    """Jobs go to ``lpr -P <queue> -o raw``. CUPS reports no printer status: ``status()`` is None.

    Note: the zebra package ignores lpr's exit status, so a job rejected by CUPS after the
    queue check at open time is not reported.
    """

    def __init__(self, url: str, queue: str) -> None:
        self.url = url
        self.queue = queue
        self._zebra = _zebra(queue)
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, target: CupsTarget) -> CupsPrinter:
        """A printer for a URL checked by :func:`parse_cups_url`, once CUPS knows the queue."""
        try:
            queues = _zebra().getqueues()
        except OSError as exc:
            raise DeviceError(
                f"printer {target.url}: CUPS client tools (lpstat, lpr) not usable: {exc}"
            ) from exc
        if target.queue not in queues:
            known = ", ".join(queues) or "none"
            raise DeviceError(f"printer {target.url}: CUPS queue {target.queue!r} not found (queues: {known})")
        return cls(target.url, target.queue)

    def send(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"send() takes bytes, got {type(data).__name__}")
        with self._lock:
            if self._closed:
                raise DeviceError(f"printer {self.url} is closed")
            try:
                self._zebra.output(bytes(data))
            except OSError as exc:
                raise DeviceError(f"printer {self.url}: lpr failed: {exc}") from exc

    def status(self) -> None:
        return None

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"CupsPrinter({self.url!r})"
