"""The Modbus read planner, without sockets: fewest requests within the protocol's limits."""

from __future__ import annotations

import random
from typing import Any

from eaio.models import ModbusAddress, ModbusConnection, ModbusPoint
from eaio.protocol_adapters.modbus_plan import BIT_TABLES, ReadPlan, plan_reads

CONN = ModbusConnection(unit=1, max_registers=125, max_bits=2000, max_gap=16)
TYPES = ["int16", "uint16", "int32", "uint32", "float32", "float64"]


def pt(pid: str, register: int, type_: str = "uint16", table: str = "holding", **addr: Any) -> ModbusPoint:
    if table in BIT_TABLES:
        type_ = "bool"
    return ModbusPoint(id=pid, address=ModbusAddress(table=table, register=register, type=type_, **addr))


def check_plans(plans: list[ReadPlan], points: list[ModbusPoint], conn: ModbusConnection = CONN) -> None:
    """Every point read exactly once, whole, at the right offset, and every request within limits."""
    where: dict[str, ReadPlan] = {}
    for plan in plans:
        limit = conn.max_bits if plan.table in BIT_TABLES else conn.max_registers
        assert 1 <= plan.count <= limit
        for point, offset in plan.items:
            assert point.id not in where, f"{point.id} read twice"
            where[point.id] = plan
            assert plan.table == point.address.table
            assert plan.start + offset == point.address.register
            assert offset + point.address.count <= plan.count, f"{point.id} split across requests"
            expected_unit = conn.unit if point.address.unit is None else point.address.unit
            assert plan.unit == expected_unit
    assert set(where) == {p.id for p in points}


def optimum(points: list[ModbusPoint], conn: ModbusConnection = CONN) -> int:
    """The fewest requests, by dynamic programming over every split of each sorted group."""
    groups: dict[tuple[int, str], list[ModbusPoint]] = {}
    for p in points:
        unit = conn.unit if p.address.unit is None else p.address.unit
        groups.setdefault((unit, p.address.table), []).append(p)
    total = 0
    for (_, table), members in groups.items():
        limit = conn.max_bits if table in BIT_TABLES else conn.max_registers
        spans = sorted((p.address.register, p.address.register + p.address.count) for p in members)
        best = [0] + [len(spans) + 1] * len(spans)  # best[i]: requests for the first i points
        for i in range(1, len(spans) + 1):
            for j in range(i, 0, -1):  # spans[j-1 .. i-1] in one request, if the limits allow
                if not fits(spans[j - 1 : i], limit, conn.max_gap):
                    break
                best[i] = min(best[i], best[j - 1] + 1)
        total += best[-1]
    return total


def fits(spans: list[tuple[int, int]], limit: int, max_gap: int) -> bool:
    end = spans[0][1]
    for start, stop in spans[1:]:
        if start - end > max_gap:
            return False
        end = max(end, stop)
    return end - spans[0][0] <= limit


def test_contiguous_points_are_one_request() -> None:
    points = [pt("a", 0, "float32"), pt("b", 2, "int16"), pt("c", 3, "float64"), pt("d", 7)]
    plans = plan_reads(points, CONN)
    assert [(p.start, p.count) for p in plans] == [(0, 8)]
    assert [(point.id, off) for point, off in plans[0].items] == [("a", 0), ("b", 2), ("c", 3), ("d", 7)]
    check_plans(plans, points)


def test_gap_up_to_max_gap_is_read_through() -> None:
    # b starts 16 unused registers after a ends: read through; c is 17 after b: a new request.
    points = [pt("a", 0), pt("b", 17), pt("c", 35)]
    plans = plan_reads(points, CONN)
    assert [(p.start, p.count) for p in plans] == [(0, 18), (35, 1)]
    check_plans(plans, points)


def test_no_gap_allowed() -> None:
    conn = CONN.model_copy(update={"max_gap": 0})
    points = [pt("a", 0), pt("b", 1), pt("c", 3)]
    assert [(p.start, p.count) for p in plan_reads(points, conn)] == [(0, 2), (3, 1)]


def test_register_limit_splits_long_runs() -> None:
    points = [pt(f"p{i}", i) for i in range(300)]
    plans = plan_reads(points, CONN)
    assert [(p.start, p.count) for p in plans] == [(0, 125), (125, 125), (250, 50)]
    check_plans(plans, points)


def test_bit_limit_for_coils_and_discrete_inputs() -> None:
    points = [pt(f"c{i}", i, table="coil") for i in range(2500)]
    points += [pt(f"d{i}", i * 2, table="discrete") for i in range(1500)]
    plans = plan_reads(points, CONN)
    coil = [(p.start, p.count) for p in plans if p.table == "coil"]
    discrete = [(p.start, p.count) for p in plans if p.table == "discrete"]
    assert coil == [(0, 2000), (2000, 500)]
    assert discrete == [(0, 1999), (2000, 999)]
    check_plans(plans, points)


def test_multi_register_point_never_splits() -> None:
    # A float64 at 122 would need registers 122..125: one past the 125-register limit from 0.
    points = [pt(f"p{i}", i) for i in range(122)] + [pt("wide", 122, "float64")]
    plans = plan_reads(points, CONN)
    assert [(p.start, p.count) for p in plans] == [(0, 122), (122, 4)]
    check_plans(plans, points)


def test_tables_and_units_are_separate_requests() -> None:
    points = [
        pt("h0", 0), pt("h1", 1),
        pt("i0", 0, table="input"), pt("i1", 1, "int32", table="input"),
        pt("c0", 0, table="coil"), pt("d0", 0, table="discrete"),
        pt("u7", 1, unit=7), pt("u7b", 2, unit=7), pt("u1", 2, unit=1),  # unit 1 == the device's
    ]
    plans = plan_reads(points, CONN)
    got = [(p.unit, p.table, p.start, p.count, [q.id for q, _ in p.items]) for p in plans]
    assert got == [
        (1, "holding", 0, 3, ["h0", "h1", "u1"]),
        (1, "input", 0, 3, ["i0", "i1"]),
        (1, "coil", 0, 1, ["c0"]),
        (1, "discrete", 0, 1, ["d0"]),
        (7, "holding", 1, 2, ["u7", "u7b"]),
    ]
    check_plans(plans, points)


def test_duplicates_are_read_once() -> None:
    a, b = pt("a", 0, "float32"), pt("b", 10)
    plans = plan_reads([a, b, a, a, b], CONN)
    assert [(p.start, p.count, len(p.items)) for p in plans] == [(0, 11, 2)]
    check_plans(plans, [a, b])


def test_overlapping_points_share_registers() -> None:
    # The same registers seen as two types (a common vendor map): one read serves both.
    points = [pt("as_u32", 4, "uint32"), pt("hi_word", 4), pt("lo_word", 5)]
    plans = plan_reads(points, CONN)
    assert [(p.start, p.count) for p in plans] == [(4, 2)]
    check_plans(plans, points)


def test_no_points_no_requests() -> None:
    assert plan_reads([], CONN) == []


def test_thousand_scattered_points_reach_the_optimum() -> None:
    rng = random.Random(20240611)
    points: list[ModbusPoint] = []
    used: set[tuple[str, int]] = set()
    while len(points) < 1000:
        table = rng.choice(["holding", "holding", "input", "coil"])
        register = rng.randrange(0, 2000)
        if (table, register) in used:
            continue
        used.add((table, register))
        type_ = rng.choice(TYPES)
        if register + 4 > 65535:
            continue
        points.append(pt(f"p{len(points)}", register, type_, table=table, unit=rng.choice([None, None, 2])))
    plans = plan_reads(points, CONN)
    check_plans(plans, points)
    assert len(plans) == optimum(points)
    assert len(plans) < len(points) / 4  # coalescing matters: far fewer requests than points
