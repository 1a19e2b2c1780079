"""The one exception root of the drivers package.

Expected operating failures of devices (port missing, printer unreachable, timeout,
unparseable status reply) raise :class:`DeviceError`; callers catch that and show it.
Malformed barcode data is *not* an exception: :func:`drivers.scanner.decode_scan`
returns a :class:`~drivers.scanner.Scan` whose ``error`` says what is wrong.
"""

from __future__ import annotations

__all__ = ["DeviceError", "UnsupportedURL"]


class DeviceError(Exception):
    """A device could not be opened, written, read or understood."""


class UnsupportedURL(DeviceError):
    """A device URL is malformed or names a scheme/option this driver does not support."""
