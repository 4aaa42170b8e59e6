"""The sim's HTTP control API (GET /state, POST /faults, DELETE /faults) and its client.

The server runs in the simulation's own event loop (uvicorn, 127.0.0.1 only), so handlers touch
the simulation without locks. ``send_fault`` is what ``eaio sim-fault`` calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..config import SimFaultSpec

if TYPE_CHECKING:
    from .runner import Simulation

__all__ = ["ControlServer", "build_app", "send_fault"]


def build_app(sim: Simulation) -> Starlette:
    async def state(_: Request) -> JSONResponse:
        return JSONResponse(sim.state())

    async def add_fault(request: Request) -> JSONResponse:
        try:
            spec = SimFaultSpec.model_validate(await request.json())
            sim.inject(spec)
        except (ValidationError, ValueError) as err:
            return JSONResponse({"error": "invalid_argument", "message": str(err)}, status_code=400)
        except KeyError as err:
            return JSONResponse({"error": "unknown_target", "message": str(err.args[0])}, status_code=404)
        return JSONResponse({"injected": spec.model_dump()}, status_code=201)

    async def clear(request: Request) -> JSONResponse:
        target = request.query_params.get("target") or None
        return JSONResponse({"cleared": sim.clear_faults(target), "target": target})

    return Starlette(routes=[
        Route("/state", state, methods=["GET"]),
        Route("/faults", add_fault, methods=["POST"]),
        Route("/faults", clear, methods=["DELETE"]),
    ])


class _QuietServer(uvicorn.Server):
    # The sim owns SIGINT/SIGTERM; uvicorn must not take them over from the main thread.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ControlServer:
    def __init__(self, sim: Simulation, *, port: int = 0, host: str = "127.0.0.1") -> None:
        config = uvicorn.Config(build_app(sim), host=host, port=port, log_level="warning", lifespan="off")
        self._server = _QuietServer(config)
        self._task: asyncio.Task[None] | None = None
        self.host = host

    async def start(self) -> str:
        """Serve; returns the base URL once the socket listens."""
        self._task = asyncio.create_task(self._server.serve(), name="sim control")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start
                raise RuntimeError("sim control server exited before it started")
            await asyncio.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}"

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, SystemExit):
            await self._task
        self._task = None


def send_fault(url: str, spec: str, *, timeout: float = 5.0) -> str:
    """Inject ``KIND:TARGET[:MAGNITUDE]``, or clear with ``clear`` / ``clear:TARGET``.
    Returns a one-line summary; raises ValueError for a bad spec or a refused request."""
    from .runner import parse_fault

    base = url.rstrip("/")
    if spec == "clear" or spec.startswith("clear:"):
        target = spec.partition(":")[2]
        query = f"?{urllib.parse.urlencode({'target': target})}" if target else ""
        req = urllib.request.Request(f"{base}/faults{query}", method="DELETE")
    else:
        body = parse_fault(spec).model_dump_json().encode()
        req = urllib.request.Request(
            f"{base}/faults", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as err:
        detail = json.loads(err.read() or b"{}")
        raise ValueError(f"{detail.get('error', err.code)}: {detail.get('message', err.reason)}") from None
    except urllib.error.URLError as err:
        raise ConnectionError(f"sim control API at {base} is not reachable: {err.reason}") from None
    if "cleared" in answer:
        return f"cleared {answer['cleared']} fault(s)" + (f" on {answer['target']}" if answer["target"] else "")
    f = answer["injected"]
    return f"injected {f['kind']} on {f['target']}" + (f" ({f['magnitude']:g})" if f["magnitude"] else "")
