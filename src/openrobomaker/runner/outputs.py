"""The run's outputs in S3: `s3://<bucket>/<s3Prefix>/<jobId>/<runId>/{ros-logs,ros-bags}/...`."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from openrobomaker.objectstore import ObjectStore, ObjectStoreError
from openrobomaker.runner.failures import BAD_PERMISSIONS_S3_OUTPUT, JobFailure
from openrobomaker.runner.spec import OutputLocation

log = logging.getLogger(__name__)


def output_key_prefix(location: OutputLocation, job_id: str, run_id: str) -> str:
    """`prefix/jobId/runId` without empty segments or doubled slashes."""
    parts = [p for p in location.s3_prefix.split("/") if p] + [job_id, run_id]
    return "/".join(parts)


def check_output_location(store: ObjectStore, location: OutputLocation, key_prefix: str) -> None:
    """Write and delete a probe object, so an unwritable output fails the run before it starts."""
    probe_key = f"{key_prefix}/.openrobomaker-probe-{uuid.uuid4().hex}"
    target = f"s3://{location.s3_bucket}/{key_prefix}/"
    try:
        store.put_bytes(location.s3_bucket, probe_key, b"")
    except ObjectStoreError as exc:
        raise JobFailure(
            BAD_PERMISSIONS_S3_OUTPUT, f"Cannot write the job's output to {target}: {exc}"
        ) from exc
    try:
        store.delete(location.s3_bucket, probe_key)
    except (ObjectStoreError, NotImplementedError):
        log.warning("could not delete the output probe object %s", probe_key)


def upload_outputs(store: ObjectStore, location: OutputLocation, key_prefix: str, output_dir: Path) -> int:
    """Upload every file below `output_dir`; the first failure raises BadPermissionsS3Output."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(output_dir):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                continue
            key = f"{key_prefix}/{path.relative_to(output_dir).as_posix()}"
            try:
                store.upload(path, location.s3_bucket, key)
            except (ObjectStoreError, OSError) as exc:
                raise JobFailure(
                    BAD_PERMISSIONS_S3_OUTPUT,
                    f"Cannot upload the job's output to s3://{location.s3_bucket}/{key}: {exc}",
                ) from exc
            count += 1
    log.info("uploaded %d output file(s) to s3://%s/%s/", count, location.s3_bucket, key_prefix)
    return count
