"""The one exception root of the station package (STYLE 14).

Expected operating failures *at the packing bench* (a wrong item, a printer that is out
of paper) are not exceptions: the engine returns them as :class:`station.engine.Verdict`
values. Exceptions here are for setup problems a person must fix before the station can
run: a bad or missing configuration, a replica made by a newer build.
"""

from __future__ import annotations

__all__ = ["AlreadyRunning", "ConfigError", "ReplicaError", "StationError"]


class StationError(Exception):
    """Root of every exception raised by ``station``."""


class ConfigError(StationError):
    """Enrolment data or a station config file is missing or invalid (the message says which field)."""


class ReplicaError(StationError):
    """The local SQLite replica cannot be used (newer schema, feed applied out of order, ...)."""


class AlreadyRunning(StationError):
    """Another process runs this station (same replica, same broker identity): one at a time."""
