"""The fast ReadPropertyMultiple paths give what stock bacpypes3 gives, on the wire against the sim.

Adapter side (``protocol_adapters.bacnet_fast``: prepared requests, ACKs parsed into tuples) and device
side (``sim.faces.bacnet_fast``: answers written straight to bytes) are each compared with bacpypes3's
own path on the same requests: the zone4 controller of the example site and a 200-object device,
with faults, out-of-service and in-alarm objects, unknown objects and properties, arrays, and answers
long enough to be segmented. The physics steps once a minute here, so values hold still between reads.

The devices listen on free UDP ports (``site_file``, ``free_port``), not on BACnet's 47808: test
modules run in parallel (and next to a running demo), and two devices cannot share one port on one
address, so a fixed port would make them fail each other. 47808 itself is exercised by
test_bacnet_netns, inside private network namespaces where nothing else can hold it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from bacpypes3.apdu import ErrorRejectAbortNack
from bacpypes3.basetypes import ErrorType
from bacpypes3.pdu import Address

from conftest import free_port
from eaio.config import SimFaultSpec, SiteConfig, load_config
from eaio.models import BacnetPoint, Quality, Reading
from eaio.protocol_adapters import bacnet_fast
from eaio.protocol_adapters.bacnet import BacnetAdapter
from eaio.protocol_adapters.bacnet_fast import FastRpm, Row
from eaio.sim.faces import bacnet_fast as device_fast
from eaio.sim.faces.bacnet import BacnetFace
from eaio.sim.runner import SimThread, Simulation

pytestmark = pytest.mark.anyio

ZONE4, BIG = "zone4-vav", "big-ahu"
N = 200
ZONE4_OBJECTS = ["analog-input,1", "analog-value,1", "analog-value,2", "analog-value,3", "analog-value,4",
                 "binary-value,1", "binary-input,1", "analog-input,2", "analog-input,3"]


def big_value(i: int) -> float:
    return 10.0 + i * 0.5


def big_object(i: int) -> str:
    return f"{'analog-input' if i % 2 else 'analog-value'},{i}"


@pytest.fixture
def sim(site_file: Callable[..., Path]) -> Iterator[tuple[SimThread, SiteConfig]]:
    """The example site's zone4 controller and a 200-object device, with faults and odd flags set."""
    base = load_config(site_file(bacnet=True))
    devices = [d.model_dump(mode="json", exclude={"points": {"__all__": {"device_id"}}}) for d in base.devices
               if d.protocol == "bacnet"]
    devices.append({
        "id": BIG, "protocol": "bacnet",
        "connection": {"address": f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", "device_instance": 4200,
                       "timeout_s": 1.0, "retries": 0},
        "points": [{"id": f"big.p{i:03d}", "kind": "generic", "unit": "kW",
                    "address": {"type": big_object(i).split(",")[0], "instance": i}} for i in range(1, N + 1)],
    })
    cfg = load_config(site_file(bacnet=True, devices=devices, sim={"step_s": 60}))
    with SimThread(cfg) as running:
        running.inject(SimFaultSpec(kind="unreliable", target="zone4.temp"))
        running.inject(SimFaultSpec(kind="unreliable", target="big.p010"))

        def odd_flags(s: Simulation) -> None:  # objects change in the sim's loop only
            for i in range(1, N):  # memory points; one set_value serves them all (each one refreshes all)
                s.memory[f"big.p{i:03d}"] = big_value(i)
            s.set_value(f"big.p{N:03d}", big_value(N))
            for device, oid, attr, value in [(ZONE4, "analog-value,2", "outOfService", True),
                                             (BIG, "analog-input,7", "outOfService", True),
                                             (BIG, "analog-value,12", "eventState", "highLimit"),
                                             (BIG, "analog-input,13", "outOfService", True)]:
                objects = s.faces[device].objects
                assert objects is not None
                setattr(objects.objects[oid], attr, value)

        running.call(odd_flags)
        running.inject(SimFaultSpec(kind="unreliable", target="big.p013"))  # faulted and out of service
        yield running, cfg


def bacnet_faces(running: SimThread) -> list[BacnetFace]:
    return [f for f in running.simulation.faces.values() if isinstance(f, BacnetFace)]


@asynccontextmanager
async def adapter(cfg: SiteConfig) -> AsyncIterator[BacnetAdapter]:
    async with BacnetAdapter(cfg.devices_for("bacnet"), local=cfg.bacnet, role="tool") as a:
        yield a


def peer(cfg: SiteConfig, device_id: str) -> Address:
    return Address(next(d for d in cfg.devices_for("bacnet") if d.id == device_id).connection.address)


def same_form(rows: list[Row]) -> list[tuple[Any, ...]]:
    """Rows in a form that compares exactly: the type and encoding of each value, errors by name."""
    out: list[tuple[Any, ...]] = []
    for oid, prop, index, value in rows:
        if isinstance(value, ErrorType):
            shown: Any = ("error", str(value.errorClass), str(value.errorCode))
        elif value is None:
            shown = None
        else:
            shown = (type(value).__name__, bytes(value.encode().encode().pduData))
        out.append((str(oid), str(prop), index, shown))
    return out


ZONE4_SPEC: list[tuple[str, list[str]]] = [
    *((oid, ["present-value", "status-flags"]) for oid in ZONE4_OBJECTS),
    ("analog-input,1", ["reliability", "out-of-service", "units", "object-name", "event-state"]),
    ("analog-value,1", ["priority-array", "priority-array[8]", "priority-array[0]", "relinquish-default",
                        "file-size", "present-value[2]"]),
    ("analog-value,99", ["present-value", "status-flags"]),  # no such object
    ("binary-value,1", ["polarity", "priority-array[17]"]),
]
BIG_SPEC: list[tuple[str, list[str]]] = [
    *((big_object(i), ["present-value", "status-flags", "units", "object-name"]) for i in range(1, N + 1)),
    ("analog-input,999", ["present-value"]),
]


async def test_adapter_decoder_gives_the_stock_rows(sim: tuple[SimThread, SiteConfig]) -> None:
    _, cfg = sim
    assert bacnet_fast.install()
    fast = FastRpm()
    async with adapter(cfg) as a:
        for device, spec in [(ZONE4, ZONE4_SPEC), (BIG, BIG_SPEC)]:
            addr = peer(cfg, device)
            vendor = await a.app.get_vendor_info(device_address=addr)
            answer = await fast.request(a.app, addr, vendor, spec)
            assert answer.listOfReadAccessResults.fast is not None  # parsed by the fast decoder
            rows = fast.rows(answer, vendor)
            flat: list[Any] = [x for oid, props in spec for x in (oid, props)]
            stock = await a.app.read_property_multiple(addr, flat)
            assert same_form(rows) == same_form(stock)
            assert len(rows) == sum(len(props) for _, props in spec)
        values = {(oid, prop, index): value for oid, prop, index, value in rows}
        assert values[("analog-value,2", "present-value", None)] == big_value(2)
        assert values[("analog-input,3", "present-value", None)] == big_value(3)
        assert list(values[("analog-input,7", "status-flags", None)]) == [0, 0, 0, 1]
        assert list(values[("analog-value,10", "status-flags", None)]) == [0, 1, 0, 0]
        assert list(values[("analog-value,12", "status-flags", None)]) == [1, 0, 0, 0]
        assert list(values[("analog-input,13", "status-flags", None)]) == [0, 1, 0, 1]
        assert str(values[("analog-input,999", "present-value", None)].errorCode) == "unknown-object"
        # The values alone fill several of the 1476-byte APDUs: the answer came in segments.
        assert sum(len(s[3][1]) for s in same_form(rows) if s[3] and s[3][0] != "error") > 2 * 1476
    assert bacnet_fast.usable()


async def stock_client_rows(a: BacnetAdapter, addr: Address, spec: list[tuple[str, list[str]]]) -> Any:
    flat: list[Any] = [x for oid, props in spec for x in (oid, props)]
    try:
        return same_form(await a.app.read_property_multiple(addr, flat))
    except ErrorRejectAbortNack as err:
        return type(err).__name__, str(err)


async def test_device_handler_answers_as_the_stock_one(sim: tuple[SimThread, SiteConfig]) -> None:
    running, cfg = sim
    faces = bacnet_faces(running)
    assert device_fast.ready()
    assert all(face.fast_rpm for face in faces)
    requests = [(ZONE4, ZONE4_SPEC), (BIG, BIG_SPEC),
                (ZONE4, [("analog-value,98", ["present-value"]), ("analog-value,99", ["all"])]),  # all unknown
                (ZONE4, [("analog-value,1", ["all"]), ("binary-input,1", ["required"]),
                         ("analog-input,2", ["optional"])]),
                (ZONE4, [("analog-value,1", ["present-value"]), ("analog-value,97", ["all"])])]  # a stock quirk
    async with adapter(cfg) as a:
        answers: dict[bool, list[Any]] = {}
        for fast in (True, False):
            if not fast:
                device_fast.uninstall_request_decoder()
            for face in faces:
                face.fast_rpm = fast
            try:
                answers[fast] = [await stock_client_rows(a, peer(cfg, dev), spec) for dev, spec in requests]
            finally:
                assert device_fast.install_request_decoder()
                for face in faces:
                    face.fast_rpm = True
    zone4, big, unknown, special, quirk = answers[True]
    assert len(zone4) == sum(len(p) for _, p in ZONE4_SPEC)
    assert len(big) == 4 * N + 1
    assert quirk == ("Error(read-property-multiple)", "device: operational-problem")  # stock's AttributeError
    assert unknown == ("Error(read-property-multiple)", "object: unknown-object")
    assert len(special) > 20
    for got, want in zip(answers[True], answers[False], strict=True):
        if got is special:  # all/required/optional come in the order of a Python set
            assert sorted(got) == sorted(want)
        else:
            assert got == want


def shown(readings: list[Reading]) -> list[tuple[Any, ...]]:
    return [(r.point_id, r.value, r.quality, r.reasons, r.unit, r.device_id, r.detail) for r in readings]


def extra_points() -> list[BacnetPoint]:
    return [BacnetPoint.model_validate({"id": "zone4.ghost", "device_id": ZONE4,
                                        "address": {"type": "analog-value", "instance": 99}}),
            BacnetPoint.model_validate({"id": "zone4.bad_prop", "device_id": ZONE4,
                                        "address": {"type": "analog-value", "instance": 1, "property": "file-size"}})]


async def test_adapter_readings_fast_and_stock_alike(sim: tuple[SimThread, SiteConfig]) -> None:
    running, cfg = sim
    faces = bacnet_faces(running)
    async with adapter(cfg) as a:
        points = [*a.points(), *extra_points()]
        assert bacnet_fast.usable()
        before = running.request_count(ZONE4)
        fast = await a.read(points)
        # One RPM for zone4's nine objects, one for the reliability of the one that is faulted.
        assert running.request_count(ZONE4) - before == 2
        bacnet_fast.uninstall()
        for face in faces:
            face.fast_rpm = False
        try:
            stock = await a.read(points)
        finally:
            assert bacnet_fast.install()
            for face in faces:
                face.fast_rpm = True
    assert shown(fast) == shown(stock)
    by_id = {r.point_id: r for r in fast}
    assert (by_id["zone4.temp"].quality, by_id["zone4.temp"].reasons) == (Quality.BAD,
                                                                           ["protocol_status:unreliable-other"])
    assert (by_id["zone4.heat_sp"].quality, by_id["zone4.heat_sp"].reasons) == (Quality.UNCERTAIN,
                                                                                 ["protocol_status:out_of_service"])
    assert by_id["big.p013"].reasons == ["protocol_status:unreliable-other", "protocol_status:out_of_service"]
    assert by_id["big.p012"].quality == Quality.GOOD  # in alarm says nothing against the value
    assert by_id["zone4.ghost"].reasons == ["protocol_status:unknown-object"]
    assert by_id["zone4.bad_prop"].reasons == ["protocol_status:unknown-property"]
    assert [by_id[f"big.p{i:03d}"].value for i in (1, 2, 200)] == [big_value(1), big_value(2), big_value(200)]
    good = [r for r in fast if r.quality == Quality.GOOD]
    assert len(good) == len(fast) - 7


async def test_fallback_when_the_decoder_is_out_or_fails(sim: tuple[SimThread, SiteConfig],
                                                         caplog: pytest.LogCaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    running, cfg = sim
    monkeypatch.setitem(bacnet_fast._state, "tripped", False)  # put back whatever this test trips
    async with adapter(cfg) as a:
        points = [*a.points(), *extra_points()]
        want = shown(await a.read(points))
        caplog.set_level(logging.WARNING, logger=bacnet_fast.__name__)

        bacnet_fast.uninstall()  # taken out (by anyone): bacpypes3's own path, one log line
        try:
            assert not bacnet_fast.usable()
            for _ in range(2):
                assert shown(await a.read(points)) == want
        finally:
            assert bacnet_fast.install()
        assert [r.message for r in caplog.records].count(
            "BACnet: the fast ReadPropertyMultiple decoder is not installed; using bacpypes3's own") == 1
        assert bacnet_fast.usable()
        caplog.clear()

        def broken(*_: Any) -> list[Row]:
            raise RuntimeError("a decoder bug")

        monkeypatch.setattr(bacnet_fast._Decoder, "rows", broken)
        before = running.request_count(ZONE4)
        assert shown(await a.read(points)) == want  # the batch read again by bacpypes3
        assert not bacnet_fast.usable()  # and from then on only by bacpypes3
        # The RPM twice (fast, then bacpypes3's), then the reliability one by bacpypes3 alone.
        assert running.request_count(ZONE4) - before == 3
        assert shown(await a.read(points)) == want
        assert [r.message for r in caplog.records] == ["BACnet: fast ReadPropertyMultiple off for good, "
                                                       "bacpypes3's own decoding serves (RuntimeError: a decoder bug)"]


async def test_small_device_apdu_alike(site_file: Callable[..., Path]) -> None:
    """A device that takes 128-byte APDUs and cannot segment: a request too long for it fails the
    same way on both paths, and an answer longer than 128 bytes (which bacpypes3 sizes to what the
    client accepts) reads the same."""
    cfg = load_config(site_file(bacnet=True, sim={"step_s": 60, "bacnet": {"max_apdu": 128, "segmentation": False}}))
    long_request = [(oid, ["present-value", "status-flags", "units", "object-name"]) for oid in ZONE4_OBJECTS]
    long_answer = [(oid, ["object-name", "description"]) for oid in ZONE4_OBJECTS[:4]]
    assert bacnet_fast.install()
    with SimThread(cfg):
        async with adapter(cfg) as a:
            addr = peer(cfg, ZONE4)
            await a.app.who_is(address=addr, timeout=2)  # its limits, as the adapter learns them
            vendor = await a.app.get_vendor_info(device_address=addr)
            fast = FastRpm()
            outcomes = []
            for use_fast in (True, False):
                try:
                    if use_fast:
                        await fast.request(a.app, addr, vendor, long_request)
                    else:
                        await a.app.read_property_multiple(addr, [x for o, p in long_request for x in (o, p)])
                    outcomes.append(None)
                except ErrorRejectAbortNack as err:
                    outcomes.append((type(err).__name__, str(err)))
            assert outcomes == [("AbortPDU", "segmentation-not-supported")] * 2
            rows = fast.rows(await fast.request(a.app, addr, vendor, long_answer), vendor)
            stock = await a.app.read_property_multiple(addr, [x for o, p in long_answer for x in (o, p)])
            assert same_form(rows) == same_form(stock)
            assert sum(len(r[3][1]) for r in same_form(rows)) > 128
