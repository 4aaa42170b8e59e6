"""A private Mosquitto for tests: its own config, port and persistence directory.

Under CI=true a missing ``mosquitto`` program fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import free_port
from eaio.broker import find_mosquitto, write_mosquitto_conf
from helpers import stop_process

MOSQUITTO = find_mosquitto()


def require_mosquitto() -> str:
    if MOSQUITTO is None:
        message = "mosquitto is not installed (Debian package 'mosquitto'; `make test` installs it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return MOSQUITTO


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certs(folder: Path) -> Certs:
    """A CA, and a server and a client certificate it signs (for 127.0.0.1), made with openssl."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=eaio-test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=eaio-test-{name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", f"{name}.crt")
    return Certs(folder / "ca.crt", folder / "server.crt", folder / "server.key",
                 folder / "client.crt", folder / "client.key")


@dataclass
class Broker:
    """One private mosquitto. ``restart()`` keeps the port and the persisted sessions."""

    folder: Path
    port: int = field(default_factory=free_port)
    tls_port: int | None = None
    certs: Certs | None = None
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    def config(self) -> Path:
        tls = None
        if self.certs is not None:
            self.tls_port = self.tls_port or free_port()
            tls = (self.tls_port, self.certs.ca, self.certs.server_cert, self.certs.server_key)
        return write_mosquitto_conf(self.folder, self.port, self.host, tls)

    def start(self, timeout: float = 10.0) -> None:
        exe = require_mosquitto()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([exe, "-c", str(self.config())],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not self._accepts(self.port):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto not listening on {self.port} after {timeout} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """A clean stop: mosquitto saves its persistent sessions on SIGTERM."""
        if self.proc is None:
            return
        stop_process(self.proc)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @staticmethod
    def _accepts(port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) == 0
