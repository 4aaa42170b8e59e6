"""A private Mosquitto: what `eaio demo`, the tests and the benchmarks start when they need a
broker of their own. Its config, persistence and log live in one folder."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

__all__ = ["find_mosquitto", "write_mosquitto_conf"]


def find_mosquitto() -> str | None:
    """The mosquitto program (Debian installs it in /usr/sbin, which a user's PATH may lack)."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


def write_mosquitto_conf(
    folder: Path,
    port: int,
    host: str = "127.0.0.1",
    tls: tuple[int, Path, Path, Path] | None = None,
) -> Path:
    """Write ``folder/mosquitto.conf`` for a listener on host:port; ``tls`` adds a listener
    (port, CA, server certificate, server key) that requires a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f"listener {port} {host}",
        "allow_anonymous true",
        "persistence true",
        f"persistence_location {folder}/",
        "max_queued_messages 0",  # no limit: a persistent session must not drop messages
        "max_inflight_messages 0",
        f"log_dest file {folder / 'mosquitto.log'}",
        # Started as root, mosquitto drops to its own user, which cannot write our folder.
        f"user {pwd.getpwuid(os.getuid()).pw_name}",
    ]
    if tls is not None:
        tls_port, ca, cert, key = tls
        lines += [
            f"listener {tls_port} {host}",
            f"cafile {ca}",
            f"certfile {cert}",
            f"keyfile {key}",
            "require_certificate true",
        ]
    path = folder / "mosquitto.conf"
    path.write_text("\n".join(lines) + "\n")
    return path
