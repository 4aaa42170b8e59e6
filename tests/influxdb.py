"""A private InfluxDB 1.x (``influxd``, Debian package ``influxdb``) for tests.

Its own config file, meta/data/wal directories and free ports on 127.0.0.1: nothing is shared
with a system service the package may have started. Under CI=true a missing ``influxd`` fails
the test instead of skipping it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import free_ports
from helpers import stop_process

__all__ = ["Influxd", "require_influxd"]

INFLUXD = shutil.which("influxd") or ("/usr/bin/influxd" if Path("/usr/bin/influxd").exists() else None)


def require_influxd() -> str:
    """The path of ``influxd``; fails under CI=true when it is missing, else skips."""
    if INFLUXD is None:
        message = "influxd is not installed (Debian package 'influxdb'; `make test` installs it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return INFLUXD


_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{folder}/meta"
  logging-enabled = false

[data]
  dir = "{folder}/data"
  wal-dir = "{folder}/wal"
  query-log-enabled = false
  # Writes are acknowledged once in the WAL; fsync on every write only slows tests down.
  wal-fsync-delay = "0s"

[coordinator]
  write-timeout = "10s"

[retention]
  enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = false
  log-enabled = false
  max-body-size = 0

[logging]
  level = "warn"
"""


class Influxd:
    """A private influxd 1.6.7: own config file, meta/data/wal dirs under `folder`, free HTTP and
    bind (RPC) ports on 127.0.0.1; reporting off; nothing shared with a system service."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.http_port, self.rpc_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    # -- lifetime ------------------------------------------------------------------------------
    def config(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "influxdb.conf"
        path.write_text(_CONFIG.format(folder=self.folder, http_port=self.http_port, rpc_port=self.rpc_port))
        return path

    def start(self, timeout: float = 20.0) -> None:
        """Start influxd and wait until GET /ping answers 204 (the same ports on a restart)."""
        exe = require_influxd()
        if self.proc is not None and self.proc.poll() is None:
            return
        conf = self.config()
        # INFLUXDB_* variables override the config file: keep the process to our file only.
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
        # A file, not a pipe: a chatty influxd must never block on a full pipe nobody reads.
        self._log = open(self.folder / "influxd.log", "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.proc = subprocess.Popen([exe, "run", "-config", str(conf)], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.folder)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._reap()
                raise RuntimeError(f"influxd exited with {code}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"influxd not answering /ping on {self.http_port} after {timeout} s: "
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 10 s)."""
        if self.proc is None:
            return
        stop_process(self.proc)
        self._reap()

    def kill(self) -> None:
        """SIGKILL: a crash, as far as the data on disk is concerned."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reap()

    def _reap(self) -> None:
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, n: int = 2000) -> str:
        log = self.folder / "influxd.log"
        return log.read_text(errors="replace")[-n:] if log.exists() else ""

    # -- HTTP ----------------------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=0.5) as resp:
                return bool(resp.status == 204)
        except (urllib.error.URLError, OSError):
            return False

    def query(self, q: str, db: str = "eaio") -> dict[str, Any]:
        """The raw /query JSON (epoch=u), for assertions; raises on an HTTP error."""
        params = urllib.parse.urlencode({"db": db, "epoch": "u", "q": q})
        req = urllib.request.Request(f"{self.url}/query", data=params.encode(), method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            result: dict[str, Any] = json.loads(resp.read())
        return result

    def count(self, db: str = "eaio", measurement: str = "readings") -> int:
        """How many rows (points) the measurement holds: 0 when it does not exist yet."""
        name = _ident(measurement)
        # count(*) counts each field apart, and a row may lack any one field (a failed read has
        # no `value`). A tag every series has, selected beside every field in a subquery, is
        # non-null on every row: counting it counts rows without shipping them over HTTP.
        fields = [row[0] for row in self._rows(f"SHOW FIELD KEYS FROM {name}", db)]
        if not fields:
            return 0
        common: set[str] | None = None
        for (key,) in self._rows(f"SHOW SERIES FROM {name}", db):
            tags = {part.split("=", 1)[0] for part in _split_key(key)[1:]}
            common = tags if common is None else common & tags
        selected = ", ".join(_ident(f) for f in fields)
        if common:
            tag = _ident(sorted(common)[0])
            rows = self._rows(f"SELECT count(c) FROM (SELECT {selected}, {tag} AS c FROM {name})", db)
            return int(rows[0][1]) if rows else 0
        return len(self._rows(f"SELECT {selected} FROM {name}", db))  # no tag on every series

    def _rows(self, q: str, db: str) -> list[list[Any]]:
        rows: list[list[Any]] = []
        for res in self.query(q, db).get("results", []):
            if "error" in res and str(res["error"]).startswith("database not found"):
                return []  # nothing written yet: as empty as an empty measurement
            if "error" in res:
                raise RuntimeError(f"influxd query {q!r} failed: {res['error']}")
            for series in res.get("series", []):
                rows += series.get("values", [])
        return rows


def _ident(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split_key(key: str) -> list[str]:
    """A series key (``m,a=1,b=x\\,y``) split on its unescaped commas."""
    parts, cur, i = [], [], 0
    while i < len(key):
        ch = key[i]
        if ch == "\\" and i + 1 < len(key):
            cur.append(key[i:i + 2])
            i += 2
            continue
        if ch == ",":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts
