"""A lean decoder of Read responses: asyncua's generic decoder spends most of a 1,000-node read.

``read(uaclient, params)`` is ``uaclient.read(params)`` (same request, same DataValues, same
errors) whose response is decoded here: DataValues with a scalar number or Boolean, a status
and timestamps are built directly; anything else (arrays, strings, picoseconds, diagnostics we
do not expect) makes the whole response go through asyncua's decoder, so the result is always
what stock gives. The internals this relies on are checked once (``available``); when they are
not as expected, stock is used.
"""

from __future__ import annotations

import logging
import struct
from collections import OrderedDict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import nodeid_from_binary, struct_from_binary, unpack_uatype_array

__all__ = ["available", "decode_response", "decode_results", "read", "value_params"]

log = logging.getLogger(__name__)

_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
# Built-in type id -> (struct, VariantType) for scalar values decoded here.
_SCALARS: dict[int, tuple[struct.Struct, ua.VariantType]] = {
    1: (struct.Struct("<?"), ua.VariantType.Boolean),
    2: (struct.Struct("<b"), ua.VariantType.SByte),
    3: (struct.Struct("<B"), ua.VariantType.Byte),
    4: (struct.Struct("<h"), ua.VariantType.Int16),
    5: (struct.Struct("<H"), ua.VariantType.UInt16),
    6: (_I32, ua.VariantType.Int32),
    7: (_U32, ua.VariantType.UInt32),
    8: (_I64, ua.VariantType.Int64),
    9: (struct.Struct("<Q"), ua.VariantType.UInt64),
    10: (struct.Struct("<f"), ua.VariantType.Float),
    11: (struct.Struct("<d"), ua.VariantType.Double),
}
_PICOSECONDS = 0x30  # asyncua reads these in its field order, not the wire's: leave them to it
_EPOCH = ua.uatypes.FILETIME_EPOCH_AS_UTC_DATETIME
_MAX_FILETIME = ua.uatypes.MAX_OPC_FILETIME


class _Doubt(Exception):
    """Something the lean decoder does not handle: asyncua decodes the response instead."""


def _check() -> bool:
    # The layout and constructors relied on below; a different asyncua gets stock decoding.
    try:
        names = [f.name for f in ua.DataValue.__dataclass_fields__.values()]
        variant = [f.name for f in ua.Variant.__dataclass_fields__.values()]
        ok = (names == ["Encoding", "Value", "StatusCode", "SourceTimestamp", "ServerTimestamp",
                        "SourcePicoseconds", "ServerPicoseconds"]
              and variant == ["Value", "VariantType", "Dimensions", "is_array"]
              and hasattr(ua.DataValue, "__slots__") and hasattr(ua.Variant, "__slots__")
              and ua.win_epoch_to_datetime(10) == _EPOCH + timedelta(microseconds=1)
              and hasattr(Buffer(b""), "_data") and hasattr(Buffer(b""), "_cur_pos"))
    except Exception:  # any surprise means: do not use the fast path
        return False
    if not ok:
        log.info("asyncua's DataValue differs from what the lean Read decoder expects; using asyncua's")
    return ok


available: bool = _check()


def _variant(value: Any, vtype: ua.VariantType) -> ua.Variant:
    # What ua.Variant(value, vtype) would be, without its type guessing and checks (all moot here).
    v = object.__new__(ua.Variant)
    v.Value, v.VariantType, v.Dimensions, v.is_array = value, vtype, None, False
    return v


def _time(raw: int) -> Any:
    if raw >= _MAX_FILETIME or raw < 0:
        return ua.win_epoch_to_datetime(raw)
    return _EPOCH + timedelta(microseconds=raw // 10)


def decode_results(data: Buffer) -> list[ua.DataValue]:
    """The Results of a ReadResponse body positioned after its ResponseHeader. _Doubt if any
    DataValue is not one this decoder builds exactly as asyncua would."""
    buf: bytes = data._data
    pos: int = data._cur_pos
    end = pos + len(data)
    (count,) = _I32.unpack_from(buf, pos)
    pos += 4
    if count < 0:
        raise _Doubt
    out: list[ua.DataValue] = []
    new, null = object.__new__, ua.VariantType.Null
    # A response carries few distinct codes and times (one sim step stamps every node alike):
    # decoded once each per response; the objects are shared, as nothing mutates them.
    codes: dict[int, ua.StatusCode] = {}
    times: dict[int, Any] = {}
    for _ in range(count):
        if pos >= end:
            raise _Doubt
        mask = buf[pos]
        pos += 1
        if mask & ~0x0F:
            raise _Doubt
        dv = new(ua.DataValue)
        dv.Encoding = 0  # asyncua does not keep the mask either
        if mask & 0x01:
            enc = buf[pos]
            pos += 1
            if enc == 0:  # a null value, sent by servers as an empty Variant
                dv.Value = _variant(None, null)
            else:
                scalar = _SCALARS.get(enc)
                if scalar is None:
                    raise _Doubt
                fmt, vtype = scalar
                (value,) = fmt.unpack_from(buf, pos)
                pos += fmt.size
                dv.Value = _variant(value, vtype)
        else:
            dv.Value = _variant(None, null)
        if mask & 0x02:
            (code,) = _U32.unpack_from(buf, pos)
            pos += 4
            status = codes.get(code)
            if status is None:
                status = codes[code] = ua.StatusCode(code)
            dv.StatusCode = status
        else:
            dv.StatusCode = ua.StatusCode(0)
        dv.SourceTimestamp = dv.ServerTimestamp = None
        if mask & 0x04:
            (raw,) = _I64.unpack_from(buf, pos)
            pos += 8
            ts = times.get(raw)
            dv.SourceTimestamp = ts if ts is not None else times.setdefault(raw, _time(raw))
        if mask & 0x08:
            (raw,) = _I64.unpack_from(buf, pos)
            pos += 8
            ts = times.get(raw)
            dv.ServerTimestamp = ts if ts is not None else times.setdefault(raw, _time(raw))
        dv.SourcePicoseconds = dv.ServerPicoseconds = None
        out.append(dv)
    if pos > end:
        raise _Doubt
    return out


_PARAMS: OrderedDict[tuple[ua.NodeId, ...], ua.ReadParameters] = OrderedDict()
_MAX_PARAMS = 32  # point sets polled again and again: a device's batches, a tool's few


def value_params(nodes: Sequence[ua.NodeId]) -> ua.ReadParameters:
    """ReadParameters for the Value attribute of ``nodes`` (both timestamps), built once per
    node set: a thousand ReadValueIds cost more to build than a lean decode. Not to be mutated."""
    key = tuple(nodes)
    params = _PARAMS.get(key)
    if params is None:
        params = ua.ReadParameters(MaxAge=0, TimestampsToReturn=ua.TimestampsToReturn.Both,
                                   NodesToRead=[ua.ReadValueId(NodeId=n, AttributeId=ua.AttributeIds.Value)
                                                for n in key])
        _PARAMS[key] = params
        if len(_PARAMS) > _MAX_PARAMS:
            _PARAMS.popitem(last=False)
    else:
        _PARAMS.move_to_end(key)
    return params


async def read(uaclient: Any, params: ua.ReadParameters) -> list[ua.DataValue]:
    """``uaclient.read(params)``, its response decoded lean when it can be."""
    session = getattr(uaclient, "session", None)
    send = getattr(session, "_send_request", None)
    if not available or send is None:
        return list(await uaclient.read(params))
    request = ua.ReadRequest()
    request.Parameters = params
    return decode_response(await send(request))


def decode_response(data: Buffer) -> list[ua.DataValue]:
    """The Results of a ReadResponse message body (TypeId first), as asyncua decodes them;
    raises as asyncua's read does for a Bad service result."""
    nodeid_from_binary(data)  # the response's TypeId; a ServiceFault has raised already
    header = struct_from_binary(ua.ResponseHeader, data)
    header.ServiceResult.check()
    start = data.copy()
    try:
        return decode_results(data)
    except (_Doubt, struct.error, IndexError):
        return _stock_results(start)


def _stock_results(data: Buffer) -> list[ua.DataValue]:
    return list(unpack_uatype_array(ua.VariantType.DataValue, data) or [])
