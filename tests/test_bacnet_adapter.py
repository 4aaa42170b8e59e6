"""The BACnet adapter on the wire: against the virtual building's BACnet face (zone4-vav, a
bacpypes3 device on 127.0.0.1), with the adapter's own application on a free UDP port.

The device listens on a free UDP port that ``site_file`` picks, not on BACnet's 47808: test
modules run in parallel (and next to a running demo), and two devices cannot share one port on one
address, so a fixed port would make them fail each other. 47808 itself is exercised by
test_bacnet_netns, inside private network namespaces where nothing else can hold it."""

from __future__ import annotations

import json
import math
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from conftest import free_port
from eaio.config import SimFaultSpec, SiteConfig, load_config
from eaio.errors import ConnectionFailed, DeviceError
from eaio.models import BacnetDevice, BacnetLocal, BacnetPoint, Quality, ReadingBatch, Reason
from eaio.protocol_adapters import build_adapter
from eaio.protocol_adapters.bacnet import BacnetAdapter
from eaio.sim.runner import SimThread
from helpers import eventually

pytestmark = pytest.mark.anyio

DEVICE = "zone4-vav"
ZONE4 = ["zone4.temp", "zone4.cool_sp", "zone4.heat_sp", "zone4.occ_start", "zone4.occ_end", "zone4.occ_mode",
         "zone4.occ", "zone4.damper", "zone4.reheat"]
# A dead device fails in timeout_s x (retries + 1) = 0.3 s; the breaker opens at once and retries after 0.3 s.
FAST = {"timeout_s": 0.3, "retries": 0, "breaker_failures": 1, "breaker_reset_s": 0.3, "cov_lifetime_s": 30}

Building = Callable[..., tuple[SimThread, SiteConfig]]


@pytest.fixture
def building(site_file: Callable[..., Path]) -> Iterator[Building]:
    """Start the example site's BACnet controller in the sim (nearly frozen physics, so values hold
    still between the sim's word and the wire's); ``sim_bacnet`` sets the face's wire behaviour."""
    with ExitStack() as stack:
        def start(**sim_bacnet: Any) -> tuple[SimThread, SiteConfig]:
            path = site_file(bacnet=True, sim={"speed": 0.001, "bacnet": sim_bacnet})
            raw = load_config(path).model_dump(mode="json", exclude={"source"})
            for dev in raw["devices"]:
                for p in dev["points"]:
                    p.pop("device_id", None)
                if dev["protocol"] == "bacnet":
                    dev["connection"].update(FAST)
            path.write_text(json.dumps(raw))
            cfg = load_config(path)
            return stack.enter_context(SimThread(cfg)), cfg

        yield start


@asynccontextmanager
async def adapter(cfg: SiteConfig, role: str = "tool") -> AsyncIterator[BacnetAdapter]:
    async with BacnetAdapter(cfg.devices_for("bacnet"), local=cfg.bacnet, role=role) as a:
        yield a


def device(cfg: SiteConfig) -> BacnetDevice:
    return cfg.devices_for("bacnet")[0]


def points(cfg: SiteConfig) -> list[BacnetPoint]:
    return list(device(cfg).points)


def same(got: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    return math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-6)  # a Real is a float32 on the wire


async def test_reads_all_points_with_rpm(building: Building) -> None:
    sim, cfg = building()
    async with adapter(cfg) as a:
        before = sim.request_count(DEVICE)
        readings = await a.read(points(cfg))
        asked = sim.request_count(DEVICE) - before
        assert [r.point_id for r in readings] == ZONE4
        for r, p in zip(readings, points(cfg), strict=True):
            assert r.quality == Quality.GOOD, (r.point_id, r.reasons, r.detail)
            assert same(r.value, sim.value(r.point_id)), (r.point_id, r.value, sim.value(r.point_id))
            assert r.unit == p.unit
            assert r.device_id == DEVICE
        assert asked == 1  # nine objects, one ReadPropertyMultiple
        assert readings[0].unit == "degC"
        assert isinstance(readings[6].value, bool)
        health = a.health()[0]
        assert health["rpm"] is True
        assert health["online"] is True
        assert health["max_apdu"] == 1476
        assert a.request_count() >= 1


async def test_device_without_rpm_is_read_property_by_property(building: Building) -> None:
    sim, cfg = building(no_rpm=[DEVICE])
    async with adapter(cfg) as a:
        for _ in range(2):  # the second poll goes straight to ReadProperty
            readings = await a.read(points(cfg))
            assert all(r.quality == Quality.GOOD for r in readings), [(r.point_id, r.detail) for r in readings]
            assert all(same(r.value, sim.value(r.point_id)) for r in readings)
        assert a.health()[0]["rpm"] is False
        before = sim.request_count(DEVICE)
        await a.read(points(cfg))
        assert sim.request_count(DEVICE) - before == 2 * len(ZONE4)  # present-value and status-flags each
        # limits() without RPM: one ReadProperty per property, the same answer as with RPM.
        by_id = {p.id: p for p in points(cfg)}
        assert await a.limits(by_id["zone4.temp"]) == {"eu_range": [5.0, 40.0], "unit": "degC"}
        assert await a.limits(by_id["zone4.occ_start"]) == {"eu_range": None, "unit": "h"}


async def test_small_apdu_without_segmentation_splits_the_batches(building: Building) -> None:
    sim, cfg = building(max_apdu=128, segmentation=False)
    async with adapter(cfg) as a:
        before = sim.request_count(DEVICE)
        readings = await a.read(points(cfg))
        assert all(r.quality == Quality.GOOD for r in readings), [(r.point_id, r.detail) for r in readings]
        assert all(same(r.value, sim.value(r.point_id)) for r in readings)
        health = a.health()[0]
        assert (health["max_apdu"], health["segmentation"]) == (128, False)  # from the I-Am
        assert sim.request_count(DEVICE) - before >= 3  # nine objects do not fit one 128-byte answer


async def test_write_priority_array_and_relinquish(building: Building) -> None:
    sim, cfg = building()
    sp = device(cfg).points[1]
    assert sp.id == "zone4.cool_sp"
    async with adapter(cfg) as a:
        original = sim.value(sp.id)
        await a.write(sp, 25.5)
        await eventually(lambda: sim.value(sp.id) == 25.5, 5)
        pa = await a.read_priority_array(sp)
        assert pa["priorities"] == [{"priority": 8, "value": 25.5}]
        assert pa["active_priority"] == 8
        assert pa["present_value"] == 25.5
        await a.write(sp, 24.0, priority=16)  # under the command at 8: the effective value holds
        pa = await a.read_priority_array(sp)
        assert [s["priority"] for s in pa["priorities"]] == [8, 16]
        assert pa["present_value"] == 25.5
        await a.relinquish(sp)
        await a.relinquish(sp, priority=16)
        pa = await a.read_priority_array(sp)
        assert pa["priorities"] == []
        assert pa["active_priority"] is None
        assert same(pa["present_value"], pa["relinquish_default"])
        await eventually(lambda: same(sim.value(sp.id), original), 5)
        (r,) = await a.read([sp])
        assert same(r.value, original)


async def test_limits_come_from_the_objects_units_and_present_value_range(building: Building) -> None:
    sim, cfg = building()
    by_id = {p.id: p for p in points(cfg)}
    ghost = BacnetPoint.model_validate({"id": "zone4.ghost", "device_id": DEVICE,
                                        "address": {"type": "analog-value", "instance": 99}})
    async with adapter(cfg) as a:
        # The sim serves each analog point's unit, and min-/max-pres-value from its limits.
        for pid in ("zone4.temp", "zone4.cool_sp", "zone4.damper", "zone4.reheat"):
            lim = by_id[pid].limits
            assert lim is not None
            assert await a.limits(by_id[pid]) == {"eu_range": [lim.low, lim.high], "unit": by_id[pid].unit}, pid
        assert await a.limits(by_id["zone4.occ_start"]) == {"eu_range": None, "unit": "h"}  # no limits: no range
        before = sim.request_count(DEVICE)
        assert await a.limits(by_id["zone4.occ"]) == {"eu_range": None, "unit": None}  # binary: neither
        assert sim.request_count(DEVICE) == before  # and nothing was asked
        with pytest.raises(DeviceError) as info:
            await a.limits(ghost)
        assert (info.value.code, info.value.point) == ("invalid_argument", "zone4.ghost")
        assert "no object analog-value,99" in str(info.value)

        sim.inject(SimFaultSpec(kind="offline", target=DEVICE))
        with pytest.raises(DeviceError) as info:
            await a.limits(by_id["zone4.temp"])
        assert info.value.code == "device_offline"
        requests = a.request_count()
        with pytest.raises(DeviceError) as info:  # known to be gone: not asked again
            await a.limits(by_id["zone4.damper"])
        assert info.value.code == "device_offline"
        assert a.request_count() == requests


async def test_write_errors(building: Building) -> None:
    _, cfg = building()
    by_id = {p.id: p for p in points(cfg)}
    ghost = BacnetPoint.model_validate({"id": "zone4.ghost", "device_id": DEVICE, "writable": True,
                                        "address": {"type": "analog-value", "instance": 99}})
    cases: list[tuple[Any, Any, str]] = [
        (lambda a: a.write(by_id["zone4.temp"], 30.0), "not_writable", "write-access-denied"),  # an input
        (lambda a: a.write(by_id["zone4.occ_mode"], True), "not_writable", "write-access-denied"),  # not writable
        (lambda a: a.write(ghost, 1.0), "invalid_argument", "unknown-object"),
        (lambda a: a.write(by_id["zone4.cool_sp"], 22.0, priority=17), "invalid_argument", "1..16"),
        (lambda a: a.write(by_id["zone4.cool_sp"], math.nan), "invalid_argument", "float32"),
        (lambda a: a.write(by_id["zone4.occ_mode"], 0.5), "invalid_argument", "true/false"),
        (lambda a: a.relinquish(by_id["zone4.temp"]), "not_writable", "no priority array"),
        (lambda a: a.read_priority_array(by_id["zone4.temp"]), "invalid_argument", "no priority array"),
        (lambda a: a.read_property(DEVICE, "analog-input,99", "present-value"), "invalid_argument", "unknown-object"),
        (lambda a: a.read_property(DEVICE, "no-such-thing", "present-value"), "invalid_argument", "object id"),
        (lambda a: a.list_objects("nope"), "invalid_argument", "no BACnet device"),
    ]
    async with adapter(cfg) as a:
        for call, code, text in cases:
            with pytest.raises(DeviceError) as info:
                await call(a)
            assert info.value.code == code, (text, str(info.value))
            assert text in str(info.value)
        assert a.health()[0]["failures"] == 0  # refusals are answers, not failures


async def test_offline_device_fails_fast_and_comes_back(building: Building) -> None:
    sim, cfg = building()
    async with adapter(cfg) as a:
        assert all(r.quality == Quality.GOOD for r in await a.read(points(cfg)))
        sim.inject(SimFaultSpec(kind="offline", target=DEVICE))
        sent = a.request_count()
        readings = await a.read(points(cfg))
        assert a.request_count() - sent == 1  # one request waits out its timeout, not one per batch or point
        for r in readings:
            assert r.quality == Quality.BAD
            assert r.value is None
            assert r.reasons == [Reason.COMM_FAILURE]
            assert (r.detail or "").startswith("device_offline: zone4-vav at "), r.detail
            assert (r.detail or "").endswith("no answer within 0.3s"), r.detail
        sent = a.request_count()
        again = await a.read(points(cfg))  # the breaker is open: nothing sent (or one probe, once 0.3 s passed)
        assert a.request_count() - sent <= 1
        assert all(r.detail and r.detail.startswith("device_offline") for r in again)
        with pytest.raises(DeviceError) as info:
            await a.write(points(cfg)[1], 23.0)
        assert info.value.code == "device_offline"
        health = a.health()[0]
        assert health["online"] is False
        assert health["failures"] >= 1
        assert health["last_error"]
        sim.clear_faults()

        async def back() -> bool:
            return all(r.quality == Quality.GOOD for r in await a.read(points(cfg)))

        await eventually(back, 10)
        assert a.health()[0]["online"] is True


async def test_unreliable_object_reads_bad_with_its_reliability(building: Building) -> None:
    sim, cfg = building()
    sim.inject(SimFaultSpec(kind="unreliable", target="zone4.temp"))
    async with adapter(cfg) as a:
        readings = {r.point_id: r for r in await a.read(points(cfg))}
        temp = readings.pop("zone4.temp")
        assert temp.quality == Quality.BAD
        assert temp.reasons == ["protocol_status:unreliable-other"]
        assert temp.value is not None  # the device still reports a value; it just vouches for none
        assert all(r.quality == Quality.GOOD for r in readings.values())
        sim.clear_faults()
        await eventually(lambda: _good(a, cfg), 5)


async def _good(a: BacnetAdapter, cfg: SiteConfig) -> bool:
    return all(r.quality == Quality.GOOD for r in await a.read(points(cfg)))


async def test_cov_pushes_changes_and_resubscribes_after_an_outage(building: Building) -> None:
    sim, cfg = building()
    got: list[ReadingBatch] = []

    async def collect(batch: ReadingBatch) -> None:
        got.append(batch)

    def seen(point_id: str, value: float) -> bool:
        return any(pid == point_id and v == value for b in got for pid, v in zip(b.point_id, b.value, strict=True))

    pts = points(cfg)
    async with adapter(cfg) as a:
        assert a.pushed(pts) == []
        await a.subscribe(pts, collect)
        assert [p.id for p in a.pushed(pts)] == ZONE4  # the example controller has cov: true
        assert a.health()[0]["cov_subscriptions"] == len(ZONE4)
        await eventually(lambda: {pid for b in got for pid in b.point_id} == set(ZONE4), 5)  # first values
        sim.set_value("zone4.temp", 25.0)
        await eventually(lambda: seen("zone4.temp", 25.0), 5)
        batch = next(b for b in got if "zone4.temp" in b.point_id)
        assert batch.unit[batch.point_id.index("zone4.temp")] == "degC"

        sim.inject(SimFaultSpec(kind="offline", target=DEVICE))
        await a.read(pts[:1])  # a failed poll tells the adapter the device is gone
        assert a.pushed(pts) == []  # so ingest polls them (and sees them fail) meanwhile
        sim.clear_faults()
        await eventually(lambda: len(a.pushed(pts)) == len(ZONE4), 10)  # subscribed anew by the probe
        sim.set_value("zone4.temp", 26.5)
        await eventually(lambda: seen("zone4.temp", 26.5), 5)


async def test_a_device_without_cov_leaves_its_points_to_polling(building: Building,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    sim, cfg = building(no_cov=[DEVICE])  # SubscribeCOV answers Reject unrecognized-service
    got: list[ReadingBatch] = []

    async def collect(batch: ReadingBatch) -> None:
        got.append(batch)

    pts = points(cfg)
    caplog.set_level("INFO", logger="eaio.protocol_adapters.bacnet_cov")
    async with adapter(cfg) as a:
        await a.subscribe(pts, collect)  # returns once each subscription was tried (and refused)
        assert a.pushed(pts) == []
        health = a.health()[0]
        assert (health["cov_subscriptions"], health["cov_refused"], health["online"]) == (0, len(ZONE4), True)
        said = [r.getMessage() for r in caplog.records if "SubscribeCOV" in r.getMessage()]
        assert len(said) == 1, said  # one line for the device, not one per point
        assert "refuses SubscribeCOV" in said[0], said
        assert "unrecognized-service" in said[0], said
        before = sim.request_count(DEVICE)
        await a.subscribe(pts, collect)  # known now: not asked again
        assert sim.request_count(DEVICE) == before
        assert a.pushed(pts) == []
        readings = await a.read(pts)  # what ingest then does: poll them
        assert all(r.quality == Quality.GOOD for r in readings), [(r.point_id, r.detail) for r in readings]
        assert got == []


async def test_cov_subscriptions_are_renewed_before_they_lapse(building: Building) -> None:
    sim, cfg = building()
    device(cfg).connection.cov_lifetime_s = 3  # the device forgets a subscription 3 s after it was made
    got: list[tuple[str, Any]] = []

    async def collect(batch: ReadingBatch) -> None:
        got.extend(zip(batch.point_id, batch.value, strict=True))

    temp = [p for p in points(cfg) if p.id == "zone4.temp"]
    async with adapter(cfg) as a:
        await a.subscribe(temp, collect)
        assert a.pushed(temp) == temp
        await anyio.sleep(4.5)  # outlive the first lifetime: only a renewal keeps notifications coming
        sim.set_value("zone4.temp", 27.25)
        await eventually(lambda: ("zone4.temp", 27.25) in got, 3)
        assert a.pushed(temp) == temp


async def test_who_is_list_objects_and_raw_reads(building: Building) -> None:
    sim, cfg = building()
    dev = device(cfg)
    async with adapter(cfg) as a:
        found = await a.who_is(address=dev.connection.address, timeout_s=2)
        assert found == [{"device_instance": 1004, "address": dev.connection.address, "max_apdu": 1476,
                          "segmentation": "segmented-both", "vendor_id": 999}]
        assert await a.who_is(1004, 1004, address=dev.connection.address, timeout_s=2) == found
        assert await a.who_is(timeout_s=2) == []  # 127.0.0.1 without a mask cannot broadcast

        objects = await a.list_objects(DEVICE)
        by_id = {o["object_id"]: o for o in objects}
        assert "device,1004" in by_id
        assert by_id["device,1004"]["type"] == "device"
        for p in dev.points:
            o = by_id[p.address.object_id]
            assert (o["point_id"], o["type"], o["instance"]) == (p.id, p.address.type, p.address.instance)
            assert o["name"] == p.id
            if p.address.type.startswith("analog"):
                assert o["units"] == p.unit
        json.dumps(objects)  # plain Python only

        assert await a.read_property(DEVICE, "analog-input,1", "units") == "degrees-celsius"
        assert await a.read_property(DEVICE, "analog-input,1", "status-flags") == []
        assert same(await a.read_property(DEVICE, "analog-input,1", "present-value"), sim.value("zone4.temp"))
        assert await a.read_property(DEVICE, "device,1004", "object-list", 0) == len(objects)
        assert await a.read_property(DEVICE, "binary-value,1", "present-value") in ("active", "inactive")


async def test_build_adapter_uses_the_roles_port(building: Building) -> None:
    _, cfg = building()
    a = build_adapter("bacnet", cfg.devices_for("bacnet"), local=cfg.bacnet, role="ingest")
    assert isinstance(a, BacnetAdapter)
    assert a.protocol == "bacnet"
    port = cfg.bacnet.ports["ingest"]
    async with a:
        assert a.local_address == f"127.0.0.1:{port}"
        assert len(await a.read(points(cfg))) == len(ZONE4)
        # A second application on the same port would split the device's answers between the two.
        with pytest.raises(ConnectionFailed):
            async with BacnetAdapter(cfg.devices_for("bacnet"), local=cfg.bacnet, role="ingest"):
                pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # closed: the port is free again


async def test_unknown_point_and_not_open() -> None:
    dev = BacnetDevice.model_validate({
        "id": "far", "protocol": "bacnet",
        "connection": {"address": f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", "device_instance": 7, **FAST},
        "points": [{"id": "far.t", "address": {"type": "analog-input", "instance": 1}}],
    })
    a = BacnetAdapter([dev], local=BacnetLocal(ports={}))
    assert a.point("far.t") is not None
    assert [p.id for p in a.points()] == ["far.t"]
    with pytest.raises(RuntimeError):
        await a.read(dev.points)
    async with a:
        other = BacnetPoint.model_validate({"id": "x.y", "device_id": "elsewhere",
                                            "address": {"type": "analog-input", "instance": 1}})
        (r,) = await a.read([other])
        assert r.quality == Quality.BAD
        assert r.reasons == ["unknown_point"]
        with pytest.raises(DeviceError) as info:
            await a.write(other, 1.0)
        assert info.value.code == "unknown_point"
        (r,) = await a.read(dev.points)  # nobody there
        assert r.reasons == [Reason.COMM_FAILURE]
        assert r.detail
        assert r.detail.startswith("device_offline: ")
        assert r.detail.endswith("no answer within 0.3s")
