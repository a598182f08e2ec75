"""A directory per bucket under the data dir, with ETags computed as S3 does for single-part uploads."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from openrobomaker.objectstore.base import (
    NoSuchBucket,
    NoSuchKey,
    ObjectInfo,
    ObjectStore,
    ObjectStoreConfig,
    ObjectStoreError,
)

# ETags (and SHA-256s) live beside the data so that a HEAD never re-reads a multi-GB bundle.
_META_DIR = ".openrobomaker-etags"


def digests_of_file(path: Path) -> tuple[str, str]:
    """(MD5, SHA-256) of the file in one read."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


class LocalObjectStore(ObjectStore):
    def __init__(self, config: ObjectStoreConfig):
        if not config.root:
            raise ValueError("a local object store needs a root directory")
        self.config = config
        self.root = Path(config.root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _bucket_dir(self, bucket: str) -> Path:
        if not bucket or "/" in bucket or bucket.startswith(".") or bucket == _META_DIR:
            raise ObjectStoreError(f"invalid bucket name {bucket!r}")
        return self.root / bucket

    def _object_path(self, bucket: str, key: str) -> Path:
        bucket_dir = self._bucket_dir(bucket)
        parts = [p for p in key.split("/")]
        if not key or any(p in ("", ".", "..") for p in parts) or parts[0] == _META_DIR:
            raise NoSuchKey(f"s3://{bucket}/{key}")
        return bucket_dir.joinpath(*parts)

    def _etag_path(self, bucket: str, key: str) -> Path:
        return self._bucket_dir(bucket) / _META_DIR / (hashlib.sha256(key.encode()).hexdigest() + ".etag")

    def _require_bucket(self, bucket: str) -> Path:
        bucket_dir = self._bucket_dir(bucket)
        if not bucket_dir.is_dir():
            raise NoSuchBucket(bucket)
        return bucket_dir

    def bucket_exists(self, bucket: str) -> bool:
        try:
            return self._bucket_dir(bucket).is_dir()
        except ObjectStoreError:
            return False

    def create_bucket(self, bucket: str) -> None:
        self._bucket_dir(bucket).mkdir(parents=True, exist_ok=True)

    def head(self, bucket: str, key: str) -> ObjectInfo:
        self._require_bucket(bucket)
        path = self._object_path(bucket, key)
        if not path.is_file():
            raise NoSuchKey(f"s3://{bucket}/{key}")
        etag_path = self._etag_path(bucket, key)
        stat = path.stat()
        try:
            # "ETAG MTIME_NS SIZE SHA256" (files written before SHA-256 was recorded have three fields:
            # read again once). Only trusted while the file is the one they were computed for.
            etag, mtime_ns, size, sha256 = etag_path.read_text().split()
            if int(mtime_ns) == stat.st_mtime_ns and int(size) == stat.st_size:
                return ObjectInfo(bucket=bucket, key=key, size=stat.st_size, etag=etag, sha256=sha256)
        except (OSError, ValueError):
            pass
        return self._record_digests(bucket, key, path)

    def _record_digests(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        etag, sha256 = digests_of_file(path)
        stat = path.stat()
        etag_path = self._etag_path(bucket, key)
        etag_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = etag_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(f"{etag} {stat.st_mtime_ns} {stat.st_size} {sha256}")
        os.replace(tmp, etag_path)
        return ObjectInfo(bucket=bucket, key=key, size=stat.st_size, etag=etag, sha256=sha256)

    def local_path(self, bucket: str, key: str) -> Path:
        """Where the object's bytes are on this machine's disk (the agent channel serves them with
        `sendfile`). Objects are replaced by rename, never rewritten in place: a file opened from this path
        keeps the bytes it had."""
        self._require_bucket(bucket)
        path = self._object_path(bucket, key)
        if not path.is_file():
            raise NoSuchKey(f"s3://{bucket}/{key}")
        return path

    def open(self, bucket: str, key: str) -> BinaryIO:
        self._require_bucket(bucket)
        path = self._object_path(bucket, key)
        if not path.is_file():
            raise NoSuchKey(f"s3://{bucket}/{key}")
        return open(path, "rb")

    def download(self, bucket: str, key: str, dest: Path) -> ObjectInfo:
        info = self.head(bucket, key)
        # Objects are only ever replaced whole (os.replace), so a hard link is a snapshot of this version:
        # no bytes copied and no new inode. Another file system, or a refused link: copy.
        try:
            os.link(self._object_path(bucket, key), dest)
            return info
        except OSError:
            pass
        with self.open(bucket, key) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        return info

    def _write_atomically(self, bucket: str, key: str, writer) -> ObjectInfo:
        bucket_dir = self._require_bucket(bucket)
        path = self._object_path(bucket, key)
        tmp_name = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=bucket_dir, prefix=".upload-")
            with os.fdopen(fd, "wb") as out:
                writer(out)
            os.replace(tmp_name, path)
        except OSError as exc:
            if tmp_name is not None:
                Path(tmp_name).unlink(missing_ok=True)
            raise ObjectStoreError(f"cannot write s3://{bucket}/{key}: {exc}") from exc
        return self._record_digests(bucket, key, path)

    def upload(self, src: Path, bucket: str, key: str) -> ObjectInfo:
        def copy(out: BinaryIO) -> None:
            with open(src, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)

        return self._write_atomically(bucket, key, copy)

    def put_bytes(self, bucket: str, key: str, data: bytes) -> ObjectInfo:
        return self._write_atomically(bucket, key, lambda out: out.write(data))

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        bucket_dir = self._require_bucket(bucket)
        for dirpath, dirnames, filenames in os.walk(bucket_dir):
            dirnames[:] = sorted(d for d in dirnames if d != _META_DIR)
            for name in sorted(filenames):
                if name.startswith(".upload-"):
                    continue
                key = Path(dirpath, name).relative_to(bucket_dir).as_posix()
                if key.startswith(prefix):
                    yield self.head(bucket, key)

    def delete(self, bucket: str, key: str) -> None:
        path = self._object_path(bucket, key)
        path.unlink(missing_ok=True)
        self._etag_path(bucket, key).unlink(missing_ok=True)
