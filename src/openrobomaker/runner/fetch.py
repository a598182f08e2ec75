"""An application's bundle for a run: its ETag checked, downloaded and extracted safely once per host."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from openrobomaker.bundles import BundleError, ExtractedBundle, ExtractionLimits, extract_bundle
from openrobomaker.bundles import cache as bundle_cache
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

_REPLACED_RETRIES = 3  # an unpinned ($LATEST) bundle replaced between HEAD and GET is fetched again


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


def _source_of(app: ApplicationSpec) -> SourceObject:
    """The app's bundle: its first source (the control plane already picked the architecture)."""
    if not app.sources:
        raise JobFailure(INTERNAL_SERVICE_ERROR, f"{app_label(app)} has no sources to download")
    return app.sources[0]


@contextlib.contextmanager
def _store_errors(app: ApplicationSpec, source: SourceObject) -> Iterator[None]:
    where = f"s3://{source.s3_bucket}/{source.s3_key}"
    try:
        yield
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


def current_etag(store: ObjectStore, app: ApplicationSpec) -> str:
    """The bundle object's ETag now, once checked against the one the application version pinned."""
    source = _source_of(app)
    with _store_errors(app, source):
        etag = store.head(source.s3_bucket, source.s3_key).etag
    _check_etag(app, source, etag)
    return etag


def download_bundle(store: ObjectStore, app: ApplicationSpec, dest: Path, etag: str) -> None:
    """Download the bundle whose HEAD gave `etag` (already checked against the pinned one)."""
    source = _source_of(app)
    with _store_errors(app, source):
        info = store.download(source.s3_bucket, source.s3_key, dest)
    if normalise_etag(info.etag) != normalise_etag(etag):
        # Replaced between HEAD and GET: a pinned version fails; $LATEST starts again from the HEAD.
        _check_etag(app, source, info.etag)
        raise _ReplacedWhileDownloading(f"ETag {etag}, then {info.etag}")


class _ReplacedWhileDownloading(Exception):
    pass


def fetch_application(
    store: ObjectStore,
    app: ApplicationSpec,
    download_path: Path,
    extract_dir: Path,
    cache_dir: Path,
    limits: ExtractionLimits | None = None,
) -> ExtractedBundle:
    """The app's bundle as a private tree at `extract_dir`: copied from the host's cache of extracted
    bundles when a run extracted the same object (same ETag) before, else downloaded and extracted into
    that cache first (bundles/cache.py). `cache_dir` also holds colcon-bundle v2 overlays."""
    limits = limits or ExtractionLimits()
    for _ in range(_REPLACED_RETRIES):
        with contextlib.suppress(_ReplacedWhileDownloading):
            return _fetch_version(
                store, app, current_etag(store, app), download_path, extract_dir, cache_dir, limits
            )
    source = _source_of(app)
    raise JobFailure(
        bundle_unreadable_code(app),
        f"The bundle of {app_label(app)} (s3://{source.s3_bucket}/{source.s3_key}) was replaced while it was "
        f"downloaded, {_REPLACED_RETRIES} times.",
    )


def _fetch_version(
    store: ObjectStore,
    app: ApplicationSpec,
    etag: str,
    download_path: Path,
    extract_dir: Path,
    cache_dir: Path,
    limits: ExtractionLimits,
) -> ExtractedBundle:
    source = _source_of(app)

    def download_and_extract(tree: Path) -> ExtractedBundle:
        try:
            download_bundle(store, app, download_path, etag)
            return extract_bundle(download_path, tree, cache_dir=cache_dir, limits=limits)
        except BundleError as exc:
            raise JobFailure(
                invalid_bundle_code(app),
                f"The bundle of {app_label(app)} (s3://{source.s3_bucket}/{source.s3_key}) cannot be "
                f"used: {exc.category.value}: {exc.message}",
            ) from exc
        finally:
            download_path.unlink(missing_ok=True)

    key = bundle_cache.cache_key(source.s3_bucket, source.s3_key, normalise_etag(etag) or etag, limits)
    try:
        cached = bundle_cache.lookup_or_extract(cache_dir / "trees", key, download_and_extract)
        bundle = cached.copy_to(extract_dir)
    except OSError as exc:
        raise JobFailure(
            INTERNAL_SERVICE_ERROR, f"Cannot place the bundle of {app_label(app)} in the run: {exc}"
        ) from exc
    log.info("%s: %s bundle with %d overlay(s)", app_label(app), bundle.format, len(bundle.overlays))
    return bundle
