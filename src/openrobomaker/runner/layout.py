"""Where everything of one run lives inside its work directory."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

# sun_path is 108 bytes on Linux; keep a margin for the NUL and for a future longer file name.
_MAX_UNIX_SOCKET_PATH = 100

SIMULATION_LOG_NAME = "SimulationApplicationLogs.log"
ROBOT_LOG_NAME = "RobotApplicationLogs.log"


@dataclass(frozen=True)
class RunLayout:
    work_dir: Path

    @property
    def runner_log(self) -> Path:
        return self.work_dir / "runner.log"

    @property
    def final_report(self) -> Path:
        return self.work_dir / "final.json"

    @property
    def cancel_file(self) -> Path:
        """Touching this file cancels the run: the fallback when HTTP to the runner's host is broken."""
        return self.work_dir / "cancel"

    @property
    def home(self) -> Path:
        return self.work_dir / "home"

    @property
    def downloads(self) -> Path:
        return self.work_dir / "downloads"

    def bundle_dir(self, app_slug: str, generation: int) -> Path:
        """Where an application's bundle is extracted (again at each restart, hence the generation)."""
        return self.work_dir / f"bundle-{app_slug}-{generation}"

    def bundle_download(self, app_slug: str) -> Path:
        """The bundle's archive while it is extracted: in the work directory itself, as a folder of its
        own would cost a directory inode per run."""
        return self.work_dir / f"{app_slug}.bundle.download"

    @property
    def datasources(self) -> Path:
        return self.work_dir / "datasources"

    @property
    def status(self) -> Path:
        return self.work_dir / "status"

    @property
    def namespace(self) -> Path:
        return self.work_dir / "ns"

    @property
    def output(self) -> Path:
        return self.work_dir / "output"

    @property
    def ros_logs(self) -> Path:
        return self.output / "ros-logs"

    @property
    def ros_log_dir(self) -> Path:
        """ROS_LOG_DIR of every process: ROS's own logs land in the uploaded ros-logs folder."""
        return self.ros_logs / "ros"

    @property
    def ros_bags(self) -> Path:
        return self.output / "ros-bags"

    def app_log(self, is_simulation: bool) -> Path:
        return self.ros_logs / (SIMULATION_LOG_NAME if is_simulation else ROBOT_LOG_NAME)

    def infra_log(self, name: str) -> Path:
        return self.ros_logs / f"{name}.log"

    def create(self, ros: bool) -> None:
        """The directories every run uses, and the ROS ones when the job runs ROS. The rest (the bundles'
        folders, data sources and their downloads, the namespace's mount stash) are made where they are
        first needed: a run of a plain `command` makes four directories instead of ten (each new inode
        costs, most of all on a busy disk)."""
        paths = [self.home, self.ros_logs]
        if ros:
            paths += [self.status, self.ros_log_dir, self.ros_bags]
        for path in paths:
            path.mkdir(parents=True, exist_ok=True)

    def scratch(self) -> Path:
        """Data source downloads waiting to be extracted."""
        self.downloads.mkdir(exist_ok=True)
        return self.downloads

    def api_socket_path(self) -> Path:
        """A unix socket path short enough for bind(); falls back to a private dir under /tmp."""
        candidate = self.work_dir / "api.sock"
        if len(os.fsencode(candidate)) <= _MAX_UNIX_SOCKET_PATH:
            return candidate
        return Path(tempfile.mkdtemp(prefix="orm-api-")) / "api.sock"
