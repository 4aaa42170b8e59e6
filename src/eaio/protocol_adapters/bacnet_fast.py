"""ReadPropertyMultiple without bacpypes3's per-value object trees (bacpypes3 0.0.110), same results.

``Application.read_property_multiple`` builds ~3 objects per property to send a request and ~8 per
value to decode the answer (every Sequence runs ``inspect.getattr_static`` for each of its unset
elements). For a poll list that repeats, both are avoidable:

* the request is encoded once per batch (object ids and property references are parsed with the
  stock parsers, then cached) and sent as a plain ConfirmedRequestPDU through ``app.request``, so
  invoke ids, segmentation, and Error/Reject/Abort answers are bacpypes3's own;
* ``install()`` registers, process-wide, an ACK class for service 14 whose result list is parsed
  straight from the tag list into tuples; each value is decoded by its datatype's stock ``decode``,
  as stock ``cast_out`` does. The standard objects are decoded from the kept tags on first use,
  so ``read_property_multiple`` and any other reader of the ACK see stock objects.

``read`` returns what ``read_property_multiple`` returns, as (object id str, property str, index,
value) rows. The guard: ``install`` checks the bacpypes3 internals this relies on, decodes a
stock-encoded ACK both ways and encodes a request both ways before it registers anything.
``usable()`` is False when that failed, when the decoder was taken out again, or after a decode
here raised (``Unusable``: the caller then reads the same batch with ``read_property_multiple``).
Each of these is logged once.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from typing import Any

from bacpypes3 import apdu as _apdu
from bacpypes3.apdu import ConfirmedRequestPDU
from bacpypes3.apdu import ReadPropertyMultipleACK as _StockAck
from bacpypes3.app import Application
from bacpypes3.basetypes import ErrorType, PropertyIdentifier, PropertyReference, ReadAccessResult
from bacpypes3.constructeddata import Array, SequenceOf
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier, Real, TagClass, TagList, Unsigned

from .bacnet_tags import LazyTagList

__all__ = ["FastRpm", "Row", "Unusable", "encode_request", "install", "uninstall", "usable"]

log = logging.getLogger(__name__)

Row = tuple[str, str, int | None, Any]  # object id, property, array index, value | ErrorType | None
# (pid, index, is_error, value tags | (error class, error code)) per property, per object id
_Parsed = list[tuple[int, list[tuple[int, int | None, bool, Any]]]]
_SERVICE = 14  # ReadPropertyMultiple
_unpack_f = struct.Struct(">f").unpack
_CACHE_LIMIT = 256  # prepared requests kept per adapter: a poll plan has a few batches per device


class Unusable(Exception):
    """The fast path cannot answer this one: read it with ``read_property_multiple``."""


# -- the ACK decoder ---------------------------------------------------------------------------
def _parse_results(tags: list[Any]) -> tuple[_Parsed, int] | None:
    """The plain layout of listOfReadAccessResults -> (results, tags used); None for anything else."""
    ctx, opening, closing, app = TagClass.context, TagClass.opening, TagClass.closing, TagClass.application
    out: _Parsed = []
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
        elements: list[tuple[int, int | None, bool, Any]] = []
        while True:
            if i >= n:
                return None
            t = tags[i]
            if t.tag_class == closing:
                if t.tag_number != 1:
                    return None
                i += 1
                break
            if t.tag_class != ctx or t.tag_number != 2 or not 1 <= len(t.tag_data) <= 4:
                return None
            pid, index = int.from_bytes(t.tag_data, "big"), None
            i += 1
            if i < n and tags[i].tag_class == ctx and tags[i].tag_number == 3:
                if not 1 <= len(tags[i].tag_data) <= 4:
                    return None
                index = int.from_bytes(tags[i].tag_data, "big")
                i += 1
            if i >= n or tags[i].tag_class != opening:
                return None
            which = tags[i].tag_number
            i += 1
            if which == 4:  # the value: everything up to the matching closing tag 4
                start, depth = i, 0
                while i < n:
                    t = tags[i]
                    if t.tag_class == opening:
                        depth += 1
                    elif t.tag_class == closing:
                        if depth == 0:
                            break
                        depth -= 1
                    i += 1
                if i >= n or tags[i].tag_number != 4:
                    return None
                elements.append((pid, index, False, tags[start:i]))
                i += 1
            elif which == 5:  # an error: two enumerations and closing tag 5
                if i + 2 >= n:
                    return None
                a, b, c = tags[i], tags[i + 1], tags[i + 2]
                if (a.tag_class != app or a.tag_number != 9 or b.tag_class != app or b.tag_number != 9
                        or c.tag_class != closing or c.tag_number != 5):
                    return None
                elements.append((pid, index, True, (int.from_bytes(a.tag_data, "big"),
                                                    int.from_bytes(b.tag_data, "big"))))
                i += 3
            else:
                return None
        out.append((oid, elements))
    return out, i


_StockResults = SequenceOf(ReadAccessResult)


class FastReadAccessResults(LazyTagList, _StockResults):  # type: ignore[misc, valid-type]
    """listOfReadAccessResults that keeps the parsed tuples in ``fast``; its list content (the
    stock objects) is decoded from the kept tags on first use."""

    _stock = _StockResults
    _parse = staticmethod(_parse_results)
    fast: _Parsed | None = None


class ReadPropertyMultipleACK(_StockAck):  # type: ignore[misc]
    """The stock ACK with the fast result list (a subclass: ``isinstance`` checks still hold)."""


# The Sequence metaclass builds _elements from the class body and refuses a redeclared element.
ReadPropertyMultipleACK._elements = {**_StockAck._elements, "listOfReadAccessResults": FastReadAccessResults}


# -- the guard ---------------------------------------------------------------------------------
_state: dict[str, Any] = {"checked": None, "tripped": False, "missing_logged": False}


def install() -> bool:
    """Register the fast ACK decoder, once, if bacpypes3 is what it was written for."""
    if _state["checked"] is None:
        problem = _check()
        _state["checked"] = problem is None
        if problem:
            log.warning("BACnet: fast ReadPropertyMultiple off, bacpypes3's own decoding serves (%s)", problem)
    if _state["checked"] and not _state["tripped"]:
        _apdu.complex_ack_types[_SERVICE] = ReadPropertyMultipleACK
        _state["missing_logged"] = False
        return True
    return False


def uninstall() -> None:
    """Put bacpypes3's own ACK class back (the adapter then reads with ``read_property_multiple``)."""
    _apdu.complex_ack_types[_SERVICE] = _StockAck


def usable() -> bool:
    """Installed, still in place, and never tripped. Logs once when someone took the decoder out."""
    if not _state["checked"] or _state["tripped"]:
        return False
    if _apdu.complex_ack_types.get(_SERVICE) is ReadPropertyMultipleACK:
        return True
    if not _state["missing_logged"]:
        _state["missing_logged"] = True
        log.warning("BACnet: the fast ReadPropertyMultiple decoder is not installed; using bacpypes3's own")
    return False


def _trip(why: str) -> None:
    if not _state["tripped"]:
        _state["tripped"] = True
        log.warning("BACnet: fast ReadPropertyMultiple off for good, bacpypes3's own decoding serves (%s)", why)


def _check() -> str | None:
    """None when the internals used here are in place and a stock-encoded ACK decodes alike both ways."""
    try:
        if _apdu.complex_ack_types.get(_SERVICE) not in (_StockAck, ReadPropertyMultipleACK):
            return "service 14 is not bacpypes3's ReadPropertyMultipleACK"
        if not callable(getattr(Application, "request", None)) or not callable(
                getattr(Application, "parse_property_reference", None)):
            return "Application.request/parse_property_reference is missing"
        from bacpypes3.apdu import APCISequence
        from bacpypes3.basetypes import ReadAccessResultElement, ReadAccessResultElementChoice, StatusFlags
        from bacpypes3.constructeddata import Any as AnyValue
        from bacpypes3.vendor import get_vendor_info

        def element(pid: str, value: Any = None, error: tuple[str, str] | None = None,
                    index: int | None = None) -> Any:
            choice = ReadAccessResultElementChoice()
            if error is not None:
                choice.propertyAccessError = ErrorType(errorClass=error[0], errorCode=error[1])
            else:
                choice.propertyValue = AnyValue(value)
            return ReadAccessResultElement(propertyIdentifier=pid, propertyArrayIndex=index, readResult=choice)

        results = [ReadAccessResult(objectIdentifier=ObjectIdentifier("analog-value,1"), listOfResults=[
            element("present-value", Real(21.2)), element("status-flags", StatusFlags([0, 1, 0, 1])),
            element("file-size", error=("property", "unknownProperty")),
            element("priority-array", Unsigned(16), index=0)])]
        ack = _StockAck(listOfReadAccessResults=_StockResults(results))
        # Decoding consumes a PDU's data: one encoding for each decoder.
        stock = APCISequence.decode(ack.encode()) if _apdu.complex_ack_types[_SERVICE] is _StockAck else None
        parsed = _parse_results(TagList.decode(ack.encode()).tagList)
        if parsed is None:
            return "a stock-encoded ACK does not parse"
        vendor = get_vendor_info(0)
        got = _Decoder().rows(parsed[0], vendor)
        want = _stock_rows(stock, vendor) if stock is not None else None
        if want is not None and [_comparable(r) for r in got] != [_comparable(r) for r in want]:
            return "a stock-encoded ACK decodes differently"
        if [r[:3] for r in got] != [("analog-value,1", "present-value", None), ("analog-value,1", "status-flags", None),
                                    ("analog-value,1", "file-size", None), ("analog-value,1", "priority-array", 0)]:
            return "a stock-encoded ACK decodes to unexpected rows"
        # And the requests: the same bytes as bacpypes3's own encoding of the same request.
        from bacpypes3.apdu import ReadPropertyMultipleRequest
        from bacpypes3.basetypes import ReadAccessSpecification

        refs: list[tuple[str, list[int | tuple[int, int]]]] = [("analog-value,1", [85, 111]), ("device,7", [(76, 3)])]
        stock_request = ReadPropertyMultipleRequest(listOfReadAccessSpecs=SequenceOf(ReadAccessSpecification)([
            ReadAccessSpecification(objectIdentifier=ObjectIdentifier(oid), listOfPropertyReferences=[
                PropertyReference(propertyIdentifier=r) if isinstance(r, int)
                else PropertyReference(propertyIdentifier=r[0], propertyArrayIndex=r[1]) for r in rs])
            for oid, rs in refs]))
        mine = encode_request([(int(ObjectIdentifier(oid)), rs) for oid, rs in refs])
        if bytes(stock_request.encode().pduData) != mine:
            return "a request encodes differently from bacpypes3's"
        ConfirmedRequestPDU(service_choice=_SERVICE).put_data(b"")
    except Exception as err:  # any surprise means: not the bacpypes3 this was written for
        return f"{type(err).__name__}: {err}"
    return None


def _comparable(row: Row) -> tuple[Any, ...]:
    oid, prop, index, value = row
    if isinstance(value, ErrorType):
        return oid, prop, index, "error", str(value.errorClass), str(value.errorCode)
    return oid, prop, index, type(value), value if not isinstance(value, list) else list(value)


def _stock_rows(ack: Any, vendor_info: Any) -> list[Row]:
    """What ``read_property_multiple`` makes of a stock-decoded ACK (its loop, as rows)."""
    rows: list[Row] = []
    for result in ack.listOfReadAccessResults:
        oid = result.objectIdentifier
        object_class = vendor_info.get_object_class(oid[0])
        for element in result.listOfResults:
            prop, index, read = element.propertyIdentifier, element.propertyArrayIndex, element.readResult
            if read.propertyAccessError:
                rows.append((str(oid), str(prop), index, read.propertyAccessError))
                continue
            datatype = object_class.get_property_type(prop)
            if datatype is None:
                rows.append((str(oid), str(prop), index, None))
                continue
            if issubclass(datatype, Array) and index is not None:
                datatype = Unsigned if index == 0 else datatype._subtype
            rows.append((str(oid), str(prop), index, read.propertyValue.cast_out(datatype)))
    return rows


# -- reading -----------------------------------------------------------------------------------
class _Decoder:
    """Parsed results -> rows, with per-(vendor, object type, property) datatype lookups cached."""

    def __init__(self) -> None:
        self._types: dict[tuple[int, int, int, int | None], Any] = {}
        self._oids: dict[int, str] = {}
        self._props: dict[int, str] = {}

    def rows(self, parsed: _Parsed, vendor_info: Any) -> list[Row]:
        rows: list[Row] = []
        append = rows.append
        for oid, elements in parsed:
            oid_text = self._oids.get(oid) or self._oids.setdefault(oid, str(ObjectIdentifier(oid)))
            for pid, index, is_error, payload in elements:
                prop = self._props.get(pid) or self._props.setdefault(pid, str(PropertyIdentifier(pid)))
                if is_error:
                    append((oid_text, prop, index, _error(*payload)))
                    continue
                datatype = self._datatype(vendor_info, oid >> 22, pid, index)
                append((oid_text, prop, index, None if datatype is None else _decode(payload, datatype)))
        return rows

    def _datatype(self, vendor_info: Any, object_type: int, pid: int, index: int | None) -> Any:
        key = (vendor_info.vendor_identifier, object_type, pid, None if index is None else min(index, 1))
        if key in self._types:
            return self._types[key]
        object_class = vendor_info.get_object_class(object_type)
        if object_class is None:  # stock fails on this with an AttributeError; let it
            raise Unusable(f"no object class for type {object_type}")
        datatype = object_class.get_property_type(pid)
        if datatype is not None and issubclass(datatype, Array) and index is not None:
            datatype = Unsigned if index == 0 else datatype._subtype
        self._types[key] = datatype
        return datatype


def _decode(payload: list[Any], datatype: Any) -> Any:
    """The value as stock ``Any.cast_out(datatype)`` gives it (which needs the closing tag next).
    Unusable when the stock decoder refuses it: bacpypes3 then raises its own error for it."""
    if len(payload) == 1 and datatype is Real:  # most values: skip the TagList
        t = payload[0]
        if t.tag_class == TagClass.application and t.tag_number == 4 and len(t.tag_data) == 4:
            return Real(_unpack_f(t.tag_data)[0])
    tags = TagList(list(payload))
    try:
        value = datatype.decode(tags)
    except Exception as err:
        raise Unusable(f"{datatype.__name__}: {type(err).__name__}: {err}") from err
    if tags.tagList:
        raise Unusable(f"{len(tags.tagList)} tags left after a {datatype.__name__}")
    return value


def _error(error_class: int, error_code: int) -> Any:
    try:
        return ErrorType(errorClass=error_class, errorCode=error_code)
    except (ValueError, TypeError) as err:  # a code bacpypes3 has no name for
        raise Unusable(f"error {error_class}/{error_code}: {err}") from err


class FastRpm:
    """Prepared ReadPropertyMultiple requests of one adapter, and the decoding of their answers."""

    def __init__(self) -> None:
        self._payloads: dict[tuple[Any, ...], bytes] = {}
        self._refs: dict[tuple[int, str], int | tuple[int, int]] = {}
        self._oids: dict[str, int] = {}
        self._decoder = _Decoder()

    async def prepare(self, app: Application, vendor_info: Any, spec: Sequence[tuple[str, Sequence[str]]]) -> bytes:
        """The request's encoding; names are parsed as ``read_property_multiple`` parses them, so an
        unknown one raises the same ValueError, before anything is sent."""
        key = (vendor_info.vendor_identifier, *((oid, *props) for oid, props in spec))
        payload = self._payloads.get(key)
        if payload is not None:
            return payload
        parsed: list[tuple[int, list[int | tuple[int, int]]]] = []
        for oid, props in spec:
            number = self._oids.get(oid)
            if number is None:
                number = self._oids[oid] = int(ObjectIdentifier(oid))
            parsed.append((number, [await self._ref(app, vendor_info, prop) for prop in props]))
        payload = encode_request(parsed)
        if len(self._payloads) >= _CACHE_LIMIT:
            self._payloads.clear()
        self._payloads[key] = payload
        return payload

    async def _ref(self, app: Application, vendor_info: Any, prop: str) -> int | tuple[int, int]:
        key = (vendor_info.vendor_identifier, prop)
        ref = self._refs.get(key)
        if ref is None:
            parsed: PropertyReference = await app.parse_property_reference(prop, vendor_info=vendor_info)
            pid, index = int(parsed.propertyIdentifier), parsed.propertyArrayIndex
            ref = self._refs[key] = pid if index is None else (pid, int(index))
        return ref

    @staticmethod
    async def send(app: Application, peer: Address, payload: bytes) -> Any:
        """One request; the answer as ``app.request`` gives it (Error/Reject/Abort raised or returned)."""
        request = ConfirmedRequestPDU(service_choice=_SERVICE, destination=peer)
        request.put_data(payload)
        return await app.request(request)

    async def request(self, app: Application, peer: Address, vendor_info: Any,
                      spec: Sequence[tuple[str, Sequence[str]]]) -> Any:
        """Prepare (cached) and send: what to hand ``Link.call`` in place of ``read_property_multiple``."""
        return await self.send(app, peer, await self.prepare(app, vendor_info, spec))

    def rows(self, answer: Any, vendor_info: Any) -> list[Row]:
        """The rows of an answer from ``send``. Unusable when this answer is better read by bacpypes3
        (something it alone decides, such as a malformed value); when the fault is this module's,
        ``usable()`` stays False from then on."""
        if not isinstance(answer, _StockAck):
            return []  # read_property_multiple returns None for any other answer: no rows either way
        try:
            parsed = getattr(answer.listOfReadAccessResults, "fast", None)
            if parsed is None:  # decoded by the stock decoder (an odd layout, or ours taken out)
                try:
                    return _stock_rows(answer, vendor_info)
                except Exception as err:
                    raise Unusable(f"{type(err).__name__}: {err}") from err
            return self._decoder.rows(parsed, vendor_info)
        except Unusable:
            raise
        except Exception as err:
            _trip(f"{type(err).__name__}: {err}")
            raise Unusable(str(err)) from err


def encode_request(spec: list[tuple[int, list[int | tuple[int, int]]]]) -> bytes:
    """listOfReadAccessSpecs: per object its id (context 0), then its property references
    (property id, or (property id, array index)) between opening and closing tags 1."""
    out: list[bytes] = []
    for oid, refs in spec:
        out += (b"\x0c", oid.to_bytes(4, "big"), b"\x1e", *(_reference(r) for r in refs), b"\x1f")
    return b"".join(out)


def _reference(ref: int | tuple[int, int]) -> bytes:
    """A PropertyReference: property id (context 0), array index (context 1) when there is one."""
    if isinstance(ref, int):
        return _context_uint(0, ref)
    return _context_uint(0, ref[0]) + _context_uint(1, ref[1])


def _context_uint(number: int, value: int) -> bytes:
    data = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")  # at most 4 octets here
    return bytes(((number << 4) | 0x08 | len(data),)) + data
