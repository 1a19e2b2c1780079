"""``file://``: print jobs into files, for development, demos and label checks."""

from __future__ import annotations

import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from drivers._url import DeviceURL
from drivers.errors import DeviceError, UnsupportedURL

__all__ = ["FilePrinter", "FileTarget", "parse_file_url", "write_numbered_job"]

_JOB_NAME = re.compile(r"job-(\d+)\.zpl")


def _next_job_number(folder: Path) -> int:
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _JOB_NAME.fullmatch(p.name))]
    return max(numbers, default=0) + 1


def write_numbered_job(folder: Path, data: bytes) -> Path:
    """Write ``data`` as the next ``job-NNNN.zpl`` in ``folder``, atomically.

    The file appears complete or not at all (written aside, then hard-linked into place;
    linking never overwrites, so concurrent writers each get their own number).
    """
    fd, tmp_name = tempfile.mkstemp(prefix=".job-", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        while True:
            target = folder / f"job-{_next_job_number(folder):04d}.zpl"
            try:
                os.link(tmp, target)
            except FileExistsError:
                continue
            return target
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class FileTarget:
    """A checked ``file:///abs/path`` printer URL (a folder when it ends in ``/`` or is one)."""

    url: str
    path: str


def parse_file_url(dev: DeviceURL) -> FileTarget:
    """Check ``file:///absolute/path[/]`` (no options) without touching the file system."""
    dev.allow_only()
    if dev.netloc not in ("", "localhost"):
        raise UnsupportedURL(f"{dev.url!r}: use an absolute path, e.g. file:///srv/labels/")
    if not dev.path or dev.path == "/":
        raise UnsupportedURL(f"{dev.url!r} names no path, e.g. file:///srv/labels/")
    return FileTarget(url=dev.url, path=dev.path)


class FilePrinter:
    """``file:///dir/`` writes each job as a new numbered file; ``file:///x.zpl`` appends."""

    def __init__(self, url: str, path: Path, *, folder: bool) -> None:
        self.url = url
        self.path = path
        self.folder = folder
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, target: FileTarget) -> FilePrinter:
        """A printer for a URL checked by :func:`parse_file_url`; creates a folder that ends in ``/``."""
        path = Path(target.path)
        folder = target.path.endswith("/") or path.is_dir()
        try:
            if folder:
                path.mkdir(parents=True, exist_ok=True)
            elif not path.parent.is_dir():
                raise DeviceError(f"printer {target.url}: folder {path.parent} does not exist")
        except OSError as exc:
            raise DeviceError(f"printer {target.url}: cannot create {path}: {exc}") from exc
        return cls(target.url, path, folder=folder)

    def send(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"send() takes bytes, got {type(data).__name__}")
        with self._lock:
            if self._closed:
                raise DeviceError(f"printer {self.url} is closed")
            try:
                if self.folder:
                    write_numbered_job(self.path, bytes(data))
                else:
                    with self.path.open("ab") as fh:
                        fh.write(data)
            except OSError as exc:
                raise DeviceError(f"printer {self.url}: cannot write job: {exc}") from exc

    def status(self) -> None:
        return None

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"FilePrinter({self.url!r})"
