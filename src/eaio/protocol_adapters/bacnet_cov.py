"""Change-of-value subscriptions: one task per subscribed point; ``PushedBatches`` hands rows out.

Each point's task subscribes (unconfirmed notifications, lifetime ``cov_lifetime_s``), turns each
notification (present-value and status-flags) into a row handed out by ``PushedBatches``, and
renews the subscription itself before the lifetime ends: bacpypes3's context manager renews on a
timer of its own, but a renewal that fails there is never heard of, and it bypasses the link's
limit of outstanding requests. So the context manager's timer is cancelled after each
(re)subscription and renewals go through ``Link.call`` like every other request.

A point whose subscription the device refuses is left to polling for good (counted in the
device's health as ``cov_refused``; a device that rejects the service itself, unrecognized-service,
is logged once, and points subscribed after that are not tried); one whose device
stops answering leaves ``pushed()`` until the device answers again (a poll, or the probe that
one waiting task makes every ``breaker_reset_s``), then subscribes anew: a device that restarted
has forgotten its subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from bacpypes3.apdu import ErrorRejectAbortNack
from bacpypes3.app import Application
from bacpypes3.basetypes import PropertyIdentifier
from bacpypes3.primitivedata import ObjectIdentifier

from ..models import BacnetPoint, Quality, to_us, utcnow
from .bacnet_link import CommFailure, Invalid, Link, Refused
from .bacnet_read import Status, point_value, quality_of
from .base import ReadingCallback
from .pushed import PushedBatches

__all__ = ["CovHub", "wants_cov"]

log = logging.getLogger(__name__)
_UNSUBSCRIBE_S = 1.0  # longest a closing adapter waits to cancel its subscriptions politely
# After the first row wakes the dispatcher it waits this long for more: a change on a controller
# often moves several objects at once, and (re)subscribing makes every object report at once.


def wants_cov(point: BacnetPoint, link: Link) -> bool:
    """COV is for present-values (what notifications carry); the device may still refuse it."""
    wanted = point.cov if point.cov is not None else link.device.connection.cov
    return wanted and point.address.property == "present-value"


class CovHub:
    """The subscriptions of one adapter and the subscribers their readings go to."""

    def __init__(self, app: Callable[[], Application], links: dict[str, Link]) -> None:
        self._app = app
        self._links = links
        self._out = PushedBatches("bacnet cov")
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._first: dict[str, asyncio.Future[None]] = {}
        self._watchdogs: dict[str, asyncio.Task[None]] = {}
        self._closing = False

    # -- the adapter's side -------------------------------------------------------------------
    async def subscribe(self, points: Sequence[BacnetPoint], callback: ReadingCallback) -> None:
        """Start subscriptions for ``points`` that want COV; return once each has been tried."""
        self._out.add((p.id for p in points), callback)
        loop = asyncio.get_running_loop()
        firsts: list[asyncio.Future[None]] = []
        for p in points:
            link = self._links[p.device_id]
            if not wants_cov(p, link):
                continue
            if link.cov_refused:  # the device said it does not do COV: not asked again
                link.cov_refused_points.add(p.id)
                continue
            if p.id not in self._tasks:
                self._first[p.id] = loop.create_future()
                self._tasks[p.id] = asyncio.create_task(self._run(link, p), name=f"bacnet cov {p.id}")
            if link.device.id not in self._watchdogs:
                self._watchdogs[link.device.id] = asyncio.create_task(
                    self._watch(link), name=f"bacnet cov watch {link.device.id}")
            firsts.append(self._first[p.id])
        if firsts:
            await asyncio.wait(firsts)

    async def close(self) -> None:
        self._closing = True
        for w in self._watchdogs.values():
            w.cancel()
        self._watchdogs.clear()
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_UNSUBSCRIBE_S + 1)
        await self._out.close()
        self._tasks.clear()

    async def _watch(self, link: Link) -> None:
        """Unconfirmed notifications are never acknowledged, so a device that died looks just like
        one whose values do not change, and while all its points are pushed nothing else asks it
        anything. Ask for one small property every poll interval (unless something else had an
        answer meanwhile): an outage then trips the link, and its points go back to polling."""
        interval = link.device.poll_interval_s
        device = f"device,{link.device.connection.device_instance}"
        while True:
            await asyncio.sleep(interval)
            recent = link.last_ok is not None and (utcnow() - link.last_ok).total_seconds() < interval
            if not link.cov_active or link.online is False or recent:
                continue
            with contextlib.suppress(CommFailure, Refused, Invalid):
                await link.call(lambda app=self._app(): app.read_property(link.peer, device, "system-status"))

    # -- one point ----------------------------------------------------------------------------
    async def _run(self, link: Link, point: BacnetPoint) -> None:
        try:
            while True:
                try:
                    scm = await self._open_gated(link, point)
                except (Refused, Invalid) as err:
                    self._refused(link, point, err)
                    return
                except CommFailure:
                    self._tried(point)
                    continue  # the link is offline now: the next try waits at the gate
                self._tried(point)
                link.cov_active.add(point.id)
                try:
                    await self._pump(link, point, scm)
                except CommFailure:
                    continue  # the renewal went unanswered: subscribe anew once the device is back
                except (Refused, Invalid) as err:
                    self._refused(link, point, err)
                    return
                finally:
                    link.cov_active.discard(point.id)
                    await self._leave(link, scm)
        except Exception:
            log.exception("bacnet %s: the COV task of %s failed; it is polled", link.device.id, point.id)
        finally:
            self._tried(point)

    async def _open_gated(self, link: Link, point: BacnetPoint) -> Any:
        # While the device is offline, the waiting tasks take turns: one tries (a probe) every
        # breaker_reset_s, the others wait for it, so a dead device costs one timeout per period.
        # A poll that finds the device back ends the wait early.
        while link.online is False:
            async with link.probe:
                if link.online is False:
                    delay = link.breaker.retry_in() or link.device.connection.breaker_reset_s
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(link.back_online.wait(), delay)
                    return await self._open(link, point)
        return await self._open(link, point)

    async def _open(self, link: Link, point: BacnetPoint) -> Any:
        scm = self._app().change_of_value(
            link.peer, ObjectIdentifier(point.address.object_id),  # not a str: see NOTES
            None, False, link.device.connection.cov_lifetime_s,
        )
        await link.call(scm.__aenter__)
        _no_auto_renewal(scm)
        return scm

    async def _pump(self, link: Link, point: BacnetPoint, scm: Any) -> None:
        """Notifications into rows until the device stops answering (CommFailure) or refuses a renewal."""
        loop = asyncio.get_running_loop()
        lifetime = link.device.connection.cov_lifetime_s
        renew_in = max(1.0, min(lifetime * 0.8, lifetime - link.attempt_budget_s - 1))
        renew_at = loop.time() + renew_in
        pv: Any = None
        flags: Any = None
        # A device that stopped answering polls has likely dropped its subscriptions (a restart
        # forgets them): leave at once and subscribe anew when it is back.
        gone = asyncio.ensure_future(link.went_offline.wait())
        try:
            while True:
                wait = renew_at - loop.time()
                if wait <= 0:
                    await link.call(scm.refresh_subscription)
                    _no_auto_renewal(scm)
                    renew_at = loop.time() + renew_in
                    continue
                get = asyncio.ensure_future(scm.get_value())
                await asyncio.wait({get, gone}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    if gone.done():
                        raise CommFailure("the device stopped answering")
                    continue
                items = [get.result()]
                # A notification's values are queued together: take them all before emitting one row.
                while not scm.queue.empty():
                    items.append(await scm.get_value())
                for prop, value in items:
                    if prop == PropertyIdentifier.presentValue:
                        pv = value
                    elif prop == PropertyIdentifier.statusFlags:
                        flags = value
                if pv is not None:
                    await self._emit(link, point, pv, flags)
        finally:
            gone.cancel()

    async def _emit(self, link: Link, point: BacnetPoint, pv: Any, flags: Any) -> None:
        status = Status.from_values(flags)
        if status.fault:
            # Notifications carry the fault bit only; the reason is in reliability.
            with contextlib.suppress(CommFailure, Refused, Invalid):
                app = self._app()
                reliability = await link.call(
                    lambda: app.read_property(link.peer, point.address.object_id, "reliability")
                )
                status = Status.from_values(flags, reliability)
        value = point_value(pv, point)
        quality, reasons = quality_of(status)
        if value is None:
            quality, reasons = Quality.BAD, [*reasons, "protocol_status:unsupported_value"]
        self._out.row(point, value, to_us(utcnow()), quality, reasons)

    async def _leave(self, link: Link, scm: Any) -> None:
        if self._closing and link.online:
            # Say goodbye, so the device stops sending to a port that is about to close.
            with contextlib.suppress(TimeoutError, Exception, ErrorRejectAbortNack):
                async with asyncio.timeout(_UNSUBSCRIBE_S), link.sem:
                    await scm.__aexit__(None, None, None)
                return
        # Abandon: forget the context without a request (the device's copy expires by itself).
        with contextlib.suppress(Exception):
            await scm.__aexit__(CommFailure, CommFailure("abandoned"), None)

    def _refused(self, link: Link, point: BacnetPoint, err: Exception) -> None:
        link.cov_refused_points.add(point.id)
        if isinstance(err, Refused) and err.name == "unrecognized-service":
            # The device does not do COV at all: said once, and points subscribed later are not tried.
            if not link.cov_refused:
                link.cov_refused = True
                log.warning("bacnet %s: the device refuses SubscribeCOV (%s); its points are polled", link.where, err)
            return
        log.info("bacnet %s: no COV for %s (%s); it is polled", link.device.id, point.id, err)

    def _tried(self, point: BacnetPoint) -> None:
        first = self._first.get(point.id)
        if first is not None and not first.done():
            first.set_result(None)


def _no_auto_renewal(scm: Any) -> None:
    handle = getattr(scm, "refresh_subscription_handle", None)
    if handle is not None:
        handle.cancel()
        scm.refresh_subscription_handle = None
