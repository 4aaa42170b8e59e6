"""The Modbus TCP face of one simulated device: a pymodbus server over the sim's values.

Each configured point keeps a register image (encoded with the same codec the adapter uses).
Reads copy the images into pymodbus' memory inside the SimDevice ``action`` hook; writes are
decoded per point and handed to the simulation. Addresses that no point covers answer
ILLEGAL_ADDRESS. Going offline closes the listener *and* every established connection.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from ...errors import ConnectionFailed
from ...models import ModbusDevice, ModbusPoint
from ...protocol_adapters import modbus_codec

__all__ = ["ModbusFace"]

log = logging.getLogger(__name__)

Value = float | int | bool
# Function code -> table, as pymodbus' runtime maps them.
_TABLE_OF_FC = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 4: "input", 3: "holding", 6: "holding", 16: "holding",
                22: "holding", 23: "holding"}
_TABLES = ("coil", "discrete", "holding", "input")


def encode_served(point: ModbusPoint, value: Value) -> list[int] | None:
    """Registers for a served value. Out-of-range integers saturate, as a device's register
    does; None only when the value cannot be encoded at all (e.g. NaN in an integer)."""
    try:
        return modbus_codec.encode(point.address, value, saturate=True)
    except (ValueError, TypeError):
        return None


class _UnitMap:
    """Which point owns each address of each table, for one unit id."""

    def __init__(self, points: list[ModbusPoint]) -> None:
        self.owner: dict[str, dict[int, tuple[ModbusPoint, int]]] = {t: {} for t in _TABLES}
        for p in points:
            for i in range(p.address.count):
                self.owner[p.address.table][p.address.register + i] = (p, i)
        # Like most PLCs, a table is one block of memory from its lowest to its highest mapped
        # address: unmapped registers inside it read as 0; outside it, addresses are illegal.
        self.span = {t: (min(o), max(o)) if o else (0, -1) for t, o in self.owner.items()}

    def readable(self, table: str, address: int, count: int, strict: bool) -> bool:
        if strict:
            return all(a in self.owner[table] for a in range(address, address + count))
        lo, hi = self.span[table]
        return lo <= address and address + count - 1 <= hi

    def simdata(self, table: str) -> list[SimData]:
        lo, hi = self.span[table]
        if hi < lo:  # pymodbus wants one entry per table; an empty table is refused by our hooks
            lo, hi = 0, 0
        if table in ("coil", "discrete"):
            return [SimData(lo, values=[False] * (hi - lo + 1), datatype=DataType.BITS)]
        return [SimData(lo, count=hi - lo + 1, values=0, datatype=DataType.REGISTERS)]


class ModbusFace:
    """Serves one ModbusDevice on its connection host:port until stopped or taken offline."""

    def __init__(
        self,
        device: ModbusDevice,
        on_write: Callable[[str, Value], None],
        *,
        strict_gaps: bool = False,
    ) -> None:
        self.device = device
        self.strict_gaps = strict_gaps
        self.on_write = on_write
        self.requests = 0
        self.images: dict[str, list[int]] = {}
        by_unit: dict[int, list[ModbusPoint]] = defaultdict(list)
        for p in device.points:
            by_unit[p.address.unit if p.address.unit is not None else device.connection.unit].append(p)
        self.units = {u: _UnitMap(pts) for u, pts in by_unit.items()}
        self._server: ModbusTcpServer | None = None

    @property
    def host(self) -> str:
        return self.device.connection.host

    @property
    def port(self) -> int:
        return self.device.connection.port

    @property
    def online(self) -> bool:
        return self._server is not None

    # -- values -------------------------------------------------------------------------------
    def refresh(self, served: dict[str, Value]) -> None:
        """Re-encode every point's register image from the values the sim serves now."""
        for p in self.device.points:
            if p.id in served and (regs := encode_served(p, served[p.id])) is not None:
                self.images[p.id] = regs
            else:
                self.images.setdefault(p.id, [0] * p.address.count)

    # -- lifetime -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen; returns once the port accepts connections."""
        if self._server is not None:
            return
        devices = [
            SimDevice(
                unit,
                simdata=tuple(umap.simdata(t) for t in _TABLES),  # type: ignore[arg-type]
                action=partial(self._action, umap),
            )
            for unit, umap in self.units.items()
        ]
        server = ModbusTcpServer(devices, address=(self.host, self.port), trace_pdu=self._trace_pdu)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as err:
            server.close()
            raise ConnectionFailed(
                f"sim {self.device.id}: cannot listen on {self.host}:{self.port} (port in use?)"
            ) from err
        self._server = server

    def stop(self) -> None:
        """Stop answering now: close the listener and every established connection."""
        server, self._server = self._server, None
        if server is None:
            return
        conns = list(server.active_connections.values())
        server.close()  # pymodbus closes the listener and each connection that has a transport
        # A connection accepted just before close() gets its transport only when asyncio calls
        # connection_made a moment later, so pymodbus cannot close it then; close such late ones.
        loop = asyncio.get_running_loop()
        for delay in (0.0, 0.05, 0.25, 1.0):
            loop.call_later(delay, _close_late, server, conns, delay > 0)

    # -- pymodbus hooks -----------------------------------------------------------------------
    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending:
            return pdu
        self.requests += 1
        # Check coverage here, where the request's exact bit count is known (the action hook
        # only sees whole 16-bit words for coils and discrete inputs).
        if (refusal := self._refusal(pdu)) is not None:
            code = refusal

            async def refuse(*_: object) -> ModbusPDU:
                return ExceptionResponse(pdu.function_code, code)

            pdu.datastore_update = refuse  # type: ignore[method-assign]
        return pdu

    def _refusal(self, pdu: ModbusPDU) -> ExcCodes | None:
        table = _TABLE_OF_FC.get(pdu.function_code)
        if table is None or pdu.function_code in (22, 23):
            return None  # pymodbus answers what it does not support itself
        umap = self.units.get(pdu.dev_id)
        if umap is None:
            return ExcCodes.GATEWAY_NO_RESPONSE  # no such unit behind this address
        count = 1 if pdu.function_code in (5, 6) else int(getattr(pdu, "count", 1) or 1)
        writing = pdu.function_code in (5, 6, 15, 16)
        # Writes must land on mapped addresses only; reads may cross gaps unless strict.
        if not umap.readable(table, pdu.address, count, strict=self.strict_gaps or writing):
            return ExcCodes.ILLEGAL_ADDRESS
        return None

    async def _action(
        self,
        umap: _UnitMap,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        table = _TABLE_OF_FC.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        owners = umap.owner[table]
        bits = table in ("coil", "discrete")
        span = len(set_values) if set_values else count  # for bits, count is in 16-bit words
        if not bits and not umap.readable(table, address, span, strict=self.strict_gaps or bool(set_values)):
            return ExcCodes.ILLEGAL_ADDRESS
        if set_values:
            return self._write(owners, address, list(set_values))
        if bits:
            self._fill_bits(owners, start_address, address // 16, count, registers)
        else:
            for a in range(address, address + count):
                owner = owners.get(a)
                if owner is None:
                    registers[a - start_address] = 0  # an unmapped register inside the block
                    continue
                point, i = owner
                registers[a - start_address] = self.images.get(point.id, [0] * point.address.count)[i]
        return None

    def _fill_bits(
        self,
        owners: dict[int, tuple[ModbusPoint, int]],
        start_reg: int,
        first_reg: int,
        words: int,
        registers: list[int],
    ) -> None:
        # pymodbus packs bits 16 to a register, bit 0 first, registers counted from start_reg.
        for a, (point, _) in owners.items():
            if not first_reg <= a // 16 < first_reg + words:
                continue
            ri, mask = a // 16 - start_reg, 1 << (a % 16)
            if self.images.get(point.id, [0])[0]:
                registers[ri] |= mask
            else:
                registers[ri] &= ~mask

    def _write(self, owners: dict[int, tuple[ModbusPoint, int]], address: int, values: list[int] | list[bool]) -> None:
        touched: dict[str, tuple[ModbusPoint, list[int]]] = {}
        for offset, raw in enumerate(values):
            point, i = owners[address + offset]
            if point.id not in touched:
                touched[point.id] = (point, list(self.images.get(point.id, [0] * point.address.count)))
            touched[point.id][1][i] = int(raw)
        for pid, (point, regs) in touched.items():
            self.images[pid] = regs
            value = modbus_codec.decode(point.address, regs)
            log.debug("sim %s: client wrote %s = %r", self.device.id, pid, value)
            self.on_write(pid, value)
        return None


def _close_late(server: ModbusTcpServer, conns: list[Any], collect: bool) -> None:
    if collect:
        # A connection asyncio accepted in the same loop pass as close() fails to get a transport
        # (Server._attach asserts the server is open) and its socket is left in a reference cycle,
        # still open to the client; only the cycle collector closes it. Rare (about 1 in 400
        # offline faults under load) but it keeps a client waiting forever on a dead device.
        gc.collect()
    for conn in [*conns, *server.active_connections.values()]:
        if conn.transport is not None:
            conn.transport.close()
            conn.transport = None
