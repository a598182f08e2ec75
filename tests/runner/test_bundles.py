"""Bundle formats and safe extraction, with tiny archives built in each test."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from openrobomaker.bundles import (
    BundleError,
    BundleErrorCategory,
    ExtractionLimits,
    extract_bundle,
    safe_extract_archive,
    source_command_prefix,
    sourced_argv,
)

SETUP_SH = b'export ORM_TEST_TRAIL="${ORM_TEST_TRAIL:+$ORM_TEST_TRAIL:}$BUNDLE_CURRENT_PREFIX"\n'


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def _link(name: str, target: str, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def _special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


def tar_bytes(members, compress: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if compress else "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def plain_bundle_members(setup: bool = True):
    members = [
        _dir("my_pkg"),
        _file("my_pkg/package.xml", b"<package format='2'><name>my_pkg</name></package>"),
        _file("my_pkg/nodes/run.py", b"#!/usr/bin/env python3\nprint('hi')\n", 0o755),
    ]
    if setup:
        members.append(_file("setup.sh", SETUP_SH))
    return members


def colcon_v1(tmp_path: Path) -> Path:
    inner = tar_bytes([_file("setup.sh", SETUP_SH), _dir("opt"), _file("opt/install/marker", b"v1")])
    metadata = tar_bytes([_file("installers.json", b"{}")])
    outer = tar_bytes(
        [_file("version", b"1"), _file("metadata.tar", metadata), _file("bundle.tar", inner)], True
    )
    return write(tmp_path / "v1.tar.gz", outer)


def colcon_v2(
    tmp_path: Path, overlays: dict[str, bytes], name: str = "v2.tar", corrupt_sha: bool = False
) -> Path:
    """A v2 bundle laid out as colcon-bundle's Bundle.close() does (4 MiB metadata area, then overlays)."""
    metadata_size = 4 * 1024 * 1024
    offset = metadata_size
    entries = []
    for overlay_name, data in overlays.items():
        header = tarfile.TarInfo(overlay_name)
        header.size = len(data)
        header_size = len(header.tobuf(tarfile.GNU_FORMAT))
        sha = hashlib.sha256(data).hexdigest()
        entries.append(
            {
                "name": overlay_name,
                "sha256": "0" * 64 if corrupt_sha else sha,
                "offset": offset + header_size,
                "size": len(data),
            }
        )
        offset += header_size + math.ceil(len(data) / tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    metadata = tar_bytes([_file("overlays.json", json.dumps({"overlays": entries}).encode())], True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in [_file("version", b"2"), _file("metadata.tar.gz", metadata)]:
            tar.addfile(info, io.BytesIO(data))
        pad = metadata_size - tar.offset - tarfile.BLOCKSIZE
        tar.addfile(*[(i, io.BytesIO(d)) for i, d in [_file("pad", bytes(pad))]][0])
        for overlay_name, data in overlays.items():
            info, payload = _file(overlay_name, data)
            tar.addfile(info, io.BytesIO(payload))
    return write(tmp_path / name, buf.getvalue())


def overlay(marker: bytes) -> bytes:
    return tar_bytes([_file("setup.sh", SETUP_SH), _file("marker", marker)], compress=True)


# --- formats ------------------------------------------------------------------------------------


def test_plain_tar_gz_with_setup_script(tmp_path):
    archive = write(tmp_path / "app.tar.gz", tar_bytes(plain_bundle_members(), compress=True))
    bundle = extract_bundle(archive, tmp_path / "out")
    assert bundle.format == "plain"
    assert bundle.prefixes == [tmp_path / "out"]
    assert bundle.setup_scripts == [tmp_path / "out" / "setup.sh"]
    assert bundle.ros_package_roots == [tmp_path / "out"]
    assert os.access(tmp_path / "out" / "my_pkg" / "nodes" / "run.py", os.X_OK)


def test_plain_tar_without_setup_script(tmp_path):
    archive = write(tmp_path / "app.tar", tar_bytes(plain_bundle_members(setup=False)))
    bundle = extract_bundle(archive, tmp_path / "out")
    assert bundle.setup_scripts == []
    assert source_command_prefix(bundle)[-1] == "--"


def test_plain_tar_without_packages_is_format_error(tmp_path):
    archive = write(tmp_path / "junk.tar", tar_bytes([_file("README", b"nothing here")]))
    with pytest.raises(BundleError) as err:
        extract_bundle(archive, tmp_path / "out")
    assert err.value.category == BundleErrorCategory.FORMAT
    assert not (tmp_path / "out").exists()


def test_colcon_v1(tmp_path):
    bundle = extract_bundle(colcon_v1(tmp_path), tmp_path / "out")
    assert bundle.format == "colcon-v1"
    assert bundle.setup_scripts == [tmp_path / "out" / "setup.sh"]
    assert (tmp_path / "out" / "opt" / "install" / "marker").read_bytes() == b"v1"


def test_colcon_v2_overlays_are_cached_and_reused(tmp_path):
    deps, ws1, ws2 = overlay(b"deps"), overlay(b"ws1"), overlay(b"ws2")
    cache = tmp_path / "cache"
    first = extract_bundle(
        colcon_v2(tmp_path, {"dependencies.tar.gz": deps, "workspace.tar.gz": ws1}),
        tmp_path / "out1",
        cache_dir=cache,
    )
    assert first.format == "colcon-v2"
    deps_dir = cache / hashlib.sha256(deps).hexdigest()
    assert first.prefixes == [deps_dir, cache / hashlib.sha256(ws1).hexdigest()]
    assert (first.prefixes[1] / "marker").read_bytes() == b"ws1"
    inode_before = (deps_dir / "marker").stat().st_ino

    second = extract_bundle(
        colcon_v2(tmp_path, {"dependencies.tar.gz": deps, "workspace.tar.gz": ws2}, "b.tar"),
        tmp_path / "out2",
        cache_dir=cache,
    )
    assert second.prefixes[0] == deps_dir
    assert (deps_dir / "marker").stat().st_ino == inode_before  # reused, not re-extracted
    assert (second.prefixes[1] / "marker").read_bytes() == b"ws2"
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        hashlib.sha256(x).hexdigest() for x in (deps, ws1, ws2)
    )


def test_colcon_v2_sha_mismatch_is_rejected(tmp_path):
    archive = colcon_v2(tmp_path, {"workspace.tar.gz": overlay(b"x")}, corrupt_sha=True)
    with pytest.raises(BundleError) as err:
        extract_bundle(archive, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert err.value.category == BundleErrorCategory.FORMAT
    assert [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == []


def test_colcon_v2_bad_sha_field_cannot_name_a_path(tmp_path):
    metadata = tar_bytes(
        [
            _file(
                "overlays.json",
                json.dumps(
                    {"overlays": [{"name": "w.tar.gz", "sha256": "../../escape", "offset": 0, "size": 1}]}
                ).encode(),
            )
        ],
        True,
    )
    archive = write(
        tmp_path / "b.tar", tar_bytes([_file("version", b"2"), _file("metadata.tar.gz", metadata)])
    )
    with pytest.raises(BundleError) as err:
        extract_bundle(archive, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert err.value.category == BundleErrorCategory.FORMAT


def test_unknown_version_and_garbage(tmp_path):
    archive = write(tmp_path / "v9.tar", tar_bytes([_file("version", b"9")]))
    with pytest.raises(BundleError) as err:
        extract_bundle(archive, tmp_path / "out")
    assert err.value.category == BundleErrorCategory.FORMAT
    with pytest.raises(BundleError) as err:
        extract_bundle(write(tmp_path / "junk.tar.gz", b"\x1f\x8bnot really gzip" * 10), tmp_path / "out2")
    assert err.value.category == BundleErrorCategory.FORMAT
    with pytest.raises(BundleError) as err:
        extract_bundle(write(tmp_path / "zero", b""), tmp_path / "out3")
    assert err.value.category == BundleErrorCategory.FORMAT


def test_truncated_gzip_is_rejected(tmp_path):
    data = tar_bytes(plain_bundle_members() + [_file("my_pkg/big", os.urandom(200_000))], compress=True)
    with pytest.raises(BundleError) as err:
        extract_bundle(write(tmp_path / "t.tar.gz", data[: len(data) // 2]), tmp_path / "out")
    assert err.value.category in (BundleErrorCategory.FORMAT, BundleErrorCategory.EXTRACTION)
    assert not (tmp_path / "out").exists()


# --- unsafe members -----------------------------------------------------------------------------


UNSAFE_CASES = {
    "absolute": [_file("/etc/evil", b"x")],
    "dotdot": [_file("../evil", b"x")],
    "nested-dotdot": [_dir("my_pkg"), _file("my_pkg/../../evil", b"x")],
    "symlink-out-relative": [_link("escape", "../../..")],
    "symlink-then-write-through": [_link("dir", "."), _link("dir/up", "..")],
    "hardlink-out": [_link("hard", "../outside", hard=True)],
    "hardlink-absolute": [_link("hard", "/etc/passwd", hard=True)],
    "char-device": [_special("dev", tarfile.CHRTYPE)],
    "block-device": [_special("dev", tarfile.BLKTYPE)],
    "fifo": [_special("fifo", tarfile.FIFOTYPE)],
    "relink-existing-link": [
        _dir("a"),
        _dir("a/b"),
        _link("l", "a/b"),
        _link("x", "l/../.."),
        _link("l", "a"),
    ],
}


@pytest.mark.parametrize("case", sorted(UNSAFE_CASES))
def test_unsafe_members_are_rejected(tmp_path, case):
    members = plain_bundle_members() + UNSAFE_CASES[case]
    archive = write(tmp_path / "evil.tar", tar_bytes(members))
    sentinel_parent = tmp_path / "sandbox"
    sentinel_parent.mkdir()
    with pytest.raises(BundleError) as err:
        extract_bundle(archive, sentinel_parent / "a" / "out")
    assert err.value.category == BundleErrorCategory.UNSAFE, err.value
    assert not (sentinel_parent / "a" / "out").exists()
    assert not (tmp_path / "evil").exists() and not (sentinel_parent / "evil").exists()
    assert not (sentinel_parent / "a" / "evil").exists()


def test_unsafe_member_inside_colcon_v1_bundle_tar(tmp_path):
    inner = tar_bytes([_file("setup.sh", SETUP_SH), _file("../../evil", b"x")])
    outer = tar_bytes([_file("version", b"1"), _file("bundle.tar", inner)], compress=True)
    with pytest.raises(BundleError) as err:
        extract_bundle(write(tmp_path / "v1.tar.gz", outer), tmp_path / "out")
    assert err.value.category == BundleErrorCategory.UNSAFE
    assert not (tmp_path / "evil").exists()


def test_absolute_symlinks_are_rerooted_inside_the_bundle(tmp_path):
    members = plain_bundle_members() + [
        _dir("etc"),
        _dir("etc/alternatives"),
        _file("etc/alternatives/libblas.so.3", b"blas"),
        _dir("usr"),
        _dir("usr/lib"),
        _link("usr/lib/libblas.so.3", "/etc/alternatives/libblas.so.3"),
        _link("usr/lib/passwd", "/etc/passwd"),
    ]
    out = tmp_path / "out"
    extract_bundle(write(tmp_path / "abs.tar", tar_bytes(members)), out)
    assert (out / "usr/lib/libblas.so.3").read_bytes() == b"blas"
    assert os.readlink(out / "usr/lib/libblas.so.3") == "../../etc/alternatives/libblas.so.3"
    assert os.path.realpath(out / "usr/lib/passwd") == str((out / "etc/passwd").resolve())
    assert not (out / "usr/lib/passwd").exists()  # dangling inside the bundle, never the host's file


def test_links_that_stay_inside_are_allowed(tmp_path):
    members = plain_bundle_members() + [
        _dir("lib"),
        _file("lib/libx.so.1", b"elf"),
        _link("lib/libx.so", "libx.so.1"),
        _link("my_pkg/lib", "../lib"),
        _link("hard", "lib/libx.so.1", hard=True),
    ]
    extract_bundle(write(tmp_path / "ok.tar", tar_bytes(members)), tmp_path / "out")
    assert (tmp_path / "out" / "my_pkg" / "lib" / "libx.so").read_bytes() == b"elf"
    assert (tmp_path / "out" / "hard").read_bytes() == b"elf"


def test_setuid_bits_are_stripped(tmp_path):
    members = plain_bundle_members() + [_file("suid", b"#!/bin/sh\n", 0o4777)]
    extract_bundle(write(tmp_path / "a.tar", tar_bytes(members)), tmp_path / "out")
    mode = (tmp_path / "out" / "suid").stat().st_mode & 0o7777
    assert mode & 0o7000 == 0 and mode & 0o022 == 0


def test_member_count_limit(tmp_path):
    members = plain_bundle_members() + [_file(f"my_pkg/f{i}", b"x") for i in range(20)]
    with pytest.raises(BundleError) as err:
        extract_bundle(
            write(tmp_path / "many.tar", tar_bytes(members)),
            tmp_path / "out",
            limits=ExtractionLimits(max_members=10),
        )
    assert err.value.category == BundleErrorCategory.TOO_LARGE


def test_total_size_limit_counts_uncompressed_bytes(tmp_path):
    members = plain_bundle_members() + [_file("my_pkg/zeros", bytes(2_000_000))]
    archive = write(tmp_path / "bomb.tar.gz", tar_bytes(members, compress=True))
    assert archive.stat().st_size < 100_000
    with pytest.raises(BundleError) as err:
        extract_bundle(archive, tmp_path / "out", limits=ExtractionLimits(max_total_bytes=1_000_000))
    assert err.value.category == BundleErrorCategory.TOO_LARGE
    assert not (tmp_path / "out").exists()


# --- archives (data sources) --------------------------------------------------------------------


def test_safe_extract_zip_and_tar(tmp_path):
    zpath = tmp_path / "maps.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("maps/a.yaml", "image: a.pgm\n")
    safe_extract_archive(zpath, tmp_path / "z")
    assert (tmp_path / "z" / "maps" / "a.yaml").read_text().startswith("image")
    tpath = write(tmp_path / "maps.tar.gz", tar_bytes([_file("maps/b.yaml", b"b")], compress=True))
    safe_extract_archive(tpath, tmp_path / "t")
    assert (tmp_path / "t" / "maps" / "b.yaml").read_bytes() == b"b"


def test_safe_extract_zip_rejects_traversal(tmp_path):
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("../evil", "x")
    with pytest.raises(BundleError) as err:
        safe_extract_archive(zpath, tmp_path / "z")
    assert err.value.category == BundleErrorCategory.UNSAFE
    assert not (tmp_path / "evil").exists()


# --- sourcing -----------------------------------------------------------------------------------


def test_sourcing_runs_setup_scripts_in_order_and_passes_argv_untouched(tmp_path):
    deps, ws = overlay(b"d"), overlay(b"w")
    bundle = extract_bundle(
        colcon_v2(tmp_path, {"dependencies.tar.gz": deps, "workspace.tar.gz": ws}),
        tmp_path / "out",
        cache_dir=tmp_path / "cache",
    )
    hostile = "$(touch /tmp/orm-pwned); `id` 'quote\" \\ ;"
    argv = sourced_argv(
        bundle,
        [
            "/usr/bin/env",
            "python3",
            "-c",
            "import os,sys; print(os.environ['ORM_TEST_TRAIL']); print(sys.argv[1])",
            hostile,
        ],
    )
    result = subprocess.run(argv, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, check=True)
    trail, echoed = result.stdout.splitlines()
    assert trail.split(":") == [str(p) for p in bundle.prefixes]
    assert echoed == hostile
    assert not Path("/tmp/orm-pwned").exists()


def test_setup_script_that_clears_positional_args_cannot_break_exec(tmp_path):
    members = plain_bundle_members(setup=False) + [_file("setup.sh", b"set -- bogus args\nset -u\nfalse\n")]
    bundle = extract_bundle(write(tmp_path / "a.tar", tar_bytes(members)), tmp_path / "out")
    result = subprocess.run(
        sourced_argv(bundle, ["/bin/echo", "ok"]), capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "ok"


def test_gzip_detected_by_magic_not_name(tmp_path):
    data = gzip.compress(tar_bytes(plain_bundle_members()))
    bundle = extract_bundle(write(tmp_path / "bundle.tar", data), tmp_path / "out")
    assert bundle.format == "plain"
