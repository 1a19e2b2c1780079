"""The packing station: enrolment, the local SQLite replica, the packing engine, the runtime.

The Textual screen lives in :mod:`station.tui` (``PackingApp``) and is not imported here, so
headless users (the demo, tests, a future kiosk) do not load the UI toolkit.

``station`` imports ``sync`` and ``drivers`` only; never ``cloud``.
"""

from station.config import StationConfig, enrol, load_config, replica_path, station_dir
from station.engine import PackingEngine, Verdict, VerdictKind
from station.errors import ConfigError, ReplicaError, StationError
from station.replica import Order, OrderLine, Replica
from station.runtime import StationRuntime, StationStatus

__all__ = [
    "ConfigError",
    "Order",
    "OrderLine",
    "PackingEngine",
    "Replica",
    "ReplicaError",
    "StationConfig",
    "StationError",
    "StationRuntime",
    "StationStatus",
    "Verdict",
    "VerdictKind",
    "enrol",
    "load_config",
    "replica_path",
    "station_dir",
]
