"""Simulators that speak the devices' real byte protocols (TCP, pty), for tests and demos."""

from drivers.sim.scanner import SimulatedScanner
from drivers.sim.zebra import SimulatedZebra

__all__ = ["SimulatedScanner", "SimulatedZebra"]
