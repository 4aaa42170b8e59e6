"""The Modbus TCP adapter: block reads, writes and raw register reads over pymodbus.

One persistent connection per device (``_Link``), one request at a time on it. Every request
goes through the device's circuit breaker, then up to ``retries + 1`` attempts with backoff
(tenacity); pymodbus's own retries and auto-reconnect are switched off so that this logic
alone decides, and a dead device fails within about ``timeout_s * (retries + 1)``.
Values are decoded and encoded only by ``modbus_codec``; no pymodbus type leaves this module.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ..errors import DeviceError
from ..models import ModbusDevice, ModbusPoint, Point, Reading, Reason, Value, utcnow
from . import modbus_codec as codec
from .base import ConfiguredPoints, ReadingCallback, failed_reading
from .breaker import CircuitBreaker
from .modbus_plan import BIT_TABLES, ReadPlan, plan_reads, unit_of

__all__ = ["ModbusAdapter"]

_READ = {
    "holding": "read_holding_registers",
    "input": "read_input_registers",
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
}
_MAX_COUNT = {"holding": 125, "input": 125, "coil": 2000, "discrete": 2000}
_PLAN_CACHE_SIZE = 64  # distinct point sets a long-running poller or server asks for


class _CommFailure(Exception):
    """The device could not be reached or did not answer: retried, counted by the breaker."""

    code = "device_offline"


class _Timeout(_CommFailure):
    code = "timeout"


class _Refused(Exception):
    """The device answered with a Modbus exception: it is alive, so no retry and no breaker."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _exception_name(code: int) -> str:
    try:
        return ExcCodes(code).name.lower()
    except ValueError:
        return f"exception_{code}"


class _Link:
    """One device's connection, breaker and counters. Requests on it are sequential."""

    def __init__(self, device: ModbusDevice) -> None:
        self.device = device
        conn = device.connection
        self.where = f"{device.id} at {conn.host}:{conn.port}"
        self.breaker = CircuitBreaker(conn.breaker_failures, conn.breaker_reset_s)
        self.requests = 0
        self.failures = 0
        self.online: bool | None = None  # unknown until the first request is answered or fails
        self.last_error: str | None = None
        self.last_ok: datetime | None = None
        # (unit, table) groups where the device refused a read through unused registers.
        self.no_gaps: set[tuple[int, str]] = set()
        self._plans: dict[tuple[tuple[str, ...], frozenset[tuple[int, str]]], list[ReadPlan]] = {}
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()

    def plan(self, points: Sequence[ModbusPoint]) -> list[ReadPlan]:
        # Pollers ask for the same point sets every tick; planning 1,000 points costs more than
        # the look-up, so plans are kept per point set (and per what the device refused so far).
        key = (tuple(p.id for p in points), frozenset(self.no_gaps))
        plans = self._plans.get(key)
        if plans is None:
            if len(self._plans) >= _PLAN_CACHE_SIZE:
                self._plans.clear()
            plans = self._plans[key] = plan_reads(points, self.device.connection, self.no_gaps)
        return plans

    def close(self) -> None:
        self.close_client()
        # A fresh lock: the next use may run on another event loop.
        self._lock = asyncio.Lock()

    async def request(self, method: str, address: int, unit: int, *values: object, **kwargs: Any) -> Any:
        """One Modbus request through breaker and retries; returns the pymodbus response."""
        async with self._lock:
            if not self.breaker.allow():
                raise _CommFailure(
                    f"circuit open after {self.breaker.count} failed requests; next try in "
                    f"{self.breaker.retry_in():.1f}s"
                )
            try:
                response = await self._with_retries(method, address, unit, *values, **kwargs)
            except _CommFailure as err:
                self.breaker.failure()
                self.failures += 1
                self.online = False
                self.last_error = f"{err.code}: {err}"
                raise
            self.breaker.success()
            self.online, self.last_ok = True, utcnow()
        if response.isError():
            raise _Refused(_exception_name(getattr(response, "exception_code", 0)))
        return response

    async def _with_retries(self, method: str, address: int, unit: int, *values: object, **kwargs: Any) -> Any:
        conn = self.device.connection
        # The first attempt goes straight out: building a retry controller for every request of
        # a healthy device costs more than the request itself. Failures get tenacity's backoff.
        try:
            return await self._attempt(method, address, unit, *values, **kwargs)
        except _CommFailure:
            if conn.retries == 0:
                raise
        await asyncio.sleep(0.05)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(conn.retries),
            wait=wait_exponential(multiplier=0.05, max=0.5),
            retry=retry_if_exception_type(_CommFailure),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(method, address, unit, *values, **kwargs)
        raise AssertionError("unreachable: tenacity reraises the last failure")

    async def _attempt(self, method: str, address: int, unit: int, *values: object, **kwargs: Any) -> Any:
        timeout = self.device.connection.timeout_s
        client = await self._connected()
        self.requests += 1
        try:
            # pymodbus applies timeout_s itself; the outer guard only bounds a wedged transport.
            async with asyncio.timeout(timeout * 2 + 1):
                return await getattr(client, method)(address, *values, device_id=unit, **kwargs)
        except (ModbusIOException, TimeoutError) as err:
            lost = not client.connected
            # Close either way: a late answer must not be taken for the next request's.
            self.close_client()
            if lost:
                raise _CommFailure("connection lost") from err
            raise _Timeout(f"no answer within {timeout}s") from err
        except (ConnectionException, ModbusException, OSError) as err:
            self.close_client()
            raise _CommFailure(f"connection lost ({err})") from err

    async def _connected(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        conn = self.device.connection
        self.close_client()
        self._client = AsyncModbusTcpClient(
            conn.host, port=conn.port, timeout=conn.timeout_s, retries=0, reconnect_delay=0,
            name=self.device.id,
        )
        if not await self._client.connect():
            self.close_client()
            raise _CommFailure("cannot connect (refused or unreachable)")
        return self._client

    def close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def health(self) -> dict[str, object]:
        return {
            "device_id": self.device.id,
            "address": f"{self.device.connection.host}:{self.device.connection.port}",
            "online": self.online,
            "last_error": self.last_error,
            "requests": self.requests,
            "failures": self.failures,
            "breaker": self.breaker.state,
            "last_ok": self.last_ok.isoformat() if self.last_ok else None,
        }


class ModbusAdapter(ConfiguredPoints[ModbusDevice, ModbusPoint]):
    """Reads and writes the points of Modbus TCP devices. Never connects in the constructor."""

    protocol = "modbus"
    _label = "Modbus"
    _point_type = ModbusPoint

    def __init__(self, devices: Sequence[ModbusDevice]) -> None:
        super().__init__(devices)
        self._links = {d.id: _Link(d) for d in self._devices}

    async def __aenter__(self) -> Self:
        return self  # connections open lazily, on each device's first request

    async def __aexit__(self, *exc: object) -> None:
        for link in self._links.values():
            link.close()

    def health(self) -> list[dict[str, object]]:
        """Per device: device_id, address, online (None until its first request), last_error,
        requests, failures, breaker (closed/open/half_open), last_ok (ISO time or None)."""
        return [link.health() for link in self._links.values()]

    def request_count(self) -> int:
        """Requests sent on the wire since start, every retry included."""
        return sum(link.requests for link in self._links.values())

    async def subscribe(self, points: Sequence[Point], callback: ReadingCallback) -> None:
        raise NotImplementedError("modbus does not push; poll")

    async def read(self, points: Sequence[Point]) -> list[Reading]:
        """One Reading per requested point, in order. Devices are read concurrently."""
        return await self._read_by_device(points, self._read_device)

    def plan(self, points: Sequence[Point]) -> list[ReadPlan]:
        """The requests the next ``read(points)`` would send, device by device (tests, bench)."""
        by_device: dict[str, list[ModbusPoint]] = {}
        for point in points:
            if (resolved := self._resolve(point)) is not None:
                by_device.setdefault(resolved.device_id, []).append(resolved)
        return [plan for dev, pts in by_device.items() for plan in self._links[dev].plan(pts)]

    async def _read_device(self, device_id: str, points: list[ModbusPoint], results: dict[str, Reading]) -> None:
        link = self._links[device_id]
        todo = deque(link.plan(points))
        ahead: asyncio.Task[Any] | None = None  # the request for todo[0], already on the wire
        try:
            while todo:
                plan = todo.popleft()
                try:
                    if ahead is None:
                        response = await link.request(_READ[plan.table], plan.start, plan.unit, count=plan.count)
                    else:
                        task, ahead = ahead, None  # taken before awaiting: a failure must not linger
                        response = await task
                except _CommFailure as err:
                    # The device is down: fail its remaining requests too rather than wait on each.
                    detail = f"{err.code}: {link.where}: {err}"
                    for rest in (plan, *todo):
                        for point, _ in rest.items:
                            results[point.id] = failed_reading(point, device_id, Reason.COMM_FAILURE, detail)
                    return
                except _Refused as err:
                    self._refused(link, plan, err, todo, results)
                    continue
                if todo:
                    # Put the next request on the wire before decoding this answer: the device
                    # works on it while we decode (one request in flight at a time, as ever).
                    nxt = todo[0]
                    ahead = asyncio.ensure_future(link.request(_READ[nxt.table], nxt.start, nxt.unit, count=nxt.count))
                    await asyncio.sleep(0)
                _decode_plan(plan, response, device_id, results)
        finally:
            if ahead is not None:
                ahead.cancel()

    def _refused(
        self, link: _Link, plan: ReadPlan, err: _Refused, todo: deque[ReadPlan], results: dict[str, Reading]
    ) -> None:
        if err.name == "illegal_address" and plan.has_gaps:
            # Many devices refuse reads through unmapped registers: stop reading through
            # gaps in this (unit, table) from now on and ask again without them.
            link.no_gaps.add((plan.unit, plan.table))
            todo.extendleft(reversed(link.plan([p for p, _ in plan.items])))
            return
        detail = f"protocol_error: {link.where}: {err.name} for {_describe(plan)}"
        for point, _ in plan.items:
            results[point.id] = failed_reading(point, link.device.id, f"protocol_status:{err.name}", detail)

    async def write(self, point: Point, value: Value) -> None:
        """Write one engineering value. Raises DeviceError (unknown_point, not_writable,
        invalid_argument, device_offline, timeout, protocol_error)."""
        mp = self._resolve(point)
        if mp is None:
            raise DeviceError(f"no Modbus point '{point.id}'", code="unknown_point", point=point.id)
        addr = mp.address
        if addr.table not in ("holding", "coil"):
            raise DeviceError(
                f"{addr.table} {addr.register} is read-only in Modbus", code="not_writable",
                device=mp.device_id, point=mp.id,
            )
        if mp.is_binary and value not in (True, False):  # 0 and 1 compare equal to the bools
            raise DeviceError(
                f"{value!r} cannot be written to {mp.id}: a bit takes true/false or 1/0",
                code="invalid_argument", device=mp.device_id, point=mp.id,
            )
        try:
            registers = codec.encode(addr, value)
        except (ValueError, TypeError, OverflowError, struct.error) as err:
            raise DeviceError(
                f"{value!r} cannot be written to {mp.id} ({addr.type}): {err}", code="invalid_argument",
                device=mp.device_id, point=mp.id,
            ) from err
        link = self._links[mp.device_id]
        unit = unit_of(mp, link.device.connection)
        if addr.table == "coil":
            method, payload = "write_coil", bool(registers[0])
        elif len(registers) == 1:
            method, payload = "write_register", registers[0]
        else:
            method, payload = "write_registers", registers
        await self._call(link, method, addr.register, unit, mp.id, payload)

    async def read_registers(
        self, device_id: str, table: str, address: int, count: int, unit: int | None = None
    ) -> list[int] | list[bool]:
        """Raw registers (or bits) as the device holds them. Raises DeviceError."""
        link = self._links.get(device_id)
        if link is None:
            raise DeviceError(f"no Modbus device '{device_id}'", code="invalid_argument", device=device_id)
        if table not in _READ:
            raise DeviceError(
                f"table must be one of {', '.join(_READ)}, not '{table}'", code="invalid_argument",
                device=device_id,
            )
        if not 1 <= count <= _MAX_COUNT[table] or not 0 <= address <= 65536 - count:
            raise DeviceError(
                f"{table} read of {count} from {address} is outside 1..{_MAX_COUNT[table]} items "
                "within addresses 0..65535", code="invalid_argument", device=device_id,
            )
        if unit is not None and not 0 <= unit <= 255:
            raise DeviceError(f"unit {unit} is outside 0..255", code="invalid_argument", device=device_id)
        unit_id = link.device.connection.unit if unit is None else unit
        response = await self._call(link, _READ[table], address, unit_id, None, count=count)
        if table in BIT_TABLES:
            return [bool(b) for b in response.bits[:count]]
        return [int(r) for r in response.registers[:count]]

    async def _call(
        self, link: _Link, method: str, address: int, unit: int, point_id: str | None,
        payload: object = None, **kwargs: Any,
    ) -> Any:
        """A request whose failure is the caller's error: translate it to DeviceError."""
        values = () if payload is None else (payload,)
        dev = link.device.id
        try:
            return await link.request(method, address, unit, *values, **kwargs)
        except _CommFailure as err:
            raise DeviceError(f"{link.where}: {err}", code=err.code, device=dev, point=point_id) from err
        except _Refused as err:
            raise DeviceError(
                f"{link.where}: {err.name} for {method} at {address} (unit {unit})", code="protocol_error",
                device=dev, point=point_id,
            ) from err



def _describe(plan: ReadPlan) -> str:
    return f"{plan.table} {plan.start}..{plan.end - 1} (unit {plan.unit})"


def _decode_plan(plan: ReadPlan, response: Any, device_id: str, results: dict[str, Reading]) -> None:
    ts = utcnow()
    words = response.bits if plan.table in BIT_TABLES else response.registers
    for point, offset in plan.items:
        chunk = words[offset : offset + point.address.count]
        if len(chunk) < point.address.count:
            detail = f"protocol_error: {device_id}: short answer for {_describe(plan)}"
            results[point.id] = failed_reading(point, device_id, "protocol_status:short_response", detail)
            continue
        results[point.id] = Reading(
            point_id=point.id, value=codec.decode(point.address, chunk), unit=point.unit, ts=ts, device_id=device_id
        )
