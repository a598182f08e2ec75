#!/usr/bin/env python3
"""Build the example applications' bundles: `build_bundles.py OUT_DIR`.

Writes, for sim_world and robot_controller:
  OUT_DIR/<app>.tar.gz          plain bundle: the ROS package at the root plus a setup.sh
  OUT_DIR/<app>.colcon-v2.tar   colcon-bundle v2 layout (version, metadata.tar.gz with overlays.json, pad,
                                dependencies.tar.gz and workspace.tar.gz overlays), built with tarfile
The packages are Python only, so nothing is compiled. Archives are reproducible (fixed mtimes and owners),
so rebuilding gives the same bytes and the same S3 ETag.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import tarfile
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
APPS = ("sim_world", "robot_controller")
MTIME = 1_600_000_000  # fixed, for reproducible archives
V2_METADATA_AREA = 4 * 1024 * 1024  # colcon-bundle places overlays after a 4 MiB metadata area

# Sourced by the runner as `BUNDLE_CURRENT_PREFIX=<dir> . <dir>/setup.sh`, like RoboMaker did.
PLAIN_SETUP_SH = """\
# Put the packages of this bundle on ROS_PACKAGE_PATH.
export ROS_PACKAGE_PATH="$BUNDLE_CURRENT_PREFIX${ROS_PACKAGE_PATH:+:$ROS_PACKAGE_PATH}"
"""
DEPENDENCIES_SETUP_SH = """\
# Dependencies overlay: everything these apps need comes from Debian's ROS, so only mark that we ran.
export EXAMPLE_DEPENDENCIES_OVERLAY="$BUNDLE_CURRENT_PREFIX"
"""


def _info(name: str, size: int = 0, mode: int = 0o644, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type, info.mtime = size, mode, kind, MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    tar.addfile(_info(name, len(data), mode), io.BytesIO(data))


def _add_tree(tar: tarfile.TarFile, source: Path, arcname: str) -> None:
    tar.addfile(_info(arcname, mode=0o755, kind=tarfile.DIRTYPE))
    for path in sorted(source.iterdir()):
        if path.name == "__pycache__" or path.name.startswith("."):
            continue
        name = f"{arcname}/{path.name}"
        if path.is_dir():
            _add_tree(tar, path, name)
        else:
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            _add_bytes(tar, name, path.read_bytes(), mode)


def _gzip_tar(fill) -> bytes:
    buf = io.BytesIO()
    # mtime=0 in the gzip header keeps the archive byte-for-byte reproducible.
    import gzip

    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        fill(tar)
    return buf.getvalue()


def plain_bundle_bytes(package_dirs: list[Path], setup_sh: str = PLAIN_SETUP_SH) -> bytes:
    """A plain .tar.gz bundle: each package directory at the root, plus setup.sh."""

    def fill(tar: tarfile.TarFile) -> None:
        _add_bytes(tar, "setup.sh", setup_sh.encode())
        for package in package_dirs:
            _add_tree(tar, package, package.name)

    return _gzip_tar(fill)


def colcon_v2_bundle_bytes(overlays: dict[str, bytes]) -> bytes:
    """A colcon-bundle v2 archive around already-built overlay archives, laid out as colcon-bundle does."""
    entries, offset = [], V2_METADATA_AREA
    for name, data in overlays.items():
        header_size = len(_info(name, len(data)).tobuf(tarfile.GNU_FORMAT))
        entries.append(
            {
                "name": name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "offset": offset + header_size,
                "size": len(data),
            }
        )
        offset += header_size + math.ceil(len(data) / tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    metadata = _gzip_tar(
        lambda tar: _add_bytes(tar, "overlays.json", json.dumps({"overlays": entries}).encode())
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        _add_bytes(tar, "version", b"2")
        _add_bytes(tar, "metadata.tar.gz", metadata)
        _add_bytes(tar, "pad", bytes(V2_METADATA_AREA - tar.offset - tarfile.BLOCKSIZE))
        for name, data in overlays.items():
            _add_bytes(tar, name, data)
    return buf.getvalue()


def build_app(app: str, out_dir: Path) -> list[Path]:
    package = EXAMPLES / app
    plain = out_dir / f"{app}.tar.gz"
    plain.write_bytes(plain_bundle_bytes([package]))
    dependencies = _gzip_tar(lambda tar: _add_bytes(tar, "setup.sh", DEPENDENCIES_SETUP_SH.encode()))
    workspace = plain_bundle_bytes([package])
    v2 = out_dir / f"{app}.colcon-v2.tar"
    v2.write_bytes(
        colcon_v2_bundle_bytes({"dependencies.tar.gz": dependencies, "workspace.tar.gz": workspace})
    )
    return [plain, v2]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    for app in APPS:
        for path in build_app(app, out_dir):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
