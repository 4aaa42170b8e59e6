"""The telemetry pipeline: validate readings, store them, poll devices (ingest)."""

from .base import Aggregate, Bucket, Store, Validator
from .ingest import DeviceStats, Ingest, IngestStats, run_ingest
from .sqlite import SqliteStore, StoreCounts
from .validate import PointRule, QualityValidator, StaleState

__all__ = [
    "Aggregate",
    "Bucket",
    "DeviceStats",
    "Ingest",
    "IngestStats",
    "PointRule",
    "QualityValidator",
    "SqliteStore",
    "StaleState",
    "Store",
    "StoreCounts",
    "Validator",
    "run_ingest",
]
