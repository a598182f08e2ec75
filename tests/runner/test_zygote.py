"""The local executor's runner zygote: runners forked from a pre-imported parent behave like the
`python -m openrobomaker.runner` processes they replace (detached, findable, killable), and a dead zygote
is replaced."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from test_runner_jobs import SLEEPER, command_app

from openrobomaker.executors.local import LocalExecutor, _parse

STARTED: list[str] = []  # handles of the runners a test started, killed at teardown if a test failed early


@pytest.fixture()
def executor():
    executor = LocalExecutor()
    yield executor
    executor.close()
    _kill_started(executor)


def _kill_started(executor: LocalExecutor) -> None:
    """A runner whose test failed keeps retrying its final report to the test's control plane, gone by now:
    runners outlive their server by design, so the test must end them."""
    while STARTED:
        handle = STARTED.pop()
        if executor.is_alive(handle):
            executor.kill(handle)


def _start(jobs, executor: LocalExecutor, spec: dict) -> tuple[str, Path]:
    jobs.plane.register(spec["jobId"], spec["jobArn"], spec["controlPlane"]["token"])
    spec_path = Path(spec["workDir"]) / "spec.json"
    spec_path.write_text(json.dumps(spec))
    handle = executor.start(spec["jobId"], spec["runId"], str(spec_path), spec["workDir"])
    STARTED.append(handle)
    return handle, spec_path


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie is a child nobody has reaped yet: it has finished)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid), f"process {pid} still running"


def test_forked_runner_is_a_detached_runner(jobs, executor):
    spec = jobs.spec([command_app(jobs, "simulation", SLEEPER)], outputLocation=None)
    handle, spec_path = _start(jobs, executor, spec)
    pid = _parse(handle).pid
    zygote = executor.zygote_pid()
    assert zygote is not None, "the runner was not forked from the zygote"
    jobs.plane.wait_phase(spec["jobId"], "Running", 60)
    # Its own session (the zygote's child only until the zygote goes: it outlives the zygote and the
    # server), and it reads as the runner it is.
    assert os.getsid(pid) == pid
    assert _ppid(pid) == zygote
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:5] == [b"-m", b"openrobomaker.runner", b"--spec", str(spec_path).encode()]
    assert executor.find_orphan(str(spec_path)) == handle
    assert executor.is_alive(handle)

    executor.close()  # the server stops: the zygote goes, the runner stays
    assert executor.zygote_pid() is None
    time.sleep(0.3)
    assert executor.is_alive(handle)
    assert _ppid(pid) != zygote

    os.kill(pid, signal.SIGTERM)  # cancel: the runner reports Canceled and exits
    final = jobs.plane.wait_phase(spec["jobId"], "Finished", 60)
    assert final["outcome"] == "Canceled"
    _wait_gone(pid)
    assert not executor.is_alive(handle)
    assert jobs.cleanup() == []
    assert "openrobomaker runner" not in (Path(spec["workDir"]) / "runner.out").read_text()


def _wait_reaped(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), f"process {pid} left a zombie"


def _runner_pids() -> list[int]:
    """Runner processes (idle or not) on this host, by their task names."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _running(int(entry.name)):
            try:
                if (entry / "comm").read_text().strip() in ("orm-runner", "orm-idle"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _wait_idle(pid: int, runs: int, timeout: float = 30.0) -> None:
    """Until the runner is idle after `runs` jobs and has told the zygote so (its task name turns
    `orm-idle` then): the next job of its kind goes to it, not to the runner forked ahead."""
    deadline = time.monotonic() + timeout
    wanted = b"--idle\0" + str(runs).encode()
    while not (wanted in _cmdline(pid) and _comm(pid) == "orm-idle") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert wanted in _cmdline(pid) and _comm(pid) == "orm-idle", (_cmdline(pid), _comm(pid))


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_runner_is_reused_for_the_next_job_and_old_handles_cannot_touch_it(jobs, executor):
    first_spec = jobs.spec([command_app(jobs, "simulation", ["/bin/true"])], outputLocation=None)
    first, _ = _start(jobs, executor, first_spec)
    assert jobs.plane.wait_phase(first_spec["jobId"], "Finished", 60)["outcome"] == "Completed"
    pid = _parse(first).pid
    _wait_idle(pid, 1)  # its job over, the runner waits for the next one instead of exiting
    assert not executor.is_alive(first)
    first_log = (Path(first_spec["workDir"]) / "runner.log").read_text()

    second_spec = jobs.spec([command_app(jobs, "simulation", SLEEPER, key="s.tar.gz")], outputLocation=None)
    second, second_path = _start(jobs, executor, second_spec)
    assert _parse(second).pid == pid and _parse(second).run == 2 and second.endswith(":2")
    jobs.plane.wait_phase(second_spec["jobId"], "Running", 60)
    assert executor.is_alive(second) and not executor.is_alive(first)
    cmdline = _cmdline(pid).split(b"\0")
    assert cmdline[1:7] == [
        b"-m",
        b"openrobomaker.runner",
        b"--spec",
        str(second_path).encode(),
        b"--run",
        b"2",
    ]
    assert executor.find_orphan(str(second_path)) == second

    # The first job's handle is stale: signals sent through it never reach the second job.
    executor.terminate(first)
    executor.kill(first)
    time.sleep(0.5)
    assert executor.is_alive(second)
    assert jobs.plane.phases(second_spec["jobId"])[-1] == "Running"
    # Each job keeps its own log: nothing of the second run went to the first one's.
    assert (Path(first_spec["workDir"]) / "runner.log").read_text() == first_log
    assert second_spec["jobId"] in (Path(second_spec["workDir"]) / "runner.log").read_text()

    executor.terminate(second)  # cancel through the live handle
    assert jobs.plane.wait_phase(second_spec["jobId"], "Finished", 60)["outcome"] == "Canceled"
    assert jobs.cleanup() == []


def test_idle_runners_go_with_the_zygote_which_is_replaced(jobs, executor):
    spec = jobs.spec([command_app(jobs, "simulation", ["/bin/true"])], outputLocation=None)
    handle, _ = _start(jobs, executor, spec)
    first = executor.zygote_pid()
    assert first is not None
    assert jobs.plane.wait_phase(spec["jobId"], "Finished", 60)["outcome"] == "Completed"
    _wait_idle(_parse(handle).pid, 1)
    idle = [pid for pid in _runner_pids() if _ppid(pid) == first]
    assert _parse(handle).pid in idle  # the job's runner, and one forked ahead for the next job

    os.kill(first, signal.SIGKILL)
    _wait_gone(first)
    for pid in idle:
        _wait_reaped(pid)  # idle runners (and their namespaces' pid 1) die with their zygote
    spec = jobs.spec(
        [command_app(jobs, "simulation", ["/bin/true"], key="again.tar.gz")], outputLocation=None
    )
    handle, _ = _start(jobs, executor, spec)
    second = executor.zygote_pid()
    assert second is not None and second != first
    assert jobs.plane.wait_phase(spec["jobId"], "Finished", 60)["outcome"] == "Completed"


def test_idle_runner_leaves_after_its_idle_time(jobs, monkeypatch):
    monkeypatch.setenv("OPENROBOMAKER_RUNNER_IDLE_SECONDS", "1")
    executor = LocalExecutor()
    try:
        spec = jobs.spec([command_app(jobs, "simulation", ["/bin/true"])], outputLocation=None)
        handle, _ = _start(jobs, executor, spec)
        zygote = executor.zygote_pid()
        assert jobs.plane.wait_phase(spec["jobId"], "Finished", 60)["outcome"] == "Completed"
        _wait_gone(_parse(handle).pid, timeout=15)
        deadline = time.monotonic() + 15
        while [p for p in _runner_pids() if _ppid(p) == zygote] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in _runner_pids() if _ppid(p) == zygote] == []
        # The zygote noticed: the next job gets a runner all the same.
        spec = jobs.spec(
            [command_app(jobs, "simulation", ["/bin/true"], key="n.tar.gz")], outputLocation=None
        )
        _start(jobs, executor, spec)
        assert jobs.plane.wait_phase(spec["jobId"], "Finished", 60)["outcome"] == "Completed"
    finally:
        executor.close()
        _kill_started(executor)


def test_handles_name_the_run_of_a_reused_runner():
    from openrobomaker.executors.local import Handle, _handle_run_is_current

    assert str(_parse("local:12:345")) == "local:12:345" and _parse("local:12:345").run == 1
    assert _parse("local:12:345:3") == Handle(12, "345", 3)
    python = b"/usr/bin/python3\0-m\0"
    running_second = python + b"openrobomaker.runner\0--spec\0/r/spec.json\0--run\x002\0"
    assert _handle_run_is_current(running_second, 2)
    assert not _handle_run_is_current(running_second, 1)  # the first job's handle is over
    idle_after_two = python + b"openrobomaker.runner\0--idle\x002\0"
    assert _handle_run_is_current(idle_after_two, 3)  # handed over, not taken yet
    assert not _handle_run_is_current(idle_after_two, 2)
    first = python + b"openrobomaker.runner\0--spec\0/r/spec.json\0"
    assert _handle_run_is_current(first, 1) and not _handle_run_is_current(first, 2)
    just_forked = python + b"openrobomaker.runner.zygote\0    \0"
    assert _handle_run_is_current(just_forked, 1) and not _handle_run_is_current(just_forked, 2)
    assert not _handle_run_is_current(b"/bin/sleep\x0010\0", 1)


def test_runner_without_zygote_still_works(jobs):
    executor = LocalExecutor(use_zygote=False)
    spec = jobs.spec([command_app(jobs, "simulation", ["/bin/true"])], outputLocation=None)
    handle, _ = _start(jobs, executor, spec)
    assert executor.zygote_pid() is None
    assert jobs.plane.wait_phase(spec["jobId"], "Finished", 60)["outcome"] == "Completed"
    _wait_gone(_parse(handle).pid)


def _job_pid_1(work_dir: str, timeout: float = 30.0) -> int:
    """Pid 1 of a running job, read from its runner.log (`namespaces ready (...): holder pid N`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = Path(work_dir, "runner.log")
        for line in log.read_text().splitlines() if log.exists() else []:
            if "namespaces ready" in line and "holder pid" in line:
                return int(line.rsplit(" ", 1)[1])
        time.sleep(0.05)
    raise AssertionError("no namespaces in runner.log")


@pytest.mark.skipif(os.geteuid() != 0, reason="the namespace factory serves root's netns isolation")
def test_pid_1_comes_from_the_small_factory_and_outlives_it(jobs, executor):
    """As root, a job's pid 1 is forked by the zygote's namespace factory (a small process), not by the
    runner; it lives on when the factory goes (with the server), and the job still ends cleanly."""
    spec = jobs.spec([command_app(jobs, "simulation", SLEEPER)], outputLocation=None)
    handle, _ = _start(jobs, executor, spec)
    jobs.plane.wait_phase(spec["jobId"], "Running", 60)
    pid_1 = _job_pid_1(spec["workDir"])
    factory = _ppid(pid_1)
    assert _comm(factory) == "orm-nsfactory"
    assert _ppid(factory) == executor.zygote_pid()

    executor.close()  # the server stops: the zygote goes, and the factory with it
    _wait_gone(factory)
    time.sleep(0.3)
    assert _running(pid_1) and executor.is_alive(handle)

    os.kill(_parse(handle).pid, signal.SIGTERM)  # cancel: pid 1 and the job end with the run
    assert jobs.plane.wait_phase(spec["jobId"], "Finished", 60)["outcome"] == "Canceled"
    _wait_gone(pid_1)
    assert jobs.cleanup() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_namespace_factory_serves_only_its_own_user(executor, jobs):
    spec = jobs.spec([command_app(jobs, "simulation", SLEEPER)], outputLocation=None)
    handle, _ = _start(jobs, executor, spec)  # starts the zygote, and with it the factory
    jobs.plane.wait_phase(spec["jobId"], "Running", 60)
    os.kill(_parse(handle).pid, signal.SIGTERM)
    prefix = (
        f"@openrobomaker-nsfactory-{executor.zygote_pid()}-"  # its abstract name, as /proc/net/unix shows it
    )
    name = next(
        line.split()[-1][1:]
        for line in Path("/proc/net/unix").read_text().splitlines()
        if line.split()[-1].startswith(prefix)
    )
    child = os.fork()
    if child == 0:  # as nobody: the factory hangs up without an answer
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            import socket

            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
                sock.connect("\0" + name)
                sock.settimeout(5)
                sock.send(b"pid1")
                code = 0 if sock.recv(1024) == b"" else 2
        except OSError:
            code = 0  # refused outright is as good
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    jobs.plane.wait_phase(spec["jobId"], "Finished", 60)
