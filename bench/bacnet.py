"""(e) BACnet: 200 points of one device, EAIO's ReadPropertyMultiple batches against raw bacpypes3
reading the same present-values with one ReadProperty per point, one after another; same run, same
device. The target is EAIO >= 10x faster.

The device is the sim's BACnet face (200 analog-inputs, instances 1..200, served as memory points
``bench.pNNN`` with distinct values) in a child process of its own, so its CPU is not ours; the
child also reports how many requests the device served. EAIO is ``BacnetAdapter.read`` of all 200
points at the device's default ``rpm_batch`` (25 objects: present-value and status-flags each, so
quality comes with every value). The raw client asks present-value only. Rounds are interleaved and
each side reports its median.

The sim's face answers RPM with its own fast encoder (``sim/faces/bacnet_fast``), which a real
controller does not have. So each round also reads the 200 points from the same device with that
switched off (``fast_rpm = False``: stock bacpypes3 builds every answer), as a device running stock
bacpypes3 would answer: ``stock_device`` holds those figures and their ratio to the same raw
ReadProperty reads.

``python -m bench.bacnet --serve SITE`` is the child: it serves SITE until stdin closes, answers
``count`` with the device's request count, and ``stock`` / ``fast`` (answered ``ok``) switch its RPM
responder.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from bacpypes3.app import Application
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address

from eaio.config import load_config
from eaio.models import Quality
from eaio.protocol_adapters import bacnet_fast
from eaio.protocol_adapters.bacnet import BacnetAdapter

from .common import tempdir

N_POINTS = 200
ROUNDS = 15
DEVICE = "bench-bacnet"
INSTANCE = 4100


def _free_udp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def value_of(i: int) -> float:
    return round(15.0 + i * 0.25, 2)  # every one a float32 with a short decimal


def _site(tmp: Path) -> Path:
    raw: dict[str, Any] = {
        "site": {"id": "bench"},
        "data_dir": str(tmp / "data"),
        "devices": [{
            "id": DEVICE, "protocol": "bacnet",
            "connection": {"address": f"127.0.0.1:{_free_udp()}", "device_instance": INSTANCE,
                           "timeout_s": 2.0, "retries": 0},
            "points": [{"id": f"bench.p{i:03d}", "kind": "generic", "unit": "kW",
                        "address": {"type": "analog-input", "instance": i}} for i in range(1, N_POINTS + 1)],
        }],
        "bacnet": {"interface": "127.0.0.1", "ports": {}},
        # Physics once a minute: its steps would land in the device's timings, and nothing here moves.
        "sim": {"speed": 1, "step_s": 60, "control_port": None},
    }
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# -- the device: a child process --------------------------------------------------------------
async def _serve(site: Path) -> None:
    from eaio.sim.faces import bacnet_fast as device_fast
    from eaio.sim.runner import Simulation

    cfg = load_config(site)
    loop = asyncio.get_running_loop()
    async with Simulation(cfg) as sim:
        for i in range(1, N_POINTS + 1):
            sim.set_value(f"bench.p{i:03d}", value_of(i))
        print(f"ready fast={device_fast.ready()}", flush=True)
        face: Any = sim.faces[DEVICE]
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = line.strip()
            if command == "count":
                print(sim.request_count(DEVICE), flush=True)
            elif command in ("stock", "fast"):
                face.fast_rpm = command == "fast"
                print("ok", flush=True)


@contextmanager
def _device(site: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.bacnet", "--serve", str(site)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().strip()
        if not ready.startswith("ready"):
            raise RuntimeError(f"the BACnet sim did not start: {ready!r}")
        proc.fast = ready.endswith("fast=True")  # type: ignore[attr-defined]
        yield proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the child's read loop ends: it closes its application and exits
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ask(proc: subprocess.Popen[str], command: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"{command}\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def _count(proc: subprocess.Popen[str]) -> int:
    return int(_ask(proc, "count"))


def _responder(proc: subprocess.Popen[str], fast: bool) -> None:
    """Switch the device's RPM responder; returns once the device has switched."""
    answer = _ask(proc, "fast" if fast else "stock")
    if answer != "ok":
        raise RuntimeError(f"the BACnet sim did not switch its RPM responder: {answer!r}")


# -- the two readers --------------------------------------------------------------------------
async def _raw_client() -> Application:
    device = DeviceObject(objectIdentifier=("device", 3_999_900), objectName="bench-raw", vendorIdentifier=999)
    npo = NetworkPortObject(f"127.0.0.1:{_free_udp()}", objectIdentifier=("network-port", 1),
                            objectName="NetworkPort-1")
    app = Application.from_object_list([device, npo])
    for ll in app.link_layers.values():
        await asyncio.wait_for(ll.server._local_transport_ready.wait(), 5)
    return app


async def _raw(app: Application, peer: Address) -> float:
    t0 = time.perf_counter()
    for i in range(1, N_POINTS + 1):
        value = await app.read_property(peer, f"analog-input,{i}", "present-value")
        assert abs(value - value_of(i)) < 1e-3, (i, value)
    return time.perf_counter() - t0


async def _eaio(adapter: BacnetAdapter) -> float:
    points = adapter.points()
    t0 = time.perf_counter()
    readings = await adapter.read(points)
    elapsed = time.perf_counter() - t0
    for i, r in enumerate(readings, start=1):
        assert r.quality == Quality.GOOD and r.value == value_of(i), (r.point_id, r.value, r.reasons, r.detail)
    return elapsed


def run() -> dict[str, Any]:
    with tempdir() as tmp:
        site = _site(tmp)
        cfg = load_config(site)
        with _device(site) as proc:
            peer = Address(cfg.devices_for("bacnet")[0].connection.address)

            async def both() -> dict[str, Any]:
                raw_t: list[float] = []
                eaio_t: list[float] = []
                stock_t: list[float] = []  # EAIO against the device answering with stock bacpypes3
                raw_app = await _raw_client()
                try:
                    async with BacnetAdapter(cfg.devices_for("bacnet"), local=cfg.bacnet, role="bench") as adapter:
                        await _eaio(adapter)  # Who-Is, caches and batches settle outside the timing
                        await _raw(raw_app, peer)
                        before, sent = _count(proc), adapter.request_count()
                        eaio_t.append(await _eaio(adapter))
                        eaio_n, eaio_sent = _count(proc) - before, adapter.request_count() - sent
                        before = _count(proc)
                        raw_t.append(await _raw(raw_app, peer))
                        raw_n = _count(proc) - before
                        _responder(proc, fast=False)
                        await _eaio(adapter)  # the stock responder's first answers settle outside the timing
                        before = _count(proc)
                        stock_t.append(await _eaio(adapter))
                        stock_n = _count(proc) - before
                        _responder(proc, fast=True)
                        for _ in range(ROUNDS - 1):  # interleaved, so load on the machine hits all alike
                            eaio_t.append(await _eaio(adapter))
                            raw_t.append(await _raw(raw_app, peer))
                            _responder(proc, fast=False)
                            stock_t.append(await _eaio(adapter))
                            _responder(proc, fast=True)
                        fast = bacnet_fast.usable()
                        batch = cfg.devices_for("bacnet")[0].connection.rpm_batch
                finally:
                    raw_app.close()
                    await asyncio.sleep(0)
                raw_ms, eaio_ms = statistics.median(raw_t) * 1e3, statistics.median(eaio_t) * 1e3
                stock_ms = statistics.median(stock_t) * 1e3
                return {
                    "points": N_POINTS,
                    "rounds": ROUNDS,
                    "rpm_batch": batch,
                    "eaio_ms": eaio_ms,
                    "raw_ms": raw_ms,
                    "eaio_min_ms": min(eaio_t) * 1e3,
                    "raw_min_ms": min(raw_t) * 1e3,
                    "speedup": raw_ms / eaio_ms,
                    "eaio_requests": eaio_n,
                    "eaio_requests_sent": eaio_sent,
                    "raw_requests": raw_n,
                    "eaio_properties": "present-value + status-flags",
                    "raw_properties": "present-value",
                    "fast_rpm_adapter": fast,
                    "fast_rpm_device": getattr(proc, "fast", None),
                    "target": ">= 10x",
                    # The same reads from the device with its fast RPM responder off (stock bacpypes3).
                    "stock_device": {
                        "eaio_ms": stock_ms,
                        "eaio_min_ms": min(stock_t) * 1e3,
                        "eaio_requests": stock_n,
                        "speedup": raw_ms / stock_ms,
                        "device_cost_ratio": stock_ms / eaio_ms,  # how much slower the stock device answers
                    },
                }

            return asyncio.run(both())


def main(argv: list[str]) -> int:
    if argv[:1] == ["--serve"] and len(argv) == 2:
        asyncio.run(_serve(Path(argv[1])))
        return 0
    import json

    print(json.dumps(run(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
