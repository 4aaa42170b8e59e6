"""A faster Read service for the sim's asyncua servers: same answers, a fraction of the CPU.

asyncua decodes every Read request generically (a thousand ReadValueIds with string node ids
cost more than the read itself) and encodes every DataValue of the answer again, although the
sim rewrites a node's DataValue only once a step. Here, per connection:

* a Read request whose parameter bytes were seen before reuses their decoded ReadParameters;
* a DataValue's encoding is kept while the node holds that very DataValue object (asyncua
  replaces it on every write), so an answer is mostly a join of bytes.

Everything else is asyncua's: the session check, permissions, the PreRead/PostRead callbacks,
the attribute service, the secure channel. ``install`` checks the internals it relies on once
and leaves the server stock when they are not as expected.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import struct
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any

from asyncua import Server, ua
from asyncua.common.utils import Buffer
from asyncua.server import uaprocessor
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.ua.ua_binary import list_to_binary, struct_from_binary, struct_to_binary

__all__ = ["Encoder", "available", "install"]

log = logging.getLogger(__name__)

_READ = ua.NodeId(ua.ObjectIds.ReadRequest_Encoding_DefaultBinary)
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_MAX_REQUESTS = 64  # distinct point sets remembered per connection
# Smaller reads gain nothing from caching (a single node's costs more to look up than to decode):
# asyncua serves them, at its own speed.
_SMALL = 32

_VT = ua.VariantType
_SCALARS: dict[ua.VariantType, struct.Struct] = {
    _VT.Boolean: struct.Struct("<?"), _VT.SByte: struct.Struct("<b"), _VT.Byte: struct.Struct("<B"),
    _VT.Int16: struct.Struct("<h"), _VT.UInt16: struct.Struct("<H"), _VT.Int32: struct.Struct("<i"),
    _VT.UInt32: _U32, _VT.Int64: _I64, _VT.UInt64: struct.Struct("<Q"), _VT.Float: struct.Struct("<f"),
    _VT.Double: struct.Struct("<d"),
}
# Exact Python types only: asyncua packs what it is given, and a float in an Int32 node (or a
# bool in a Double) must fail or convert as asyncua's encoder does, not as struct does.
_PY: dict[ua.VariantType, type] = {vt: (bool if vt == _VT.Boolean else float if vt in (_VT.Float, _VT.Double)
                                        else int) for vt in _SCALARS}


def _check() -> bool:
    try:
        proc = uaprocessor.UaProcessor
        ok = (all(callable(getattr(proc, name, None)) for name in ("_process_message", "send_response"))
              and callable(getattr(BinaryServer, "_make_protocol", None))
              and callable(getattr(OPCUAProtocol, "connection_made", None))
              and [f for f in ua.ReadResponse.__dataclass_fields__] == ["TypeId", "ResponseHeader", "Results",
                                                                          "DiagnosticInfos"])
    except Exception:  # any surprise means: stay stock
        return False
    if not ok:
        log.info("asyncua's server differs from what the fast Read path expects; serving stock")
    return ok


available: bool = _check()


class Encoder:
    """ReadResponse bytes as ``struct_to_binary`` gives them, each DataValue encoded once."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[ua.DataValue, bytes]] = {}

    def value(self, dv: ua.DataValue) -> bytes:
        hit = self._cache.get(id(dv))
        if hit is not None and hit[0] is dv:
            return hit[1]
        try:
            data = _scalar(dv)
        except (struct.error, OverflowError):  # asyncua's encoder says how it fails
            data = None
        if data is None:
            data = struct_to_binary(dv)
        self._cache[id(dv)] = (dv, data)  # holding dv keeps its id from being reused
        return data

    def response(self, response: ua.ReadResponse) -> bytes:
        results = response.Results
        response.Results = []
        try:
            empty = struct_to_binary(response)
        finally:
            response.Results = results
        tail = list_to_binary(ua.DiagnosticInfo, response.DiagnosticInfos)
        none = list_to_binary(ua.DataValue, [])
        cut = len(empty) - len(tail) - len(none)
        if cut < 0 or empty[cut:] != none + tail:
            return struct_to_binary(response)
        return b"".join([empty[:cut], _I32.pack(len(results)), *map(self.value, results), tail])

    def warm(self, dv: ua.DataValue) -> None:
        """Encode ``dv`` ahead of the reads; one that cannot be is left for a read to fail on."""
        with contextlib.suppress(Exception):  # the Read that serves it reports it, as asyncua would
            self.value(dv)

    def forget(self, live: int) -> None:
        """Keep the newest encodings once there are more than twice ``live`` (the nodes served):
        the nodes' current DataValues are the latest encoded."""
        excess = len(self._cache) - live
        if excess > live:
            for key in list(itertools.islice(self._cache, excess)):
                del self._cache[key]


def _scalar(dv: ua.DataValue) -> bytes | None:
    """struct_to_binary(dv) for a scalar number or Boolean with a status and timestamps, the
    sim's every value; None for anything else (asyncua encodes those)."""
    variant, status = dv.Value, dv.StatusCode
    if (variant is None or status is None or dv.SourcePicoseconds is not None or dv.ServerPicoseconds is not None
            or variant.is_array or variant.Dimensions is not None or type(status) is not ua.StatusCode):
        return None
    fmt = _SCALARS.get(variant.VariantType)
    if fmt is None or type(variant.Value) is not _PY[variant.VariantType]:
        return None
    mask = 0x03
    parts = [b"", bytes((variant.VariantType.value,)), fmt.pack(variant.Value), _U32.pack(status.value)]
    for bit, ts in ((0x04, dv.SourceTimestamp), (0x08, dv.ServerTimestamp)):
        if ts is not None:
            if not isinstance(ts, datetime):
                return None
            mask |= bit
            parts.append(_I64.pack(ua.datetime_to_win_epoch(ts)))
    parts[0] = bytes((mask,))
    return b"".join(parts)


def install(server: Server, nodes: int) -> Encoder | None:
    """Serve Read requests of ``server``'s future connections the fast way; call before the
    listener starts accepting. Returns the encoder, so values written can be encoded ahead of
    the reads (``Encoder.value``); None (and stock) when asyncua is not as expected."""
    bserver = server.bserver
    if not available or bserver is None:
        return None
    stock_factory = bserver._make_protocol
    encoder = Encoder()

    def factory() -> OPCUAProtocol:
        protocol = stock_factory()
        stock_made = protocol.connection_made

        def connection_made(transport: Any) -> None:
            stock_made(transport)
            if protocol.processor is not None:
                _speed_up(protocol.processor, encoder, nodes)

        protocol.connection_made = connection_made  # type: ignore[method-assign]
        return protocol

    bserver._make_protocol = factory  # type: ignore[method-assign]
    return encoder


def _count(body: Buffer) -> int:
    """NodesToRead's length, read ahead: ReadParameters start with MaxAge (8) and TimestampsToReturn (4)."""
    try:
        return int(_I32.unpack_from(body._data, body._cur_pos + 12)[0])
    except (struct.error, TypeError):
        return 0


def _speed_up(processor: uaprocessor.UaProcessor, encoder: Encoder, nodes: int) -> None:
    stock_process = processor._process_message
    stock_send = processor.send_response
    requests: OrderedDict[bytes, ua.ReadParameters] = OrderedDict()

    async def process(typeid: ua.NodeId, requesthdr: Any, seqhdr: Any, body: Buffer) -> Any:
        session = processor.session
        if typeid != _READ or session is None or _count(body) < _SMALL:
            return await stock_process(typeid, requesthdr, seqhdr, body)
        user = session.user
        permissions = processor._connection.security_policy.permissions
        if permissions is not None and permissions.check_validity(user, typeid, body) is False:
            raise ua.uaerrors.BadUserAccessDenied
        processor.session_last_activity = time.monotonic()
        session.touch()
        key = bytes(body._data[body._cur_pos:body._cur_pos + len(body)])
        params = requests.get(key)
        if params is None:
            params = struct_from_binary(ua.ReadParameters, body)
            requests[key] = params
            if len(requests) > _MAX_REQUESTS:
                requests.popitem(last=False)
        results = await session.read(params)
        response = ua.ReadResponse()
        response.Results = results
        encoder.forget(nodes)
        send(requesthdr.RequestHandle, seqhdr, response)
        return True  # as asyncua's: the connection goes on

    def send(requesthandle: Any, seqhdr: Any, response: Any, msgtype: ua.MessageType = ua.MessageType.SecureMessage
             ) -> None:
        if not isinstance(response, ua.ReadResponse) or len(response.Results) < _SMALL:
            stock_send(requesthandle, seqhdr, response, msgtype)
            return
        response.ResponseHeader.RequestHandle = requesthandle
        data = processor._connection.message_to_binary(encoder.response(response), message_type=msgtype,
                                                       request_id=seqhdr.RequestId)
        processor._transport.write(data)

    processor._process_message = process  # type: ignore[method-assign]
    processor.send_response = send  # type: ignore[method-assign]
