"""The OPC-UA adapter on the wire: against the virtual building's OPC-UA face (plant-plc, an
asyncua server on 127.0.0.1), with security, logins, subscriptions and outages."""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from asyncua import Server, ua

from certs import make_certs
from conftest import free_port
from eaio.config import SimFaultSpec, SiteConfig, load_config
from eaio.errors import DeviceError
from eaio.models import OpcuaDevice, OpcuaPoint, Quality, ReadingBatch, Reason, to_us, utcnow
from eaio.protocol_adapters import build_adapter
from eaio.protocol_adapters.opcua import OpcuaAdapter
from eaio.sim.runner import SimThread
from helpers import eventually

pytestmark = pytest.mark.anyio

DEVICE = "plant-plc"
CHW = ["chw.dp", "chw.dp_sp", "chw.pump_cmd", "chw.pump_speed", "chw.flow", "chw.rt", "chw.pump_power"]
# A lost server is retried after 0.2 s, then 0.4 s, ... at most 1 s apart; a request waits 1 s.
FAST = {"timeout_s": 1.0, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "breaker_failures": 2,
        "breaker_reset_s": 0.5, "publishing_interval_ms": 100}
HISTORY = ["chw.rt", "chw.flow", "chw.dp"]

Building = Callable[..., tuple[SimThread, SiteConfig]]


@pytest.fixture
def building(site_file: Callable[..., Path]) -> Iterator[Building]:
    """Start the example site's OPC-UA PLC in the sim (nearly frozen physics, so values hold still
    between the sim's word and the wire's). ``sim_opcua`` sets the face (certificate, login...),
    ``connection`` the adapter's side; ``start=False`` only writes the site."""
    with ExitStack() as stack:
        def make(*, connection: dict[str, Any] | None = None, start: bool = True,
                 **sim_opcua: Any) -> tuple[SimThread | None, SiteConfig]:
            path = site_file(opcua=True, sim={"speed": 0.001, "opcua": {"history": HISTORY, **sim_opcua}})
            raw = load_config(path).model_dump(mode="json", exclude={"source"})
            raw["devices"] = [d for d in raw["devices"] if d["protocol"] == "opcua"]
            for dev in raw["devices"]:
                for p in dev["points"]:
                    p.pop("device_id", None)
                dev["connection"].update({**FAST, **(connection or {})})
            path.write_text(json.dumps(raw))
            cfg = load_config(path)
            return (stack.enter_context(SimThread(cfg)) if start else None), cfg

        yield make  # type: ignore[misc]


@asynccontextmanager
async def adapter(cfg: SiteConfig, **connection: Any) -> AsyncIterator[OpcuaAdapter]:
    """The adapter over the site's device, ``connection`` changed on the adapter's side only."""
    dev = device(cfg)
    if connection:
        dev = OpcuaDevice.model_validate({**dev.model_dump(), "connection": {**dev.connection.model_dump(),
                                                                             **connection}})
    async with OpcuaAdapter([dev]) as a:
        yield a


def device(cfg: SiteConfig) -> OpcuaDevice:
    return cfg.devices_for("opcua")[0]


def points(cfg: SiteConfig) -> list[OpcuaPoint]:
    return list(device(cfg).points)


def by_id(cfg: SiteConfig) -> dict[str, OpcuaPoint]:
    return {p.id: p for p in points(cfg)}


def same(got: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)


async def all_good(a: OpcuaAdapter, cfg: SiteConfig) -> bool:
    return all(r.quality == Quality.GOOD for r in await a.read(points(cfg)))


async def test_reads_every_point_in_one_request(building: Building) -> None:
    sim, cfg = building()
    a = build_adapter("opcua", cfg.devices_for("opcua"), role="ingest")
    assert isinstance(a, OpcuaAdapter)
    async with a:
        asked = []
        for _ in range(3):  # asyncua's status probe (a Read too) may fall into one window
            before, mine = sim.request_count(DEVICE), a.request_count()
            sent = utcnow()
            readings = await a.read(points(cfg))
            answered = utcnow()
            asked.append((sim.request_count(DEVICE) - before, a.request_count() - mine))
        assert (1, 1) in asked, asked  # seven nodes, one Read
        assert [r.point_id for r in readings] == CHW
        for r, p in zip(readings, points(cfg), strict=True):
            assert r.quality == Quality.GOOD, (r.point_id, r.reasons, r.detail)
            assert same(r.value, sim.value(r.point_id)), (r.point_id, r.value, sim.value(r.point_id))
            assert (r.unit, r.device_id) == (p.unit, DEVICE)
            assert sent <= r.ts <= answered  # when the Read was answered, not when the value changed
        assert readings[2].value is sim.value("chw.pump_cmd")  # a bool point reads a bool
        health = a.health()[0]
        assert {k: health[k] for k in ("device_id", "online", "session", "sessions", "subscriptions", "failures")} \
            == {"device_id": DEVICE, "online": True, "session": True, "sessions": 1, "subscriptions": 0, "failures": 0}
        assert health["endpoint"] == device(cfg).connection.endpoint


async def test_writes_are_coerced_or_refused(building: Building) -> None:
    sim, cfg = building()
    pts = by_id(cfg)
    ghost = OpcuaPoint.model_validate({"id": "chw.ghost", "device_id": DEVICE, "writable": True,
                                       "address": {"node_id": "ns=2;s=ChwLoop.Ghost"}})
    stranger = OpcuaPoint.model_validate({"id": "x.y", "device_id": "elsewhere", "address": {"node_id": "i=1"}})
    cases: list[tuple[Any, str, str]] = [
        (lambda a: a.write(pts["chw.dp"], 50.0), "not_writable", "BadUserAccessDenied"),  # a measurement
        (lambda a: a.write(ghost, 1.0), "invalid_argument", "no node ns=2;s=ChwLoop.Ghost"),
        (lambda a: a.write(pts["chw.dp_sp"], math.nan), "invalid_argument", "finite"),
        (lambda a: a.write(pts["chw.pump_cmd"], 0.5), "invalid_argument", "true/false"),
        (lambda a: a.write(stranger, 1.0), "unknown_point", "x.y"),
        (lambda a: a.read_nodes(DEVICE, ["ns=2;x=ChwLoop"]), "invalid_argument", "'ns=2;x=ChwLoop'"),
        (lambda a: a.browse(DEVICE, "ns=2;s=ChwLoop.Ghost"), "invalid_argument", "no node ns=2;s=ChwLoop.Ghost"),
        (lambda a: a.limits(ghost), "invalid_argument", "no node ns=2;s=ChwLoop.Ghost"),
        (lambda a: a.browse("nope"), "invalid_argument", "no OPC-UA device 'nope'"),
    ]
    async with adapter(cfg) as a:
        await a.write(pts["chw.dp_sp"], 70)  # an int, to a Double node
        await eventually(lambda: sim.value("chw.dp_sp") == 70.0, 5)
        (r,) = await a.read([pts["chw.dp_sp"]])
        assert r.value == 70.0
        assert isinstance(r.value, float)
        now = sim.value("chw.pump_cmd")
        await a.write(pts["chw.pump_cmd"], 0 if now else 1)  # 0/1 to a Boolean node
        await eventually(lambda: sim.value("chw.pump_cmd") is (not now), 5)
        await a.write(pts["chw.pump_cmd"], now)
        await eventually(lambda: sim.value("chw.pump_cmd") is now, 5)

        for run, code, text in cases:
            with pytest.raises(DeviceError) as info:
                await run(a)
            assert info.value.code == code, (text, str(info.value))
            assert text in str(info.value)
        by_uri = OpcuaPoint.model_validate({"id": "chw.flow2", "device_id": DEVICE,
                                            "address": {"node_id": "nsu=urn:eaio:sim;s=ChwLoop.Flow"}})
        nowhere = OpcuaPoint.model_validate({"id": "chw.nowhere", "device_id": DEVICE,
                                             "address": {"node_id": "nsu=urn:elsewhere;s=ChwLoop.Flow"}})
        good, bad, unknown, flow2, lost = await a.read([pts["chw.flow"], ghost, stranger, by_uri, nowhere])
        assert good.quality == Quality.GOOD
        assert (flow2.quality, flow2.value) == (Quality.GOOD, good.value)  # the namespace found by its URI
        assert lost.reasons == ["protocol_status:BadNodeIdInvalid"]
        assert (lost.detail or "").endswith("the server has no namespace 'urn:elsewhere' "
                                            "(node nsu=urn:elsewhere;s=ChwLoop.Flow)"), lost.detail
        assert (bad.quality, bad.value, bad.reasons) == (Quality.BAD, None, ["protocol_status:BadNodeIdUnknown"])
        assert (bad.detail or "").startswith("invalid_argument: plant-plc at opc.tcp://"), bad.detail
        assert "ns=2;s=ChwLoop.Ghost" in (bad.detail or "")
        assert unknown.reasons == ["unknown_point"]
        assert a.health()[0]["failures"] == 0  # refusals are answers, not failures


async def test_subscriptions_push_changes_and_come_back_after_an_outage(building: Building) -> None:
    sim, cfg = building()
    pts = points(cfg)
    got: list[ReadingBatch] = []

    async def collect(batch: ReadingBatch) -> None:
        got.append(batch)

    def seen(point_id: str, value: float) -> bool:
        return any(pid == point_id and v == value for b in got for pid, v in zip(b.point_id, b.value, strict=True))

    async with adapter(cfg) as a:
        assert a.pushed(pts) == []
        await a.subscribe(pts, collect)
        assert [p.id for p in a.pushed(pts)] == CHW  # the example PLC has subscribe: true
        assert a.health()[0]["subscriptions"] == len(CHW)
        await eventually(lambda: {pid for b in got for pid in b.point_id} == set(CHW), 5)  # first values
        session = (await a.server_status(DEVICE))["session_id"]
        sim.set_value("chw.dp_sp", 65.0)
        await eventually(lambda: seen("chw.dp_sp", 65.0), 5)
        batch = next(b for b in got if "chw.dp_sp" in b.point_id)
        assert batch.unit[batch.point_id.index("chw.dp_sp")] == "kPa"
        assert batch.device_id[0] == DEVICE

        sim.inject(SimFaultSpec(kind="offline", target=DEVICE))
        await eventually(lambda: a.pushed(pts) == [], 5)  # noticed without a single poll
        sent = a.request_count()
        readings = await a.read(pts)
        assert a.request_count() - sent == 0  # the session is gone: nothing is sent, nothing waits
        for r in readings:
            assert (r.quality, r.value, r.reasons) == (Quality.BAD, None, [Reason.COMM_FAILURE])
            assert (r.detail or "").startswith("device_offline: plant-plc at opc.tcp://"), r.detail
        assert a.health()[0]["session"] is False
        with pytest.raises(DeviceError) as info:
            await a.write(pts[1], 60.0)
        assert info.value.code == "device_offline"

        sim.clear_faults()
        await eventually(lambda: len(a.pushed(pts)) == len(CHW), 10)  # a new session, subscribed anew
        health = a.health()[0]
        assert (health["online"], health["session"], health["sessions"]) == (True, True, 2)
        assert (await a.server_status(DEVICE))["session_id"] != session
        sim.set_value("chw.dp_sp", 66.5)
        await eventually(lambda: seen("chw.dp_sp", 66.5), 5)
        assert await all_good(a, cfg)


async def test_a_read_is_stamped_when_answered_and_a_change_when_it_happened() -> None:
    """A server that stamps a value when it changes (Part 4, 7.7.3), here a setpoint last written
    an hour ago: a Read is stamped when answered (the hour-old stamp would look stale); a new
    subscription's first report, the current value, is stamped as of subscribing; a later change keeps
    the time the server gives it, or with ``change_time: received`` (a PLC whose clock is off)
    the time it arrived. Two devices on the one server: one of each."""
    port = free_port()
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/stamps")
    ns = await server.register_namespace("urn:eaio:test:stamps")
    node = await server.nodes.objects.add_variable(ua.NodeId("Setpoint", ns), "Setpoint", 60.0)
    hour_ago = utcnow() - timedelta(hours=1)
    await server.write_attribute_value(node.nodeid, ua.DataValue(ua.Variant(60.0, ua.VariantType.Double),
                                                                 SourceTimestamp=hour_ago, ServerTimestamp=hour_ago))
    devices = [OpcuaDevice.model_validate({
        "id": dev_id, "protocol": "opcua",
        "connection": {"endpoint": f"opc.tcp://127.0.0.1:{port}/stamps", "subscribe": True, "change_time": stamp,
                       **FAST},
        "points": [{"id": f"{dev_id}.sp", "unit": "kPa",
                    "address": {"node_id": "nsu=urn:eaio:test:stamps;s=Setpoint"}}],
    }) for dev_id, stamp in (("plc", "source"), ("skewed", "received"))]
    pts = [p for d in devices for p in d.points]
    got: dict[str, list[tuple[float, int]]] = {"plc.sp": [], "skewed.sp": []}

    async def collect(batch: ReadingBatch) -> None:
        for pid, value, ts in zip(batch.point_id, batch.value, batch.ts_us, strict=True):
            got[pid].append((value, ts))  # type: ignore[arg-type]

    async with server, OpcuaAdapter(devices) as a:
        sent = utcnow()
        readings = await a.read(pts)
        for r in readings:
            assert (r.quality, r.value) == (Quality.GOOD, 60.0), (r.reasons, r.detail)
            assert sent <= r.ts <= utcnow()

        subscribing = to_us(utcnow())
        await a.subscribe(pts, collect)
        await eventually(lambda: all(got.values()), 5)
        for (value, ts), in got.values():
            assert value == 60.0
            assert subscribing <= ts <= to_us(utcnow())  # as of subscribing, not an hour ago

        changed = (utcnow() - timedelta(seconds=2)).replace(microsecond=250_000)  # the PLC's own time
        writing = to_us(utcnow())
        await server.write_attribute_value(node.nodeid, ua.DataValue(ua.Variant(61.5, ua.VariantType.Double),
                                                                     SourceTimestamp=changed, ServerTimestamp=utcnow()))
        await eventually(lambda: all(len(v) == 2 for v in got.values()), 5)
        assert got["plc.sp"][1] == (61.5, to_us(changed))
        value, ts = got["skewed.sp"][1]
        assert value == 61.5
        assert writing <= ts <= to_us(utcnow())


async def test_a_deadband_holds_back_changes_smaller_than_it(building: Building) -> None:
    """Two points on the setpoint node, subscribed together: one with an absolute deadband of 0.5,
    one without. The one without proves that each change reached the server and was published."""
    sim, cfg = building()
    sp = by_id(cfg)["chw.dp_sp"]
    # Points outside the site file (new ids) are taken as given, deadband and all.
    banded = OpcuaPoint.model_validate({**sp.model_dump(), "id": "chw.dp_sp_banded", "deadband": 0.5,
                                        "subscribe": True})
    plain = OpcuaPoint.model_validate({**sp.model_dump(), "id": "chw.dp_sp_all", "deadband": None,
                                       "subscribe": True})
    got: list[tuple[str, float]] = []

    async def collect(batch: ReadingBatch) -> None:
        got.extend(zip(batch.point_id, batch.value, strict=True))

    def values(point_id: str) -> list[float]:
        return [v for pid, v in got if pid == point_id]

    sim.set_value("chw.dp_sp", 65.0)
    await eventually(lambda: sim.value("chw.dp_sp") == 65.0, 5)
    async with adapter(cfg) as a:
        await a.subscribe([banded, plain], collect)
        assert {p.id for p in a.pushed([banded, plain])} == {banded.id, plain.id}
        await eventually(lambda: values(banded.id) == [65.0] and values(plain.id) == [65.0], 5)  # first values

        sim.set_value("chw.dp_sp", 65.3)  # 0.3: inside the deadband
        await eventually(lambda: 65.3 in values(plain.id), 5)
        sim.set_value("chw.dp_sp", 66.0)  # 0.7 from 65.3, 1.0 from 65.0: beyond it
        await eventually(lambda: 66.0 in values(plain.id) and 66.0 in values(banded.id), 5)
        # One subscription, one publish stream: had 65.3 been sent for the banded item, it would
        # have come before 66.0 (in the same publish as the plain item's 65.3, or earlier).
        assert values(banded.id) == [65.0, 66.0], got
        assert values(plain.id) == [65.0, 65.3, 66.0], got


async def test_a_server_that_hangs_is_noticed_by_its_silence(building: Building) -> None:
    sim, cfg = building(connection={"timeout_s": 0.5})  # keep-alives every 0.5 s
    pts = points(cfg)
    async with adapter(cfg) as a:
        await a.subscribe(pts, _ignore)
        assert len(a.pushed(pts)) == len(CHW)
        async with anyio.create_task_group() as tg:
            # The sim's loop, its OPC-UA server with it, stops for 3 s: the socket stays open, silent.
            tg.start_soon(partial(anyio.to_thread.run_sync, sim.call, lambda _: time.sleep(3)))
            await anyio.sleep(0.1)
            sent = a.request_count()
            readings = await a.read(pts)
            assert a.request_count() - sent == 1  # one Read, one timeout: seven nodes in one request
            assert all((r.detail or "").startswith("timeout: plant-plc at ") for r in readings), readings[0].detail
            await eventually(lambda: a.pushed(pts) == [], 2.5)  # no keep-alives: the session is given up
            assert a.health()[0]["session"] is False
        await eventually(lambda: len(a.pushed(pts)) == len(CHW), 10)  # a new session, subscribed anew
        assert a.health()[0]["sessions"] >= 2
        assert await all_good(a, cfg)


async def test_a_server_that_is_not_there_yet_is_connected_to_later(building: Building) -> None:
    _, cfg = building(start=False)
    async with adapter(cfg) as a:  # nothing listens: opening does not fail
        (r,) = await a.read(points(cfg)[:1])
        assert r.quality == Quality.BAD
        assert (r.detail or "").startswith("device_offline: plant-plc at opc.tcp://"), r.detail
        assert "connection refused" in (r.detail or "")
        assert a.health()[0]["online"] is False
        with SimThread(cfg):
            await eventually(lambda: all_good(a, cfg), 10)
        await eventually(lambda: a.health()[0]["session"] is False, 5)  # the sim stopped: gone again


async def test_browse_history_status_and_limits(building: Building) -> None:
    sim, cfg = building()
    pts = by_id(cfg)
    async with adapter(cfg) as a:
        tree = await a.browse(DEVICE, depth=2)
        nodes = {n["node_id"]: n for n in tree}
        loop = nodes["ns=2;s=ChwLoop"]
        assert (loop["node_class"], loop["depth"], loop["parent"], loop["browse_name"]) == ("Object", 1, "i=85",
                                                                                            "2:ChwLoop")
        for p in points(cfg):
            n = nodes[p.address.node_id]
            assert (n["parent"], n["depth"], n["node_class"]) == ("ns=2;s=ChwLoop", 2, "Variable")
            assert n["data_type"] == ("Boolean" if p.is_binary else "Double")
        assert len(await a.browse(DEVICE, depth=2, limit=3)) == 3
        below = await a.browse(DEVICE, "ns=2;s=ChwLoop")
        assert {n["node_id"] for n in below} == {p.address.node_id for p in points(cfg)}
        json.dumps(tree)

        start, end = utcnow() - timedelta(minutes=5), utcnow() + timedelta(minutes=1)
        await eventually(lambda: _history(a, pts["chw.rt"], start, end), 5)  # the sim's steps are historized
        history = await a.read_history(pts["chw.rt"], None, start, end)
        stamps = [datetime.fromisoformat(h["ts"]) for h in history]
        assert stamps == sorted(stamps)
        assert all(h["status"] == "Good" and isinstance(h["value"], float) for h in history)
        assert len(await a.read_history(pts["chw.rt"], None, start, end, limit=1)) == 1
        raw = await a.read_history(DEVICE, "ns=2;s=ChwLoop.ReturnTemp", start, end)
        assert [h["value"] for h in raw][:len(history)] == [h["value"] for h in history]
        assert await a.read_history(pts["chw.dp_sp"], None, start, end) == []  # not historized

        status = await a.server_status(DEVICE)
        assert (status["connected"], status["state"], status["security_policy"]) == (True, "Running", "None")
        assert status["product"]
        assert status["session_id"]
        json.dumps(status)

        assert await a.limits(pts["chw.dp"]) == {"eu_range": [0.0, 200.0], "unit": "kPa"}
        assert await a.limits(pts["chw.rt"]) == {"eu_range": [0.0, 30.0], "unit": "degC"}
        assert await a.limits(pts["chw.pump_cmd"]) == {"eu_range": None, "unit": None}

        flow, clock = await a.read_nodes(DEVICE, ["ns=2;s=ChwLoop.Flow", "i=2258"])
        assert (flow["status"], flow["data_type"]) == ("Good", "Double")
        assert same(flow["value"], sim.value("chw.flow"))
        assert clock["data_type"] == "DateTime"
        assert datetime.fromisoformat(clock["value"]).tzinfo is not None


async def _history(a: OpcuaAdapter, p: OpcuaPoint, start: datetime, end: datetime) -> bool:
    return len(await a.read_history(p, None, start, end)) >= 2


async def test_secure_connections(building: Building, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    sim, cfg = building(certificate=str(certs.server_cert), private_key=str(certs.server_key))
    for mode in ("SignAndEncrypt", "Sign"):
        security = {"policy": "Basic256Sha256", "mode": mode, "certificate": str(certs.client_cert),
                    "private_key": str(certs.client_key)}
        if mode == "Sign":  # the server's certificate given, rather than taken as it presents it
            security["server_certificate"] = str(certs.server_cert)
        async with adapter(cfg, security=security) as a:
            readings = await a.read(points(cfg))
            assert all(r.quality == Quality.GOOD for r in readings), [(r.point_id, r.detail) for r in readings]
            assert same(readings[0].value, sim.value("chw.dp"))
            status = await a.server_status(DEVICE)
            assert (status["security_policy"], status["security_mode"]) == ("Basic256Sha256", mode)
            assert a.health()[0]["security"] == f"Basic256Sha256/{mode}"


async def test_login(building: Building) -> None:
    sim, cfg = building(username="eaio", password="s3cret")
    async with adapter(cfg, username="eaio", password="s3cret") as a:
        assert await all_good(a, cfg)
        await a.write(by_id(cfg)["chw.dp_sp"], 75.0)
        await eventually(lambda: sim.value("chw.dp_sp") == 75.0, 5)
    async with adapter(cfg, username="eaio", password="wrong") as a:
        (r,) = await a.read(points(cfg)[:1])
        assert r.quality == Quality.BAD
        assert r.detail == ("device_offline: plant-plc at " + device(cfg).connection.endpoint + ": no session "
                            "(device_offline: login refused for user 'eaio' (BadUserAccessDenied): check username "
                            "and password); next try in " + r.detail.rsplit("next try in ", 1)[1]), r.detail
        health = a.health()[0]
        assert health["last_error"] == ("device_offline: login refused for user 'eaio' (BadUserAccessDenied): "
                                        "check username and password")
        assert (health["online"], health["session"]) == (False, False)
    async with adapter(cfg) as a:  # no login at all
        assert "anonymous login refused" in str(a.health()[0]["last_error"])


async def test_not_open_and_unknown_device() -> None:
    dev = OpcuaDevice.model_validate({
        "id": "far", "protocol": "opcua", "connection": {"endpoint": "opc.tcp://127.0.0.1:9/x", **FAST},
        "points": [{"id": "far.t", "address": {"node_id": "ns=2;s=T"}}],
    })
    a = OpcuaAdapter([dev])
    assert a.point("far.t") is not None
    assert [p.id for p in a.points()] == ["far.t"]
    assert a.health()[0]["online"] is None
    with pytest.raises(RuntimeError):
        await a.read(dev.points)
    with pytest.raises(RuntimeError):
        await a.subscribe(dev.points, _ignore)
    async with a:
        (r,) = await a.read(dev.points)
        assert r.reasons == [Reason.COMM_FAILURE]
        assert (r.detail or "").startswith("device_offline: far at opc.tcp://127.0.0.1:9/x: no session")
        status = await a.server_status("far")
        assert (status["connected"], status["device_id"]) == (False, "far")
        assert status["last_error"]


async def test_a_server_that_never_answers_a_connect_is_device_offline() -> None:
    """A listener that accepts TCP but never says OPC-UA Hello back, as a wedged or half-dead
    server does: no session was ever made, so the server is offline to EAIO, not slow."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        endpoint = f"opc.tcp://127.0.0.1:{listener.getsockname()[1]}"
        dev = OpcuaDevice.model_validate({
            "id": "mute", "protocol": "opcua", "connection": {"endpoint": endpoint, **FAST},
            "points": [{"id": "mute.t", "address": {"node_id": "ns=2;s=T"}}],
        })
        async with OpcuaAdapter([dev]) as a:
            await eventually(lambda: a.health()[0]["online"] is False, 10)
            last_error = str(a.health()[0]["last_error"])
            assert last_error == "device_offline: no answer within 1.0s while connecting (timeout)", last_error
            (r,) = await a.read(dev.points)
            assert r.reasons == [Reason.COMM_FAILURE]
            assert (r.detail or "").startswith(f"device_offline: mute at {endpoint}: no session "
                                               "(device_offline: no answer within 1.0s"), r.detail


async def _ignore(batch: ReadingBatch) -> None:
    pass
