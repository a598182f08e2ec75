"""Read the three bundle formats RoboMaker users have in S3 into directories ready to be sourced.

* colcon-bundle v1: gzipped tar, `version` ("1") first, `metadata.tar`, `bundle.tar` (the filesystem,
  with a root `setup.sh`).
* colcon-bundle v2: plain tar, `version` ("2") first, `metadata.tar.gz` holding `overlays.json`
  ({"overlays": [{name, sha256, offset, size}]}), an optional `pad`, then one archive per overlay,
  each with a root `setup.sh`. Overlays are content-addressed: each is extracted once into
  `cache_dir/<sha256>` and reused by later bundles that list the same overlay.
* plain: a `.tar` / `.tar.gz` whose root holds ROS packages (dirs with `package.xml`), optionally with a
  root `setup.sh` / `setup.bash`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from openrobomaker.bundles.errors import BundleError, BundleErrorCategory
from openrobomaker.bundles.safe_extract import (
    TAR_READ_ERRORS,
    ExtractionBudget,
    ExtractionLimits,
    extract_tar_stream,
    iter_tar_stream,
    remove_tree,
)

_MAX_VERSION_BYTES = 64
_MAX_METADATA_BYTES = 4 * 1024 * 1024  # colcon-bundle's own MAX_METADATA_SIZE
_MAX_OVERLAYS_JSON_BYTES = 1024 * 1024
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_SETUP_SCRIPT_NAMES = ("setup.sh", "setup.bash")
_PACKAGE_SEARCH_DEPTH = 3


@dataclass(frozen=True)
class BundleOverlay:
    """One directory to source: RoboMaker ran `BUNDLE_CURRENT_PREFIX=<prefix> . <setup_script>`."""

    prefix: Path
    setup_script: Path | None


@dataclass(frozen=True)
class ExtractedBundle:
    format: str  # "colcon-v1" | "colcon-v2" | "plain"
    overlays: list[BundleOverlay]
    # Directories that hold ROS packages directly (plain bundles); colcon bundles set ROS_PACKAGE_PATH
    # themselves from their setup scripts.
    ros_package_roots: list[Path] = field(default_factory=list)

    @property
    def prefixes(self) -> list[Path]:
        return [overlay.prefix for overlay in self.overlays]

    @property
    def setup_scripts(self) -> list[Path]:
        return [overlay.setup_script for overlay in self.overlays if overlay.setup_script is not None]


def extract_bundle(
    archive_path: str | os.PathLike,
    dest_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    limits: ExtractionLimits | None = None,
) -> ExtractedBundle:
    """Safely extract a bundle archive; `dest_dir` must be missing or empty and is removed on failure."""
    archive, dest = Path(archive_path), Path(dest_dir)
    budget = ExtractionBudget(limits or ExtractionLimits())
    try:
        version = _read_colcon_version(archive)
        if version is None:
            return _extract_plain(archive, dest, budget)
        if version == "1":
            return _extract_colcon_v1(archive, dest, budget)
        if version == "2":
            overlay_cache = Path(cache_dir) if cache_dir else dest / "overlays"
            return _extract_colcon_v2(archive, dest, overlay_cache, budget)
        raise BundleError(BundleErrorCategory.FORMAT, f"unsupported colcon bundle version {version!r}")
    except BaseException:
        remove_tree(dest)
        raise


def _member_name(member: tarfile.TarInfo) -> str:
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    return name


def _open_stream(fh: BinaryIO) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=fh, mode="r|*")
    except TAR_READ_ERRORS as exc:
        raise BundleError(BundleErrorCategory.FORMAT, f"not a tar or tar.gz archive: {exc}") from exc


def _read_small_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if not member.isreg():
        raise BundleError(BundleErrorCategory.FORMAT, f"{member.name!r} is not a regular file")
    if member.size > limit:
        raise BundleError(BundleErrorCategory.FORMAT, f"{member.name!r} is larger than {limit} bytes")
    fh = tar.extractfile(member)
    assert fh is not None
    return fh.read()


def _read_colcon_version(archive: Path) -> str | None:
    """The colcon bundle version when the first member is `version`, else None (a plain bundle)."""
    with open(archive, "rb") as fh:
        try:
            with _open_stream(fh) as tar:
                first = tar.next()
                if first is None:
                    raise BundleError(BundleErrorCategory.FORMAT, "archive is empty")
                if _member_name(first) != "version":
                    return None
                return _read_small_member(tar, first, _MAX_VERSION_BYTES).decode("utf-8", "replace").strip()
        except TAR_READ_ERRORS as exc:
            raise BundleError(BundleErrorCategory.FORMAT, f"not a tar or tar.gz archive: {exc}") from exc


def find_setup_script(prefix: Path) -> Path | None:
    for name in _SETUP_SCRIPT_NAMES:
        candidate = prefix / name
        if candidate.is_file() and not candidate.is_symlink():
            return candidate
    return None


def _has_ros_package(root: Path, depth: int = _PACKAGE_SEARCH_DEPTH) -> bool:
    if (root / "package.xml").is_file():
        return True
    if depth == 0:
        return False
    return any(
        child.is_dir() and not child.is_symlink() and _has_ros_package(child, depth - 1)
        for child in sorted(root.iterdir())
    )


def _extract_plain(archive: Path, dest: Path, budget: ExtractionBudget) -> ExtractedBundle:
    with open(archive, "rb") as fh:
        extract_tar_stream(fh, dest, budget)
    setup_script = find_setup_script(dest)
    if setup_script is None and not _has_ros_package(dest):
        raise BundleError(
            BundleErrorCategory.FORMAT,
            "not a colcon bundle (no 'version' first member) and no ROS package (package.xml) "
            "or setup.sh at the archive root",
        )
    return ExtractedBundle(
        format="plain", overlays=[BundleOverlay(dest, setup_script)], ros_package_roots=[dest]
    )


def _extract_colcon_v1(archive: Path, dest: Path, budget: ExtractionBudget) -> ExtractedBundle:
    found_bundle_tar = False
    with open(archive, "rb") as fh:
        try:
            with _open_stream(fh) as tar:
                for member in iter_tar_stream(tar):
                    budget.charge_member(member.name)
                    if _member_name(member) != "bundle.tar" or not member.isreg():
                        continue
                    inner = tar.extractfile(member)
                    assert inner is not None
                    extract_tar_stream(inner, dest, budget)
                    found_bundle_tar = True
        except TAR_READ_ERRORS as exc:
            raise BundleError(BundleErrorCategory.EXTRACTION, f"corrupt colcon bundle v1: {exc}") from exc
    if not found_bundle_tar:
        raise BundleError(BundleErrorCategory.FORMAT, "colcon bundle v1 without a bundle.tar member")
    return ExtractedBundle(format="colcon-v1", overlays=[BundleOverlay(dest, find_setup_script(dest))])


@dataclass(frozen=True)
class _OverlayEntry:
    name: str
    sha256: str
    offset: int
    size: int


def _parse_overlays_json(raw: bytes) -> list[_OverlayEntry]:
    try:
        doc = json.loads(raw)
        entries = [
            _OverlayEntry(
                str(item["name"]), str(item["sha256"]).lower(), int(item["offset"]), int(item["size"])
            )
            for item in doc["overlays"]
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(BundleErrorCategory.FORMAT, f"invalid overlays.json: {exc}") from exc
    if not entries:
        raise BundleError(BundleErrorCategory.FORMAT, "overlays.json lists no overlays")
    for entry in entries:
        # The digest names a cache directory, so it must be exactly a hex digest and nothing else.
        if not _SHA256_HEX.match(entry.sha256):
            raise BundleError(BundleErrorCategory.FORMAT, f"overlay {entry.name!r} has an invalid sha256")
        if entry.offset < 0 or entry.size < 0:
            raise BundleError(
                BundleErrorCategory.FORMAT, f"overlay {entry.name!r} has a negative offset/size"
            )
    return entries


def _read_overlay_list(tar: tarfile.TarFile, member: tarfile.TarInfo) -> list[_OverlayEntry]:
    raw = _read_small_member(tar, member, _MAX_METADATA_BYTES)
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as metadata:
            overlays_member = next(
                (m for m in metadata.getmembers() if _member_name(m) == "overlays.json"), None
            )
            if overlays_member is None:
                raise BundleError(BundleErrorCategory.FORMAT, "metadata.tar.gz has no overlays.json")
            return _parse_overlays_json(
                _read_small_member(metadata, overlays_member, _MAX_OVERLAYS_JSON_BYTES)
            )
    except TAR_READ_ERRORS as exc:
        raise BundleError(BundleErrorCategory.FORMAT, f"unreadable metadata.tar.gz: {exc}") from exc


def _copy_and_hash(src: BinaryIO, dest: Path) -> str:
    digest = hashlib.sha256()
    with open(dest, "wb") as out:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _materialise_overlay(
    tar: tarfile.TarFile, member: tarfile.TarInfo, entry: _OverlayEntry, cache: Path, budget: ExtractionBudget
) -> None:
    """Extract one overlay into `cache/<sha256>` unless an earlier bundle already did."""
    final_dir = cache / entry.sha256
    if final_dir.is_dir():
        return
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.sha256[:12]}-", dir=cache))
    try:
        blob = staging / "overlay.archive"
        fh = tar.extractfile(member)
        assert fh is not None
        actual = _copy_and_hash(fh, blob)
        if actual != entry.sha256:
            raise BundleError(
                BundleErrorCategory.FORMAT,
                f"overlay {entry.name!r} sha256 {actual} does not match overlays.json",
            )
        tree = staging / "tree"
        with open(blob, "rb") as blob_fh:
            extract_tar_stream(blob_fh, tree, budget)
        blob.unlink()
        try:
            # Atomic publish: concurrent runs extracting the same overlay race here and one wins.
            os.rename(tree, final_dir)
        except OSError:
            if not final_dir.is_dir():
                raise
    except OSError as exc:
        raise BundleError(
            BundleErrorCategory.EXTRACTION, f"cannot cache overlay {entry.name!r}: {exc}"
        ) from exc
    finally:
        remove_tree(staging)


def _extract_colcon_v2(archive: Path, dest: Path, cache: Path, budget: ExtractionBudget) -> ExtractedBundle:
    dest.mkdir(parents=True, exist_ok=True)
    overlays: list[_OverlayEntry] | None = None
    seen: set[str] = set()
    check_offsets = not _is_compressed(archive)
    with open(archive, "rb") as fh:
        try:
            with _open_stream(fh) as tar:
                for member in iter_tar_stream(tar):
                    budget.charge_member(member.name)
                    name = _member_name(member)
                    if name == "metadata.tar.gz" and overlays is None:
                        overlays = _read_overlay_list(tar, member)
                        continue
                    entry = next((e for e in overlays or [] if e.name == name and name not in seen), None)
                    if entry is None:
                        continue  # `version`, `pad` and anything a newer colcon-bundle adds
                    _check_overlay_member(member, entry, check_offsets)
                    _materialise_overlay(tar, member, entry, cache, budget)
                    seen.add(name)
        except TAR_READ_ERRORS as exc:
            raise BundleError(BundleErrorCategory.EXTRACTION, f"corrupt colcon bundle v2: {exc}") from exc
    if overlays is None:
        raise BundleError(BundleErrorCategory.FORMAT, "colcon bundle v2 without metadata.tar.gz")
    missing = [entry.name for entry in overlays if entry.name not in seen]
    if missing:
        raise BundleError(BundleErrorCategory.FORMAT, f"overlays listed but not in the bundle: {missing}")
    prefixes = [cache / entry.sha256 for entry in overlays]
    return ExtractedBundle(
        format="colcon-v2", overlays=[BundleOverlay(prefix, find_setup_script(prefix)) for prefix in prefixes]
    )


def _is_compressed(archive: Path) -> bool:
    with open(archive, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _check_overlay_member(member: tarfile.TarInfo, entry: _OverlayEntry, check_offsets: bool) -> None:
    if not member.isreg():
        raise BundleError(BundleErrorCategory.FORMAT, f"overlay {entry.name!r} is not a regular file")
    if member.size != entry.size or (check_offsets and member.offset_data != entry.offset):
        raise BundleError(
            BundleErrorCategory.FORMAT,
            f"overlay {entry.name!r} is not at the offset/size overlays.json gives "
            f"({member.offset_data}/{member.size} vs {entry.offset}/{entry.size})",
        )


def new_extraction_dir(parent: Path) -> Path:
    """A fresh directory name under `parent`, as RoboMaker keyed v1 extractions by a new UUID."""
    return parent / uuid.uuid4().hex
