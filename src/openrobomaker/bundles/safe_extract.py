"""Extract untrusted tar / zip archives without ever writing outside the destination directory.

Every member is checked before it is written: no absolute names, no `..` components, no device or fifo
files, no symlink or hardlink that resolves outside the destination (absolute symlink targets are
re-rooted at the destination, as a bundle is a filesystem tree rooted at its prefix), no member replacing an existing
link, and member count / total size within limits. Python's own `filter="data"` runs as a second line
of defence where the interpreter has it (3.11.4+), and a final sweep re-checks every symlink in the tree.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from openrobomaker.bundles.errors import BundleError, BundleErrorCategory

_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")
TAR_READ_ERRORS = (
    tarfile.ReadError,
    tarfile.StreamError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    lzma.LZMAError,
)
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


@dataclass(frozen=True)
class ExtractionLimits:
    """Upper bounds for one bundle (all its nested archives together)."""

    max_members: int = 250_000
    max_total_bytes: int = 32 * 1024**3


class ExtractionBudget:
    """Counts members and bytes across the nested archives of one bundle against its limits."""

    def __init__(self, limits: ExtractionLimits):
        self.limits = limits
        self.members = 0
        self.total_bytes = 0

    def charge_member(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise BundleError(
                BundleErrorCategory.TOO_LARGE,
                f"archive has more than {self.limits.max_members} members (at {name!r})",
            )

    def charge_bytes(self, size: int, name: str) -> None:
        self.total_bytes += max(size, 0)
        if self.total_bytes > self.limits.max_total_bytes:
            raise BundleError(
                BundleErrorCategory.TOO_LARGE,
                f"archive expands to more than {self.limits.max_total_bytes} bytes (at {name!r})",
            )


def sniff_magic(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(4)


def is_gzip(path: Path) -> bool:
    return sniff_magic(path)[:2] == _GZIP_MAGIC


def is_zip(path: Path) -> bool:
    return sniff_magic(path) in _ZIP_MAGIC


def safe_relative_name(name: str) -> str | None:
    """The normalised relative path of an archive member, None for the archive root itself.

    Raises UNSAFE for absolute names, `..` components and NUL bytes.
    """
    if "\x00" in name:
        raise BundleError(BundleErrorCategory.UNSAFE, f"member name contains a NUL byte: {name!r}")
    if name.startswith("/"):
        raise BundleError(BundleErrorCategory.UNSAFE, f"absolute member name {name!r}")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise BundleError(BundleErrorCategory.UNSAFE, f"member name with '..' component {name!r}")
    return "/".join(parts) if parts else None


def _require_inside(root_real: str, candidate_real: str, what: str) -> None:
    if candidate_real != root_real and not candidate_real.startswith(root_real + os.sep):
        raise BundleError(BundleErrorCategory.UNSAFE, f"{what} resolves outside the extraction directory")


def _prepare_dest(dest: Path) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise BundleError(BundleErrorCategory.EXTRACTION, f"extraction directory {dest} is not empty")
    return os.path.realpath(dest)


def remove_tree(path: Path) -> None:
    """Remove a directory tree even where extraction or data-source handling left read-only dirs."""

    def make_writable_and_retry(func, failed_path, _exc) -> None:
        parent = os.path.dirname(failed_path)
        try:
            os.chmod(parent, stat.S_IRWXU)
            if os.path.isdir(failed_path) and not os.path.islink(failed_path):
                os.chmod(failed_path, stat.S_IRWXU)
            func(failed_path)
        except OSError:
            pass

    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, onerror=make_writable_and_retry)


def _check_member_target(member: tarfile.TarInfo, dest_real: str, rel: str) -> None:
    target = os.path.join(dest_real, rel)
    _require_inside(dest_real, os.path.realpath(os.path.dirname(target)), f"parent of {member.name!r}")
    if os.path.lexists(target) and (os.path.islink(target) or member.issym() or member.islnk()):
        # Re-pointing an existing link could change where earlier, already-checked links resolve.
        raise BundleError(BundleErrorCategory.UNSAFE, f"member {member.name!r} replaces an existing link")
    if member.issym():
        if member.linkname.startswith("/"):
            # A bundle is a filesystem tree rooted at its prefix, and apt packages inside colcon bundles
            # ship links such as usr/lib/libblas.so.3 -> /etc/alternatives/...: point them at the same
            # path inside the bundle rather than at the host (or rejecting the whole bundle).
            inside = os.path.join(dest_real, member.linkname.lstrip("/"))
            member.linkname = os.path.relpath(inside, os.path.dirname(target))
        resolved = os.path.realpath(os.path.join(os.path.dirname(target), member.linkname))
        _require_inside(dest_real, resolved, f"symlink {member.name!r} -> {member.linkname!r}")
    elif member.islnk():
        link_rel = safe_relative_name(member.linkname)
        if link_rel is None:
            raise BundleError(BundleErrorCategory.UNSAFE, f"hardlink {member.name!r} to the archive root")
        source = os.path.join(dest_real, link_rel)
        _require_inside(
            dest_real, os.path.realpath(source), f"hardlink {member.name!r} -> {member.linkname!r}"
        )
        if not os.path.isfile(source) or os.path.islink(source):
            raise BundleError(
                BundleErrorCategory.UNSAFE, f"hardlink {member.name!r} to a missing or non-regular file"
            )


def _sanitise_attributes(member: tarfile.TarInfo) -> None:
    # No setuid/setgid/sticky bits, no group/other write, and directories stay writable for us so
    # that later members can be placed inside them.
    member.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)
    member.uid, member.gid = os.getuid(), os.getgid()
    member.uname = member.gname = ""


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest_real: str, budget: ExtractionBudget):
    budget.charge_member(member.name)
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise BundleError(
            BundleErrorCategory.UNSAFE, f"member {member.name!r} is a device, fifo or special file"
        )
    rel = safe_relative_name(member.name)
    if rel is None:
        if member.isdir():
            return
        raise BundleError(
            BundleErrorCategory.UNSAFE, f"non-directory member at the archive root: {member.name!r}"
        )
    if member.isreg():
        budget.charge_bytes(member.size, member.name)
    _check_member_target(member, dest_real, rel)
    member.name = rel
    _sanitise_attributes(member)
    try:
        if _HAS_DATA_FILTER:
            tar.extract(member, dest_real, set_attrs=True, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            tar.extract(member, dest_real, set_attrs=True)
    except tarfile.FilterError as exc:
        raise BundleError(BundleErrorCategory.UNSAFE, f"member {member.name!r} rejected: {exc}") from exc


def iter_tar_stream(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Members of a stream-mode tar, without keeping every header in memory."""
    while True:
        member = tar.next()
        if member is None:
            return
        yield member
        tar.members.clear()


def extract_tar_stream(fileobj: BinaryIO, dest: Path, budget: ExtractionBudget) -> None:
    """Extract a (possibly compressed) tar read sequentially from `fileobj` into the empty dir `dest`."""
    dest_real = _prepare_dest(dest)
    extracted_any = False
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in iter_tar_stream(tar):
                _extract_member(tar, member, dest_real, budget)
                extracted_any = True
    except TAR_READ_ERRORS as exc:
        category = BundleErrorCategory.EXTRACTION if extracted_any else BundleErrorCategory.FORMAT
        raise BundleError(category, f"cannot read tar archive: {exc}") from exc
    except OSError as exc:
        raise BundleError(BundleErrorCategory.EXTRACTION, f"cannot write extracted files: {exc}") from exc
    verify_links_inside(dest)


def verify_links_inside(root: Path) -> None:
    """Re-check every symlink under `root` once the tree is complete."""
    root_real = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root_real, followlinks=False):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                _require_inside(
                    root_real, os.path.realpath(path), f"symlink {os.path.relpath(path, root_real)!r}"
                )


def _extract_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest_real: str, budget: ExtractionBudget):
    budget.charge_member(info.filename)
    unix_mode = info.external_attr >> 16
    file_type = stat.S_IFMT(unix_mode)
    if file_type and file_type not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
        raise BundleError(
            BundleErrorCategory.UNSAFE, f"member {info.filename!r} is a device, fifo or special file"
        )
    rel = safe_relative_name(info.filename)
    if rel is None:
        return
    target = os.path.join(dest_real, rel)
    if info.is_dir():
        os.makedirs(target, exist_ok=True)
        return
    budget.charge_bytes(info.file_size, info.filename)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    _require_inside(dest_real, os.path.realpath(os.path.dirname(target)), f"parent of {info.filename!r}")
    if os.path.islink(target):
        raise BundleError(BundleErrorCategory.UNSAFE, f"member {info.filename!r} replaces an existing link")
    # Symlink entries are written as plain files holding the target text, as zipfile itself does.
    with zf.open(info) as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    if unix_mode & 0o777 and file_type in (0, stat.S_IFREG):
        os.chmod(target, (unix_mode & 0o755) | 0o600)


def extract_zip(path: Path, dest: Path, budget: ExtractionBudget) -> None:
    dest_real = _prepare_dest(dest)
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                _extract_zip_member(zf, info, dest_real, budget)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise BundleError(BundleErrorCategory.FORMAT, f"cannot read zip archive: {exc}") from exc
    except OSError as exc:
        raise BundleError(BundleErrorCategory.EXTRACTION, f"cannot write extracted files: {exc}") from exc


def safe_extract_archive(path: Path, dest: Path, limits: ExtractionLimits | None = None) -> None:
    """Extract a .zip, .tar or compressed .tar into the empty or missing directory `dest`.

    On any failure `dest` is removed and a BundleError raised.
    """
    budget = ExtractionBudget(limits or ExtractionLimits())
    try:
        if is_zip(path):
            extract_zip(path, dest, budget)
        else:
            with open(path, "rb") as fh:
                extract_tar_stream(fh, dest, budget)
    except BaseException:
        remove_tree(dest)
        raise
