"""Data-change subscriptions: one OPC-UA subscription per device, one monitored item per point.

The hub remembers which points are wanted (the point's ``subscribe``, else its device's) and
makes them again on every new session (``Link.on_open``): a subscription dies with its session.
Each monitored item samples at the point's ``sampling_interval_ms`` (default: the publishing
interval) with an absolute deadband filter when the point has one. Notifications arrive through
asyncua's publish loop as raw PublishResults (the low-level callback, not asyncua's Subscription
class: no task per notification); each becomes a row that ``PushedBatches`` hands out
shortly after, as it does for the BACnet COV hub.

A subscription is live while publish responses (data or keep-alives, at most
``keepalive_s`` apart) keep coming; the watchdog declares the session lost when they stop for
two keep-alive periods and a request timeout (a server that hangs without closing the socket).
A StatusChangeNotification (the server ended the subscription, or asyncua saw the connection
go) does the same at once. Meanwhile ``pushed()`` leaves the device's points out, so they are polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from asyncua import ua

from ..models import OpcuaPoint, to_us, utcnow
from .base import ReadingCallback
from .opcua_link import CommFailure, Invalid, Link, Refused
from .opcua_read import NodeIdError, decode, split, status_name
from .pushed import PushedBatches

__all__ = ["SubHub", "wants_subscription"]

log = logging.getLogger(__name__)
# After the first row wakes the dispatcher it waits this long for more: one publish response
# often carries several items, and a new subscription reports every item at once.
_WATCH_S = 0.5
_MAX_QUEUE = 100  # samples a server keeps per item between two publishes
_FILTER_REFUSED = frozenset({"BadFilterNotAllowed", "BadMonitoredItemFilterUnsupported",
                             "BadMonitoredItemFilterInvalid", "BadDeadbandFilterInvalid"})


def wants_subscription(point: OpcuaPoint, link: Link) -> bool:
    return point.subscribe if point.subscribe is not None else link.device.connection.subscribe


@dataclass
class _Sub:
    """One device's subscription in one session."""

    link: Link
    session: int  # link.sessions when it was made
    sid: int | None = None
    keepalive_s: float = 0.0
    last_publish: float = 0.0
    items: dict[int, OpcuaPoint] = field(default_factory=dict)  # client handle -> point
    # handle -> when its monitored item was asked for, until its first report arrives
    unreported: dict[int, datetime] = field(default_factory=dict)
    active: set[str] = field(default_factory=set)  # point ids with a live monitored item
    next_handle: int = 1


class SubHub:
    """The subscriptions of one adapter and the subscribers their readings go to."""

    def __init__(self, links: dict[str, Link]) -> None:
        self._links = links
        self._wanted: dict[str, dict[str, OpcuaPoint]] = {d: {} for d in links}
        self._subs: dict[str, _Sub] = {}
        self._locks = {d: asyncio.Lock() for d in links}
        self._out = PushedBatches("opcua")
        self._tasks: list[asyncio.Task[None]] = []
        for link in links.values():
            link.on_open = self.opened
            link.on_close = self.closed

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._watch(), name="opcua keep-alive watch")]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        await self._out.close()
        self._subs.clear()
        for wanted in self._wanted.values():
            wanted.clear()

    # -- the adapter's side -------------------------------------------------------------------
    async def subscribe(self, points: Sequence[OpcuaPoint], callback: ReadingCallback) -> None:
        """Monitor the points that want it; return once each has been tried (now, or at the
        next session of a device that has none)."""
        self._out.add((p.id for p in points), callback)
        new: dict[str, list[OpcuaPoint]] = {}
        for p in points:
            link = self._links[p.device_id]
            if wants_subscription(p, link) and p.id not in self._wanted[p.device_id]:
                self._wanted[p.device_id][p.id] = p
                new.setdefault(p.device_id, []).append(p)
        await asyncio.gather(*(self._add(self._links[d], pts) for d, pts in new.items()))

    def active(self, device_id: str) -> set[str]:
        """Point ids of ``device_id`` with a live monitored item now."""
        sub = self._subs.get(device_id)
        if sub is None or sub.link.client is None or sub.session != sub.link.sessions:
            return set()
        return sub.active

    # -- sessions -----------------------------------------------------------------------------
    async def opened(self, link: Link) -> None:
        """A new session: the old subscription went with the old one; make it again."""
        wanted = list(self._wanted[link.device.id].values())
        if wanted:
            await self._add(link, wanted)

    def closed(self, link: Link) -> None:
        self._subs.pop(link.device.id, None)

    async def _add(self, link: Link, points: list[OpcuaPoint]) -> None:
        async with self._locks[link.device.id]:
            if link.client is None:
                return  # made at the next session (opened)
            sub = self._subs.get(link.device.id)
            try:
                if sub is None or sub.session != link.sessions:
                    sub = await self._create(link)
                    points = list(self._wanted[link.device.id].values())
                await self._monitor(sub, [p for p in points if p.id not in sub.active])
            except CommFailure as err:
                log.info("opcua %s: subscribing failed (%s); the points are polled", link.where, err)
            except (Refused, Invalid) as err:
                log.warning("opcua %s: the server refused the subscription (%s); the points are polled",
                            link.where, err)

    async def _create(self, link: Link) -> _Sub:
        conn = link.device.connection
        interval_ms = conn.publishing_interval_ms
        # A keep-alive at least every timeout_s (or publishing interval): a silent server is
        # then noticed within a few seconds, not a session timeout.
        keepalive = max(1, math.ceil(conn.timeout_s * 1000 / interval_ms))
        lifetime = max(3 * keepalive, math.ceil(conn.session_timeout_s * 1000 / interval_ms))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=interval_ms, RequestedLifetimeCount=lifetime,
            RequestedMaxKeepAliveCount=keepalive, MaxNotificationsPerPublish=0, PublishingEnabled=True, Priority=0,
        )
        sub = _Sub(link, link.sessions)
        result = await link.call(lambda c: c.uaclient.session.create_subscription(params, partial(self._publish, sub)))
        sub.sid = result.SubscriptionId
        sub.keepalive_s = max(result.RevisedPublishingInterval * result.RevisedMaxKeepAliveCount, interval_ms) / 1000
        sub.last_publish = asyncio.get_running_loop().time()
        self._subs[link.device.id] = sub
        return sub

    async def _monitor(self, sub: _Sub, points: list[OpcuaPoint], filters: bool = True) -> None:
        link = sub.link
        requests: list[tuple[OpcuaPoint, ua.MonitoredItemCreateRequest]] = []
        asked = utcnow()
        for p in points:
            try:
                nid = link.node(p.address.node_id)
            except NodeIdError as err:
                log.warning("opcua %s: %s not subscribed: %s", link.where, p.id, err)
                continue
            handle, sub.next_handle = sub.next_handle, sub.next_handle + 1
            sub.items[handle] = p
            sub.unreported[handle] = asked
            requests.append((p, _item_request(nid, handle, p, link, filters)))
        refused_filter: list[OpcuaPoint] = []
        for batch in split(requests, link.device.connection.max_nodes_per_read):
            params = ua.CreateMonitoredItemsParameters(SubscriptionId=sub.sid,
                                                       TimestampsToReturn=ua.TimestampsToReturn.Both,
                                                       ItemsToCreate=[r for _, r in batch])
            results = await link.call(lambda c, params=params: c.uaclient.session.create_monitored_items(params))
            for (p, _), res in zip(batch, results, strict=True):
                name = status_name(res.StatusCode)
                if res.StatusCode.is_good():
                    sub.active.add(p.id)
                elif filters and name in _FILTER_REFUSED:
                    refused_filter.append(p)
                else:
                    log.warning("opcua %s: %s (%s) not subscribed (%s); it is polled", link.where, p.id,
                                p.address.node_id, name)
        if refused_filter:
            log.info("opcua %s: the server refused deadband filters; %d points subscribed without",
                     link.where, len(refused_filter))
            await self._monitor(sub, refused_filter, filters=False)

    # -- notifications ------------------------------------------------------------------------
    def _publish(self, sub: _Sub, result: ua.PublishResult) -> None:
        """asyncua's publish loop calls this with every response (data, or a keep-alive)."""
        if self._subs.get(sub.link.device.id) is not sub:
            return  # an answer for a subscription of a session that has ended
        sub.last_publish = asyncio.get_running_loop().time()
        now = utcnow()
        received = sub.link.device.connection.change_time == "received"
        for note in result.NotificationMessage.NotificationData or ():
            if isinstance(note, ua.DataChangeNotification):
                for item in note.MonitoredItems:
                    point = sub.items.get(item.ClientHandle)
                    if point is not None:
                        self._row(point, item.Value, now, sub.unreported.pop(item.ClientHandle, None), received)
            elif isinstance(note, ua.StatusChangeNotification) and not note.Status.is_good():
                # The server ended the subscription (its lifetime ran out), or asyncua saw the
                # connection go: either way it is gone with its session.
                sub.active.clear()
                sub.link.lose(f"subscription ended ({status_name(note.Status)})")

    def _row(self, point: OpcuaPoint, dv: ua.DataValue, now: datetime, asked: datetime | None,
             received: bool) -> None:
        s = decode(dv, point, now, source_time=not received)  # "received": a PLC's clock may be minutes off
        # A new item's first report is its current value, stamped when it last changed: maybe
        # before an outage whose failed polls are stored, which would then read as the latest.
        # It counts as seen when the item was asked for: samples queued after it are later still.
        ts = max(s.ts, asked) if asked is not None else s.ts
        self._out.row(point, s.value, to_us(ts), s.quality, s.reasons)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_WATCH_S)
            for sub in list(self._subs.values()):
                link = sub.link
                if sub.sid is None or link.client is None or sub.session != link.sessions:
                    continue
                silent = loop.time() - sub.last_publish
                if silent > 2 * sub.keepalive_s + link.device.connection.timeout_s:
                    sub.active.clear()
                    link.lose(f"no publish response or keep-alive for {silent:.1f}s")


def _item_request(nid: ua.NodeId, handle: int, p: OpcuaPoint, link: Link,
                  filters: bool) -> ua.MonitoredItemCreateRequest:
    conn = link.device.connection
    sampling = p.sampling_interval_ms if p.sampling_interval_ms is not None else conn.publishing_interval_ms
    flt = None
    if filters and p.deadband and not p.is_binary:
        flt = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValue, DeadbandType=ua.DeadbandType.Absolute,
                                  DeadbandValue=float(p.deadband))
    # Keep every sample taken between two publishes (up to a bound), not only the last.
    queue = min(_MAX_QUEUE, max(1, math.ceil(conn.publishing_interval_ms / sampling))) if sampling > 0 else 1
    return ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(NodeId=nid, AttributeId=ua.AttributeIds.Value),
        MonitoringMode=ua.MonitoringMode.Reporting,
        RequestedParameters=ua.MonitoringParameters(ClientHandle=handle, SamplingInterval=sampling, Filter=flt,
                                                    QueueSize=queue, DiscardOldest=True),
    )
