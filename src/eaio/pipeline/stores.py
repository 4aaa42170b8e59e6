"""The store a site's configuration asks for: ``open_store(cfg)``.

- ``storage.backend: sqlite`` — the embedded SQLite store, written directly: it is a local,
  durable file itself, so a buffer in front of it would only write every reading twice.
- ``storage.backend: influxdb`` — the InfluxDB server (``storage.influxdb.version`` 1 or 2) behind
  the durable buffer (``storage.buffer``): a ``ForwardingStore``.

The remote stores are imported only when configured, so a SQLite site never loads their clients.
"""

from __future__ import annotations

from ..config import SiteConfig
from .base import Store
from .buffer import DurableBuffer
from .forward import ForwardingStore
from .sqlite import SqliteStore

__all__ = ["describe_store", "open_store"]


def open_store(cfg: SiteConfig) -> Store:
    """The configured store, not yet entered (``async with open_store(cfg) as store:``)."""
    storage = cfg.storage
    if storage.backend == "sqlite":
        return SqliteStore.from_config(cfg)
    influx = storage.influxdb
    assert influx is not None  # the config's validator requires the section for this backend
    remote: Store
    if influx.version == 1:
        from .influx_v1 import InfluxV1Store

        remote = InfluxV1Store.from_config(cfg)
    else:
        from .influx_v2 import InfluxV2Store

        remote = InfluxV2Store.from_config(cfg)
    buf = storage.buffer
    return ForwardingStore(
        DurableBuffer(cfg.buffer_path(), buf.max_readings, chunk_size=buf.batch_size), remote,
        backend=f"influxdb v{influx.version}", batch_size=buf.batch_size, retry_initial_s=buf.retry_initial_s,
        retry_max_s=buf.retry_max_s,
    )


def describe_store(cfg: SiteConfig) -> str:
    """Where readings go, in words for a log line."""
    storage = cfg.storage
    if storage.backend == "sqlite" or storage.influxdb is None:
        return f"sqlite {cfg.sqlite_path()}"
    return f"influxdb v{storage.influxdb.version} {storage.influxdb.url} through the buffer {cfg.buffer_path()}"
