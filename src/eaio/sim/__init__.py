"""The virtual building: a small office's physics served over the field protocols."""

from __future__ import annotations

from .physics import Building
from .runner import SimThread, Simulation, parse_fault, run_sim

__all__ = ["Building", "SimThread", "Simulation", "parse_fault", "run_sim"]
