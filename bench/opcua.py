"""(f) OPC-UA: 1,000 nodes of one server read by EAIO's adapter (batched Read requests, values
with status and timestamps turned into readings) against raw asyncua in the same run, same
server: one read per node (target: EAIO >= 20x faster), and asyncua's own batched
``read_values`` on the same nodes (target: EAIO >= 50 % of its speed).

The server is the sim's OPC-UA face in a child process, so its CPU is not ours.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from typing import Any

from asyncua import Client

from eaio.config import load_config
from eaio.protocol_adapters import build_adapter

from .common import free_port, sim_process, tempdir, write_site

N_NODES = 1000
ROUNDS = 7


def _device(port: int) -> dict[str, Any]:
    return {
        "id": "bench-plc", "name": "Large PLC (bench)", "protocol": "opcua", "poll_interval_s": 60,
        "connection": {"endpoint": f"opc.tcp://127.0.0.1:{port}/eaio/bench", "timeout_s": 10},
        "points": [
            {"id": f"bench.p{i:04d}", "kind": "generic", "address": {"node_id": f"ns=2;s=Bench.P{i:04d}"}}
            for i in range(N_NODES)
        ],
    }


async def _per_node(client: Client, node_ids: list[str]) -> float:
    nodes = [client.get_node(n) for n in node_ids]
    t0 = time.perf_counter()
    for node in nodes:
        await node.read_value()
    return time.perf_counter() - t0


async def _read_values(client: Client, node_ids: list[str]) -> float:
    nodes = [client.get_node(n) for n in node_ids]
    t0 = time.perf_counter()
    values = await client.read_values(nodes)
    assert len(values) == len(nodes)
    return time.perf_counter() - t0


async def _eaio(adapter: Any, points: list[Any]) -> tuple[float, int]:
    before = adapter.request_count()
    t0 = time.perf_counter()
    readings = await adapter.read(points)
    elapsed = time.perf_counter() - t0
    bad = [r for r in readings if r.value is None]
    assert not bad, bad[:3]
    return elapsed, adapter.request_count() - before


def run() -> dict[str, Any]:
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    with tempdir() as tmp:
        device = _device(free_port())
        site = write_site(tmp, devices=[device])
        cfg = load_config(site)
        points = list(cfg.devices[0].points)
        node_ids = [p.address.node_id for p in points]
        endpoint = device["connection"]["endpoint"]
        with sim_process(site):

            async def both() -> dict[str, Any]:
                per_node: list[float] = []
                batched: list[float] = []
                ours: list[float] = []
                requests = 0
                client = Client(endpoint, timeout=10)
                async with client, build_adapter("opcua", cfg.devices) as adapter:
                    await _eaio(adapter, points)  # sessions, caches and connections warm up outside the timing
                    await _read_values(client, node_ids)
                    for _ in range(ROUNDS):  # interleaved, so load on the machine hits all three alike
                        per_node.append(await _per_node(client, node_ids))
                        batched.append(await _read_values(client, node_ids))
                        t, requests = await _eaio(adapter, points)
                        ours.append(t)
                p, b, e = (statistics.median(x) for x in (per_node, batched, ours))
                return {
                    "nodes": N_NODES, "rounds": ROUNDS,
                    "per_node_s": p, "read_values_s": b, "eaio_s": e, "eaio_requests": requests,
                    "speedup_vs_per_node": p / e,
                    "share_of_read_values": b / e,
                    "targets": {"speedup_vs_per_node": ">= 20", "share_of_read_values": ">= 0.5"},
                }

            return asyncio.run(both())


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
