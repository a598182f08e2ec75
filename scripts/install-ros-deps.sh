#!/bin/sh
# Debian 12 packages the simulation runner, the example applications and the runner tests need.
# CI runs this on a clean machine (as root, or with sudo available).
set -eu

PACKAGES="
  ros-base
  python3-rosbag
  python3-genpy
  python3-genmsg
  python-is-python3
  python3-geometry-msgs
  python3-nav-msgs
  python3-sensor-msgs
  python3-std-srvs
  python3-boto3
  iproute2
  util-linux
"
# ros-base:             roscore, roslaunch, rospy for Debian's /usr/bin/python3
# python3-rosbag:       rosbag record (recordAllRosTopics)
# python3-genpy/genmsg: generate robomaker_simulation_msgs at run time
# python-is-python3:    bundles whose nodes still say #!/usr/bin/env python
# python3-*-msgs:       message types of the example applications
# python3-boto3:        the in-job /robomaker/job/* service node calls the API with it
# iproute2, util-linux: network namespaces (unshare, nsenter, setpriv, mount)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

missing=""
for pkg in $PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0  # everything is there: no network, no apt lock

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
# shellcheck disable=SC2086  # the list is meant to be split into words
$SUDO apt-get install -y --no-install-recommends $missing
