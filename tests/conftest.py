"""Shared fixtures: free ports, a per-test copy of the demo site, and the virtual building.

Every test gets private ports and a private data directory, so tests never collide with each
other or with a demo someone left running.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from eaio.config import SiteConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "site.example.yaml"


def _below_ephemeral() -> range:
    """Ports below the kernel's ephemeral range. A port from bind(0) comes from that range, so
    between the test choosing it and a server binding it, an outgoing connection (a client of
    some other test server) may take it as its local port: "address already in use"."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(10000, low) if low > 12000 else range(49152, 65536)


_PORTS = _below_ephemeral()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    return free_ports(1, kind)[0]


def free_ports(n: int, kind: int = socket.SOCK_STREAM) -> list[int]:
    """``n`` distinct free ports, chosen at random outside the ephemeral range (all held open while
    choosing, so none is handed out twice)."""
    socks: list[socket.socket] = []
    try:
        while len(socks) < n:
            s = socket.socket(socket.AF_INET, kind)
            try:
                s.bind(("127.0.0.1", random.choice(_PORTS)))
            except OSError:  # taken (by another test, another run, a service): draw again
                s.close()
                continue
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def site_file(tmp_path: Path) -> Callable[..., Path]:
    """Write a copy of the demo site with free ports and a private data_dir; returns its path.

    By default only the building's Modbus part: most tests are about one protocol, and an MQTT
    device would need a broker. ``mqtt=True`` keeps the MQTT device too (on a free port where the
    test starts its broker, e.g. the demo's own); ``bacnet=True`` keeps the BACnet device (on a
    free UDP port, served by the sim's BACnet face), ``opcua=True`` the OPC-UA device (the sim's
    OPC-UA server on a free TCP port). Keyword arguments are merged into the top level
    (e.g. ``sim={"speed": 600}``), and ``devices=`` replaces the device list.
    """

    def make(*, mqtt: bool = False, bacnet: bool = False, opcua: bool = False, **changes: Any) -> Path:
        raw = yaml.safe_load(EXAMPLE.read_text())
        if not mqtt:
            raw["devices"] = [d for d in raw["devices"] if d.get("protocol") != "mqtt"]
            raw["sim"].pop("mqtt", None)
            raw["servers"].pop("mqtt", None)
        if not bacnet:
            raw["devices"] = [d for d in raw["devices"] if d.get("protocol") != "bacnet"]
            raw["servers"].pop("bacnet", None)
        if not opcua:
            raw["devices"] = [d for d in raw["devices"] if d.get("protocol") != "opcua"]
            raw["servers"].pop("opcua", None)
            raw["sim"].get("opcua", {}).pop("history", None)
        bacnet_devices = [d for d in raw["devices"] if d.get("protocol") == "bacnet"]
        udp = free_ports(len(raw["bacnet"]["ports"]) + len(bacnet_devices), socket.SOCK_DGRAM)
        raw["bacnet"]["ports"] = dict(zip(raw["bacnet"]["ports"], udp, strict=False))
        for dev, port in zip(bacnet_devices, udp[len(raw["bacnet"]["ports"]):], strict=True):
            dev["connection"]["address"] = f"127.0.0.1:{port}"  # the sim's BACnet face
        for dev in raw["devices"]:
            if dev.get("protocol") == "bacnet":
                continue
            if dev.get("protocol") == "opcua":  # the sim's OPC-UA server, on a free TCP port
                dev["connection"]["endpoint"] = f"opc.tcp://127.0.0.1:{free_port()}/eaio/plant"
                continue
            # Modbus devices get free ports for the sim to serve; MQTT devices one for a broker.
            dev.setdefault("connection", {})["port"] = free_port()
        raw["data_dir"] = str(tmp_path / "data")
        raw["sim"]["control_port"] = None
        raw["sim"]["noise"] = False  # exact physics values, so tests can compare them; the demo keeps noise
        for server in raw.get("servers", {}).values():
            server["port"] = free_port()
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key].update(value)
            else:
                raw[key] = value
        path = tmp_path / f"site-{len(list(tmp_path.glob('site-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return make


@pytest.fixture
def site(site_file: Callable[..., Path]) -> SiteConfig:
    """The demo site on private ports, loaded and checked."""
    return load_config(site_file())


@pytest.fixture
def sim(site: SiteConfig) -> Iterator[Any]:
    """The virtual building serving ``site`` over loopback, in a thread of its own."""
    from eaio.sim.runner import SimThread

    with SimThread(site) as running:
        yield running


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Any]:
    """A private Mosquitto on a free port (plain MQTT), stopped after the test."""
    from brokers import Broker

    broker = Broker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_tls(tmp_path: Path) -> Iterator[Any]:
    """A private Mosquitto with a plain listener and a TLS one that requires a client
    certificate; CA and certificates are made for the test (``broker.certs``)."""
    from brokers import Broker, make_certs

    broker = Broker(tmp_path / "mosquitto-tls", certs=make_certs(tmp_path / "certs"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[Any]:
    """A private influxd 1.6.7 on free ports with its own data directory, stopped after the test."""
    from influxdb import Influxd

    server = Influxd(tmp_path / "influxd")
    server.start()
    try:
        yield server
    finally:
        server.stop()
