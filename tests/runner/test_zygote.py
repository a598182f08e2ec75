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
    pid, _ = _parse(handle)
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


def test_killed_zygote_is_replaced(jobs, executor):
    spec = jobs.spec([command_app(jobs, "simulation", ["/bin/true"])], outputLocation=None)
    handle, _ = _start(jobs, executor, spec)
    first = executor.zygote_pid()
    assert first is not None
    assert jobs.plane.wait_phase(spec["jobId"], "Finished", 60)["outcome"] == "Completed"
    _wait_reaped(_parse(handle)[0])  # a runner that ends before its zygote is reaped at once

    os.kill(first, signal.SIGKILL)
    _wait_gone(first)
    spec = jobs.spec(
        [command_app(jobs, "simulation", ["/bin/true"], key="again.tar.gz")], outputLocation=None
    )
    handle, _ = _start(jobs, executor, spec)
    second = executor.zygote_pid()
    assert second is not None and second != first
    assert jobs.plane.wait_phase(spec["jobId"], "Finished", 60)["outcome"] == "Completed"
    _wait_gone(_parse(handle)[0])


def test_runner_without_zygote_still_works(jobs):
    executor = LocalExecutor(use_zygote=False)
    spec = jobs.spec([command_app(jobs, "simulation", ["/bin/true"])], outputLocation=None)
    handle, _ = _start(jobs, executor, spec)
    assert executor.zygote_pid() is None
    assert jobs.plane.wait_phase(spec["jobId"], "Finished", 60)["outcome"] == "Completed"
    _wait_gone(_parse(handle)[0])
