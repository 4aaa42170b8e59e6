"""The telemetry pipeline: validate readings, store them (directly or through the durable buffer), ingest."""

from .base import Aggregate, Bucket, Store, Validator
from .buffer import DurableBuffer
from .forward import ForwardingStore, StoreHealth
from .ingest import DeviceStats, Ingest, IngestStats, run_ingest
from .sqlite import SqliteStore, StoreCounts
from .stores import describe_store, open_store
from .validate import PointRule, QualityValidator, StaleState

__all__ = [
    "Aggregate",
    "Bucket",
    "DeviceStats",
    "DurableBuffer",
    "ForwardingStore",
    "Ingest",
    "IngestStats",
    "PointRule",
    "QualityValidator",
    "SqliteStore",
    "StaleState",
    "Store",
    "StoreCounts",
    "StoreHealth",
    "Validator",
    "describe_store",
    "open_store",
    "run_ingest",
]
