"""One simulation job run on this node, from Preparing to Finished.

Phases reported: Preparing -> Running [-> RunningFailed -> Running | -> Restarting -> Running]* ->
Terminating -> Finished (outcome Completed | Failed | Canceled). A failure while Preparing goes straight to
Finished/Failed.

How applications ending are read:

* The simulation application exiting with code 0 ends the job `Completed` (a test that finished).
* A robot application exiting with code 0 while the simulation runs just stays exited: robot code that
  finishes its task should not end the simulation around it. When every application has exited with 0 the
  job is `Completed` too, so a robot-only job does not idle until its maximum duration.
* Any application exiting non-zero (for ROS 1: any node dying non-zero or a required node dying, see
  ros1_launch.py) is a `SimulationApplicationCrash` / `RobotApplicationCrash`. With failureBehavior `Fail`
  the job ends `Failed`; with `Continue` ("restart the simulation job in the same host instance", the 2020
  meaning) the phase is RunningFailed while every application is restarted in place (same ROS master, same
  bundles), with a backoff of 1, 2, 4, 8, 10 s between repeated crashes, then Running again.
* `maxJobDurationInSeconds`, measured from the first entry into Running, ends the job `Completed` — with
  `Continue` too, even when the applications kept crashing: the crashes were reported as RunningFailed
  phases (with their failure code and reason) while they happened.
* Cancel (control plane action, SIGTERM, or a `cancel` file in the work dir) ends the job `Canceled`.
* A `restart` action stops the applications, downloads their bundles again (a changed `$LATEST` is picked
  up), and starts them again: Restarting -> Running, same runId, same master.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from openrobomaker.bundles import ExtractedBundle, remove_tree, sourced_argv
from openrobomaker.objectstore import ObjectStore, open_store
from openrobomaker.runner.datasources import MOUNT_ROOT, PreparedDataSource, fetch_data_sources
from openrobomaker.runner.environment import (
    JobContext,
    application_environment,
    base_environment,
    service_node_environment,
)
from openrobomaker.runner.failures import (
    INTERNAL_SERVICE_ERROR,
    CancelRequested,
    JobFailure,
    app_label,
    crash_code,
)
from openrobomaker.runner.fetch import fetch_application
from openrobomaker.runner.forwarder import ListenerToTcpForwarder
from openrobomaker.runner.isolation import (
    DataSourceMount,
    Isolation,
    NamespaceIsolation,
    PreparedIsolation,
    prepare_isolation,
)
from openrobomaker.runner.layout import RunLayout
from openrobomaker.runner.outputs import check_output_location, output_key_prefix, upload_outputs
from openrobomaker.runner.procs import RUN_MARKER_VAR, JobProcess, LogSink, kill_marked_processes
from openrobomaker.runner.reporter import Reporter
from openrobomaker.runner.rosmsgs import ensure_ros_messages
from openrobomaker.runner.spec import ApplicationSpec, RunnerSpec
from openrobomaker.runner.turns import NO_TURNS, TurnTaker

log = logging.getLogger(__name__)

ROS_PYTHON = "/usr/bin/python3"
ROSMASTER = "/usr/bin/rosmaster"
ROSOUT = "/usr/lib/rosout/rosout"
RUNNER_DIR = Path(__file__).resolve().parent
LAUNCHER = str(RUNNER_DIR / "ros1_launch.py")
SERVICE_NODE = str(RUNNER_DIR / "robomaker_service.py")
MASTER_START_TIMEOUT = 30.0
APP_SIGINT_TIMEOUT = 10.0  # the launcher gives nodes 5 s for SIGINT and 2 s for SIGTERM itself
BAG_SIGINT_TIMEOUT = 15.0  # rosbag must get to close the bag properly
POLL_SECONDS = 0.2
MAX_CRASH_BACKOFF = 10.0
ROS_SUITES = ("ROS", "ROS2")  # jobs with an application of these get ROS's log, bag and launcher folders


@dataclass(frozen=True)
class RunResult:
    outcome: str  # Completed | Failed | Canceled
    failure_code: str | None = None
    failure_reason: str | None = None


@dataclass
class AppRuntime:
    spec: ApplicationSpec
    sink: LogSink
    bundle: ExtractedBundle | None = None
    bundle_dir: Path | None = None
    process: JobProcess | None = None
    status_file: Path | None = None
    generation: int = 0
    starts: int = 0
    exited_cleanly: bool = False

    @property
    def slug(self) -> str:
        return self.spec.kind


@dataclass
class Clock:
    """Simulation time is time spent Running; the max duration counts from the first Running."""

    first_running: float | None = None
    running_since: float | None = None
    accumulated: float = 0.0

    def enter(self, phase: str) -> None:
        now = time.monotonic()
        if self.running_since is not None and phase != "Running":
            self.accumulated += now - self.running_since
            self.running_since = None
        if phase == "Running" and self.running_since is None:
            self.running_since = now
            self.first_running = self.first_running if self.first_running is not None else now

    def simulation_millis(self) -> int:
        running = self.accumulated
        since = self.running_since
        if since is not None:
            running += time.monotonic() - since
        return int(running * 1000)

    def elapsed_since_first_running(self) -> float:
        return 0.0 if self.first_running is None else time.monotonic() - self.first_running


@dataclass
class Infrastructure:
    master: JobProcess | None = None
    rosout: JobProcess | None = None
    service_node: JobProcess | None = None
    bag_recorder: JobProcess | None = None
    api_forwarder: ListenerToTcpForwarder | None = None
    sinks: list[LogSink] = field(default_factory=list)


class JobRun:
    def __init__(
        self,
        spec: RunnerSpec,
        prepared_isolation: PreparedIsolation | None = None,
        turns: TurnTaker = NO_TURNS,
    ):
        self.spec = spec
        self.prepared_isolation = prepared_isolation
        self.turns = turns  # the start up to Running, and the wind-down, are taken in turn (runner/turns.py)
        self.final_acknowledged = False
        self.layout = RunLayout(Path(spec.work_dir))
        self.cache_dir = Path(spec.cache_dir)
        self._store: ObjectStore | None = None
        self.events: queue.Queue[str] = queue.Queue()
        self.clock = Clock()
        self.phase = "Preparing"
        self.run_marker = uuid.uuid4().hex
        self.isolation: Isolation | None = None
        self.infra = Infrastructure()
        self.apps: list[AppRuntime] = []
        self.data_sources: list[PreparedDataSource] = []
        self.context: JobContext | None = None
        self.output_prefix = (
            output_key_prefix(spec.output_location, spec.job_id, spec.run_id)
            if spec.output_location
            else None
        )
        self.output_writable = False
        self.processes_started = False
        self.crashes = 0
        self.master_failure: JobFailure | None = None
        self.master_settled = threading.Event()
        self.isolation_failure: JobFailure | None = None
        self.reporter = Reporter(
            url=spec.control_plane.url,
            job_id=spec.job_id,
            run_id=spec.run_id,
            token=spec.control_plane.token,
            on_action=self.events.put,
            simulation_time_millis=self.clock.simulation_millis,
            final_report_path=self.layout.final_report,
        )

    @property
    def store(self) -> ObjectStore:
        # Opened on first use so that a bad object store configuration fails the run with a report.
        if self._store is None:
            self._store = open_store(self.spec.object_store)
        return self._store

    # --- top level ------------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signal_handlers()  # first: a cancel while waiting for the turn is kept, not fatal
        self.turns.take()  # given back once Running (or at the end of a run that never gets there)
        self._create_namespaces()  # before the reporter's thread exists: see there
        self.reporter.start()
        self._set_phase("Preparing")
        log.info(
            "run %s of %s (restartCount %s)", self.spec.run_id, self.spec.job_id, self.spec.restart_count
        )
        result = self._execute()
        try:
            result = self._wind_down(result)
        except Exception as exc:
            log.exception("error while ending the run")
            if result.outcome != "Failed":
                result = RunResult("Failed", INTERNAL_SERVICE_ERROR, f"Error while ending the run: {exc}")
        log.info(
            "run finished: %s %s %s", result.outcome, result.failure_code or "", result.failure_reason or ""
        )
        self.turns.give()  # before waiting for the control plane's acknowledgement
        self._await_end()
        self.final_acknowledged = self.reporter.finish(
            result.outcome, result.failure_code, result.failure_reason
        )
        self.reporter.stop()
        return 0

    def _execute(self) -> RunResult:
        try:
            self._prepare()
            self._start_infrastructure()
            self._start_all_apps()
            self._enter_running()
            return self._supervise()
        except CancelRequested:
            return RunResult("Canceled")
        except JobFailure as failure:
            return RunResult("Failed", failure.code, failure.reason)
        except Exception as exc:
            log.exception("unexpected error")
            return RunResult(
                "Failed", INTERNAL_SERVICE_ERROR, f"Unexpected error in the simulation runner: {exc}"
            )

    def _wind_down(self, result: RunResult) -> RunResult:
        self.turns.take()
        if self.processes_started:
            self._set_phase("Terminating")
        self._stop_everything()
        return self._upload_outputs(result)

    # --- events ---------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.events.put("cancel"))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _next_event(self, timeout: float) -> str | None:
        """`cancel`, `restart` or None; the cancel file counts as a cancel."""
        if self.layout.cancel_file.exists():
            return "cancel"
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            return "cancel" if self.layout.cancel_file.exists() else None
        return event if event in ("cancel", "restart") else None

    def _check_cancel(self) -> None:
        """Between steps: honour a cancel; drop restarts (nothing runs yet, or a restart is under way)."""
        while True:
            event = self._next_event(0)
            if event == "cancel":
                raise CancelRequested()
            if event is None:
                return

    def _wait(self, seconds: float) -> None:
        """Sleep, but react to cancel (raise) and to the max duration (return early)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._duration_reached():
            if self._next_event(min(POLL_SECONDS, max(deadline - time.monotonic(), 0))) == "cancel":
                raise CancelRequested()

    def _set_phase(self, phase: str, code: str | None = None, reason: str | None = None) -> None:
        self.clock.enter(phase)
        self.phase = phase
        self.reporter.set_phase(phase, failure_code=code, failure_reason=reason)

    # --- preparing ------------------------------------------------------------------------------

    def _prepare(self) -> None:
        self.layout.create(ros=any(a.software_suite.name in ROS_SUITES for a in self.spec.applications))
        if not self.spec.applications:
            raise JobFailure(INTERNAL_SERVICE_ERROR, "The simulation job has no application to run.")
        if self.spec.output_location and self.output_prefix is not None:
            check_output_location(self.store, self.spec.output_location, self.output_prefix)
            self.output_writable = True
        self._check_cancel()
        if self.isolation_failure is not None:
            raise self.isolation_failure
        assert self.isolation is not None
        log.info("isolation: %s", self.isolation.mode)
        for app_spec in self.spec.applications:
            sink = LogSink(self.layout.app_log(app_spec.is_simulation))
            self.infra.sinks.append(sink)
            app = AppRuntime(spec=app_spec, sink=sink)
            self.apps.append(app)
            self._fetch_bundle(app)
            self._check_cancel()
        if self.spec.data_sources:
            self.data_sources = fetch_data_sources(
                self.store, self.spec.data_sources, self.layout.datasources, self.layout.scratch()
            )
        self._check_cancel()

    def _create_namespaces(self) -> None:
        """The namespace holder is forked from this process, so fork it while the runner has one thread:
        a child forked while another thread holds a libc lock (the reporter's getaddrinfo, say) can hang
        on that lock forever. A failure is raised where Preparing chooses the isolation. A runner waiting
        for its job made them before the job was known (runner/zygote.py): the same fresh namespaces, made
        off the job's path."""
        prepared = self.prepared_isolation
        self.prepared_isolation = None
        if prepared is None or prepared.requested != self.spec.isolation:
            if prepared is not None:
                prepared.discard()
            prepared = prepare_isolation(self.spec.isolation)
        self.isolation, self.isolation_failure = prepared.isolation, prepared.failure

    def _fetch_bundle(self, app: AppRuntime) -> None:
        app.generation += 1
        bundle_dir = self.layout.bundle_dir(app.slug, app.generation)
        app.sink.note(f"fetching bundle of {app_label(app.spec)} (version {app.spec.version})")
        bundle = fetch_application(
            self.store,
            app.spec,
            self.layout.bundle_download(app.slug),
            bundle_dir,
            self.cache_dir / "bundles",
        )
        if app.bundle_dir is not None:
            remove_tree(app.bundle_dir)
        app.bundle, app.bundle_dir = bundle, bundle_dir

    # --- infrastructure -------------------------------------------------------------------------

    def _start_infrastructure(self) -> None:
        assert self.isolation is not None
        try:
            messages = ensure_ros_messages(self.cache_dir)
        except (OSError, RuntimeError) as exc:
            raise JobFailure(
                INTERNAL_SERVICE_ERROR, f"Cannot build robomaker_simulation_msgs: {exc}"
            ) from exc
        self.isolation.start(self.layout.namespace)
        self.processes_started = True
        datasources_dir = self._mount_data_sources()
        api_url = self._bridge_api_endpoint()
        self.context = JobContext(
            master_port=self.isolation.master_port,
            api_endpoint_url=api_url,
            datasources_dir=datasources_dir,
            ros_package_path=[messages.package_root],
            python_path=[messages.python_path],
            run_marker=self.run_marker,
        )
        if not self._runs_ros1():
            # General / SimulationRuntime / ROS 2 applications: no ROS 1 master, services node or bag to
            # start, which is most of a short job's cost.
            return
        self._start_master()
        self.infra.service_node = self._spawn_infra(
            "robomaker_simulation_service",
            [ROS_PYTHON, SERVICE_NODE],
            service_node_environment(self.spec, self.layout, self.context),
        )
        if self.spec.record_all_ros_topics:
            self.infra.bag_recorder = self._spawn_infra(
                "rosbag_record",
                [
                    "/usr/bin/rosbag",
                    "record",
                    "--all",
                    "--output-prefix",
                    str(self.layout.ros_bags / "robomaker"),
                ],
                base_environment(self.layout, self.context),
            )

    def _runs_ros1(self) -> bool:
        return any(app.spec.software_suite.name == "ROS" for app in self.apps)

    def _mount_data_sources(self) -> str:
        assert self.isolation is not None
        if self.isolation.isolated and self.data_sources:
            mounts = [DataSourceMount(ds.host_dir, ds.mount_target) for ds in self.data_sources]
            if self.isolation.mount_data_sources(mounts):
                return MOUNT_ROOT
        return str(self.layout.datasources)

    def _bridge_api_endpoint(self) -> str:
        """The API URL as apps inside the job reach it; isolated jobs get a forwarder on their loopback: a
        thread of the runner accepting on a socket the namespace holder opened inside the job's netns."""
        assert self.isolation is not None
        url = self.spec.api_endpoint.url
        if not isinstance(self.isolation, NamespaceIsolation):
            return url
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        inner_port = port if port != self.isolation.master_port else port + 1
        try:
            listener = self.isolation.listen_inside(inner_port)
        except Exception as exc:  # OSError, or the holder's HolderError
            raise JobFailure(
                INTERNAL_SERVICE_ERROR, f"The API forwarder inside the job's network namespace failed: {exc}"
            ) from exc
        self.infra.api_forwarder = ListenerToTcpForwarder(listener, parts.hostname or "127.0.0.1", port)
        self.infra.api_forwarder.start()
        return urllib.parse.urlunsplit((parts.scheme, f"127.0.0.1:{inner_port}", parts.path, "", ""))

    def _spawn_infra(self, name: str, argv: list[str], env: dict[str, str]) -> JobProcess:
        assert self.isolation is not None
        sink = LogSink(self.layout.infra_log(name))
        self.infra.sinks.append(sink)
        cwd = self.layout.home
        return JobProcess(
            name,
            self.isolation.wrap(argv, cwd),
            env,
            sink,
            cwd,
            f"{self.run_marker}-{name}",
            leader_is_wrapper=self.isolation.isolated,
            scope=self.isolation.job_pids,
            die_with_runner=not self.isolation.isolated,
        )

    def _start_master(self) -> None:
        """`rosmaster --core` plus the rosout node: what roscore starts, without roslaunch's start-up cost.

        Nothing waits for the master here: rosout, the services node and rosbag (roscpp/rospy) wait for it
        themselves, and the launcher waits until the master has the run's /run_id (--wait-master). So the
        master's ~0.4 s start-up overlaps the launchers' own start-up instead of preceding it. A thread
        sets /run_id once the master answers; a master that does not come up fails the job."""
        assert self.isolation is not None and self.context is not None
        port = self.isolation.master_port
        env = base_environment(self.layout, self.context)
        self.infra.master = self._spawn_infra("rosmaster", [ROSMASTER, "--core", "-p", str(port)], env)
        self.infra.rosout = self._spawn_infra("rosout", [ROSOUT, "__name:=rosout"], env)
        threading.Thread(target=self._init_master, args=(port,), name="init-master", daemon=True).start()

    def _init_master(self, port: int) -> None:
        assert self.isolation is not None and self.infra.master is not None
        ros_run_id = str(uuid.uuid1())
        ok = self.isolation.init_ros_master(port, ros_run_id, MASTER_START_TIMEOUT)
        if not ok or self.infra.master.poll() is not None:
            self.master_failure = JobFailure(
                INTERNAL_SERVICE_ERROR,
                f"The ROS master did not start on port {port}: {_tail(self.layout.infra_log('rosmaster'))}",
            )
            self.events.put("infrastructure")
        else:
            log.info("ROS master ready on port %s (run_id %s)", port, ros_run_id)
        self.master_settled.set()

    def _await_master(self) -> None:
        """Block (cancellable) until the master is up: for `command` applications, which, unlike the
        launcher, do not wait for it themselves and may expect it from their first line."""
        while self.infra.master is not None and not self.master_settled.wait(POLL_SECONDS):
            self._check_cancel()
        if self.master_failure is not None:
            raise self.master_failure

    # --- applications ---------------------------------------------------------------------------

    def _launch_argv(self, app: AppRuntime) -> list[str]:
        config = app.spec.launch_config
        if config.command:
            return list(config.command)
        if not (config.package_name and config.launch_file):
            raise JobFailure(
                crash_code(app.spec),
                f"{app_label(app.spec)} has neither launchConfig.command nor packageName and launchFile.",
            )
        if app.spec.software_suite.name == "ROS2":
            return ["ros2", "launch", config.package_name, config.launch_file]
        assert app.status_file is not None
        return [
            ROS_PYTHON,
            LAUNCHER,
            "--status-file",
            str(app.status_file),
            "--wait-master",
            str(MASTER_START_TIMEOUT + 10),  # the runner's own check fails the job first
            config.package_name,
            config.launch_file,
        ]

    def _start_app(self, app: AppRuntime) -> None:
        assert self.isolation is not None and self.context is not None and app.bundle is not None
        if app.spec.launch_config.command:
            self._await_master()
        app.starts += 1
        app.exited_cleanly = False
        app.status_file = self.layout.status / f"{app.slug}-{app.starts}.json"
        argv = sourced_argv(app.bundle, self._launch_argv(app))
        env = application_environment(
            self.spec, app.spec, self.layout, self.context, app.bundle.ros_package_roots
        )
        app.sink.note(f"starting {app_label(app.spec)} (start #{app.starts})")
        cwd = self.layout.home
        app.process = JobProcess(
            f"{app.slug}-app",
            self.isolation.wrap(argv, cwd),
            env,
            app.sink,
            cwd,
            f"{self.run_marker}-{app.slug}",
            leader_is_wrapper=self.isolation.isolated,
            on_exit=lambda: self.events.put("exited"),
            scope=self.isolation.job_pids,
            die_with_runner=not self.isolation.isolated,
        )

    def _start_all_apps(self) -> None:
        # The simulation first, as RoboMaker did: robot code usually waits for the world's topics.
        for app in sorted(self.apps, key=lambda a: not a.spec.is_simulation):
            self._start_app(app)

    def _stop_apps(self) -> None:
        running = [app for app in self.apps if app.process is not None]
        _stop_in_parallel([(app.process, APP_SIGINT_TIMEOUT) for app in running])
        for app in running:
            app.sink.note(f"stopped {app_label(app.spec)}")

    def _enter_running(self) -> None:
        self.turns.give()
        self.reporter.set_started_at(time.time())
        self._set_phase("Running")

    # --- running --------------------------------------------------------------------------------

    def _duration_reached(self) -> bool:
        started = self.clock.first_running is not None
        return started and self.clock.elapsed_since_first_running() >= self.spec.max_job_duration_seconds

    def _supervise(self) -> RunResult:
        while True:
            event = self._next_event(POLL_SECONDS)
            if event == "cancel":
                raise CancelRequested()
            if self._duration_reached():
                return self._result_at_max_duration()
            if event == "restart":
                self._restart_applications()
                continue
            self._check_infrastructure()
            result = self._check_apps()
            if result is not None:
                return result

    def _result_at_max_duration(self) -> RunResult:
        log.info("maximum job duration of %ss reached", self.spec.max_job_duration_seconds)
        return RunResult("Completed")

    def _check_infrastructure(self) -> None:
        if self.master_failure is not None:
            raise self.master_failure
        master = self.infra.master
        if master is not None and master.poll() is not None:
            raise JobFailure(
                INTERNAL_SERVICE_ERROR,
                f"The ROS master exited with code {master.poll()}: {_tail(self.layout.infra_log('rosmaster'))}",
            )

    def _check_apps(self) -> RunResult | None:
        for app in self.apps:
            if app.process is None or app.exited_cleanly:
                continue
            code = app.process.poll()
            if code is None:
                continue
            app.process.stop()  # the launcher is gone; make sure nothing it started lingers
            if code == 0:
                app.exited_cleanly = True
                app.sink.note(f"{app_label(app.spec)} exited with code 0")
                if app.spec.is_simulation or all(a.exited_cleanly for a in self.apps):
                    return RunResult("Completed")
                continue
            failure_code, reason = crash_code(app.spec), self._crash_reason(app, code)
            app.sink.note(reason)
            if self.spec.failure_behavior == "Fail":
                return RunResult("Failed", failure_code, reason)
            self._continue_after_crash(failure_code, reason)
            return None
        return None

    def _crash_reason(self, app: AppRuntime, exit_code: int) -> str:
        label = app_label(app.spec)
        label = label[0].upper() + label[1:]
        detail = _launcher_reason(app.status_file)
        if detail:
            return f"{label} crashed: {detail}"
        if exit_code == 127:
            return f"{label} could not be started: command not found ({' '.join(self._launch_argv(app)[:3])})"
        if exit_code < 0:
            return f"{label} was killed by signal {-exit_code}"
        return f"{label} exited with code {exit_code}"

    def _continue_after_crash(self, failure_code: str, reason: str) -> None:
        """failureBehavior Continue: RunningFailed, restart every application in place, Running again."""
        self.crashes += 1
        self._set_phase("RunningFailed", failure_code, reason)
        self._stop_apps()
        self._wait(min(MAX_CRASH_BACKOFF, 2.0 ** (self.crashes - 1)))
        if self._duration_reached():
            return
        self._check_cancel()
        self._start_all_apps()
        self._enter_running()

    def _restart_applications(self) -> None:
        """RestartSimulationJob: stop the apps, download their bundles again, start them again."""
        log.info("restart requested by the control plane")
        self._set_phase("Restarting")
        self._stop_apps()
        for app in self.apps:
            self._check_cancel()
            self._fetch_bundle(app)
        self._check_cancel()  # also merges restart actions that arrived meanwhile into this restart
        self._start_all_apps()
        self._enter_running()

    # --- ending ---------------------------------------------------------------------------------

    def _stop_everything(self) -> None:
        try:
            self._stop_apps()
            # rosbag gets SIGINT and time to close its bag. Nothing else of the infrastructure has anything
            # to flush: the services node, rosout and the master end with the namespace, at once.
            _stop_in_parallel([(self.infra.bag_recorder, BAG_SIGINT_TIMEOUT)])
        finally:
            self._release_host_resources()

    def _release_host_resources(self) -> None:
        infra = self.infra
        if infra.api_forwarder is not None:
            infra.api_forwarder.close()
        scope = self._leftover_scope()
        leaders = (infra.service_node, infra.rosout, infra.master)
        if self.isolation is not None:
            try:
                # pid 1 of the job is killed: the kernel kills what is left in it. Pid 1's exit waits for
                # every process of its namespace to be reaped, and an infrastructure process is reaped by
                # its nsenter leader, which kill_now below would kill first (leaving the zombie to the
                # host's init, seconds on some hosts): with such leaders pid 1's death is waited for here.
                # Otherwise only once the turn is given back (_await_end), still before the final report.
                self.isolation.stop(wait=any(process is not None for process in leaders))
            except Exception:
                log.exception("stopping the namespace holder failed")
        for process in leaders:
            if process is not None:
                process.kill_now()  # without isolation these are still running; isolated, just reaped
        kill_marked_processes(RUN_MARKER_VAR, self.run_marker, scope=scope)
        for sink in infra.sinks:
            sink.close()

    def _await_end(self) -> None:
        """The job has ended once nothing of it runs: pid 1's death, before the final report says so."""
        if self.isolation is not None:
            try:
                self.isolation.wait_stopped()
            except Exception:
                log.exception("waiting for the job's namespaces to end failed")

    def _leftover_scope(self) -> Callable[[], list[int] | None] | None:
        """Where the run's processes can still be once its namespace is gone: in that namespace (empty, as
        the kernel kills it with its pid 1) or among the leaders the runner started. Read before the holder
        is stopped. Without isolation: anywhere."""
        if not isinstance(self.isolation, NamespaceIsolation) or self.isolation.pid_namespace is None:
            return None
        leaders = [p.pid for p in (self.infra.master, self.infra.rosout, self.infra.service_node) if p]
        leaders += [p.pid for p in (self.infra.bag_recorder,) if p]
        leaders += [app.process.pid for app in self.apps if app.process is not None]
        isolation = self.isolation

        def scope() -> list[int] | None:
            pids = isolation.job_pids()
            return None if pids is None else leaders + pids

        return scope

    def _upload_outputs(self, result: RunResult) -> RunResult:
        location = self.spec.output_location
        if location is None or self.output_prefix is None or not self.output_writable:
            return result
        try:
            upload_outputs(self.store, location, self.output_prefix, self.layout.output)
        except JobFailure as failure:
            log.error("%s", failure)
            if result.outcome == "Failed":
                return result
            if result.outcome == "Canceled":
                return RunResult("Canceled", failure.code, failure.reason)
            return RunResult("Failed", failure.code, failure.reason)
        return result


def _stop_quietly(process: JobProcess, sigint_timeout: float) -> None:
    try:
        process.stop(sigint_timeout)
    except Exception:  # one process failing to stop must not keep the others running
        log.exception("stopping %s failed", process.name)


def _stop_in_parallel(processes: list[tuple[JobProcess | None, float]]) -> None:
    threads = [
        threading.Thread(target=_stop_quietly, args=(process, sigint_timeout), name=f"stop-{process.name}")
        for process, sigint_timeout in processes
        if process is not None
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _launcher_reason(status_file: Path | None) -> str | None:
    if status_file is None or not status_file.is_file():
        return None
    try:
        status = json.loads(status_file.read_text())
    except (OSError, ValueError):
        return None
    return status.get("reason") if status.get("result") in ("crash", "launch-error") else None


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(no output)"
    except OSError:
        return "(no log)"
