"""The sim's OPC-UA face over loopback, browsed, read, written, subscribed and history-read with a
raw asyncua client; with certificates (Basic256Sha256) and with a required login."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, Node, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from certs import make_certs
from eaio.config import SimFaultSpec, SiteConfig, load_config
from eaio.errors import ConnectionFailed
from eaio.protocol_adapters.opcua_units import CEFACT_URI, code_of, from_eu, to_eu, unit_id
from eaio.sim.runner import SimThread
from helpers import eventually, until

pytestmark = pytest.mark.anyio

DEVICE = "plant-plc"
CHW = ["chw.dp", "chw.dp_sp", "chw.pump_cmd", "chw.pump_speed", "chw.flow", "chw.rt", "chw.pump_power"]


@pytest.fixture(autouse=True)
def _quiet_clients() -> Iterator[None]:
    logger = logging.getLogger("asyncua.client")
    level = logger.level
    logger.setLevel(logging.ERROR)  # session timeouts revised, reconnect attempts: not this test's business
    yield
    logger.setLevel(level)


@pytest.fixture
def osite(site_file: Callable[..., Path]) -> SiteConfig:
    return load_config(site_file(opcua=True))


@pytest.fixture
def osim(osite: SiteConfig) -> Iterator[SimThread]:
    with SimThread(osite) as running:
        yield running


def device_of(site: SiteConfig) -> Any:
    return next(d for d in site.devices_for("opcua") if d.id == DEVICE)


def node_id(site: SiteConfig, point_id: str) -> str:
    return str(site.point(point_id).address.node_id)  # type: ignore[union-attr]


@contextlib.asynccontextmanager
async def opc_client(site: SiteConfig, setup: Callable[[Client], Any] | None = None) -> AsyncIterator[Client]:
    # A long watchdog interval: its ServerState probes are Read requests, and they would count.
    client = Client(device_of(site).connection.endpoint, timeout=2, watchdog_intervall=60)
    if setup is not None:
        await setup(client)
    async with client:
        yield client


def port_free(port: int) -> bool:
    try:
        socket.create_server(("127.0.0.1", port)).close()
    except OSError:
        return False
    return True


async def test_browse_read_and_units(osite: SiteConfig, osim: SimThread) -> None:
    dev = device_of(osite)
    assert osim.ports[DEVICE] == dev.connection.port
    async with opc_client(osite) as client:
        assert (await client.get_namespace_array())[2] == "urn:eaio:sim"
        loop = await client.nodes.objects.get_child("2:ChwLoop")
        assert loop.nodeid.to_string() == "ns=2;s=ChwLoop"
        children = {(await c.read_browse_name()).to_string(): c.nodeid.to_string() for c in await loop.get_children()}
        assert children == {f"2:{node_id(osite, p).split('.', 1)[1]}": node_id(osite, p) for p in CHW}
        nodes = [client.get_node(node_id(osite, p)) for p in CHW]
        osim.reset_counts()
        values = await client.read_values(nodes)
        assert osim.request_count(DEVICE) == 1  # one Read service call for seven nodes
        for pid, value in zip(CHW, values, strict=True):
            served = osim.value(pid)
            if isinstance(served, bool):
                assert value is served, pid
            else:  # the physics may step between the read and sim.value(); a step moves little
                assert value == pytest.approx(served, rel=0.05, abs=0.3), pid
        dv = await nodes[0].read_data_value()
        assert dv.StatusCode.is_good()
        assert dv.Value.VariantType == ua.VariantType.Double
        assert abs((datetime.now(UTC) - dv.SourceTimestamp).total_seconds()) < 5  # wall clock, not sim time
        assert (await nodes[2].read_data_value()).Value.VariantType == ua.VariantType.Boolean
        for pid, node in zip(CHW, nodes, strict=True):
            await _check_properties(osite.point(pid), node)


async def _check_properties(point: Any, node: Node) -> None:
    names = {(await p.read_browse_name()).Name for p in await node.get_properties()}
    if point.is_binary:
        assert names == set(), point.id
        return
    assert names == {"EURange", "EngineeringUnits"}, point.id
    rng = await (await node.get_child("EURange")).read_value()
    assert (rng.Low, rng.High) == (point.limits.low, point.limits.high), point.id
    eu = await (await node.get_child("EngineeringUnits")).read_value()
    expected = to_eu(point.unit)
    assert expected is not None, point.unit
    assert (eu.NamespaceUri, eu.UnitId, eu.DisplayName.Text) == (CEFACT_URI, unit_id(expected.code), expected.symbol)
    assert from_eu(eu.UnitId) == point.unit == from_eu(eu.DisplayName.Text)


async def test_write_drives_the_physics(osite: SiteConfig, osim: SimThread) -> None:
    async with opc_client(osite) as client:
        sp = client.get_node(node_id(osite, "chw.dp_sp"))
        speed = client.get_node(node_id(osite, "chw.pump_speed"))
        before = await speed.read_value()
        await sp.write_value(ua.DataValue(ua.Variant(90.0, ua.VariantType.Double)))
        assert osim.true_value("chw.dp_sp") == 90.0
        written = await sp.read_data_value()
        assert written.Value.Value == 90.0
        assert written.SourceTimestamp is not None  # stamped by the device when the client sent no time

        async def faster() -> float | None:
            value = await speed.read_value()
            return value if value > before + 5 else None

        assert await until(faster, "the pump to speed up", 5) == pytest.approx(osim.value("chw.pump_speed"), abs=1)
        cmd = client.get_node(node_id(osite, "chw.pump_cmd"))
        await cmd.write_value(ua.DataValue(ua.Variant(False, ua.VariantType.Boolean)))
        assert osim.true_value("chw.pump_cmd") is False
        await until(lambda: _equals(speed, 0.0), "the pump to stop", 5)


async def _equals(node: Node, value: Any) -> bool:
    return bool(await node.read_value() == value)


async def test_refused_writes(osite: SiteConfig, osim: SimThread) -> None:
    async with opc_client(osite) as client:
        dp = client.get_node(node_id(osite, "chw.dp"))
        with pytest.raises(ua.UaStatusCodeError) as err:  # a sensor: read-only
            await dp.write_value(ua.DataValue(ua.Variant(5.0, ua.VariantType.Double)))
        assert err.value.code == ua.StatusCodes.BadUserAccessDenied
        sp = client.get_node(node_id(osite, "chw.dp_sp"))
        with pytest.raises(ua.UaStatusCodeError) as err:  # the node is a Double
            await sp.write_value(ua.DataValue(ua.Variant(70, ua.VariantType.Int32)))
        assert err.value.code == ua.StatusCodes.BadTypeMismatch
        with pytest.raises(ua.UaStatusCodeError) as err:  # any attribute but the value
            await sp.write_attribute(ua.AttributeIds.DisplayName, ua.DataValue(ua.LocalizedText("renamed")))
        assert err.value.code == ua.StatusCodes.BadUserAccessDenied
        assert osim.true_value("chw.dp_sp") == 60.0
        assert abs(osim.true_value("chw.dp") - 5.0) > 10


class _Changes:
    def __init__(self) -> None:
        self.values: list[Any] = []

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        self.values.append(val)


async def test_subscription_follows_set_value(osite: SiteConfig, osim: SimThread) -> None:
    async with opc_client(osite) as client:
        handler = _Changes()
        sub = await client.create_subscription(50, handler)
        await sub.subscribe_data_change(client.get_node(node_id(osite, "chw.pump_cmd")))
        await eventually(lambda: handler.values, 5)  # the value every monitored item starts with
        assert handler.values == [True]
        osim.set_value("chw.pump_cmd", False)
        await eventually(lambda: False in handler.values, 5)
        await sub.delete()


async def test_unreliable_is_uncertain(osite: SiteConfig, osim: SimThread) -> None:
    async with opc_client(osite) as client:
        flow = client.get_node(node_id(osite, "chw.flow"))
        assert (await flow.read_data_value(raise_on_bad_status=False)).StatusCode.is_good()
        osim.inject(SimFaultSpec(kind="unreliable", target="chw.flow"))

        async def uncertain() -> Any:
            dv = await flow.read_data_value(raise_on_bad_status=False)
            return dv if dv.StatusCode.value == ua.StatusCodes.Uncertain else None

        dv = await until(uncertain, "chw.flow to turn Uncertain", 5)
        assert dv.Value.Value == pytest.approx(osim.value("chw.flow"), rel=0.05)  # still served
        osim.clear_faults("chw.flow")
        await until(lambda: _good(flow), "chw.flow to be Good again", 5)


async def _good(node: Node) -> bool:
    return bool((await node.read_data_value(raise_on_bad_status=False)).StatusCode.is_good())


async def test_history_read(osite: SiteConfig, osim: SimThread) -> None:
    start = datetime.now(UTC)
    async with opc_client(osite) as client:
        rt = client.get_node(node_id(osite, "chw.rt"))

        async def three() -> list[Any] | None:
            got = await rt.read_raw_history(starttime=start, endtime=datetime.now(UTC))
            return got if len(got) >= 3 else None

        history = await until(three, "three historized values of chw.rt", 10)
        times = [dv.SourceTimestamp for dv in history]
        assert times == sorted(times)
        assert times[0] >= start
        assert all(dv.StatusCode.is_good() and 0 < dv.Value.Value < 30 for dv in history)
        flow = client.get_node(node_id(osite, "chw.pump_speed"))  # not historized
        assert await flow.read_raw_history(starttime=start, endtime=datetime.now(UTC)) == []


async def test_offline_then_back_and_exit_frees_the_port(osite: SiteConfig) -> None:
    port = device_of(osite).connection.port
    with SimThread(osite) as sim:
        client = Client(device_of(osite).connection.endpoint, timeout=1, watchdog_intervall=60)
        await client.connect()
        flow = client.get_node(node_id(osite, "chw.flow"))
        assert await flow.read_value() > 0
        sim.inject(SimFaultSpec(kind="offline", target=DEVICE))
        assert sim.state()["offline"] == [DEVICE]
        with pytest.raises((ConnectionError, TimeoutError, ua.UaError)):
            await flow.read_value()
        with pytest.raises(ConnectionRefusedError):  # nothing listens
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        with contextlib.suppress(Exception):
            await client.disconnect()
        sim.clear_faults(DEVICE)

        async def answers() -> bool:
            try:
                async with opc_client(osite) as fresh:
                    return bool(await fresh.get_node(node_id(osite, "chw.flow")).read_value() > 0)
            except (OSError, TimeoutError, ua.UaError):
                return False

        await until(answers, "the server to come back", 10)
        assert not port_free(port)
    assert port_free(port)


async def test_sign_and_encrypt_with_certificates(site_file: Callable[..., Path], tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    cfg = load_config(site_file(opcua=True, sim={"opcua": {"certificate": str(certs.server_cert),
                                                           "private_key": str(certs.server_key)}}))

    async def secure(client: Client) -> None:
        client.application_uri = certs.client_uri
        await client.set_security(SecurityPolicyBasic256Sha256, str(certs.client_cert), str(certs.client_key),
                                  mode=ua.MessageSecurityMode.SignAndEncrypt)

    with SimThread(cfg) as sim:
        probe = Client(device_of(cfg).connection.endpoint, timeout=2)
        offered = {(e.SecurityPolicyUri.rsplit("#", 1)[1], e.SecurityMode.name)
                   for e in await probe.connect_and_get_server_endpoints()}
        assert offered == {("None", "None_"), ("Basic256Sha256", "Sign"), ("Basic256Sha256", "SignAndEncrypt")}
        async with opc_client(cfg, secure) as client:
            assert client.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
            uri = (await client.get_namespace_array())[1]
            assert uri == certs.server_uri  # the application URI follows the certificate
            dp_sp = client.get_node(node_id(cfg, "chw.dp_sp"))
            await dp_sp.write_value(ua.DataValue(ua.Variant(45.0, ua.VariantType.Double)))
            assert sim.true_value("chw.dp_sp") == 45.0


async def test_login_required(site_file: Callable[..., Path]) -> None:
    cfg = load_config(site_file(opcua=True, sim={"opcua": {"username": "eaio", "password": "s3cret"}}))

    def login(user: str, password: str) -> Callable[[Client], Any]:
        async def setup(client: Client) -> None:
            client.set_user(user)
            client.set_password(password)

        return setup

    with SimThread(cfg):
        with pytest.raises(ua.UaStatusCodeError) as err:
            async with opc_client(cfg):
                pass
        assert err.value.code == ua.StatusCodes.BadIdentityTokenRejected  # anonymous is not offered
        with pytest.raises(ua.UaStatusCodeError) as err:
            async with opc_client(cfg, login("eaio", "wrong")):
                pass
        assert err.value.code == ua.StatusCodes.BadUserAccessDenied
        async with opc_client(cfg, login("eaio", "s3cret")) as client:
            assert await client.get_node(node_id(cfg, "chw.pump_cmd")).read_value() is True


async def test_port_in_use_is_refused(osite: SiteConfig) -> None:
    port = device_of(osite).connection.port
    with socket.create_server(("127.0.0.1", port)), pytest.raises(ConnectionFailed, match="port in use"), \
            SimThread(osite):
        pass
    assert port_free(port)


def test_unit_codes() -> None:
    assert (unit_id("CEL"), unit_id("P1"), unit_id("G51")) == (4408652, 20529, 4666673)
    assert code_of(unit_id("KPA")) == "KPA"
    assert code_of(-1) is None
    for unit in ("degC", "%", "kPa", "kW", "l/s", "m3/h", "Pa", "h", "kWh", "ppm"):
        eu = to_eu(unit)
        assert eu is not None, unit
        assert from_eu(unit_id(eu.code)) == from_eu(eu.code) == from_eu(eu.symbol) == from_eu(eu.name) == unit
    assert to_eu("%RH") is None  # no UNECE code: the text is the unit
    assert from_eu("%RH") == "%RH"
    assert from_eu(-1) == ""
