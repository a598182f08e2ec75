"""Download an application's bundle from the object store, check its ETag and extract it safely."""

from __future__ import annotations

import logging
from pathlib import Path

from openrobomaker.bundles import BundleError, ExtractedBundle, ExtractionLimits, extract_bundle
from openrobomaker.objectstore import NoSuchBucket, NoSuchKey, ObjectStore, ObjectStoreError
from openrobomaker.runner.failures import (
    INTERNAL_SERVICE_ERROR,
    JobFailure,
    app_label,
    bundle_unreadable_code,
    etag_mismatch_code,
    invalid_bundle_code,
)
from openrobomaker.runner.spec import ApplicationSpec, SourceObject

log = logging.getLogger(__name__)


def normalise_etag(etag: str | None) -> str | None:
    return etag.strip().strip('"').lower() if etag else None


def _check_etag(app: ApplicationSpec, source: SourceObject, actual: str) -> None:
    expected = normalise_etag(source.etag)
    if expected and normalise_etag(actual) != expected:
        raise JobFailure(
            etag_mismatch_code(app),
            f"The bundle of {app_label(app)} (s3://{source.s3_bucket}/{source.s3_key}, version {app.version}) "
            f"changed since the version was created: ETag {actual} instead of {source.etag}.",
        )


def download_bundle(store: ObjectStore, app: ApplicationSpec, dest: Path) -> SourceObject:
    """Download the app's bundle (its first source: the control plane already picked the architecture)."""
    if not app.sources:
        raise JobFailure(INTERNAL_SERVICE_ERROR, f"{app_label(app)} has no sources to download")
    source = app.sources[0]
    where = f"s3://{source.s3_bucket}/{source.s3_key}"
    try:
        _check_etag(app, source, store.head(source.s3_bucket, source.s3_key).etag)
        info = store.download(source.s3_bucket, source.s3_key, dest)
    except NoSuchBucket as exc:
        raise JobFailure(
            bundle_unreadable_code(app),
            f"The bundle of {app_label(app)} could not be downloaded: bucket "
            f"{source.s3_bucket!r} does not exist ({where}).",
        ) from exc
    except NoSuchKey as exc:
        raise JobFailure(
            bundle_unreadable_code(app),
            f"The bundle of {app_label(app)} could not be downloaded: {where} does not exist.",
        ) from exc
    except ObjectStoreError as exc:
        raise JobFailure(
            bundle_unreadable_code(app),
            f"The bundle of {app_label(app)} could not be downloaded from {where}: {exc}",
        ) from exc
    # The object may have been replaced between HEAD and GET.
    _check_etag(app, source, info.etag)
    return source


def fetch_application(
    store: ObjectStore,
    app: ApplicationSpec,
    download_path: Path,
    extract_dir: Path,
    cache_dir: Path,
    limits: ExtractionLimits | None = None,
) -> ExtractedBundle:
    source = download_bundle(store, app, download_path)
    try:
        bundle = extract_bundle(download_path, extract_dir, cache_dir=cache_dir, limits=limits)
    except BundleError as exc:
        raise JobFailure(
            invalid_bundle_code(app),
            f"The bundle of {app_label(app)} (s3://{source.s3_bucket}/{source.s3_key}) cannot be used: "
            f"{exc.category.value}: {exc.message}",
        ) from exc
    finally:
        download_path.unlink(missing_ok=True)
    log.info("%s: %s bundle with %d overlay(s)", app_label(app), bundle.format, len(bundle.overlays))
    return bundle
