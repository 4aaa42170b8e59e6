"""A faster ReadPropertyMultiple for the sim's BACnet devices (bacpypes3 0.0.110), same answers as stock.

Stock bacpypes3 spends most of an RPM building generic Sequence objects: ~5 per object to decode the
request, ~4 per value to build the answer, and two StatusFlags (with an ``inspect.getattr_static``
per attribute) for each status-flags read. Here:

* ``FastRpmApplication.do_ReadPropertyMultipleRequest`` reads every value with the stock
  ``obj.read_property`` (computed properties, priority arrays and error rules unchanged) and writes
  the answer straight to bytes, sent as a plain ComplexAckPDU that bacpypes3 segments as it would
  its own. ``all``/``required``/``optional`` and any value it cannot encode go through the stock
  element code. status-flags of bacpypes3's local objects is computed as the stock getter does,
  without the objects; checked against the stock getter once per class.
* ``install_request_decoder`` registers a request class for service 14 that parses the tag list
  into ``(object id, [(property id, index)])`` tuples; the standard objects are built on first use,
  so stock handlers reading the same request see stock objects.

Guard: ``ready()`` checks once that the bacpypes3 internals used here are as expected (and decodes
a stock-encoded request both ways); when they are not, nothing is installed and faces use the stock
handler. A request the fast handler trips on is answered by the stock handler (logged once).
Unlike the standard, stock bacpypes3 does not honour the wildcard device instance 4194303 in an
RPM; neither does this handler, so both answer alike.
"""

from __future__ import annotations

import inspect
import logging
import struct
from functools import partial
from typing import Any

from bacpypes3 import apdu as _apdu
from bacpypes3.apdu import ComplexAckPDU
from bacpypes3.apdu import ReadPropertyMultipleRequest as _StockRequest
from bacpypes3.app import Application
from bacpypes3.basetypes import (
    ErrorType,
    EventState,
    PropertyIdentifier,
    PropertyReference,
    ReadAccessSpecification,
    Reliability,
)
from bacpypes3.basetypes import StatusFlags as _StatusFlags
from bacpypes3.constructeddata import SequenceOf
from bacpypes3.errors import ExecutionError, ObjectError, PropertyError
from bacpypes3.local.object import Object as _LocalObject
from bacpypes3.primitivedata import BitString, Boolean, Enumerated, ObjectIdentifier, Real, TagClass, TagList, Unsigned
from bacpypes3.service.object import read_property_to_result_element

from ...protocol_adapters.bacnet_tags import LazyTagList

__all__ = ["FastRpmApplication", "encode_value", "install_request_decoder", "ready", "uninstall_request_decoder"]

log = logging.getLogger(__name__)

_SERVICE = 14  # ReadPropertyMultiple
_SPECIAL = frozenset(int(PropertyIdentifier(p)) for p in ("all", "required", "optional"))
_OPEN1, _CLOSE1, _OPEN4, _CLOSE4 = b"\x1e", b"\x1f", b"\x4e", b"\x4f"
_pack_f = struct.Struct(">f").pack
_CACHE_LIMIT = 50_000  # encoded values kept; a sim's values repeat (flags, enums), floats are not cached


# -- encoding (ASHRAE 135 clause 20.2) ---------------------------------------------------------
def _context_tag(number: int, data: bytes) -> bytes:
    first, ext = ((number << 4) | 0x08, b"") if number < 15 else (0xF8, bytes((number,)))
    n = len(data)
    if n <= 4:
        return bytes((first | n,)) + ext + data
    if n < 254:
        return bytes((first | 5,)) + ext + bytes((n,)) + data
    if n < 65536:
        return bytes((first | 5,)) + ext + b"\xfe" + n.to_bytes(2, "big") + data
    return bytes((first | 5,)) + ext + b"\xff" + n.to_bytes(4, "big") + data


_uint_tags: dict[tuple[int, int], bytes] = {}


def _context_uint(number: int, value: int) -> bytes:
    key = (number, value)
    b = _uint_tags.get(key)
    if b is None:
        b = _context_tag(number, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))
        if len(_uint_tags) < _CACHE_LIMIT:
            _uint_tags[key] = b
    return b


_values: dict[tuple[Any, Any], bytes] = {}
_HASHABLE = (Enumerated, Unsigned, Boolean, ObjectIdentifier)


def encode_value(value: Any) -> bytes:
    """The application-tagged encoding of a property value: what the stock ``Any(value)`` holds."""
    if isinstance(value, Real):  # not cached: -0.0 == 0.0 and NaN != NaN would confuse a dict
        return b"\x44" + _pack_f(value)
    if isinstance(value, _HASHABLE):
        key: tuple[Any, Any] = (value.__class__, value)
    elif isinstance(value, BitString):
        key = (value.__class__, tuple(value))
    else:
        return bytes(value.encode().encode().pduData)
    b = _values.get(key)
    if b is None:
        b = bytes(value.encode().encode().pduData)
        if len(_values) >= _CACHE_LIMIT:
            _values.clear()
        _values[key] = b
    return b


_errors: dict[tuple[str, str], bytes] = {}


def _error_bytes(error_class: Any, error_code: Any) -> bytes:
    """A propertyAccessError element (context 5 around an ErrorType), as stock encodes it."""
    key = (str(error_class), str(error_code))
    b = _errors.get(key)
    if b is None:
        err = ErrorType(errorClass=error_class, errorCode=error_code)
        b = _errors[key] = b"\x5e" + bytes(err.encode().encode().pduData) + b"\x5f"
    return b


# -- status-flags of local objects without building StatusFlags twice --------------------------
_STOCK_STATUS_FLAGS = _LocalObject.__dict__.get("statusFlags")
_attr_mode: dict[tuple[type, str], Any] = {}


def _local_attr(obj: Any, name: str) -> Any:
    """``getattr(obj, name, None)`` for a local object, minus the ``inspect.getattr_static`` its
    ``__getattribute__`` runs on each access to spot a coroutine @property, a per-class fact."""
    key = (obj.__class__, name)
    mode = _attr_mode.get(key)
    if mode is None:
        elements = object.__getattribute__(obj, "_elements")
        mode = "getattr"
        if name in elements:
            try:
                static = inspect.getattr_static(obj.__class__, name)
            except AttributeError:
                static = None
            if not isinstance(static, property):
                mode = elements[name]
        _attr_mode[key] = mode
    if mode == "getattr":
        return getattr(obj, name, None)
    try:
        return mode.get_attribute(getter=partial(super(_LocalObject, obj).__getattribute__, name))
    except AttributeError:
        return getattr(obj, name, None)


_flag_bytes: dict[tuple[int, ...], bytes] = {}


def _status_flags_bytes(obj: Any) -> bytes:
    """The same bits as bacpypes3.local.object.Object.statusFlags computes, encoded."""
    event_state = _local_attr(obj, "eventState")
    reliability = _local_attr(obj, "reliability")
    oos = _local_attr(obj, "outOfService")
    bits = (
        int(event_state is not None and event_state != EventState.normal),
        int(reliability is not None and reliability != Reliability.noFaultDetected),
        0,
        int(oos == 1),
    )
    b = _flag_bytes.get(bits)
    if b is None:
        b = _flag_bytes[bits] = encode_value(_StatusFlags(list(bits)))
    return b


# -- the request decoder -----------------------------------------------------------------------
Spec = tuple[int, list[tuple[int, int | None]]]
_StockSpecs = SequenceOf(ReadAccessSpecification)


def _parse_specs(tags: list[Any]) -> tuple[list[Spec], int] | None:
    """The plain layout of listOfReadAccessSpecs -> (specs, tags used); None for anything else."""
    ctx, opening, closing = TagClass.context, TagClass.opening, TagClass.closing
    specs: list[Spec] = []
    i, n = 0, len(tags)
    while i < n:
        t = tags[i]
        if t.tag_class == closing:
            break
        if t.tag_class != ctx or t.tag_number != 0 or len(t.tag_data) != 4:
            return None
        oid = int.from_bytes(t.tag_data, "big")
        i += 1
        if i >= n or tags[i].tag_class != opening or tags[i].tag_number != 1:
            return None
        i += 1
        refs: list[tuple[int, int | None]] = []
        while True:
            if i >= n:
                return None
            t = tags[i]
            if t.tag_class == closing:
                if t.tag_number != 1:
                    return None
                i += 1
                break
            if t.tag_class != ctx or t.tag_number != 0 or not 1 <= len(t.tag_data) <= 4:
                return None
            pid, index = int.from_bytes(t.tag_data, "big"), None
            i += 1
            if i < n and tags[i].tag_class == ctx and tags[i].tag_number == 1:
                if not 1 <= len(tags[i].tag_data) <= 4:
                    return None
                index = int.from_bytes(tags[i].tag_data, "big")
                i += 1
            refs.append((pid, index))
        specs.append((oid, refs))
    return specs, i


class FastReadAccessSpecs(LazyTagList, _StockSpecs):  # type: ignore[misc, valid-type]
    """listOfReadAccessSpecs that keeps the parsed tuples in ``fast``; its list content (the
    stock objects) is decoded from the kept tags on first use."""

    _stock = _StockSpecs
    _parse = staticmethod(_parse_specs)
    fast: list[Spec] | None = None


class ReadPropertyMultipleRequest(_StockRequest):  # type: ignore[misc]
    """The stock request with the fast list. Same class name on purpose: Application.indication
    calls ``do_<class name>``."""


# The Sequence metaclass builds _elements from the class body and refuses a redeclared element.
ReadPropertyMultipleRequest._elements = {**_StockRequest._elements, "listOfReadAccessSpecs": FastReadAccessSpecs}


def install_request_decoder() -> bool:
    """Decode incoming RPM requests with the fast list, process-wide. False (and nothing
    changed) when ``ready()`` says bacpypes3 is not what this module was written for."""
    if not ready():
        return False
    _apdu.confirmed_request_types[_SERVICE] = ReadPropertyMultipleRequest
    return True


def uninstall_request_decoder() -> None:
    _apdu.confirmed_request_types[_SERVICE] = _StockRequest


# -- the feature check -------------------------------------------------------------------------
_ready: bool | None = None


def ready() -> bool:
    """Whether the bacpypes3 internals used here are there and behave as expected (checked once)."""
    global _ready
    if _ready is None:
        problem = _check()
        _ready = problem is None
        if problem:
            log.warning("BACnet sim: fast ReadPropertyMultiple off, the stock handler serves (%s)", problem)
    return _ready


def _check() -> str | None:
    try:
        if _apdu.confirmed_request_types.get(_SERVICE) not in (_StockRequest, ReadPropertyMultipleRequest):
            return "service 14 is not bacpypes3's ReadPropertyMultipleRequest"
        if not isinstance(_STOCK_STATUS_FLAGS, property):
            return "local Object.statusFlags is not a property"
        for name in ("get_object_id", "response", "do_ReadPropertyMultipleRequest"):
            if not callable(getattr(Application, name, None)):
                return f"Application.{name} is missing"
        if not hasattr(ComplexAckPDU(), "put_data"):
            return "ComplexAckPDU.put_data is missing"
        # A stock-encoded request must parse to the same specs as the stock decoder gives.
        want: list[Spec] = [(int(ObjectIdentifier("analog-value,1")), [(85, None), (111, None)]),
                            (int(ObjectIdentifier("device,7")), [(76, 3), (8, None)])]
        specs = [ReadAccessSpecification(objectIdentifier=ObjectIdentifier(oid), listOfPropertyReferences=[
            PropertyReference(propertyIdentifier=p, propertyArrayIndex=i) for p, i in refs]) for oid, refs in want]
        tags = TagList.decode(_StockRequest(listOfReadAccessSpecs=_StockSpecs(specs)).encode()).tagList
        if _parse_specs(tags) != (want, len(tags)):
            return "a stock-encoded request does not parse as expected"
        if _LocalObject.__dict__.get("__getattribute__") is None:
            return "local Object.__getattribute__ is not where expected"
    except Exception as err:  # any surprise means: not the bacpypes3 this was written for
        return f"{type(err).__name__}: {err}"
    return None


# -- the handler ---------------------------------------------------------------------------------
_tripped = False  # the first request the fast handler could not serve is logged


class _AskStock(Exception):
    """A request whose stock answer is a quirk not worth copying: the stock handler answers it."""


class FastRpmApplication(Application):  # type: ignore[misc]
    """An Application whose ReadPropertyMultiple answers as stock does, in a fraction of the time.

    ``fast_rpm`` False (or ``ready()`` False) serves RPM with the stock handler."""

    fast_rpm = True

    async def do_ReadPropertyMultipleRequest(self, apdu: Any) -> None:  # type: ignore[override]
        global _tripped
        if not (self.fast_rpm and ready()):
            await super().do_ReadPropertyMultipleRequest(apdu)
            return
        try:
            data = await self._answer(apdu)
        except ExecutionError:
            raise  # stock's own outcome (unknown-object for a request naming no known object)
        except _AskStock:
            await super().do_ReadPropertyMultipleRequest(apdu)
            return
        except Exception:
            if not _tripped:
                _tripped = True
                log.warning("BACnet sim: fast ReadPropertyMultiple failed; the stock handler answers",
                            exc_info=True)
            await super().do_ReadPropertyMultipleRequest(apdu)
            return
        ack = ComplexAckPDU(context=apdu)
        ack.put_data(data)
        await self.response(ack)

    async def _answer(self, apdu: Any) -> bytes:
        specs = _specs_of(apdu)
        objects = [self._object(oid) for oid, _ in specs]
        if all(obj is None for obj in objects):
            raise ObjectError("unknown-object")
        out: list[bytes] = []
        for (oid, refs), obj in zip(specs, objects, strict=True):
            out += (_context_tag(0, oid.to_bytes(4, "big")), _OPEN1)
            for pid, index in refs:
                out.append(await self._element(obj, pid, index))
            out.append(_CLOSE1)
        return b"".join(out)

    def _object(self, oid: int) -> Any:
        cache: dict[int, ObjectIdentifier] = self.__dict__.setdefault("_fast_oids", {})
        identifier = cache.get(oid)
        if identifier is None:
            identifier = cache[oid] = ObjectIdentifier(oid)
        return self.get_object_id(identifier)

    async def _element(self, obj: Any, pid: int, index: int | None) -> bytes:
        """One ReadAccessResultElement: property id, index, then the value or the error."""
        head = _context_uint(2, pid) if index is None else _context_uint(2, pid) + _context_uint(3, index)
        if obj is None:
            if pid in _SPECIAL:  # stock trips over it (AttributeError): let it, so both answer alike
                raise _AskStock
            return head + _error_bytes("object", "unknownObject")
        if pid in _SPECIAL:
            return await _special(obj, pid)
        attr, typed, local_flags = _property_info(obj, pid)
        if local_flags and index is None:
            return head + _OPEN4 + _status_flags_bytes(obj) + _CLOSE4
        try:
            try:
                value = await obj.read_property(attr, index)
                if value is None:
                    raise PropertyError(errorCode="unknownProperty")
            except AttributeError:
                raise PropertyError(errorCode="unknownProperty") from None
            if not typed:
                raise PropertyError(errorCode="datatypeNotSupported")
        except ExecutionError as error:
            return head + _error_bytes(error.errorClass, error.errorCode)
        try:
            return head + _OPEN4 + encode_value(value) + _CLOSE4
        except Exception:  # let the stock code give its own outcome for a value it alone can handle
            return await _stock_element(obj, pid, index)


def _specs_of(apdu: Any) -> list[Spec]:
    specs = apdu.listOfReadAccessSpecs
    fast = getattr(specs, "fast", None)
    if fast is not None:
        return fast  # type: ignore[no-any-return]
    return [(int(s.objectIdentifier), [(int(r.propertyIdentifier), r.propertyArrayIndex)
                                       for r in s.listOfPropertyReferences]) for s in specs]


_info: dict[tuple[type, int], tuple[str, bool, bool]] = {}
_flags_checked: dict[type, bool] = {}


def _property_info(obj: Any, pid: int) -> tuple[str, bool, bool]:
    """(attribute name, datatype known, status-flags computable here) per class and property."""
    key = (obj.__class__, pid)
    info = _info.get(key)
    if info is None:
        attr = obj._property_identifier_class(pid).attr
        cls = obj.__class__
        local_flags = (attr == "statusFlags" and getattr(cls, "statusFlags", None) is _STOCK_STATUS_FLAGS
                       and cls.__getattribute__ is _LocalObject.__getattribute__)
        info = _info[key] = (attr, obj.get_property_type(pid) is not None, local_flags)
    if info[2] and not _flags_checked.get(obj.__class__, False):
        _flags_checked[obj.__class__] = True
        if _status_flags_bytes(obj) != encode_value(obj.statusFlags):
            log.warning("BACnet sim: %s computes status-flags its own way; read through bacpypes3",
                        obj.__class__.__name__)
            info = _info[key] = (info[0], info[1], False)
    return info


async def _stock_element(obj: Any, pid: int, index: int | None) -> bytes:
    element = await read_property_to_result_element(obj, PropertyIdentifier(pid), index)
    return bytes(element.encode().encode().pduData)


async def _special(obj: Any, pid: int) -> bytes:
    """all / required / optional, as the stock handler reads them (index ignored, errors skipped)."""
    required: set[str] = set()
    for cls in reversed(obj.__class__.__mro__):
        if hasattr(cls, "_required"):
            required |= set(cls._required)
    names = set(obj._elements.keys())
    if pid == int(PropertyIdentifier.all):
        names.discard("propertyList")
    elif pid == int(PropertyIdentifier.required):
        names &= required
        names.discard("propertyList")
    else:
        names -= required
    if len(names) == 1:  # a stock quirk: one name left reads the special property itself
        return await _stock_element(obj, pid, None)
    out: list[bytes] = []
    for name in names:
        if inspect.getattr_static(obj, name, None) is None:
            continue
        element = await read_property_to_result_element(obj, name, None)
        if element.readResult.propertyAccessError:
            continue
        out.append(bytes(element.encode().encode().pduData))
    return b"".join(out)
