#!/usr/bin/python3
"""Run `roslaunch PACKAGE LAUNCHFILE` and exit non-zero when a node crashes (for Debian's /usr/bin/python3).

`roslaunch` itself exits 0 when a node dies, even a required one, so a crash cannot be read from its exit
code. This launcher uses roslaunch's Python API with a process listener instead:

    exit 0  every node ended with code 0 (or the launch was stopped with SIGINT/SIGTERM)
    exit 1  a node died with a non-zero code (and is not respawned), or a required node died
    exit 2  the launch could not start (package or launch file not found, `Resource not found: …`, bad XML)

The reason is printed and, with --status-file, written as JSON {"result", "reason"} for the runner.
Standalone on purpose: it runs under the ROS Python, which does not have the openrobomaker package.
"""

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time

EXIT_OK, EXIT_CRASH, EXIT_LAUNCH_ERROR = 0, 1, 2
STOP = threading.Event()


def write_status(path, result, reason):
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"result": result, "reason": reason}, fh)
    os.replace(tmp, path)


def fail(args, code, result, reason):
    print("[openrobomaker] " + reason, file=sys.stderr, flush=True)
    write_status(args.status_file, result, reason)
    return code


class CrashListener:
    """roslaunch ProcessListener: remembers the first node that died abnormally."""

    def __init__(self):
        self.process_monitor = None
        self.crash_reason = None

    def process_died(self, process_name, exit_code):
        process = self.process_monitor.get_process(process_name) if self.process_monitor else None
        required = bool(getattr(process, "required", False))
        respawn = bool(getattr(process, "respawn", False))
        what = f"process [{process_name}]"
        if process is not None and getattr(process, "package", None):
            what += f" (package {process.package})"
        if required:
            reason = f"required {what} exited with code {exit_code}"
        elif exit_code not in (0, None) and not respawn:
            reason = f"{what} exited with code {exit_code}"
        else:
            return
        if self.crash_reason is None:
            self.crash_reason = reason


def resolve_launch_file(package, launch_file):
    import roslaunch.core
    import roslaunch.rlutil
    import rospkg

    try:
        rospkg.RosPack().get_path(package)
    except rospkg.ResourceNotFound:
        raise roslaunch.core.RLException(
            f"Resource not found: package [{package}] is not on ROS_PACKAGE_PATH "
            f"({os.environ.get('ROS_PACKAGE_PATH', '')})"
        ) from None
    return roslaunch.rlutil.resolve_launch_arguments([package, launch_file])


def wait_for_master(seconds):
    """Wait until the master answers and has /run_id (the runner sets it as soon as the master is up).

    The runner starts the master and this launcher at the same time; without the wait roslaunch would find
    no master and start one of its own, or generate a /run_id of its own."""
    import rosgraph

    master = rosgraph.Master("/openrobomaker_launcher")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not STOP.is_set():
        try:
            if master.hasParam("/run_id"):
                return True
        except Exception:  # not up yet: connection refused, or the master still starting
            pass
        time.sleep(0.02)
    return False


def run(args):
    import roslaunch
    import roslaunch.core
    import roslaunch.parent
    import roslaunch.rlutil

    try:
        launch_files = resolve_launch_file(args.package, args.launch_file)
    except roslaunch.core.RLException as exc:
        return fail(args, EXIT_LAUNCH_ERROR, "launch-error", str(exc))

    if args.wait_master and not wait_for_master(args.wait_master):
        if STOP.is_set():
            return EXIT_OK
        return fail(args, EXIT_LAUNCH_ERROR, "launch-error", "the ROS master did not come up")
    run_id = roslaunch.rlutil.get_or_generate_uuid(None, False)
    roslaunch.configure_logging(run_id)
    listener = CrashListener()
    parent = roslaunch.parent.ROSLaunchParent(
        run_id,
        launch_files,
        is_core=False,
        process_listeners=[listener],
        force_screen=True,  # node output goes to our stdout, i.e. into the application log
        sigint_timeout=args.sigint_timeout,
        sigterm_timeout=args.sigterm_timeout,
    )
    if STOP.is_set():
        return EXIT_OK
    try:
        parent.start()
    except Exception as exc:  # RLException, substitution errors, XML errors: all mean "could not launch"
        reason = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):  # the launch error is what matters
            parent.shutdown()
        return fail(args, EXIT_LAUNCH_ERROR, "launch-error", reason)
    listener.process_monitor = parent.pm
    try:
        while not parent.pm.is_shutdown and listener.crash_reason is None and not STOP.is_set():
            parent.spin_once()
            time.sleep(0.1)
    finally:
        parent.shutdown()
    if listener.crash_reason is not None:
        return fail(args, EXIT_CRASH, "crash", listener.crash_reason)
    write_status(args.status_file, "exited", "all processes exited")
    return EXIT_OK


def request_stop(_signum, _frame):
    # No KeyboardInterrupt: a SIGINT that lands inside roslaunch's start-up would otherwise leave its
    # non-daemon threads running and the process alive. roslaunch chains to this handler once it installs
    # its own.
    STOP.set()


def main():
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--status-file")
    parser.add_argument("--sigint-timeout", type=float, default=5.0)
    parser.add_argument("--sigterm-timeout", type=float, default=2.0)
    parser.add_argument("--wait-master", type=float, default=0.0, help="seconds to wait for master + /run_id")
    parser.add_argument("package")
    parser.add_argument("launch_file")
    return run(parser.parse_args())


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # do not wait for roslaunch threads that a shutdown left behind
