"""The Modbus read planner: which block reads fetch a set of points in the fewest requests.

Pure (no I/O), so it is tested without sockets. Points of one device are grouped by
(unit id, table), sorted by register and merged greedily: a request grows while the next
point starts within ``max_gap`` unused registers of the request's end and the whole request
stays within ``max_registers`` (``max_bits`` for coils and discrete inputs). A point is never
split across two requests. Greedy is optimal here: for points sorted by start, extending the
current request as far as the limits allow never leaves more requests than any other split.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from ..models.point import ModbusConnection, ModbusPoint

__all__ = ["BIT_TABLES", "TABLE_ORDER", "ReadPlan", "plan_reads"]

BIT_TABLES = frozenset({"coil", "discrete"})
# A stable order for plans, so the same points always give the same requests.
TABLE_ORDER = {"holding": 0, "input": 1, "coil": 2, "discrete": 3}


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """One block read: ``count`` registers (or bits) from ``start``; ``items`` says where
    each point's first register sits, as an offset from ``start``."""

    unit: int
    table: str
    start: int
    count: int
    items: tuple[tuple[ModbusPoint, int], ...]

    @property
    def end(self) -> int:
        """One past the last register read."""
        return self.start + self.count

    @property
    def has_gaps(self) -> bool:
        """Whether the request reads registers that no point uses."""
        used = {self.start + off + i for point, off in self.items for i in range(point.address.count)}
        return len(used) < self.count


def unit_of(point: ModbusPoint, connection: ModbusConnection) -> int:
    """The Modbus unit id a point is read with: its own, else its device's."""
    return connection.unit if point.address.unit is None else point.address.unit


def plan_reads(
    points: Iterable[ModbusPoint], connection: ModbusConnection, no_gaps: Collection[tuple[int, str]] = ()
) -> list[ReadPlan]:
    """Block reads covering ``points`` (of one device). A point listed twice is read once.

    ``no_gaps`` lists (unit, table) groups the device refuses to read through unused
    registers in (learned by the adapter): those are planned with ``max_gap`` 0."""
    groups: dict[tuple[int, str], list[ModbusPoint]] = {}
    seen: set[str] = set()
    for point in points:
        if point.id in seen:
            continue
        seen.add(point.id)
        groups.setdefault((unit_of(point, connection), point.address.table), []).append(point)
    plans: list[ReadPlan] = []
    for (unit, table), members in sorted(groups.items(), key=lambda kv: (kv[0][0], TABLE_ORDER[kv[0][1]])):
        limit = connection.max_bits if table in BIT_TABLES else connection.max_registers
        gap = 0 if (unit, table) in no_gaps else connection.max_gap
        plans.extend(_coalesce(unit, table, members, limit, gap))
    return plans


def _coalesce(unit: int, table: str, points: list[ModbusPoint], limit: int, max_gap: int) -> list[ReadPlan]:
    # Longer points first at the same register, so the request's end is known early.
    ordered = sorted(points, key=lambda p: (p.address.register, -p.address.count, p.id))
    plans: list[ReadPlan] = []
    start = end = 0
    items: list[tuple[ModbusPoint, int]] = []
    for point in ordered:
        p_start = point.address.register
        p_end = p_start + point.address.count
        if items and p_start - end <= max_gap and max(end, p_end) - start <= limit:
            end = max(end, p_end)
            items.append((point, p_start - start))
            continue
        if items:
            plans.append(ReadPlan(unit, table, start, end - start, tuple(items)))
        # A point wider than the limit (only if max_registers < 4) still gets one request of
        # its own: splitting it would tear its value across two answers.
        start, end, items = p_start, p_end, [(point, 0)]
    if items:
        plans.append(ReadPlan(unit, table, start, end - start, tuple(items)))
    return plans
