"""Ingest of devices that push changes (BACnet COV, OPC-UA data-change subscriptions): pushed
while subscribed, polled when not — through an outage and back; and the limits and units servers
publish filling what the site file leaves out.

The BACnet device (the sim's face) listens on a free UDP port that ``site_file`` picks, not on
47808, so that test modules running in parallel never share a port; test_bacnet_netns covers 47808."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from eaio.config import SimFaultSpec, SiteConfig, load_config
from eaio.models import Quality, utcnow
from eaio.pipeline import SqliteStore
from eaio.pipeline.ingest import Ingest
from eaio.sim.runner import SimThread
from helpers import until

pytestmark = pytest.mark.anyio


# protocol -> (device id, a writable point to change, a value inside its bounds)
CASES = {"bacnet": ("zone4-vav", "zone4.cool_sp", 24.5), "opcua": ("plant-plc", "chw.dp_sp", 75.0)}


@pytest.fixture(params=sorted(CASES))
def pushing_site(request: pytest.FixtureRequest, site_file: Callable[..., Path]) -> SiteConfig:
    """Only the protocol's device, polled every 0.3 s when not subscribed, failing fast."""
    protocol = request.param
    cfg = load_config(site_file(**{protocol: True}))
    cfg.devices = [d for d in cfg.devices if d.protocol == protocol]
    (dev,) = cfg.devices
    dev.poll_interval_s = 0.3
    conn: Any = dev.connection
    conn.timeout_s = 0.3 if protocol == "bacnet" else 1.0
    conn.breaker_reset_s = 0.3
    if protocol == "bacnet":
        conn.retries = 0
    else:
        conn.reconnect_min_s, conn.reconnect_max_s = 0.2, 0.5
    cfg.ingest.flush_interval_s = 0.05
    return cfg


@pytest.fixture
def building(pushing_site: SiteConfig) -> Iterator[SimThread]:
    with SimThread(pushing_site) as sim:
        yield sim


async def test_changes_arrive_pushed_and_polling_covers_an_outage(pushing_site: SiteConfig,
                                                                  building: SimThread) -> None:
    cfg = pushing_site
    protocol = cfg.devices[0].protocol
    device_id, changed, value = CASES[protocol]
    ids = [p.id for p in cfg.points()]
    probe = ids[0]
    async with SqliteStore.from_config(cfg) as store, Ingest(cfg, store=store) as ingest:
        # Every point lands in the store; with subscriptions on, they come pushed.
        await until(lambda: _all_stored(store, ids), "every point in the store")
        adapter: Any = ingest._adapters[protocol]
        await until(lambda: _async(len(adapter.pushed(cfg.points())) == len(ids)), "all points subscribed")
        pushed_before = ingest.stats().devices[device_id].pushed
        building.set_value(changed, value)  # a change of value, no poll needed
        await until(lambda: _latest_is(store, changed, value), "the pushed change")
        assert ingest.stats().devices[device_id].pushed > pushed_before

        # The device goes away: subscriptions lapse, polling takes over and records the failure.
        since = utcnow()
        building.inject(SimFaultSpec(kind="offline", target=device_id))
        await until(lambda: _failing(store, probe, since), f"comm_failure readings of {probe}", 20)
        building.clear_faults(device_id)
        # Back: the latest reading is good again (a subscription's first report of a steady
        # value is stamped as of subscribing, not when the value last changed, before the outage),
        # and the device is known to answer even when no point is left to poll.
        await until(lambda: _recovered(store, probe, since), f"a good {probe} reading after the failures", 20)
        await until(lambda: _async(len(adapter.pushed(cfg.points())) == len(ids)), "subscribed again", 20)
        await until(lambda: _async(ingest.stats().devices[device_id].last_ok is True), "the device answering", 20)


async def _async(value: bool) -> bool:
    return value


async def _all_stored(store: SqliteStore, ids: list[str]) -> bool:
    return {r.point_id for r in await store.latest(ids)} == set(ids)


async def _latest_is(store: SqliteStore, point_id: str, value: float) -> bool:
    latest = await store.latest([point_id])
    return bool(latest) and latest[0].value == pytest.approx(value)


async def _failing(store: SqliteStore, point_id: str, since: Any) -> bool:
    rows = await store.history(point_id, since, utcnow())
    return any(r.quality == Quality.BAD and "comm_failure" in r.reasons for r in rows)


async def _recovered(store: SqliteStore, point_id: str, since: Any) -> bool:
    """The latest reading since ``since`` is good and later than the last failed one."""
    rows = await store.history(point_id, since, utcnow())
    failed = [r.ts for r in rows if "comm_failure" in r.reasons]
    latest = max(rows, key=lambda r: r.ts, default=None)
    return bool(failed) and latest is not None and latest.quality == Quality.GOOD and latest.ts > max(failed)


# protocol -> (a point whose limits and unit ingest's site file leaves out, a value beyond the
# server's range, the unit the server reports): OPC-UA's EURange and EngineeringUnits; BACnet's
# max-pres-value and units.
SERVED_LIMITS = {"opcua": ("chw.dp_sp", 250.0, "kPa"), "bacnet": ("zone4.cool_sp", 40.0, "degC")}


@pytest.mark.parametrize("protocol", sorted(SERVED_LIMITS))
async def test_a_servers_range_and_unit_fill_what_the_site_file_leaves_out(
        protocol: str, site_file: Callable[..., Path]) -> None:
    point_id, beyond, unit = SERVED_LIMITS[protocol]
    served = load_config(site_file(**{protocol: True}))  # the sim serves range and unit from this one
    raw = served.model_dump(mode="json", exclude={"source"})
    raw["devices"] = [d for d in raw["devices"] if d["protocol"] == protocol]
    for p in raw["devices"][0]["points"]:
        p.pop("device_id", None)
        if p["id"] == point_id:
            assert p["limits"]["high"] < beyond  # what the server will say
            assert p["unit"] == unit
            p["limits"], p["unit"] = None, ""  # ingest's copy of the site knows neither
    assert served.source is not None
    bare_path = served.source.with_name("bare.yaml")
    bare_path.write_text(json.dumps(raw))
    bare = load_config(bare_path)
    with SimThread(served) as sim:
        async with SqliteStore.from_config(bare) as store, Ingest(bare, store=store) as ingest:
            assert ingest._validator.rule(point_id) is not None
            sim.set_value(point_id, beyond)  # beyond the server's range
            await until(lambda: _latest_is(store, point_id, beyond), "the out-of-range value stored")
            (latest,) = await store.latest([point_id])
            assert (latest.quality, latest.reasons, latest.unit) == (Quality.BAD, ["range_high"], unit)


async def test_a_bacnet_device_without_cov_is_polled_into_the_store(site_file: Callable[..., Path]) -> None:
    cfg = load_config(site_file(bacnet=True, sim={"bacnet": {"no_cov": ["zone4-vav"]}}))
    cfg.devices = [d for d in cfg.devices if d.protocol == "bacnet"]
    (dev,) = cfg.devices
    assert dev.connection.cov  # the site wants COV; the device refuses it
    dev.poll_interval_s = 0.3
    cfg.ingest.flush_interval_s = 0.05
    ids = [p.id for p in cfg.points()]
    with SimThread(cfg) as sim:
        async with SqliteStore.from_config(cfg) as store, Ingest(cfg, store=store) as ingest:
            await until(lambda: _all_stored(store, ids), "every point in the store")
            adapter: Any = ingest._adapters["bacnet"]
            assert adapter.pushed(cfg.points()) == []
            assert adapter.health()[0]["cov_refused"] == len(ids)
            sim.set_value("zone4.cool_sp", 24.5)  # a change reaches the store by polling alone
            await until(lambda: _latest_is(store, "zone4.cool_sp", 24.5), "the polled change")
            assert ingest.stats().devices["zone4-vav"].pushed == 0
