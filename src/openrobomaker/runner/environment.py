"""Environment variables of job processes.

Built from nothing, never inherited: the runner's own environment (a virtualenv's PATH, PYTHONPATH,
VIRTUAL_ENV) would give `#!/usr/bin/env python3` nodes a Python without rospy. Order, later wins:

1. a clean base (system PATH, HOME/ROS_HOME/ROS_LOG_DIR in the work dir, ROS master, our ROS package),
2. the launch config's environmentVariables,
3. the RoboMaker variables (job id/ARN/run id, region, account, credentials and endpoint of the API),
4. then, at exec time, the bundle's setup scripts — which may override user variables, as on RoboMaker.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from openrobomaker.runner.layout import RunLayout
from openrobomaker.runner.procs import RUN_MARKER_VAR
from openrobomaker.runner.spec import ApplicationSpec, RunnerSpec

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DATASOURCES_DIR_VAR = "AWS_ROBOMAKER_DATASOURCES_DIR"
# Container-era placeholders RoboMaker replaced by the apps' IPs; every app of a run shares one host here.
APP_IP_PLACEHOLDERS = ("ROBOMAKER_ROBOT_APP_IP", "ROBOMAKER_SIM_APP_IP")
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class JobContext:
    """What every process of the run shares, decided once the run's infrastructure is up."""

    master_port: int
    api_endpoint_url: str  # as reachable from inside the job (the forwarder's address when isolated)
    datasources_dir: str
    ros_package_path: list[Path]
    python_path: list[Path]
    run_marker: str


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "robomaker"


def base_environment(layout: RunLayout, context: JobContext) -> dict[str, str]:
    """The clean environment every process of the job starts from (ROS master, rosbag, the apps)."""
    env = {
        "PATH": SYSTEM_PATH,
        "HOME": str(layout.home),
        "USER": _user_name(),
        "LOGNAME": _user_name(),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "SHELL": "/bin/bash",
        "TERM": "dumb",
        "PYTHONUNBUFFERED": "1",  # node output reaches the logs line by line, not at exit
        "ROS_HOME": str(layout.home / ".ros"),
        "ROS_LOG_DIR": str(layout.ros_log_dir),
        "ROS_MASTER_URI": f"http://localhost:{context.master_port}",
        "ROS_HOSTNAME": "localhost",
        "ROS_VERSION": "1",
        "ROS_PYTHON_VERSION": "3",
        "ROS_DISTRO": "debian",
        "ROS_PACKAGE_PATH": os.pathsep.join(str(p) for p in context.ros_package_path),
        "PYTHONPATH": os.pathsep.join(str(p) for p in context.python_path),
        DATASOURCES_DIR_VAR: context.datasources_dir,
        RUN_MARKER_VAR: context.run_marker,
    }
    return {k: v for k, v in env.items() if v}


def robomaker_variables(spec: RunnerSpec, context: JobContext) -> dict[str, str]:
    """What RoboMaker set in every job, plus what boto3 inside the job needs to call this API."""
    env = {
        "AWS_ROBOMAKER_SIMULATION_JOB_ID": spec.job_id,
        "AWS_ROBOMAKER_SIMULATION_JOB_ARN": spec.job_arn,
        "AWS_ROBOMAKER_SIMULATION_RUN_ID": spec.run_id,
        "AWS_REGION": spec.region,
        "AWS_DEFAULT_REGION": spec.region,
        "AWS_ACCOUNT_ID": spec.account,
        "AWS_ACCESS_KEY_ID": spec.api_endpoint.access_key_id,
        "AWS_SECRET_ACCESS_KEY": spec.api_endpoint.secret_access_key,
        "AWS_ENDPOINT_URL_ROBOMAKER": context.api_endpoint_url,
        "AWS_ENDPOINT_URL": context.api_endpoint_url,
        "ROS_MASTER_URI": f"http://localhost:{context.master_port}",
        "ROS_HOSTNAME": "localhost",
        DATASOURCES_DIR_VAR: context.datasources_dir,
    }
    if spec.api_endpoint.session_token:
        env["AWS_SESSION_TOKEN"] = spec.api_endpoint.session_token
    return env


def substitute_placeholders(value: str) -> str:
    for placeholder in APP_IP_PLACEHOLDERS:
        value = value.replace(placeholder, LOOPBACK)
    return value


def user_variables(app: ApplicationSpec) -> dict[str, str]:
    return {k: substitute_placeholders(v) for k, v in app.launch_config.environment_variables.items()}


def application_environment(
    spec: RunnerSpec,
    app: ApplicationSpec,
    layout: RunLayout,
    context: JobContext,
    extra_ros_packages: Iterable[Path],
) -> dict[str, str]:
    """Environment of one application's launch (before its bundle is sourced)."""
    env = base_environment(layout, context)
    package_path = [str(p) for p in extra_ros_packages] + [env["ROS_PACKAGE_PATH"]]
    env["ROS_PACKAGE_PATH"] = os.pathsep.join(p for p in package_path if p)
    env.update(user_variables(app))
    env.update(robomaker_variables(spec, context))
    return env


def service_node_environment(spec: RunnerSpec, layout: RunLayout, context: JobContext) -> dict[str, str]:
    env = base_environment(layout, context)
    env.update(robomaker_variables(spec, context))
    return env
