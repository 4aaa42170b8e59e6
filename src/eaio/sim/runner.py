"""Run the virtual building: physics on a sim clock, faults, one Modbus, BACnet/IP or OPC-UA face
per device, and an MQTT face (IoT sensors, sub-meters, setpoint commands) when ``sim.mqtt`` names
a device.

``Simulation`` is the async context manager (use it inside an event loop you own);
``SimThread`` runs one in a daemon thread with its own loop, for sync tests and tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from datetime import datetime, tzinfo
from types import TracebackType
from typing import Any, Self, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..config import SimFaultSpec, SiteConfig
from ..errors import EaioError
from .faces.bacnet import BacnetFace
from .faces.modbus import ModbusFace
from .faces.mqtt import MqttFace
from .faces.opcua import OpcuaFace
from .faults import FaultBook
from .noise import SensorNoise
from .physics import MODELLED, Building

__all__ = ["SimThread", "Simulation", "parse_fault", "run_sim"]

log = logging.getLogger(__name__)
Value = float | int | bool
T = TypeVar("T")
# A device's face: what the runner needs of any of them (ports, counts, offline and back).
Face = ModbusFace | BacnetFace | OpcuaFace


def _site_tz(cfg: SiteConfig) -> tzinfo:
    try:
        return ZoneInfo(cfg.site.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


class Simulation:
    """The virtual building of ``cfg``: every Modbus, BACnet and OPC-UA device served on its address."""

    def __init__(self, cfg: SiteConfig, *, speed: float | None = None, faults: Iterable[SimFaultSpec] = ()) -> None:
        self.cfg = cfg
        self.speed = float(speed if speed is not None else cfg.sim.speed)
        self.step_s = cfg.sim.step_s
        tz = _site_tz(cfg)
        start = cfg.sim.start
        start = datetime.now(tz) if start is None else (start.replace(tzinfo=tz) if start.tzinfo is None else start)
        self.start_time = start
        self.building = Building(start, seed=cfg.sim.seed, meter_start_wh=cfg.sim.meter_start_wh)
        self.points = {p.id: p for p in cfg.points()}
        # Points the physics does not model are plain memory: they hold what is written.
        self.memory: dict[str, Value] = {
            pid: (False if p.is_binary else 0) for pid, p in self.points.items() if pid not in MODELLED
        }
        self.noise = SensorNoise(self.points.values(), cfg.sim.seed) if cfg.sim.noise else None
        self.faults = FaultBook()
        for spec in [*cfg.sim.faults, *faults]:
            self.faults.add(spec)
        self.faces: dict[str, Face] = {
            d.id: ModbusFace(d, self._client_write, strict_gaps=d.id in cfg.sim.strict_gaps)
            for d in cfg.devices_for("modbus")
        }
        for d in cfg.devices_for("bacnet"):
            self.faces[d.id] = BacnetFace(d, self._client_write, cfg.sim.bacnet)
        for d in cfg.devices_for("opcua"):
            # Certificate paths are used as given (relative to the working directory), as EAIO's own are.
            self.faces[d.id] = OpcuaFace(d, self._client_write, cfg.sim.opcua)
        self.mqtt_face = self._mqtt_face(cfg)
        self.served: dict[str, Value] = {}
        self.step = 0
        self.elapsed = 0.0  # sim seconds since start
        self.control_url: str | None = None
        self._control: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._restarting: set[str] = set()
        self._refresh()

    def _mqtt_face(self, cfg: SiteConfig) -> MqttFace | None:
        settings = cfg.sim.mqtt
        if settings is None:
            return None
        device = next((d for d in cfg.devices_for("mqtt") if d.id == settings.device), None)
        if device is None:  # load_config refuses this; a hand-built SiteConfig may not
            raise KeyError(f"sim.mqtt.device: '{settings.device}' is not an MQTT device")
        return MqttFace(device, settings, settings.prefix or cfg.site.id, self._client_write)

    def sensor_value(self, point_id: str) -> Value:
        """What a sensor reports: the served value of a configured point, else the physics'."""
        served = self.served.get(point_id)
        return served if served is not None else self.true_value(point_id)

    # -- the public surface -------------------------------------------------------------------
    @property
    def ports(self) -> dict[str, int]:
        return {dev_id: face.port for dev_id, face in self.faces.items()}

    @property
    def sim_time(self) -> datetime:
        return self.building.now

    def value(self, point_id: str) -> Value:
        """The engineering value served now (faults included). KeyError for an unknown point."""
        if point_id not in self.served:
            raise KeyError(f"unknown point '{point_id}'")
        return self.served[point_id]

    def true_value(self, point_id: str) -> Value:
        if point_id in self.memory:
            return self.memory[point_id]
        return self.building.state[point_id]

    def set_value(self, point_id: str, value: Value) -> None:
        """Set a point as if the device set it (the physics carries on from there)."""
        if point_id not in self.points and point_id not in MODELLED:
            raise KeyError(f"unknown point '{point_id}'")
        if point_id in self.memory:
            self.memory[point_id] = value
        else:
            self.building.set(point_id, value)
        self._refresh()

    def inject(self, spec: SimFaultSpec) -> None:
        """Add a fault; it starts ``spec.start_s`` sim seconds from now."""
        if spec.kind == "offline" and spec.target not in self.faces:
            raise KeyError(f"unknown device '{spec.target}'")
        if spec.kind != "offline" and spec.target not in self.points:
            raise KeyError(f"unknown point '{spec.target}'")
        self.faults.add(spec, now=self.elapsed)
        self._refresh()

    def clear_faults(self, target: str | None = None) -> int:
        n = self.faults.clear(target)
        self._refresh()
        return n

    def request_count(self, device_id: str) -> int:
        return self.faces[device_id].requests

    def reset_counts(self) -> None:
        for face in self.faces.values():
            face.requests = 0

    def state(self) -> dict[str, Any]:
        """A JSON-able snapshot for the control API."""
        return {
            "sim_time": self.sim_time.isoformat(),
            "elapsed_s": self.elapsed,
            "speed": self.speed,
            # JSON has no NaN/inf; a client may have written one into a float register.
            "values": {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in self.served.items()},
            "faults": [f.describe() for f in self.faults.active(self.elapsed)],
            "pending_faults": [f.describe() for f in self.faults.faults if f.start > self.elapsed],
            "offline": sorted(d for d, f in self.faces.items() if not f.online),
            "ports": self.ports,
        }

    # -- lifetime -----------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        try:
            for face in self.faces.values():
                await face.start()
            self._apply_offline()
            if self.mqtt_face is not None:
                self.mqtt_face.start()
                self.mqtt_face.step(self.elapsed, self.sim_time, self.sensor_value)
            if self.cfg.sim.control_port is not None:
                from .control import ControlServer

                self._control = ControlServer(self, port=self.cfg.sim.control_port)
                self.control_url = await self._control.start()
        except BaseException:
            await self._shutdown()
            raise
        self._loop_task = asyncio.create_task(self._run(), name="sim physics")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._control is not None:
            await self._control.stop()
            self._control = None
        for face in self.faces.values():
            face.stop()
        # An OPC-UA server also has sessions, subscriptions and a clock to end, which takes awaits.
        await asyncio.gather(*(f.aclose() for f in self.faces.values() if isinstance(f, OpcuaFace)))
        if self.mqtt_face is not None:
            self.mqtt_face.stop()
        await asyncio.sleep(0)  # let the closed transports run their connection_lost

    # -- the clock ----------------------------------------------------------------------------
    async def _run(self) -> None:
        t0 = time.monotonic()
        while True:
            await asyncio.sleep(self.step_s)
            # Follow the wall clock rather than counting steps, so a slow step does not slow time.
            target = (time.monotonic() - t0) * self.speed
            self.advance(max(0.0, target - self.elapsed))

    def advance(self, dt: float) -> None:
        """Move the sim ``dt`` sim seconds on (the clock task does this; tests may too)."""
        self.building.advance(dt)
        self.elapsed += dt
        self.step += 1
        self.faults.expire(self.elapsed)
        self._refresh()
        if self.mqtt_face is not None:
            self.mqtt_face.step(self.elapsed, self.sim_time, self.sensor_value)

    def _refresh(self) -> None:
        served: dict[str, Value] = {}
        noise = self.noise
        for pid in self.points:
            true = self.true_value(pid)
            measured = true if noise is None else noise.apply(pid, true)
            served[pid] = self.faults.served(pid, measured, self.elapsed, self.step)
        self.served = served
        unreliable = self.faults.unreliable_points(self.elapsed)
        for face in self.faces.values():
            if isinstance(face, BacnetFace | OpcuaFace):
                face.refresh(served, unreliable)
            else:
                face.refresh(served)  # a register cannot say "unreliable": Modbus serves the value as is
        self._apply_offline()

    def _apply_offline(self) -> None:
        offline = self.faults.offline_devices(self.elapsed)
        for dev_id, face in self.faces.items():
            if dev_id in offline and face.online:
                log.info("sim: %s goes offline", dev_id)
                face.stop()
            elif (
                dev_id not in offline and not face.online and self._loop_task is not None
                and dev_id not in self._restarting
            ):
                self._restarting.add(dev_id)
                self._spawn(self._restart(face))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _restart(self, face: Face) -> None:
        try:
            if not face.online and face.device.id not in self.faults.offline_devices(self.elapsed):
                await face.start()
                log.info("sim: %s back online", face.device.id)
        except Exception as err:  # a failed re-listen is retried on the next step
            log.warning("sim: %s could not come back yet: %s", face.device.id, err)
        finally:
            self._restarting.discard(face.device.id)

    def _client_write(self, point_id: str, value: Value) -> None:
        self.set_value(point_id, value)


class SimThread:
    """A Simulation in a daemon thread with its own event loop; every method is thread-safe."""

    def __init__(self, cfg: SiteConfig, **kwargs: Any) -> None:
        self.cfg = cfg
        self._kwargs = kwargs
        self._sim: Simulation | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._main, name="eaio-sim", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=10)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as err:
            self._error = err
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with Simulation(self.cfg, **self._kwargs) as sim:
            self._sim = sim
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[[Simulation], T]) -> T:
        """Run ``fn(sim)`` on the sim's loop, so it never races the physics or the faces."""
        if self._sim is None or self._loop is None:
            raise RuntimeError("SimThread is not running (use it as a context manager)")
        sim = self._sim
        if threading.current_thread() is self._thread:
            return fn(sim)
        fut: Future[T] = Future()

        def run() -> None:
            try:
                fut.set_result(fn(sim))
            except BaseException as err:
                fut.set_exception(err)

        self._loop.call_soon_threadsafe(run)
        return fut.result(timeout=10)

    @property
    def simulation(self) -> Simulation:
        if self._sim is None:
            raise RuntimeError("SimThread is not running")
        return self._sim

    @property
    def ports(self) -> dict[str, int]:
        return self.call(lambda s: s.ports)

    @property
    def control_url(self) -> str | None:
        return self.call(lambda s: s.control_url)

    @property
    def sim_time(self) -> datetime:
        return self.call(lambda s: s.sim_time)

    def value(self, point_id: str) -> Value:
        return self.call(lambda s: s.value(point_id))

    def true_value(self, point_id: str) -> Value:
        return self.call(lambda s: s.true_value(point_id))

    def set_value(self, point_id: str, value: Value) -> None:
        self.call(lambda s: s.set_value(point_id, value))

    def inject(self, spec: SimFaultSpec) -> None:
        self.call(lambda s: s.inject(spec))

    def clear_faults(self, target: str | None = None) -> int:
        return self.call(lambda s: s.clear_faults(target))

    def request_count(self, device_id: str) -> int:
        return self.call(lambda s: s.request_count(device_id))

    def reset_counts(self) -> None:
        self.call(lambda s: s.reset_counts())

    def advance(self, dt: float) -> None:
        self.call(lambda s: s.advance(dt))

    def state(self) -> dict[str, Any]:
        return self.call(lambda s: s.state())


# -- the CLI's entry points -------------------------------------------------------------------
_KINDS = ("stuck", "spike", "drift", "offline", "unreliable")


def parse_fault(text: str) -> SimFaultSpec:
    """``KIND:TARGET[:MAGNITUDE]`` -> SimFaultSpec, e.g. ``spike:zone2.temp:5``."""
    parts = text.strip().split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise ValueError(f"'{text}': expected KIND:TARGET[:MAGNITUDE], e.g. stuck:zone1.temp or spike:zone2.temp:5")
    kind, target = parts[0], parts[1]
    if kind not in _KINDS:
        raise ValueError(f"'{text}': unknown fault kind '{kind}'; expected one of {', '.join(_KINDS)}")
    magnitude = 0.0
    if len(parts) == 3:
        try:
            magnitude = float(parts[2])
        except ValueError:
            raise ValueError(f"'{text}': magnitude '{parts[2]}' is not a number") from None
    elif kind in ("spike", "drift"):
        raise ValueError(f"'{text}': a {kind} fault needs a magnitude, e.g. {kind}:{target}:2")
    if kind in ("stuck", "offline", "unreliable") and len(parts) == 3:
        raise ValueError(f"'{text}': a {kind} fault takes no magnitude")
    return SimFaultSpec(kind=kind, target=target, magnitude=magnitude)  # type: ignore[arg-type]


async def run_sim(
    cfg: SiteConfig, *, speed: float | None = None, faults: Iterable[SimFaultSpec] = (), duration: float | None = None
) -> None:
    """``eaio sim``: serve until ``duration`` wall seconds pass or SIGINT/SIGTERM arrives."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with Simulation(cfg, speed=speed, faults=faults) as sim:
            for dev in cfg.devices_for("modbus"):
                c = dev.connection
                print(f"{dev.id}  modbus tcp {c.host}:{c.port} unit {c.unit}", flush=True)
            for dev in cfg.devices_for("bacnet"):
                c = dev.connection
                print(f"{dev.id}  bacnet/ip udp {c.host}:{c.port} device {c.device_instance}", flush=True)
            for dev in cfg.devices_for("opcua"):
                print(f"{dev.id}  opc-ua {dev.connection.endpoint}", flush=True)
            if sim.mqtt_face is not None:
                face = sim.mqtt_face
                c = face.device.connection
                print(f"{face.device.id}  mqtt {c.host}:{c.port} topics {face.prefix}/...", flush=True)
            print(f"control  {sim.control_url or 'off (sim.control_port not set)'}", flush=True)
            print(f"sim clock  {sim.sim_time:%Y-%m-%d %H:%M} x{sim.speed:g}", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=duration)
    except (EaioError, OSError) as err:
        # A busy port is an operator's problem to fix, not a traceback to read.
        print(f"eaio sim: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
