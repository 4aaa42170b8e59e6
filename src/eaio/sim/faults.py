"""Fault injection: what the faces serve differs from the physics' true state.

Times are sim seconds since the simulation started. A fault from the site file starts at its
``start_s``; a fault injected at run time starts ``start_s`` after the moment it is injected.
Sensor faults (stuck, spike, drift) change served values only; ``offline`` silences a device;
``unreliable`` flags a point's object as unreliable (a BACnet face sets its reliability and the
fault status flag; a Modbus register has nowhere to say so, so a Modbus face serves it unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import SimFaultSpec

__all__ = ["ActiveFault", "FaultBook"]


@dataclass
class ActiveFault:
    spec: SimFaultSpec
    start: float  # sim seconds since sim start
    frozen: float | bool | None = None  # stuck: the value when it struck
    spike_step: int | None = None  # spike: the step it fires in

    @property
    def end(self) -> float | None:
        return None if self.spec.duration_s is None else self.start + self.spec.duration_s

    def is_active(self, elapsed: float) -> bool:
        return elapsed >= self.start and (self.end is None or elapsed < self.end)

    def describe(self) -> dict[str, object]:
        return {**self.spec.model_dump(), "starts_at_s": self.start, "ends_at_s": self.end}


@dataclass
class FaultBook:
    """The faults of one simulation, and how they bend a served value."""

    faults: list[ActiveFault] = field(default_factory=list)

    def add(self, spec: SimFaultSpec, now: float = 0.0) -> ActiveFault:
        fault = ActiveFault(spec, start=now + spec.start_s)
        self.faults.append(fault)
        return fault

    def clear(self, target: str | None = None) -> int:
        before = len(self.faults)
        self.faults = [f for f in self.faults if target is not None and f.spec.target != target]
        return before - len(self.faults)

    def active(self, elapsed: float) -> list[ActiveFault]:
        return [f for f in self.faults if f.is_active(elapsed)]

    def offline_devices(self, elapsed: float) -> set[str]:
        return {f.spec.target for f in self.active(elapsed) if f.spec.kind == "offline"}

    def unreliable_points(self, elapsed: float) -> set[str]:
        return {f.spec.target for f in self.active(elapsed) if f.spec.kind == "unreliable"}

    def expire(self, elapsed: float) -> None:
        """Forget faults that are over, so the book does not grow in a long run."""
        self.faults = [f for f in self.faults if f.end is None or elapsed < f.end]

    def served(self, point_id: str, true: float | bool, elapsed: float, step: int) -> float | bool:
        """The value a face serves for ``point_id`` whose true value is ``true``."""
        value = true
        for f in self.faults:
            if f.spec.target != point_id or f.spec.kind in ("offline", "unreliable") or not f.is_active(elapsed):
                continue
            if f.spec.kind == "stuck":
                if f.frozen is None:
                    f.frozen = value
                value = f.frozen
            elif isinstance(value, bool):
                continue  # spike and drift mean nothing for a bit
            elif f.spec.kind == "spike":
                if f.spike_step is None:
                    f.spike_step = step
                if f.spike_step == step:
                    value = value + f.spec.magnitude
            elif f.spec.kind == "drift":
                value = value + f.spec.magnitude * (elapsed - f.start) / 3600.0
        return value
