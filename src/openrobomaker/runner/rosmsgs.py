"""The `robomaker_simulation_msgs` ROS package that RoboMaker offered inside every simulation job.

Definitions match aws-robotics/aws-robomaker-simulation-ros-pkgs (same fields, same order, hence the same
md5sums), so nodes written for RoboMaker — and bundles that ship their own copy of the package — talk to
our service node unchanged. The .msg/.srv files are kept here as text (no package data needed) and the
Python modules are generated with Debian's genpy once per definition set into the shared cache directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE = "robomaker_simulation_msgs"
ROS_PYTHON = "/usr/bin/python3"

MESSAGES = {
    "Tag": "string key\nstring value\n",
}
SERVICES = {
    "Cancel": "---\nbool success\nstring message\n",
    "AddTags": "Tag[] tags\n---\nbool success\nstring message\n",
    "ListTags": "---\nbool success\nstring message\nTag[] tags\n",
    "RemoveTags": "string[] keys\n---\nbool success\nstring message\n",
}
# md5sums of the upstream generated code; a unit test holds us to them.
UPSTREAM_MD5SUMS = {
    "Tag": "cf57fdc6617a881a88c16e768132149c",
    "Cancel": "937c9679a518e3a18d831e57125ea522",
    "AddTags": "637781bbb7edf1a52e9fe238f1ba7d6b",
    "ListTags": "f351af60fa94133527414ffdcaacf51b",
    "RemoveTags": "cae332c01603844d352ed026669010ee",
}

PACKAGE_XML = f"""<?xml version="1.0"?>
<package format="2">
  <name>{PACKAGE}</name>
  <version>1.0.0</version>
  <description>Service definitions of the ROS services inside a simulation job (OpenRoboMaker).</description>
  <maintainer email="noreply@example.com">OpenRoboMaker</maintainer>
  <license>Apache-2.0</license>
  <buildtool_depend>catkin</buildtool_depend>
  <depend>std_msgs</depend>
  <exec_depend>message_runtime</exec_depend>
</package>
"""

# Fixed generator script run by Debian's python3 (which has genpy); paths arrive as argv only.
_GENERATE = """
import sys, glob, os
import genpy.generator, genpy.generate_initpy
pkg, share, out = sys.argv[1:4]
search = {pkg: [os.path.join(share, "msg")]}
for kind, gen in (("msg", genpy.generator.MsgGenerator()), ("srv", genpy.generator.SrvGenerator())):
    files = sorted(glob.glob(os.path.join(share, kind, "*." + kind)))
    target = os.path.join(out, pkg, kind)
    if gen.generate_messages(pkg, files, target, search) != 0:
        sys.exit(1)
    genpy.generate_initpy.write_modules(target)
open(os.path.join(out, pkg, "__init__.py"), "w").close()
"""


@dataclass(frozen=True)
class RosMessagesPackage:
    package_root: Path  # goes on ROS_PACKAGE_PATH (holds <root>/robomaker_simulation_msgs/package.xml)
    python_path: Path  # goes on PYTHONPATH (holds robomaker_simulation_msgs/{msg,srv})


def _definitions_digest() -> str:
    digest = hashlib.sha256(PACKAGE_XML.encode())
    for kind, defs in (("msg", MESSAGES), ("srv", SERVICES)):
        for name in sorted(defs):
            digest.update(f"{kind}/{name}\0{defs[name]}\0".encode())
    return digest.hexdigest()[:16]


def _write_sources(share: Path) -> None:
    (share / "msg").mkdir(parents=True)
    (share / "srv").mkdir()
    (share / "package.xml").write_text(PACKAGE_XML)
    for name, text in MESSAGES.items():
        (share / "msg" / f"{name}.msg").write_text(text)
    for name, text in SERVICES.items():
        (share / "srv" / f"{name}.srv").write_text(text)


def ensure_ros_messages(cache_dir: Path) -> RosMessagesPackage:
    """The generated package under `cache_dir`, built once and shared by runs (atomic publish)."""
    final = cache_dir / f"{PACKAGE}-{_definitions_digest()}"
    package = RosMessagesPackage(package_root=final / "share", python_path=final / "python")
    if (package.python_path / PACKAGE / "srv" / "__init__.py").is_file():
        return package
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{PACKAGE}-", dir=cache_dir))
    try:
        share = staging / "share" / PACKAGE
        _write_sources(share)
        result = subprocess.run(
            [ROS_PYTHON, "-c", _GENERATE, PACKAGE, str(share), str(staging / "python")],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"genpy failed for {PACKAGE}: {result.stderr.strip()[-800:]}")
        try:
            os.rename(staging, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return package
