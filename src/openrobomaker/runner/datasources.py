"""Data sources: S3 objects placed read-only below `<dir>/<name>/<full s3 key>` for the job.

`File` downloads each key, `Prefix` every object under each key, `Archive` extracts each .tar.gz / .zip
(safely, with the bundle extractor) into `<name>/`. Inside an isolated job the directory is bind-mounted
read-only at `/opt/robomaker/datasources/<name>` (or at `destination`, see `mount_target`).
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from openrobomaker.bundles import BundleError, ExtractionLimits, safe_extract_archive, safe_relative_name
from openrobomaker.objectstore import NoSuchBucket, NoSuchKey, ObjectStore, ObjectStoreError
from openrobomaker.runner.failures import (
    BAD_PERMISSIONS_S3_OBJECT,
    INVALID_S3_RESOURCE,
    MISMATCHED_ETAG,
    JobFailure,
)
from openrobomaker.runner.fetch import normalise_etag
from openrobomaker.runner.spec import DataSourceSpec

log = logging.getLogger(__name__)

MOUNT_ROOT = "/opt/robomaker/datasources"
# RoboMaker's limits across all data sources of a job: 100 files, 25 GB.
MAX_FILES = 100
MAX_TOTAL_BYTES = 25 * 1000**3


@dataclass(frozen=True)
class PreparedDataSource:
    name: str
    host_dir: Path
    mount_target: str


def mount_target(source: DataSourceSpec) -> str:
    """Where the job sees the data source: `destination` only when it lies under /opt/robomaker (a tmpfs we
    own inside the job's mount namespace); other destinations would need directories created on the host."""
    if source.destination:
        normal = os.path.normpath(source.destination)
        if normal.startswith("/opt/robomaker/") and ".." not in normal.split("/"):
            return normal
        log.warning(
            "data source %r: destination %r not supported, using %s",
            source.name,
            source.destination,
            f"{MOUNT_ROOT}/{source.name}",
        )
    return f"{MOUNT_ROOT}/{source.name}"


class _Budget:
    def __init__(self) -> None:
        self.files = 0
        self.total_bytes = 0

    def charge(self, source: DataSourceSpec, size: int) -> None:
        self.files += 1
        self.total_bytes += size
        if self.files > MAX_FILES or self.total_bytes > MAX_TOTAL_BYTES:
            raise JobFailure(
                INVALID_S3_RESOURCE,
                f"Data sources exceed the limit of {MAX_FILES} files / {MAX_TOTAL_BYTES} bytes (at {source.name!r}).",
            )


def _key_path(root: Path, source: DataSourceSpec, key: str) -> Path:
    try:
        relative = safe_relative_name(key)
    except BundleError:
        relative = None
    if not relative:
        raise JobFailure(
            INVALID_S3_RESOURCE, f"Data source {source.name!r}: S3 key {key!r} is not a valid path."
        )
    return root / relative


def _download(
    store: ObjectStore,
    source: DataSourceSpec,
    key: str,
    expected_etag: str | None,
    dest: Path,
    budget: _Budget,
) -> None:
    where = f"s3://{source.s3_bucket}/{key}"
    try:
        info = store.head(source.s3_bucket, key)
        if expected_etag and normalise_etag(info.etag) != normalise_etag(expected_etag):
            raise JobFailure(
                MISMATCHED_ETAG,
                f"Data source {source.name!r}: {where} changed since the job was created "
                f"(ETag {info.etag} instead of {expected_etag}).",
            )
        budget.charge(source, info.size)
        dest.parent.mkdir(parents=True, exist_ok=True)
        store.download(source.s3_bucket, key, dest)
    except (NoSuchKey, NoSuchBucket) as exc:
        raise JobFailure(
            INVALID_S3_RESOURCE, f"Data source {source.name!r}: {where} does not exist."
        ) from exc
    except ObjectStoreError as exc:
        raise JobFailure(
            BAD_PERMISSIONS_S3_OBJECT, f"Data source {source.name!r}: cannot read {where}: {exc}"
        ) from exc


def _fetch_prefix(
    store: ObjectStore, source: DataSourceSpec, root: Path, prefix: str, budget: _Budget
) -> None:
    try:
        objects = [o for o in store.list(source.s3_bucket, prefix) if not o.key.endswith("/")]
    except NoSuchBucket as exc:
        raise JobFailure(
            INVALID_S3_RESOURCE, f"Data source {source.name!r}: bucket {source.s3_bucket!r} does not exist."
        ) from exc
    except ObjectStoreError as exc:
        raise JobFailure(
            BAD_PERMISSIONS_S3_OBJECT,
            f"Data source {source.name!r}: cannot list s3://{source.s3_bucket}/{prefix}: {exc}",
        ) from exc
    if not objects:
        raise JobFailure(
            INVALID_S3_RESOURCE,
            f"Data source {source.name!r}: no objects under s3://{source.s3_bucket}/{prefix}.",
        )
    for obj in objects:
        _download(store, source, obj.key, None, _key_path(root, source, obj.key), budget)


def _fetch_archive(
    store: ObjectStore,
    source: DataSourceSpec,
    root: Path,
    key: str,
    etag: str | None,
    budget: _Budget,
    scratch: Path,
) -> None:
    archive = Path(tempfile.mkstemp(dir=scratch, prefix="archive-")[1])
    try:
        _download(store, source, key, etag, archive, budget)
        staging = Path(tempfile.mkdtemp(dir=scratch, prefix="extract-"))
        limits = ExtractionLimits(max_members=10_000, max_total_bytes=MAX_TOTAL_BYTES - budget.total_bytes)
        safe_extract_archive(archive, staging, limits)
        _merge_into(staging, root)
    except BundleError as exc:
        raise JobFailure(
            INVALID_S3_RESOURCE,
            f"Data source {source.name!r}: archive s3://{source.s3_bucket}/{key} cannot be extracted: {exc}",
        ) from exc
    finally:
        archive.unlink(missing_ok=True)


def _merge_into(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dest / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir():
            _merge_into(entry, target)
        else:
            os.replace(entry, target)
    src.rmdir()


def make_read_only(root: Path) -> None:
    """Files 0444 and directories 0555: the data sources are inputs, not scratch space."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o555)
    os.chmod(root, 0o555)


def fetch_data_source(
    store: ObjectStore, source: DataSourceSpec, root: Path, scratch: Path, budget: _Budget
) -> PreparedDataSource:
    if "/" in source.name or source.name in ("", ".", ".."):
        raise JobFailure(
            INVALID_S3_RESOURCE, f"Data source name {source.name!r} is not a valid directory name."
        )
    host_dir = root / source.name
    host_dir.mkdir(parents=True, exist_ok=True)
    for key in source.s3_keys:
        if source.type == "Prefix":
            _fetch_prefix(store, source, host_dir, key.s3_key, budget)
        elif source.type == "Archive":
            _fetch_archive(store, source, host_dir, key.s3_key, key.etag, budget, scratch)
        else:
            _download(store, source, key.s3_key, key.etag, _key_path(host_dir, source, key.s3_key), budget)
    make_read_only(host_dir)
    return PreparedDataSource(name=source.name, host_dir=host_dir, mount_target=mount_target(source))


def fetch_data_sources(
    store: ObjectStore, sources: list[DataSourceSpec], root: Path, scratch: Path
) -> list[PreparedDataSource]:
    budget = _Budget()
    return [fetch_data_source(store, source, root, scratch, budget) for source in sources]
