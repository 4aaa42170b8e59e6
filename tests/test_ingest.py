"""Ingest on the wire: the real Modbus adapter polling the virtual building over loopback."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from eaio.config import SimFaultSpec, SiteConfig, load_config
from eaio.errors import StoreError
from eaio.models import Quality, Reading, utcnow
from eaio.pipeline import SqliteStore
from eaio.pipeline.energy import derived_points
from eaio.pipeline.ingest import Ingest, poll_groups
from helpers import until

T = TypeVar("T")
POLL_S = 0.2


def fast(cfg: SiteConfig) -> SiteConfig:
    """Short polls and a quick circuit breaker, so a test sees many polls in a second or two."""
    for dev in cfg.devices:
        dev.poll_interval_s = POLL_S
        dev.connection.timeout_s = 0.5
        dev.connection.retries = 0
        dev.connection.breaker_failures = 1
        dev.connection.breaker_reset_s = 0.3
    return cfg


@pytest.fixture
def fast_site(site: SiteConfig) -> SiteConfig:
    return fast(site)


@pytest.fixture
def building(fast_site: SiteConfig) -> Iterator[Any]:
    from eaio.sim.runner import SimThread

    with SimThread(fast_site) as running:
        yield running


def derived_ids(cfg: SiteConfig) -> set[str]:
    """Ids of the energy readings ingest derives as demand intervals close (only a run that crosses
    a quarter hour has them)."""
    return {p.id for p in derived_points(cfg)}


def device_points(cfg: SiteConfig, device_id: str) -> list[str]:
    return [p.id for d in cfg.devices if d.id == device_id for p in d.points]


async def newest(store: SqliteStore, point_ids: Sequence[str], since: datetime) -> list[Reading]:
    return [r for r in await store.latest(point_ids) if r.ts > since]


@pytest.mark.anyio
async def test_every_device_lands_in_the_store(fast_site: SiteConfig, building: Any) -> None:
    all_ids = [p.id for p in fast_site.points()]
    async with Ingest(fast_site) as ingest:
        store = ingest.store
        assert isinstance(store, SqliteStore)

        async def all_points_twice() -> bool:
            counts = [len(await store.history(pid, datetime.min.replace(tzinfo=utcnow().tzinfo), utcnow()))
                      for pid in all_ids]
            return min(counts) >= 2

        await until(all_points_twice, "two readings of every point")
        latest = {r.point_id: r for r in await store.latest()}
        stats = ingest.stats()

    # Energy readings derived when a 15-minute interval closes during the test come on top.
    assert set(latest) - derived_ids(fast_site) == set(all_ids)
    assert not [r for r in latest.values() if "comm_failure" in r.reasons]
    for zone in ("zone1", "zone2", "zone3"):
        temp = latest[f"{zone}.temp"]
        assert temp.quality == Quality.GOOD, temp
        assert isinstance(temp.value, float)
        assert 15.0 < temp.value < 35.0, temp  # an office, not the limits' 5..40
        assert temp.unit == "degC"
        assert temp.device_id == "zones-ctrl"
    assert latest["ahu1.fan_status"].value in (True, False)
    assert stats.readings_stored >= 2 * len(all_ids)
    assert stats.store_errors == 0
    for dev in fast_site.devices:
        ds = stats.devices[dev.id]
        assert ds.polls >= 2
        assert ds.last_ok is True
        assert ds.failed_polls == 0
    # Everything polled before the exit was flushed on the way out.
    assert stats.backlog == 0
    async with SqliteStore.from_config(fast_site) as reopened:
        assert (await reopened.counts()).total == stats.readings_stored


@pytest.mark.anyio
async def test_an_offline_device_yields_comm_failures_while_others_are_stored(
    fast_site: SiteConfig, building: Any
) -> None:
    plant = device_points(fast_site, "plant-ctrl")
    others = [pid for pid in (p.id for p in fast_site.points()) if pid not in plant]
    async with Ingest(fast_site) as ingest:
        store = ingest.store
        assert isinstance(store, SqliteStore)
        await until(lambda: newest(store, plant, datetime.min.replace(tzinfo=utcnow().tzinfo)), "plant readings")

        building.inject(SimFaultSpec(kind="offline", target="plant-ctrl"))
        t_off = utcnow()

        async def plant_failing() -> list[Reading]:
            rows = await newest(store, plant, t_off)
            return rows if len(rows) == len(plant) and all("comm_failure" in r.reasons for r in rows) else []

        failing = await until(plant_failing, "comm_failure readings of every plant-ctrl point")
        for r in failing:
            assert (r.value, r.quality, r.device_id) == (None, Quality.BAD, "plant-ctrl")
            assert r.detail
        # After stale_after_polls polls without a good sample the validator adds "stale".

        async def plant_stale() -> list[Reading]:
            rows = await newest(store, plant, t_off)
            return rows if rows and all("stale" in r.reasons for r in rows) else []

        await until(plant_stale, "plant-ctrl readings marked stale")
        # Meanwhile the other devices keep being polled and stored, good.
        t_mid = utcnow()

        async def others_fresh() -> list[Reading]:
            rows = await newest(store, others, t_mid)
            return rows if len(rows) == len(others) else []

        fresh = await until(others_fresh, "fresh readings of the devices still online")
        assert not [r for r in fresh if "comm_failure" in r.reasons]
        ds = ingest.stats().devices["plant-ctrl"]
        assert ds.last_ok is False
        assert ds.failed_polls >= 1
        assert str(ds.last_error).split(":")[0] in ("device_offline", "timeout")

        building.clear_faults()
        t_back = utcnow()

        async def plant_back() -> list[Reading]:
            rows = await newest(store, plant, t_back)
            return rows if len(rows) == len(plant) and not any("comm_failure" in r.reasons for r in rows) else []

        await until(plant_back, "plant-ctrl readings without comm_failure after the fault is cleared")
        assert ingest.stats().devices["plant-ctrl"].last_ok is True
        # The other devices were never marked failing.
        assert all(ingest.stats().devices[d].failed_polls == 0 for d in ("ahu1-ctrl", "zones-ctrl", "main-meter"))


class FlakyStore(SqliteStore):
    """A real SqliteStore whose writes can be made to fail, as a full disk or a locked file would."""

    failing = False

    async def write(self, readings: Sequence[Reading]) -> int:
        if self.failing:
            raise StoreError("disk I/O error (test)", retryable=True)
        return await super().write(readings)


@pytest.mark.anyio
async def test_a_failing_store_keeps_readings_and_polling_goes_on(fast_site: SiteConfig, building: Any) -> None:
    async with FlakyStore(fast_site.sqlite_path()) as store:
        store.failing = True
        async with Ingest(fast_site, store=store) as ingest:

            async def backlog_growing() -> bool:
                s = ingest.stats()
                return s.store_errors >= 2 and s.backlog >= 2 * len(fast_site.points())

            await until(backlog_growing, "store errors and a growing backlog")
            assert ingest.stats().readings_stored == 0
            assert "disk I/O error" in str(ingest.stats().last_store_error)

            store.failing = False

            async def drained() -> bool:
                s = ingest.stats()
                return s.readings_stored >= 2 * len(fast_site.points()) and s.backlog < len(fast_site.points())

            await until(drained, "the backlog to drain once the store is back")
        stats = ingest.stats()
        assert (await store.counts()).total == stats.readings_stored
        assert stats.dropped == 0


@pytest.mark.anyio
async def test_a_full_backlog_drops_the_oldest(fast_site: SiteConfig, building: Any) -> None:
    limit = 30
    async with FlakyStore(fast_site.sqlite_path()) as store:
        store.failing = True
        async with Ingest(fast_site, store=store, backlog_limit=limit) as ingest:
            await until(lambda: _async(ingest.stats().dropped > 0), "readings dropped from the full backlog")
            assert ingest.stats().backlog <= limit


async def _async(value: T) -> T:
    return value


def test_points_with_their_own_interval_get_their_own_group(site: SiteConfig) -> None:
    site.devices[0].points[0].poll_interval_s = 60
    groups = poll_groups(site)
    mine = [g for g in groups if g.device_id == site.devices[0].id]
    assert sorted(g.interval_s for g in mine) == sorted([60, site.devices[0].poll_interval_s])
    assert sum(len(g.points) for g in groups) == len(site.points())
    assert len(groups) == len(site.devices) + 1


def test_eaio_ingest_stops_cleanly_on_sigterm(site_file: Callable[..., Path]) -> None:
    from eaio.sim.runner import SimThread

    path = site_file()
    cfg = load_config(path)

    async def stored() -> bool:
        if not cfg.sqlite_path().exists():
            return False
        async with SqliteStore(cfg.sqlite_path()) as store:
            return {r.point_id for r in await store.latest()} - derived_ids(cfg) == {p.id for p in cfg.points()}

    with SimThread(cfg):
        proc = subprocess.Popen(
            [sys.executable, "-m", "eaio", "ingest", "--config", str(path)],
            stderr=subprocess.PIPE, text=True,
        )
        try:
            anyio.run(until, stored, "the first poll of every point in the store")
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert "ingest stopped" in err


def test_eaio_ingest_command_stores_readings(site_file: Callable[..., Path]) -> None:
    from eaio.sim.runner import SimThread

    path = site_file()
    cfg = load_config(path)
    with SimThread(cfg):
        proc = subprocess.run(
            [sys.executable, "-m", "eaio", "ingest", "--config", str(path), "--duration", "3"],
            capture_output=True, text=True, timeout=60, check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert "ingest stopped" in proc.stderr
    db = cfg.sqlite_path()
    assert db.exists()

    async def check() -> None:
        async with SqliteStore(db) as store:
            latest = await store.latest()
            assert {r.point_id for r in latest} - derived_ids(cfg) == {p.id for p in cfg.points()}
            assert not [r for r in latest if r.quality == Quality.BAD]

    anyio.run(check)
