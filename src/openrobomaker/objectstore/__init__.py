"""Object stores hold bundles, data sources and job outputs: a local directory or any S3 endpoint."""

from openrobomaker.objectstore.base import (
    NoSuchBucket,
    NoSuchKey,
    ObjectInfo,
    ObjectStore,
    ObjectStoreConfig,
    ObjectStoreError,
    open_store,
)

__all__ = [
    "NoSuchBucket",
    "NoSuchKey",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStoreConfig",
    "ObjectStoreError",
    "open_store",
]
