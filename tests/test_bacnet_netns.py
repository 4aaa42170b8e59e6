"""Broadcast Who-Is across a real (if private) IP network: two network namespaces joined by a
veth pair, the sim's BACnet device in one, `eaio serve bacnet` in the other.

On 127.0.0.1 a broadcast cannot be tested (BACnet broadcasts go to the sender's own port, and
two applications cannot share a port on one address), so this needs two hosts; namespaces made
with `ip netns` (root, iproute2) are two hosts on one machine. Under CI=true it must run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import Client, StdioServerParameters

from helpers import call, eventually

pytestmark = pytest.mark.anyio


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str, str]]:
    """(device namespace, client namespace, subnet prefix 'a.b.c'), removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the broadcast test needs root and iproute2 ('ip'); CI runs as root with iproute2")
        pytest.skip("needs root and iproute2 to make network namespaces")
    tag = uuid.uuid4().hex[:6]
    dev_ns, cli_ns = f"eaio-dev-{tag}", f"eaio-cli-{tag}"
    subnet = f"10.47.{int(tag[:2], 16)}"
    try:
        _ip("netns", "add", dev_ns)
        _ip("netns", "add", cli_ns)
        _ip("link", "add", f"vd{tag}", "netns", dev_ns, "type", "veth", "peer", "name", f"vc{tag}", "netns", cli_ns)
        for ns, dev, host in ((dev_ns, f"vd{tag}", 1), (cli_ns, f"vc{tag}", 2)):
            _ip("-n", ns, "addr", "add", f"{subnet}.{host}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield dev_ns, cli_ns, subnet
    finally:
        for ns in (dev_ns, cli_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def _site(site_file: Callable[..., Path], subnet: str) -> Path:
    """Only the BACnet controller, on the device namespace's address, and EAIO on the client's."""
    path = site_file(bacnet=True)
    raw = yaml.safe_load(path.read_text())
    raw["devices"] = [d for d in raw["devices"] if d["protocol"] == "bacnet"]
    raw["devices"][0]["connection"]["address"] = f"{subnet}.1/24:47808"
    raw["bacnet"] = {"interface": f"{subnet}.2/24", "ports": {"server": 47808}}
    raw["servers"] = {"bacnet": {"transport": "stdio"}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@contextmanager
def _sim_in(ns: str, path: Path) -> Iterator[subprocess.Popen[bytes]]:
    sim = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "eaio", "sim", "--config", str(path)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield sim
    finally:
        sim.terminate()
        try:
            sim.wait(10)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()
        if sim.stderr:
            sim.stderr.close()


async def test_broadcast_who_is_finds_the_device(two_hosts: tuple[str, str, str],
                                                 site_file: Callable[..., Path]) -> None:
    dev_ns, cli_ns, subnet = two_hosts
    path = _site(site_file, subnet)
    with _sim_in(dev_ns, path) as sim:
        params = StdioServerParameters(
            command="ip", args=["netns", "exec", cli_ns, sys.executable, "-m", "eaio", "serve", "bacnet",
                                "--config", str(path)], env=dict(os.environ))
        async with Client(params) as c:
            async def found() -> list[Any]:
                assert sim.poll() is None, sim.stderr.read().decode() if sim.stderr else "sim exited"
                result = await call(c, "who_is", {"timeout_s": 1})  # no address: a broadcast
                return result["devices"]

            devices = await eventually(found, 30)
            assert [(d["device_instance"], d["device_id"]) for d in devices] == [(1004, "zone4-vav")]
            assert devices[0]["address"].startswith(f"{subnet}.1")
            # The same discovery, narrowed to a range that leaves the device out, finds nothing.
            assert (await call(c, "who_is", {"low": 1, "high": 1000, "timeout_s": 1}))["devices"] == []
