"""Whether a UDP port can be had (BACnet/IP runs on UDP: there is no listener to connect to)."""

from __future__ import annotations

import socket

__all__ = ["udp_port_free"]


def udp_port_free(host: str, port: int) -> bool:
    """A plain bind (no reuse flags) of ``host:port`` works.

    bacpypes3 binds with SO_REUSEPORT: a second application on a taken port binds silently and the
    kernel splits the peers between the two, and a port held without that flag makes bacpypes3
    retry forever. So whoever opens a BACnet application asks this first.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
