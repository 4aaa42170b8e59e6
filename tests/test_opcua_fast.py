"""The fast OPC-UA Read paths give what stock asyncua gives: the sim's response encoder byte for
byte, the adapter's response decoder object for object, and both together over loopback."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import nodeid_from_binary, struct_from_binary, struct_to_binary

from eaio.config import SiteConfig, load_config
from eaio.protocol_adapters import opcua_fast as client_fast
from eaio.protocol_adapters.opcua import OpcuaAdapter
from eaio.sim.faces import opcua_fast as server_fast
from eaio.sim.runner import SimThread
from helpers import until

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=UTC)


def samples() -> list[ua.DataValue]:
    """DataValues the fast paths handle, and some they must leave to asyncua."""
    good = ua.StatusCode(ua.StatusCodes.Good)
    vt = ua.VariantType
    out = [
        ua.DataValue(ua.Variant(21.2, vt.Double), good, SourceTimestamp=NOW, ServerTimestamp=NOW),
        ua.DataValue(ua.Variant(21.2, vt.Float), good, SourceTimestamp=NOW, ServerTimestamp=NOW + timedelta(1)),
        ua.DataValue(ua.Variant(-7, vt.Int32), ua.StatusCode(ua.StatusCodes.Uncertain), SourceTimestamp=NOW),
        ua.DataValue(ua.Variant(True, vt.Boolean), good, ServerTimestamp=NOW),
        ua.DataValue(ua.Variant(2**40, vt.UInt64), good),
        ua.DataValue(ua.Variant(3, vt.Byte), ua.StatusCode(ua.StatusCodes.BadOutOfService)),
        ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)),
        ua.DataValue(ua.Variant("text", vt.String), good, SourceTimestamp=NOW),  # stock territory
        ua.DataValue(ua.Variant([1.0, 2.0], vt.Double), good, ServerTimestamp=NOW),
        ua.DataValue(ua.Variant(1.5, vt.Double), good, SourceTimestamp=NOW, SourcePicoseconds=7),
        ua.DataValue(ua.Variant(datetime(1601, 1, 1, tzinfo=UTC), vt.DateTime), good),
    ]
    return out


def response(results: list[ua.DataValue]) -> ua.ReadResponse:
    r = ua.ReadResponse()
    r.ResponseHeader.RequestHandle = 42
    r.ResponseHeader.Timestamp = NOW
    r.Results = results
    return r


def lean_head() -> bytes:
    """The bytes of a ReadResponse before its Results."""
    return struct_to_binary(response([]))[:-8]  # less two empty arrays (Results, DiagnosticInfos)


def test_server_encoder_is_byte_identical() -> None:
    assert server_fast.available
    encoder = server_fast.Encoder()
    values = samples()
    for dv in values:
        assert encoder.value(dv) == struct_to_binary(dv), dv
        assert encoder.value(dv) == struct_to_binary(dv)  # cached
    fast_only = values[:6]
    assert all(server_fast._scalar(dv) is not None for dv in fast_only)  # really the lean path
    assert all(server_fast._scalar(dv) is None for dv in values[6:])
    assert encoder.response(response(values)) == struct_to_binary(response(values))
    assert encoder.response(response([])) == struct_to_binary(response([]))
    # A wrong Python type for the variant is asyncua's to refuse, as it would without us.
    odd = ua.DataValue(ua.Variant(1.5, ua.VariantType.Int32))
    assert server_fast._scalar(odd) is None
    with pytest.raises(Exception) as stock_err:  # noqa: PT011 - whatever asyncua raises
        struct_to_binary(odd)
    with pytest.raises(type(stock_err.value)):
        encoder.value(odd)


def test_client_decoder_matches_stock() -> None:
    assert client_fast.available
    for results in (samples()[:7], samples(), [], samples()[7:9]):
        data = struct_to_binary(response(results))
        stock = struct_from_binary(ua.ReadResponse, Buffer(data)).Results
        fast = client_fast.decode_response(Buffer(data))
        assert fast == stock
        for f, s in zip(fast, stock, strict=True):
            assert type(f.Value.Value) is type(s.Value.Value)
            assert (f.Value.VariantType, f.Value.is_array) == (s.Value.VariantType, s.Value.is_array)
            assert (f.SourceTimestamp, f.ServerTimestamp) == (s.SourceTimestamp, s.ServerTimestamp)
    lean = Buffer(struct_to_binary(response(samples()[:7])))
    client_fast.decode_response(lean.copy())
    nodeid_from_binary(lean)
    struct_from_binary(ua.ResponseHeader, lean)
    assert len(client_fast.decode_results(lean)) == 7  # no fallback to asyncua for these
    with pytest.raises(client_fast._Doubt):
        client_fast.decode_results(Buffer(struct_to_binary(response(samples()[7:8]))[len(lean_head()):]))
    bad = response([])
    bad.ResponseHeader.ServiceResult = ua.StatusCode(ua.StatusCodes.BadTooManyOperations)
    with pytest.raises(ua.uaerrors.BadTooManyOperations):
        client_fast.decode_response(Buffer(struct_to_binary(bad)))


@pytest.fixture
def osite(site_file: Callable[..., Path]) -> SiteConfig:
    return load_config(site_file(opcua=True))


@pytest.fixture
def osim(osite: SiteConfig) -> Iterator[SimThread]:
    level = logging.getLogger("asyncua.client").level
    logging.getLogger("asyncua.client").setLevel(logging.ERROR)
    with SimThread(osite) as running:
        yield running
    logging.getLogger("asyncua.client").setLevel(level)


async def test_fast_paths_over_loopback_match_stock(osite: SiteConfig, osim: SimThread) -> None:
    device = next(d for d in osite.devices_for("opcua"))
    node_ids = [ua.NodeId.from_string(p.address.node_id) for p in device.points]
    node_ids.append(ua.NodeId("Nope.Missing", 2))  # a Bad status travels the same way
    node_ids *= 5  # enough nodes for the server's fast path too (small reads stay asyncua's)
    assert len(node_ids) >= server_fast._SMALL
    params = ua.ReadParameters(MaxAge=0, TimestampsToReturn=ua.TimestampsToReturn.Both, NodesToRead=[
        ua.ReadValueId(NodeId=n, AttributeId=ua.AttributeIds.Value) for n in node_ids])
    async with Client(device.connection.endpoint, timeout=5, watchdog_intervall=60) as client:
        # The server's nodes change every step: compare reads that fell between two steps.
        async def same() -> bool | None:
            stock = await client.uaclient.read(params)
            fast = await client_fast.read(client.uaclient, params)
            again = await client.uaclient.read(params)
            return True if stock == fast == again else None

        await until(same, "a stock read, a fast read and a stock read alike")
        results = await client_fast.read(client.uaclient, params)
        assert results[-1].StatusCode.name == "BadNodeIdUnknown"
        assert all(dv.StatusCode.is_good() and dv.SourceTimestamp is not None for dv in results[:len(device.points)])
    async with OpcuaAdapter(osite.devices_for("opcua")) as adapter:
        readings = await adapter.read(list(device.points))
        assert [r.point_id for r in readings] == [p.id for p in device.points]
        assert all(r.value is not None and r.quality.value == "good" for r in readings)
