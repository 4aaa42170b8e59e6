"""A wire-level stand-in for the Ollama HTTP API, for tests.

No Ollama server (and no model) can be installed where these tests run, so the agent's real
``ollama.AsyncClient`` talks to this instead: a real HTTP server on 127.0.0.1 (a free port, in a
thread) that speaks Ollama's JSON for the endpoints the agent uses, answers ``/api/chat`` from a
script the test writes, and records every request it received so the test can check what the
agent sent (tools, ``options.num_ctx``, ``keep_alive``, messages).

What it copies from Ollama (checked against the ``ollama`` 0.6.3 client and Ollama's API docs):

- ``GET /api/tags`` -> ``{"models": [{"name", "model", "modified_at", "size", "digest", "details"}]}``
- ``POST /api/chat`` (non-streaming) -> ``{"model", "created_at", "message": {"role": "assistant",
  "content", "tool_calls": [{"function": {"name", "arguments": {...}}}]}, "done": true,
  "done_reason": "stop", "total_duration", "load_duration", "prompt_eval_count",
  "prompt_eval_duration", "eval_count", "eval_duration"}``
- ``POST /api/embed`` -> ``{"model", "embeddings": [[...]], "total_duration", "prompt_eval_count"}``
- ``POST /api/show`` -> ``{"details", "model_info", "capabilities", "parameters", "template", ...}``
- ``GET /api/version``, ``GET /`` ("Ollama is running")
- a model that is not in ``models`` -> 404 ``{"error": "model 'x' not found"}``, before any script
  entry is used; a bad body -> 400 ``{"error": ...}``.
- ``prompt_eval_count``, unless scripted: about one token per 3 characters of the request's
  messages and tools, capped at ``options.num_ctx`` (default 2048) — Ollama silently drops the
  start of a prompt longer than its context, so the count it reports never exceeds it.

Every response closes its connection (HTTP/1.0): after ``stop()`` no pooled keep-alive
connection can still be answered by an old handler thread, so "the server is gone" is real.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["DEFAULT_MODELS", "GiB", "OllamaStandIn", "model_entry"]

GiB = 1024**3


def model_entry(name: str, size: int = 64 * 1024**2, *, family: str = "qwen2", parameter_size: str = "7.6B",
                capabilities: list[str] | None = None) -> dict[str, Any]:
    """One ``/api/tags`` entry as Ollama lists it (``capabilities`` is only used by ``/api/show``)."""
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-01-01T00:00:00Z",
        "size": size,
        "digest": f"sha256:{abs(hash(name)):064x}"[:71],
        "details": {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                    "parameter_size": parameter_size, "quantization_level": "Q4_K_M"},
        "capabilities": capabilities or ["completion", "tools"],
    }


# The config's defaults (llm.model, llm.fallback_model, memory.ollama_model), so a test that does
# not care about models gets a server that knows them. Their sizes are kept small on purpose (the
# real files are 4.7 GB, 1 GB and 274 MB): the fallback chain compares a model's size with the
# machine's free memory, and a test that does not ask for memory pressure must not get it on a
# small CI machine. A test that wants it lists a huge model itself.
DEFAULT_MODELS: list[dict[str, Any]] = [
    model_entry("qwen2.5:7b", 64 * 1024**2),
    model_entry("qwen2.5:1.5b", 16 * 1024**2, parameter_size="1.5B"),
    model_entry("nomic-embed-text:latest", 8 * 1024**2, family="nomic-bert", parameter_size="137M",
                capabilities=["embedding"]),
]


class OllamaStandIn:
    """``with OllamaStandIn() as ollama:`` serves on ``ollama.url`` until the block ends.

    ``script(...)`` queues ``/api/chat`` answers, used in order whatever the model (a 404 for an
    unknown model uses none). Each answer is a dict with any of:

    - ``content`` (str), ``tool_calls`` (list of ``{"function": {"name", "arguments"}}``, or the
      short form ``{"name", "arguments"}``), ``thinking``
    - ``prompt_eval_count``, ``eval_count`` (ints; default: estimated from the request)
    - ``status`` (an HTTP error status) with ``error`` (its message)
    - ``delay_s``: wait this long before answering (to test the client's timeout)
    - ``drop``: close the connection without any answer
    - ``raw``: send exactly this JSON body (to test malformed replies)

    With the script empty, ``/api/chat`` answers 500 ``{"error": "stand-in: no scripted reply
    left"}``, so a test that under-scripts fails loudly instead of hanging.
    """

    def __init__(self, models: list[dict[str, Any]] | None = None, *, port: int = 0) -> None:
        self.models: list[dict[str, Any]] = [dict(m) for m in (models if models is not None else DEFAULT_MODELS)]
        self.requests: list[dict[str, Any]] = []  # every /api/chat body, in order
        self.received: list[tuple[str, str, Any]] = []  # (method, path, body) of every request
        self.embed: Callable[[list[str]], list[list[float]]] | None = None
        self._script: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifetime -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        """Serve (again, on the same port after a ``stop()``)."""
        if self._server is not None:
            return
        server = ThreadingHTTPServer(("127.0.0.1", self._port), _handler(self))
        server.daemon_threads = True
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name=f"ollama-standin-{self._port}",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening; afterwards connections are refused, as with Ollama not running."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> OllamaStandIn:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- the test's side ----------------------------------------------------------------------
    def script(self, *responses: dict[str, Any]) -> None:
        """Queue the next ``/api/chat`` answers."""
        with self._lock:
            self._script.extend(responses)

    @property
    def pending(self) -> int:
        """Scripted answers not used yet."""
        with self._lock:
            return len(self._script)

    def model_names(self) -> list[str]:
        return [m["name"] for m in self.models]

    # -- the server's side --------------------------------------------------------------------
    def _entry(self, model: str) -> dict[str, Any] | None:
        # Ollama resolves a name without a tag to ":latest" (and lists pulled models with their tag).
        want = _tagged(model)
        return next((m for m in self.models if _tagged(m["name"]) == want), None)

    def _next(self) -> dict[str, Any] | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    def _record(self, method: str, path: str, body: Any) -> None:
        with self._lock:
            self.received.append((method, path, body))
            if path == "/api/chat":
                self.requests.append(body)


def _handler(standin: OllamaStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"
        server_version = "ollama-standin"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures
            return

        def do_GET(self) -> None:
            standin._record("GET", self.path, None)
            if self.path == "/api/tags":
                tags = [{k: v for k, v in m.items() if k != "capabilities"} for m in standin.models]
                self._json(200, {"models": tags})
            elif self.path == "/api/version":
                self._json(200, {"version": "0.12.0-standin"})
            elif self.path == "/":
                self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
            else:
                self._send(404, b"404 page not found", "text/plain; charset=utf-8")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError as err:
                standin._record("POST", self.path, raw.decode(errors="replace"))
                self._json(400, {"error": f"invalid character in request body: {err}"})
                return
            standin._record("POST", self.path, body)
            route = {"/api/chat": self._chat, "/api/embed": self._embed, "/api/show": self._show}.get(self.path)
            if route is None:
                self._send(404, b"404 page not found", "text/plain; charset=utf-8")
                return
            if not isinstance(body, dict) or not body.get("model"):
                self._json(400, {"error": "model is required"})
                return
            if standin._entry(body["model"]) is None:
                self._json(404, {"error": f"model '{body['model']}' not found"})
                return
            route(body)

        # -- endpoints --------------------------------------------------------------------------
        def _chat(self, body: dict[str, Any]) -> None:
            if body.get("stream", True) is not False:
                # The agent always asks for one JSON answer; a stream request would be a bug there.
                self._json(400, {"error": "stand-in: only non-streaming /api/chat is served"})
                return
            reply = standin._next()
            if reply is None:
                self._json(500, {"error": "stand-in: no scripted reply left"})
                return
            if reply.get("delay_s"):
                time.sleep(float(reply["delay_s"]))
            if reply.get("drop"):
                self._drop()
                return
            if "raw" in reply:
                self._json(int(reply.get("status", 200)), reply["raw"])
                return
            if reply.get("status", 200) >= 400:
                self._json(int(reply["status"]), {"error": reply.get("error", "stand-in: scripted error")})
                return
            message: dict[str, Any] = {"role": "assistant", "content": reply.get("content", "")}
            if reply.get("thinking"):
                message["thinking"] = reply["thinking"]
            if reply.get("tool_calls"):
                message["tool_calls"] = [_wire_call(c) for c in reply["tool_calls"]]
            self._json(200, {
                "model": body["model"],
                "created_at": _now(),
                "message": message,
                "done": True,
                "done_reason": reply.get("done_reason", "stop"),
                "total_duration": 1_000_000,
                "load_duration": 100_000,
                "prompt_eval_count": reply.get("prompt_eval_count", _prompt_tokens(body)),
                "prompt_eval_duration": 500_000,
                "eval_count": reply.get("eval_count", max(1, len(json.dumps(message)) // 4)),
                "eval_duration": 400_000,
            })

        def _embed(self, body: dict[str, Any]) -> None:
            if standin.embed is None:
                self._json(400, {"error": f"\"{body['model']}\" does not support embeddings"})
                return
            inputs = body.get("input", "")
            texts = [inputs] if isinstance(inputs, str) else list(inputs)
            vectors = standin.embed(texts)
            self._json(200, {"model": body["model"], "embeddings": vectors, "total_duration": 1_000_000,
                             "load_duration": 100_000, "prompt_eval_count": sum(len(t) // 4 + 1 for t in texts)})

        def _show(self, body: dict[str, Any]) -> None:
            entry = standin._entry(body["model"]) or {}
            self._json(200, {
                "modelfile": f"FROM {entry.get('name', body['model'])}",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": entry.get("details", {}),
                "model_info": {"general.architecture": entry.get("details", {}).get("family", "")},
                "capabilities": entry.get("capabilities", ["completion"]),
                "modified_at": entry.get("modified_at", "2025-01-01T00:00:00Z"),
            })

        # -- plumbing ---------------------------------------------------------------------------
        def _json(self, status: int, body: Any) -> None:
            self._send(status, json.dumps(body).encode(), "application/json; charset=utf-8")

        def _send(self, status: int, data: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _drop(self) -> None:
            # Reset the connection (no response line at all), like a server killed mid-request.
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return Handler


def _wire_call(call: dict[str, Any]) -> dict[str, Any]:
    """A scripted tool call in Ollama's wire form (the short ``{"name", "arguments"}`` is wrapped)."""
    if "function" in call:
        return call
    return {"function": {"name": call["name"], "arguments": call.get("arguments", {})}}


def _tagged(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def _prompt_tokens(body: dict[str, Any]) -> int:
    """What Ollama would report: the prompt's tokens (about 3 characters each), never more than num_ctx."""
    size = len(json.dumps(body.get("messages", []))) + len(json.dumps(body.get("tools", [])))
    num_ctx = (body.get("options") or {}).get("num_ctx") or 2048
    return min(math.ceil(size / 3), int(num_ctx))


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
