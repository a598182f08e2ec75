"""Builds small ROS 1 application bundles for tests: plain .tar.gz archives of ROS packages."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

PACKAGE_XML = """<?xml version="1.0"?>
<package format="2">
  <name>{name}</name>
  <version>0.0.1</version>
  <description>test package {name}</description>
  <maintainer email="tests@example.com">tests</maintainer>
  <license>Apache-2.0</license>
  <buildtool_depend>catkin</buildtool_depend>
  <exec_depend>rospy</exec_depend>
  <exec_depend>std_msgs</exec_depend>
</package>
"""


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def ros_package_bundle(path: Path, package: str, nodes: dict[str, str], launch_files: dict[str, str]) -> Path:
    """A bundle whose root holds one ROS package with Python nodes (scripts/) and launch files."""
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, f"{package}/package.xml", PACKAGE_XML.format(name=package).encode())
        _add(
            tar,
            f"{package}/CMakeLists.txt",
            f"cmake_minimum_required(VERSION 3.0.2)\nproject({package})\n".encode(),
        )
        for name, source in nodes.items():
            _add(tar, f"{package}/scripts/{name}", source.encode(), 0o755)
        for name, xml in launch_files.items():
            _add(tar, f"{package}/launch/{name}", xml.encode())
    return path


def node_launch(package: str, *nodes: tuple[str, str], required: bool = True) -> str:
    """A launch file starting each (node name, script) of `package`."""
    body = "\n".join(
        f'  <node pkg="{package}" type="{script}" name="{name}" output="screen" required="{str(required).lower()}"/>'
        for name, script in nodes
    )
    return f"<launch>\n{body}\n</launch>\n"


TALKER = """#!/usr/bin/env python3
import os
import rospy
from std_msgs.msg import String

rospy.init_node("talker")
pub = rospy.Publisher("/chatter", String, queue_size=10)
rate = rospy.Rate(10)
count = 0
print("talker up, job", os.environ.get("AWS_ROBOMAKER_SIMULATION_JOB_ID"), "greeting", os.environ.get("GREETING"), flush=True)
while not rospy.is_shutdown():
    pub.publish(String(data="hello %d" % count))
    if count % 10 == 0:
        print("talker said hello %d" % count, flush=True)
    count += 1
    rate.sleep()
"""

LISTENER = """#!/usr/bin/env python3
import rospy
from std_msgs.msg import String

def heard(msg):
    rospy.loginfo("listener heard %s", msg.data)

rospy.init_node("listener")
rospy.Subscriber("/chatter", String, heard)
print("listener up", flush=True)
rospy.spin()
"""

CRASHER = """#!/usr/bin/env python3
import sys
import time
import rospy

rospy.init_node("crasher")
print("crasher will crash", flush=True)
time.sleep(float(__import__("os").environ.get("CRASH_AFTER", "2")))
sys.exit(3)
"""

SELF_TAG_AND_CANCEL = """#!/usr/bin/env python3
# What RoboMaker test nodes did: tag the job with the verdict, then cancel it, through the in-sim services.
import rospy
from robomaker_simulation_msgs.msg import Tag
from robomaker_simulation_msgs.srv import AddTags, Cancel

rospy.init_node("verdict")
rospy.wait_for_service("/robomaker/job/add_tags", timeout=60)
add_tags = rospy.ServiceProxy("/robomaker/job/add_tags", AddTags)
result = add_tags(tags=[Tag(key="verdict", value="passed")])
print("add_tags:", result.success, result.message, flush=True)
rospy.wait_for_service("/robomaker/job/cancel", timeout=60)
cancel = rospy.ServiceProxy("/robomaker/job/cancel", Cancel)
result = cancel()
print("cancel:", result.success, result.message, flush=True)
rospy.spin()
"""

BOTO3_SELF_TAG = """#!/usr/bin/env python3
# An application calling the API directly with boto3 from inside the job, as its own account.
import os
import time
import boto3

# Debian 12 ships botocore 1.29, older than AWS_ENDPOINT_URL_ROBOMAKER support (1.31), so pass it explicitly.
client = boto3.client("robomaker", endpoint_url=os.environ["AWS_ENDPOINT_URL_ROBOMAKER"])
arn = os.environ["AWS_ROBOMAKER_SIMULATION_JOB_ARN"]
client.tag_resource(resourceArn=arn, tags={"fromInside": os.environ["AWS_ROBOMAKER_SIMULATION_RUN_ID"][:40].replace(":", "-")})
print("tagged from inside", flush=True)
while True:
    time.sleep(1)
"""
