"""The sim's BACnet/IP face over loopback, read, written and subscribed with a raw bacpypes3 client.

The device listens on a free UDP port that ``site_file`` picks, not on BACnet's 47808: test
modules run in parallel (and next to a running demo), and two devices cannot share one port on one
address, so a fixed port would make them fail each other. 47808 itself is exercised by
test_bacnet_netns, inside private network namespaces where nothing else can hold it."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from bacpypes3.apdu import AbortPDU, ErrorRejectAbortNack, RejectPDU
from bacpypes3.app import Application
from bacpypes3.basetypes import ErrorCode, ErrorType, PropertyIdentifier, Reliability
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import Null, ObjectIdentifier

from eaio.config import SimFaultSpec, SiteConfig, load_config
from eaio.errors import ConnectionFailed
from eaio.protocol_adapters.bacnet_units import to_bacnet
from eaio.sim.faults import FaultBook
from eaio.sim.runner import SimThread, parse_fault
from helpers import eventually

pytestmark = pytest.mark.anyio

DEVICE = "zone4-vav"


@pytest.fixture
def bsite(site_file: Callable[..., Path]) -> SiteConfig:
    return load_config(site_file(bacnet=True))


@pytest.fixture
def bsim(bsite: SiteConfig) -> Iterator[SimThread]:
    with SimThread(bsite) as running:
        yield running


@contextlib.asynccontextmanager
async def client(site: SiteConfig, timeout_ms: int = 2000) -> AsyncIterator[tuple[Application, Address]]:
    """A bacpypes3 client on the site's 'ingest' port, and the address of the sim's device."""
    device = DeviceObject(objectIdentifier=("device", 3_999_990), objectName="test-client", vendorIdentifier=999)
    device.apduTimeout = timeout_ms
    device.numberOfApduRetries = 0
    npo = NetworkPortObject(site.bacnet.address("ingest"), objectIdentifier=("network-port", 1),
                            objectName="NetworkPort-1")
    app = Application.from_object_list([device, npo])
    try:
        with anyio.fail_after(5):  # close() before the socket is bound would leak it
            for ll in app.link_layers.values():
                await ll.server._local_transport_ready.wait()
        yield app, Address(f"127.0.0.1:{device_of(site).connection.port}")
    finally:
        app.close()
        await anyio.lowlevel.checkpoint()


def device_of(site: SiteConfig) -> Any:
    return next(d for d in site.devices_for("bacnet") if d.id == DEVICE)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def commands(pa: Any) -> dict[int, Any]:
    """The non-null slots of a priority array, by priority."""
    return {i + 1: getattr(v, v._choice) for i, v in enumerate(pa) if v._choice != "null"}


async def test_who_is_object_list_and_ports(bsite: SiteConfig, bsim: SimThread) -> None:
    dev = device_of(bsite)
    assert bsim.ports[DEVICE] == dev.connection.port
    async with client(bsite) as (cli, addr):
        i_ams = await cli.who_is(address=addr, timeout=2)
        assert [str(ObjectIdentifier(x.iAmDeviceIdentifier)) for x in i_ams] == ["device,1004"]
        assert i_ams[0].maxAPDULengthAccepted == 1476
        assert str(i_ams[0].segmentationSupported) == "segmented-both"
        assert i_ams[0].vendorID == 999
        objects = {str(ObjectIdentifier(o)) for o in await cli.read_property(addr, "device,1004", "object-list")}
        assert {p.address.object_id for p in dev.points} | {"device,1004"} <= objects
        assert await cli.read_property(addr, "device,1004", "object-name") == DEVICE


async def test_rpm_matches_the_sim(bsite: SiteConfig, bsim: SimThread) -> None:
    dev = device_of(bsite)
    request: list[Any] = []
    for p in dev.points:
        request += [p.address.object_id, ["present-value", "units", "status-flags"] if not p.is_binary
                    else ["present-value", "status-flags"]]
    bsim.reset_counts()
    async with client(bsite) as (cli, addr):
        got: dict[tuple[str, str], Any] = {}
        for objid, prop, _, value in await cli.read_property_multiple(addr, request):
            got[(str(objid), str(prop))] = value
        assert bsim.request_count(DEVICE) == 1  # one RPM for nine points
    for p in dev.points:
        oid = p.address.object_id
        assert list(got[(oid, "status-flags")]) == [0, 0, 0, 0], p.id
        served = bsim.value(p.id)
        if p.is_binary:
            assert (int(got[(oid, "present-value")]) == 1) == served, p.id
            continue
        assert str(got[(oid, "units")]) == _kebab(to_bacnet(p.unit)), p.id
        # the physics may step between the read and sim.value(); a step moves little
        assert float(got[(oid, "present-value")]) == pytest.approx(served, abs=0.3), p.id


def _kebab(camel: str) -> str:
    return "".join("-" + c.lower() if c.isupper() else c for c in camel)


async def test_write_at_priority_drives_the_physics_and_relinquish_restores(bsite: SiteConfig, bsim: SimThread) -> None:
    before = bsim.true_value("zone4.cool_sp")
    async with client(bsite) as (cli, addr):
        await cli.write_property(addr, "analog-value,1", "present-value", 26.3, priority=8)
        assert bsim.true_value("zone4.cool_sp") == 26.3  # float32 on the wire, the client's value in the sim
        assert commands(await cli.read_property(addr, "analog-value,1", "priority-array")) == {8: pytest.approx(26.3)}
        assert await cli.read_property(addr, "analog-value,1", "relinquish-default") == before
        await cli.write_property(addr, "analog-value,1", "present-value", Null(()), priority=8)
        assert bsim.true_value("zone4.cool_sp") == before
        assert await cli.read_property(addr, "analog-value,1", "present-value") == before
        # the sim's own change underneath a command moves the default only
        await cli.write_property(addr, "analog-value,1", "present-value", 26.3, priority=8)
        bsim.set_value("zone4.cool_sp", 24.0)
        assert await cli.read_property(addr, "analog-value,1", "present-value") == pytest.approx(26.3)
        assert await cli.read_property(addr, "analog-value,1", "relinquish-default") == 24.0
        await cli.write_property(addr, "analog-value,1", "present-value", Null(()), priority=8)
        assert bsim.true_value("zone4.cool_sp") == 24.0
        assert commands(await cli.read_property(addr, "analog-value,1", "priority-array")) == {}
        # with nothing commanded, the device follows the sim
        bsim.set_value("zone4.cool_sp", before)
        assert await cli.read_property(addr, "analog-value,1", "present-value") == before
        assert bsim.true_value("zone4.cool_sp") == before


async def test_read_only_points_refuse_writes(bsite: SiteConfig, bsim: SimThread) -> None:
    async with client(bsite) as (cli, addr):
        for objid, prop, value in [("analog-input,1", "present-value", 30.0),  # an input
                                   ("binary-value,1", "present-value", "active"),  # a BV not writable in the site
                                   ("analog-value,1", "object-name", "renamed")]:  # any other property
            with pytest.raises(ErrorRejectAbortNack) as err:
                await cli.write_property(addr, objid, prop, value, priority=8)
            assert getattr(err.value, "errorCode", None) == ErrorCode.writeAccessDenied, (objid, prop)
        assert await cli.read_property(addr, "analog-value,1", "object-name") == "zone4.cool_sp"


async def test_offline_times_out_then_recovers_and_close_frees_the_port(bsite: SiteConfig) -> None:
    port = device_of(bsite).connection.port
    with SimThread(bsite) as sim:
        async with client(bsite, timeout_ms=300) as (cli, addr):
            assert await cli.read_property(addr, "analog-input,1", "object-name") == "zone4.temp"
            sim.inject(SimFaultSpec(kind="offline", target=DEVICE))
            assert sim.state()["offline"] == [DEVICE]
            with pytest.raises(AbortPDU):  # no-response after apduTimeout
                await cli.read_property(addr, "analog-input,1", "present-value")
            sim.clear_faults(DEVICE)

            async def answers() -> bool:
                try:
                    return await cli.read_property(addr, "analog-input,1", "object-name") == "zone4.temp"
                except ErrorRejectAbortNack:
                    return False

            await eventually(answers, 10)
        assert not port_free(port)
    assert port_free(port)


async def test_unreliable_sets_reliability_and_pushes_cov(bsite: SiteConfig, bsim: SimThread) -> None:
    async with client(bsite) as (cli, addr):
        ai = ObjectIdentifier("analog-input,1")
        async with cli.change_of_value(addr, ai, None, False, 60) as scm:
            await _flags(scm, lambda f: f[1] == 0)  # the notification every subscription starts with
            bsim.inject(SimFaultSpec(kind="unreliable", target="zone4.temp"))
            await _flags(scm, lambda f: f[1] == 1)
            assert list(await cli.read_property(addr, ai, "status-flags")) == [0, 1, 0, 0]
            assert await cli.read_property(addr, ai, "reliability") == Reliability.unreliableOther
            assert bsim.value("zone4.temp") == pytest.approx(bsim.true_value("zone4.temp"))  # the value is served
            bsim.clear_faults("zone4.temp")
            await _flags(scm, lambda f: f[1] == 0)
            assert await cli.read_property(addr, ai, "reliability") == Reliability.noFaultDetected


async def _flags(scm: Any, cond: Callable[[list[int]], bool]) -> None:
    with anyio.fail_after(5):
        while True:
            prop, value = await scm.get_value()
            if prop == PropertyIdentifier.statusFlags and cond(list(value)):
                return


async def test_cov_follows_the_sim(bsite: SiteConfig, bsim: SimThread) -> None:
    async with client(bsite) as (cli, addr):
        async with cli.change_of_value(addr, ObjectIdentifier("analog-input,1"), None, False, 60) as scm:
            bsim.set_value("zone4.temp", 31.5)
            with anyio.fail_after(5):
                while True:
                    prop, value = await scm.get_value()
                    if prop == PropertyIdentifier.presentValue and value > 30:
                        break
            assert value == pytest.approx(31.5, abs=0.3)  # the physics carries on from 31.5
        async with cli.change_of_value(addr, ObjectIdentifier("binary-value,1"), None, False, 60) as scm:
            with anyio.fail_after(5):
                prop, value = await scm.get_value()
            assert prop == PropertyIdentifier.presentValue
            assert (int(value) == 1) == bsim.value("zone4.occ_mode")


async def test_no_rpm_device_and_other_object_types(site_file: Callable[..., Path]) -> None:
    base = load_config(site_file(bacnet=True))
    devices = [d.model_dump(mode="json", exclude={"points": {"__all__": {"device_id"}}}) for d in base.devices]
    vav = next(d for d in devices if d["id"] == DEVICE)
    vav["points"] += [
        {"id": "zone4.damper_cmd", "unit": "%", "writable": True, "write_bounds": {"low": 0, "high": 100},
         "address": {"type": "analog-output", "instance": 1}},
        {"id": "zone4.fan_cmd", "writable": True, "address": {"type": "binary-output", "instance": 1}},
        {"id": "zone4.mode", "writable": True, "limits": {"low": 1, "high": 4},
         "write_bounds": {"low": 1, "high": 4}, "address": {"type": "multi-state-value", "instance": 1}},
    ]
    cfg = load_config(site_file(bacnet=True, devices=devices,
                                sim={"bacnet": {"no_rpm": [DEVICE], "max_apdu": 480, "segmentation": False}}))
    with SimThread(cfg) as sim:
        async with client(cfg) as (cli, addr):
            i_am = (await cli.who_is(address=addr, timeout=2))[0]
            assert (i_am.maxAPDULengthAccepted, str(i_am.segmentationSupported)) == (480, "no-segmentation")
            with pytest.raises(RejectPDU) as err:
                await cli.read_property_multiple(addr, ["analog-input,1", ["present-value"]])
            assert str(err.value.apduAbortRejectReason) == "unrecognized-service"
            services = await cli.read_property(addr, "device,1004", "protocol-services-supported")
            assert services[services.readPropertyMultiple] == 0
            assert services[services.readProperty] == 1
            for objid, value, expect in [("analog-output,1", 40.0, 40.0), ("binary-output,1", "active", True),
                                         ("multi-state-value,1", 3, 3)]:
                await cli.write_property(addr, objid, "present-value", value, priority=8)
                pid = str(await cli.read_property(addr, objid, "object-name"))
                assert sim.true_value(pid) == expect, objid
            assert await cli.read_property(addr, "multi-state-value,1", "number-of-states") == 4


async def test_no_cov_device_rejects_subscribe_cov(site_file: Callable[..., Path]) -> None:
    cfg = load_config(site_file(bacnet=True, sim={"bacnet": {"no_cov": [DEVICE]}}))
    with SimThread(cfg) as sim:
        async with client(cfg) as (cli, addr):
            with pytest.raises(RejectPDU) as err:
                async with cli.change_of_value(addr, ObjectIdentifier("analog-input,1"), None, False, 60):
                    pass
            assert str(err.value.apduAbortRejectReason) == "unrecognized-service"
            services = await cli.read_property(addr, "device,1004", "protocol-services-supported")
            assert (services[services.subscribeCOV], services[services.subscribeCOVProperty]) == (0, 0)
            assert (services[services.readPropertyMultiple], services[services.readProperty]) == (1, 1)
            value = await cli.read_property(addr, "analog-input,1", "present-value")  # reads go on as usual
            assert value == pytest.approx(sim.value("zone4.temp"), abs=0.3)


async def test_analog_objects_serve_units_and_their_limits_as_present_value_range(bsite: SiteConfig,
                                                                                  bsim: SimThread) -> None:
    async with client(bsite) as (cli, addr):
        for p in device_of(bsite).points:
            if not p.address.type.startswith("analog"):
                continue
            request = [p.address.object_id, ["units", "min-pres-value", "max-pres-value"]]
            got = {str(prop): v for _, prop, _, v in await cli.read_property_multiple(addr, request)}
            assert str(got["units"]) == _kebab(to_bacnet(p.unit)), p.id
            if p.limits is not None and p.limits.low is not None and p.limits.high is not None:
                assert (got["min-pres-value"], got["max-pres-value"]) == (p.limits.low, p.limits.high), p.id
            else:  # no limits: the object has no range to give
                assert isinstance(got["min-pres-value"], ErrorType), p.id
                assert str(got["min-pres-value"].errorCode) == "unknown-property", p.id


async def test_port_in_use_is_refused(bsite: SiteConfig) -> None:
    port = device_of(bsite).connection.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", port))
        with pytest.raises(ConnectionFailed, match="port in use"), SimThread(bsite):
            pass
    assert port_free(port)


def test_unreliable_leaves_served_values_alone() -> None:
    book = FaultBook()
    book.add(parse_fault("unreliable:zone1.temp"))
    assert book.served("zone1.temp", 21.5, elapsed=10, step=3) == 21.5  # what a Modbus face serves
    assert book.unreliable_points(10) == {"zone1.temp"}
    assert book.offline_devices(10) == set()
    with pytest.raises(ValueError, match="no magnitude"):
        parse_fault("unreliable:zone1.temp:2")
