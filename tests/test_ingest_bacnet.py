"""Ingest of a BACnet controller: changes of value pushed while subscribed, polling when not."""

from __future__ import annotations

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


@pytest.fixture
def bac_site(site_file: Callable[..., Path]) -> SiteConfig:
    """Only the BACnet controller, polled every 0.3 s when not subscribed, failing fast."""
    cfg = load_config(site_file(bacnet=True))
    cfg.devices = [d for d in cfg.devices if d.protocol == "bacnet"]
    (dev,) = cfg.devices
    dev.poll_interval_s = 0.3
    dev.connection.timeout_s = 0.3
    dev.connection.retries = 0
    dev.connection.breaker_reset_s = 0.3
    cfg.ingest.flush_interval_s = 0.05
    return cfg


@pytest.fixture
def building(bac_site: SiteConfig) -> Iterator[SimThread]:
    with SimThread(bac_site) as sim:
        yield sim


async def test_changes_of_value_arrive_and_polling_covers_an_outage(bac_site: SiteConfig,
                                                                    building: SimThread) -> None:
    ids = [p.id for p in bac_site.points()]
    async with SqliteStore.from_config(bac_site) as store, Ingest(bac_site, store=store) as ingest:
        # Every point lands in the store; with cov on, they come by subscription.
        await until(lambda: _all_stored(store, ids), "every zone4 point in the store")
        adapter: Any = ingest._adapters["bacnet"]
        await until(lambda: _async(len(adapter.pushed(bac_site.points())) == len(ids)), "all points subscribed")
        pushed_before = ingest.stats().devices["zone4-vav"].pushed
        building.set_value("zone4.cool_sp", 24.5)  # a change of value, no poll needed
        await until(lambda: _latest_is(store, "zone4.cool_sp", 24.5), "the pushed setpoint change")
        assert ingest.stats().devices["zone4-vav"].pushed > pushed_before

        # The device goes away: its subscriptions lapse, polling takes over and records the failure.
        since = utcnow()
        building.inject(SimFaultSpec(kind="offline", target="zone4-vav"))
        await until(lambda: _failing(store, "zone4.temp", since), "comm_failure readings of zone4.temp", 20)
        building.clear_faults("zone4-vav")
        back = utcnow()
        await until(lambda: _good_since(store, "zone4.temp", back), "good zone4.temp readings again", 20)
        await until(lambda: _async(len(adapter.pushed(bac_site.points())) == len(ids)), "re-subscribed", 20)


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


async def _good_since(store: SqliteStore, point_id: str, since: Any) -> bool:
    rows = await store.history(point_id, since, utcnow())
    return any(r.quality == Quality.GOOD for r in rows)
