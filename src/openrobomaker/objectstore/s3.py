"""Any S3 endpoint (AWS S3, MinIO, Ceph RGW, moto) through boto3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from openrobomaker.objectstore.base import (
    NoSuchBucket,
    NoSuchKey,
    ObjectInfo,
    ObjectStore,
    ObjectStoreConfig,
    ObjectStoreError,
)

_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
_MISSING_BUCKET = {"NoSuchBucket"}


def _etag(raw: str) -> str:
    return raw.strip('"')


class S3ObjectStore(ObjectStore):
    def __init__(self, config: ObjectStoreConfig):
        self.config = config
        self.client = boto3.client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region or "us-east-1",
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, s3={"addressing_style": "path"}),
        )

    def _translate(self, exc: Exception, bucket: str, key: str = "") -> ObjectStoreError:
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _MISSING_BUCKET:
                return NoSuchBucket(bucket)
            if code in _MISSING_KEY:
                return NoSuchKey(f"s3://{bucket}/{key}")
            return ObjectStoreError(f"s3://{bucket}/{key}: {code}: {exc}")
        return ObjectStoreError(f"s3://{bucket}/{key}: {exc}")

    def head(self, bucket: str, key: str) -> ObjectInfo:
        try:
            resp = self.client.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            err = self._translate(exc, bucket, key)
            if isinstance(err, NoSuchKey) and not self.bucket_exists(bucket):
                raise NoSuchBucket(bucket) from exc
            raise err from exc
        return ObjectInfo(bucket=bucket, key=key, size=resp["ContentLength"], etag=_etag(resp["ETag"]))

    def open(self, bucket: str, key: str) -> BinaryIO:
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"]
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, bucket, key) from exc

    def download(self, bucket: str, key: str, dest: Path) -> ObjectInfo:
        try:
            resp = self.client.get_object(Bucket=bucket, Key=key)
            with open(dest, "wb") as out:
                for chunk in resp["Body"].iter_chunks(1 << 20):
                    out.write(chunk)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, bucket, key) from exc
        return ObjectInfo(bucket=bucket, key=key, size=resp["ContentLength"], etag=_etag(resp["ETag"]))

    def upload(self, src: Path, bucket: str, key: str) -> ObjectInfo:
        # put_object keeps the ETag the MD5 of the content, as RoboMaker users expect of small bundles.
        try:
            with open(src, "rb") as fh:
                resp = self.client.put_object(Bucket=bucket, Key=key, Body=fh)
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self._translate(exc, bucket, key) from exc
        return ObjectInfo(bucket=bucket, key=key, size=Path(src).stat().st_size, etag=_etag(resp["ETag"]))

    def put_bytes(self, bucket: str, key: str, data: bytes) -> ObjectInfo:
        try:
            resp = self.client.put_object(Bucket=bucket, Key=key, Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, bucket, key) from exc
        return ObjectInfo(bucket=bucket, key=key, size=len(data), etag=_etag(resp["ETag"]))

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        bucket=bucket, key=item["Key"], size=item["Size"], etag=_etag(item["ETag"])
                    )
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, bucket, prefix) from exc

    def bucket_exists(self, bucket: str) -> bool:
        try:
            self.client.head_bucket(Bucket=bucket)
            return True
        except (ClientError, BotoCoreError):
            return False

    def create_bucket(self, bucket: str) -> None:
        if self.bucket_exists(bucket):
            return
        try:
            self.client.create_bucket(Bucket=bucket)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, bucket) from exc

    def delete(self, bucket: str, key: str) -> None:
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, bucket, key) from exc
