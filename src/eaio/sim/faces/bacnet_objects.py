"""The BACnet objects of one simulated device, built from the site's points (bacpypes3 local objects).

One object per configured object id; the point on its ``present-value`` names it (objectName = point
id, description = point name); analog objects carry ``units`` and, when the point has both limits,
``min-pres-value``/``max-pres-value``. Objects with a priority array (AO, AV, BO, BV, MSO, MSV) are
commandable: the sim drives them through ``relinquishDefault``, so with nothing commanded the
device reports the sim's value, and a client command at any priority overrides it as on a real
controller. Inputs (AI, BI, MSI) are driven through ``presentValue``. Only the present-value of a
writable point takes client writes; everything else answers property/write-access-denied.

Everything here must run in the sim's event loop: local objects schedule work on it when created,
and their change monitors (which drive COV notifications) need it when a value changes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from bacpypes3.basetypes import Reliability
from bacpypes3.errors import PropertyError
from bacpypes3.local.analog import AnalogInputObject, AnalogOutputObject, AnalogValueObject
from bacpypes3.local.binary import BinaryInputObject, BinaryOutputObject, BinaryValueObject
from bacpypes3.local.cmd import Commandable
from bacpypes3.local.multistate import MultiStateInputObject, MultiStateOutputObject, MultiStateValueObject

from ...models import BacnetDevice, BacnetPoint
from ...protocol_adapters.bacnet_units import to_bacnet
from ...protocol_adapters.values import f32, same_f32

__all__ = ["DeviceObjects", "SimObject", "cov_increment", "nice_real"]

log = logging.getLogger(__name__)

Value = float | int | bool
WriteHook = Callable[[str, Value], None]
_DEFAULT_STATES = 16  # multi-state objects without limits.high


def nice_real(x: float) -> float:
    """A client's 24.3 arrives as 24.299999237060547: the sim holds what the client meant."""
    return f32(x)


# -- conversions between the sim's values and the objects' -------------------------------------
def to_wire(kind: str, value: Value, states: int = _DEFAULT_STATES) -> Any:
    if kind == "binary":
        return "active" if value else "inactive"
    if kind == "multistate":
        v = float(value)
        return min(states, max(1, round(v))) if math.isfinite(v) else 1
    return float(value)


def from_wire(kind: str, pv: Any) -> Value:
    if kind == "binary":
        return int(pv) == 1
    if kind == "multistate":
        return int(pv)
    return nice_real(pv)


def same_on_wire(kind: str, a: Any, b: Any) -> bool:
    if kind == "analog":
        return same_f32(a, b)
    if isinstance(a, str) or isinstance(b, str):  # "active"/"inactive" before bacpypes3 casts it
        return str(a) == str(b)
    return int(a) == int(b)


def cov_increment(point: BacnetPoint) -> float:
    """0.5 % of the point's limits span, else 0.1 (a fine step for degC, %, kW alike)."""
    lim = point.limits
    if lim is not None and lim.low is not None and lim.high is not None and lim.high > lim.low:
        return round(0.005 * (lim.high - lim.low), 6)
    return 0.1


class SimObject:
    """Mixed into every served object class: write access and the sim's side of the values."""

    _sim_kind: ClassVar[str] = "analog"  # analog | binary | multistate
    _sim_point: str = ""  # the present-value point's id
    _sim_on_write: WriteHook | None = None  # None: clients may not write
    _sim_states: int = _DEFAULT_STATES

    if TYPE_CHECKING:  # what this mixin reads of the bacpypes3 object; hidden at run time, where
        # bacpypes3 builds each class's properties from its annotations
        presentValue: Any
        relinquishDefault: Any
        currentCommandPriority: Any
        reliability: Any
        statusFlags: Any
        _property_monitors: dict[str, list[Callable[[Any, Any], None]]]
        _property_identifier_class: Any

        def recalculating(self) -> None: ...

    async def write_property(
        self, attr: Any, value: Any, index: int | None = None, priority: int | None = None
    ) -> None:
        prop = attr if isinstance(attr, str) else self._property_identifier_class(attr).attr
        if prop != "presentValue" or self._sim_on_write is None:
            raise PropertyError("writeAccessDenied")
        before = self.presentValue
        await super().write_property(attr, value, index, priority)  # type: ignore[misc]
        after = self.presentValue
        # Only a change of the effective value matters to the physics: a command under a
        # higher-priority one, or a same-value write, changes nothing the building sees.
        if not self.sim_same(before, after):
            self._sim_on_write(self._sim_point, self.sim_value(after))

    def sim_wire(self, value: Value) -> Any:
        return to_wire(self._sim_kind, value, self._sim_states)

    def sim_value(self, pv: Any) -> Value:
        return from_wire(self._sim_kind, pv)

    def sim_same(self, a: Any, b: Any) -> bool:
        return same_on_wire(self._sim_kind, a, b)

    # -- the sim's side -------------------------------------------------------------------------
    def sim_serve(self, value: Value) -> None:
        wire = self.sim_wire(value)
        if not isinstance(self, Commandable):
            self.presentValue = wire  # an equal value is a no-op in bacpypes3 (no COV)
            return
        if self.sim_same(wire, self.relinquishDefault):
            return
        commanded = self.currentCommandPriority.unsigned is not None
        if commanded and self.sim_same(wire, self.presentValue):
            return  # the sim took a client's command: the default underneath stays what it was
        self.relinquishDefault = wire
        self.recalculating()  # bacpypes3 does not recompute presentValue on a relinquishDefault change

    def sim_set_reliable(self, reliable: bool) -> None:
        want = Reliability("noFaultDetected" if reliable else "unreliableOther")
        if self.reliability == want:
            return
        old_flags = self.statusFlags
        self.reliability = want
        new_flags = self.statusFlags
        # statusFlags is computed, so its monitors (COV) never hear of a reliability change; tell them.
        for fn in list(self._property_monitors["statusFlags"]):
            fn(old_flags, new_flags)


class SimAnalogInput(SimObject, AnalogInputObject):
    pass


class SimAnalogOutput(SimObject, AnalogOutputObject):  # the local class is commandable already
    pass


class SimAnalogValue(SimObject, Commandable, AnalogValueObject):
    pass


class SimBinaryInput(SimObject, BinaryInputObject):
    _sim_kind = "binary"


class SimBinaryOutput(SimObject, BinaryOutputObject):
    _sim_kind = "binary"


# Not bacpypes3's BinaryValueObjectCmd: it is built on the non-local class (no COV, no propertyList).
class SimBinaryValue(SimObject, Commandable, BinaryValueObject):
    _sim_kind = "binary"


class SimMultiStateInput(SimObject, MultiStateInputObject):
    _sim_kind = "multistate"


class SimMultiStateOutput(SimObject, MultiStateOutputObject):
    _sim_kind = "multistate"


class SimMultiStateValue(SimObject, Commandable, MultiStateValueObject):
    _sim_kind = "multistate"


_CLASSES: dict[str, type[SimObject]] = {
    "analog-input": SimAnalogInput, "analog-output": SimAnalogOutput, "analog-value": SimAnalogValue,
    "binary-input": SimBinaryInput, "binary-output": SimBinaryOutput, "binary-value": SimBinaryValue,
    "multi-state-input": SimMultiStateInput, "multi-state-output": SimMultiStateOutput,
    "multi-state-value": SimMultiStateValue,
}


def _camel(prop: str) -> str:
    head, *rest = prop.split("-")
    return head + "".join(part.capitalize() for part in rest)


class DeviceObjects:
    """The point objects of one device, and how the sim's values reach them."""

    def __init__(self, device: BacnetDevice, on_write: WriteHook, served: Mapping[str, Value]) -> None:
        by_object: dict[str, list[BacnetPoint]] = {}
        for p in device.points:
            by_object.setdefault(p.address.object_id, []).append(p)
        self.objects: dict[str, SimObject] = {}
        # point id -> (object, property attribute) for every point the objects can serve
        self.served_as: dict[str, tuple[SimObject, str]] = {}
        for object_id, points in by_object.items():
            obj = _build(points, on_write, served)
            self.objects[object_id] = obj
            for p in points:
                attr = _camel(p.address.property)
                if attr == "presentValue" or attr in type(obj)._elements:  # type: ignore[attr-defined]
                    self.served_as[p.id] = (obj, attr)
                else:
                    log.warning("sim %s: %s has no property %s; point %s is not served",
                                device.id, object_id, p.address.property, p.id)

    def serve(self, served: Mapping[str, Value]) -> None:
        for pid, (obj, attr) in self.served_as.items():
            if pid not in served:
                continue
            if attr == "presentValue":
                obj.sim_serve(served[pid])
                continue
            try:
                setattr(obj, attr, served[pid])
            except (ValueError, TypeError) as err:
                log.debug("sim: cannot serve %s as %s: %s", pid, attr, err)

    def set_unreliable(self, points: Collection[str]) -> None:
        """Objects holding any of ``points`` report unreliableOther; the others noFaultDetected."""
        bad = {id(self.served_as[p][0]) for p in points if p in self.served_as}
        for obj in self.objects.values():
            obj.sim_set_reliable(id(obj) not in bad)


def _build(points: list[BacnetPoint], on_write: WriteHook, served: Mapping[str, Value]) -> SimObject:
    main = next((p for p in points if p.address.property == "present-value"), points[0])
    a = main.address
    cls = _CLASSES[a.type]
    states = _DEFAULT_STATES
    if cls._sim_kind == "multistate" and main.limits is not None and main.limits.high is not None:
        states = max(2, int(main.limits.high))
    start: Value = False if cls._sim_kind == "binary" else 0
    if a.property == "present-value":  # an object known only by another property holds a constant value
        start = served.get(main.id, start)
    kwargs: dict[str, Any] = {
        "objectIdentifier": (a.type, a.instance),
        "objectName": main.id,
        "description": main.name or main.id,
        "outOfService": False,
        "reliability": "noFaultDetected",
        "eventState": "normal",
    }
    if cls._sim_kind == "analog":
        kwargs |= {"units": to_bacnet(main.unit), "covIncrement": cov_increment(main)}
        lim = main.limits
        if lim is not None and lim.low is not None and lim.high is not None:
            # The range a client may take for its limits (the adapter's ``limits``), as the OPC-UA face's EURange.
            kwargs |= {"minPresValue": lim.low, "maxPresValue": lim.high}
    elif cls._sim_kind == "multistate":
        kwargs["numberOfStates"] = states
    if a.type in ("binary-input", "binary-output"):
        kwargs["polarity"] = "normal"
    wire = to_wire(cls._sim_kind, start, states)
    kwargs["presentValue"] = wire
    if issubclass(cls, Commandable):
        kwargs["relinquishDefault"] = wire
    obj = cls(**kwargs)  # type: ignore[call-arg]
    obj._sim_point = main.id
    obj._sim_states = states
    if main.writable and main.commandable:
        obj._sim_on_write = on_write
    return obj
