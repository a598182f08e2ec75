"""Extracted bundles kept by content: a run whose bundle has the ETag of one extracted before copies that
tree instead of downloading and extracting the archive again.

A batch runs the same application version hundreds of times; each member still gets its own writable
copy (a job may change files in its bundle, and must not change the next job's), but the archive is read,
decompressed and checked once per host. Entries are published whole (extracted in a staging directory,
renamed into place) under a per-key lock, so concurrent runs extract one archive once and never see half
an entry. colcon-bundle v2 overlays keep their own content-addressed cache (formats.py); an entry of a v2
bundle records where those overlays are.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from openrobomaker.bundles.formats import BundleOverlay, ExtractedBundle
from openrobomaker.bundles.safe_extract import ExtractionLimits, remove_tree

_TREE = "tree"
_MANIFEST = "bundle.json"


@dataclass(frozen=True)
class CachedBundle:
    """One published entry: the extracted tree and what extraction found in it."""

    entry: Path
    manifest: dict

    def copy_to(self, dest: Path) -> ExtractedBundle:
        """A private copy of the tree at `dest` (which must not exist), described as if extracted there."""
        shutil.copytree(self.entry / _TREE, dest, symlinks=True)
        return _bundle_from_manifest(self.manifest, dest)


def cache_key(bucket: str, key: str, etag: str, limits: ExtractionLimits) -> str:
    """The entry's name: the object (an ETag alone is an MD5, and colliding MD5s can be made, so one
    object's tree is never served for another's) at its ETag, and the limits it was extracted under (a tree
    accepted under wider limits must not be served once they are narrowed)."""
    identity = json.dumps([bucket, key, etag, limits.max_members, limits.max_total_bytes])
    return hashlib.sha256(identity.encode()).hexdigest()


def lookup(cache_dir: Path, key: str) -> CachedBundle | None:
    entry = cache_dir / key
    try:
        manifest = json.loads((entry / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return CachedBundle(entry, manifest) if isinstance(manifest, dict) else None


def lookup_or_extract(cache_dir: Path, key: str, extract: Callable[[Path], ExtractedBundle]) -> CachedBundle:
    """The entry for `key`, made by `extract(tree_dir)` when there is none yet. Errors of `extract` (a bad
    archive) propagate and leave nothing behind."""
    cached = lookup(cache_dir, key)
    if cached is not None:
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / f".{key}.lock"):
        cached = lookup(cache_dir, key)  # another run extracted it while this one waited
        if cached is not None:
            return cached
        return _publish(cache_dir, key, extract)


def _publish(cache_dir: Path, key: str, extract: Callable[[Path], ExtractedBundle]) -> CachedBundle:
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=cache_dir))
    try:
        tree = staging / _TREE
        manifest = _manifest_of(extract(tree), tree)
        (staging / _MANIFEST).write_text(json.dumps(manifest))
        entry = cache_dir / key
        remove_tree(entry)  # an entry without its manifest (a crash while it was removed, say)
        os.rename(staging, entry)
        return CachedBundle(entry, manifest)
    finally:
        remove_tree(staging)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _manifest_of(bundle: ExtractedBundle, tree: Path) -> dict:
    """The bundle with its paths inside the tree made relative (they move with each copy); paths outside
    it (v2 overlays in their own cache) stay absolute."""

    def portable(path: Path | None) -> str | None:
        if path is None:
            return None
        return os.path.relpath(path, tree) if path.is_relative_to(tree) else str(path)

    return {
        "format": bundle.format,
        "overlays": [[portable(o.prefix), portable(o.setup_script)] for o in bundle.overlays],
        "rosPackageRoots": [portable(root) for root in bundle.ros_package_roots],
    }


def _bundle_from_manifest(manifest: dict, dest: Path) -> ExtractedBundle:
    def placed(path: str | None) -> Path | None:
        return None if path is None else dest / path  # an absolute path stays as it is under `/`

    return ExtractedBundle(
        format=manifest["format"],
        overlays=[BundleOverlay(placed(prefix), placed(script)) for prefix, script in manifest["overlays"]],
        ros_package_roots=[placed(root) for root in manifest["rosPackageRoots"]],
    )
