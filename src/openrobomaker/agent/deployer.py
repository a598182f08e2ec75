"""One robot deployment, step by step as RoboMaker's deployment function did it (spec §4.5):

    Validating -> DownloadingExtracting -> ExecutingDownloadCondition -> ExecutingPreLaunch -> Launching
    -> ExecutingPostLaunch -> Finished

Until Launching the previous application keeps running untouched; if launching or the post-launch script
fails, the new application is stopped and the previous one launched again.
"""

from __future__ import annotations

import functools
import hashlib
import platform as host_platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from openrobomaker.agent import fetch
from openrobomaker.agent.client import AgentClient, ChannelError, DirectDownloadFailed
from openrobomaker.agent.state import WorkDir
from openrobomaker.agent.supervisor import App, Supervisor, bundle_record, clean_environment
from openrobomaker.bundles import BundleError, ExtractedBundle, extract_bundle, remove_tree, sourced_argv

MACHINE_ARCHITECTURES = {
    "x86_64": "X86_64",
    "amd64": "X86_64",
    "aarch64": "ARM64",
    "arm64": "ARM64",
    "armv7l": "ARMHF",
    "armv6l": "ARMHF",
}
PROGRESS_EVERY_SECONDS = 1.0
LAUNCH_SETTLE_SECONDS = 2.0
LAUNCH_MASTER_TIMEOUT = 30.0
SCRIPT_TIMEOUT_SECONDS = 600
DOWNLOAD_RETRIES = 20
# bytes read at a time when a digest is rebuilt from the file
HASH_READ_BYTES = 1024 * 1024
MISSING_RESOURCE_MARKERS = (
    "Resource not found",
    "is neither a launch file",
    "not found in package",
    "[Errno 2]",
)


def verification_digest(source: dict[str, Any]) -> str:
    """How to check that the bytes received are the pinned object's: with the SHA-256 the server recorded
    beside the ETag (the local store does), or with the MD5 a single-part upload's ETag is. Both when the
    server gave both: whichever this CPU hashes faster (SHA-256 with SHA extensions, as on most x86-64 and
    ARMv8 cores with crypto extensions, ~2.3x faster than MD5; without them ~2x slower). A multipart
    ETag ("…-N") is no hash of the bytes: SHA-256 if there is one, else the ETag is checked by value only."""
    if not source.get("sha256"):
        return "md5"
    if "-" in source["etag"]:
        return "sha256"
    return faster_digest()


@functools.cache
def faster_digest() -> str:
    """Measured once, in this thread's CPU time (a busy robot's wall clock would make it a coin toss)."""
    sample = bytes(4 * 1024 * 1024)
    seconds = {}
    for name in ("sha256", "md5", "sha256", "md5"):
        started = time.thread_time()
        hashlib.new(name, sample, usedforsecurity=False).digest()
        seconds[name] = min(seconds.get(name, float("inf")), time.thread_time() - started)
    return min(seconds, key=seconds.__getitem__)


class _Hashed:
    """The digest (MD5 or SHA-256) of a download's file, kept across resumed attempts (agent/fetch.py's
    `digest`): every byte is hashed once, as it is received. When the body resumes anywhere but where the
    hashed bytes end (a write failed half way, or the server sent more than asked), the digest is rebuilt
    from the file."""

    def __init__(self, dest: Path, algorithm: str = "md5"):
        self.dest, self.algorithm = dest, algorithm
        self.count = 0
        self.digest = self._fresh()

    def _fresh(self) -> Any:
        return hashlib.new(self.algorithm, usedforsecurity=False)

    def __call__(self, offset: int) -> _Hashed:
        if offset != self.count:
            self.digest, self.count = self._fresh(), 0
            if offset:
                with open(self.dest, "rb") as handle:
                    while self.count < offset and (
                        block := handle.read(min(HASH_READ_BYTES, offset - self.count))
                    ):
                        self.update(block)
        return self

    def update(self, data) -> None:
        self.digest.update(data)
        self.count += len(data)

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


class StepFailed(Exception):
    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code, self.reason = code, reason


class Abandoned(Exception):
    """The server no longer wants this deployment (canceled, superseded, timed out)."""


def machine_architecture() -> str | None:
    return MACHINE_ARCHITECTURES.get(host_platform.machine().lower())


class Deployer:
    def __init__(self, work: WorkDir, client: AgentClient, supervisor: Supervisor, report, abandoned):
        self.work = work
        self.client = client
        self.supervisor = supervisor
        self._report = report  # (job_id, step, **fields) -> None; queued, delivered in order
        self._abandoned = abandoned  # (job_id) -> bool
        faster_digest()  # measured when the agent starts (~10 ms of CPU), not in its first deployment

    # --- the whole deployment --------------------------------------------------------------------------

    def run(self, deployment: dict[str, Any]) -> None:
        job_id = deployment["jobId"]
        directory = self.work.deployment_dir(job_id)
        previous = self.supervisor.app
        launched = False
        step = "Validating"
        try:
            self._step(job_id, step)
            self._validate(deployment)
            step = "DownloadingExtracting"
            self._step(job_id, step, percentDone=0.0)
            bundle = self._download_and_extract(deployment, directory)
            step = "ExecutingDownloadCondition"
            self._step(job_id, step)
            self._download_condition(deployment, directory)
            step = "ExecutingPreLaunch"
            self._step(job_id, step)
            app = self._app_for(deployment, directory, bundle)
            self._run_script(deployment, bundle, app, "preLaunchFile", "PreLaunchFileFailure")
            step = "Launching"
            self._step(job_id, step)
            launched = True
            self._launch(app)
            step = "ExecutingPostLaunch"
            self._step(job_id, step)
            self._run_script(deployment, bundle, app, "postLaunchFile", "PostLaunchFileFailure")
        except Abandoned:
            self.work.journal(job=job_id, event="abandoned", step=step)
            self._restore(previous, launched)
            self.work.mark_handled(job_id)
            return
        except StepFailed as failure:
            self._restore(previous, launched)
            self._finish(job_id, step, "Failed", failure.code, failure.reason)
            return
        except Exception as exc:  # a bug or an unexpected OS error must still end the deployment
            self._restore(previous, launched)
            self._finish(job_id, step, "Failed", "InternalServerError", f"agent error: {exc!r}")
            return
        self.work.state["current"] = {"jobId": job_id, "app": app.to_dict()}
        self._finish(job_id, "Finished", "Succeeded", None, None)
        self._clean_old_deployments(keep={job_id})

    def _step(self, job_id: str, step: str, **fields: Any) -> None:
        if self._abandoned(job_id):
            raise Abandoned(job_id)
        self._report(job_id, step, **fields)

    def _finish(self, job_id: str, step: str, outcome: str, code: str | None, reason: str | None) -> None:
        self.work.mark_handled(job_id)
        self._report(job_id, step, outcome=outcome, failureCode=code, failureReason=reason)

    def _restore(self, previous: App | None, launched: bool) -> None:
        if launched:
            self.supervisor.launch(previous)

    def _clean_old_deployments(self, keep: set[str]) -> None:
        for directory in self.work.deployments.iterdir():
            if directory.name not in keep:
                remove_tree(directory)

    # --- steps -----------------------------------------------------------------------------------------

    def _validate(self, deployment: dict[str, Any]) -> None:
        machine = machine_architecture()
        if machine != deployment["architecture"]:
            raise StepFailed(
                "MissingRobotArchitecture",
                f"the robot is registered as {deployment['architecture']} but this machine is "
                f"{host_platform.machine()}",
            )
        if not deployment.get("source"):
            raise StepFailed(
                "MissingRobotApplicationArchitecture",
                f"the application has no {deployment['architecture']} bundle",
            )
        launch = deployment["launchConfig"]
        if not launch.get("packageName") or not launch.get("launchFile"):
            raise StepFailed(
                "MissingRobotDeploymentResource", "launchConfig needs packageName and launchFile"
            )

    def _download(
        self,
        path: str,
        job_id: str,
        dest: Path,
        progress: bool,
        offered: str | None = None,
        algorithm: str = "md5",
    ) -> tuple[str, str]:
        """Fetch from the URL the server offered in the poll answer (`offered`) or redirects to (S3
        presigned, or its sendfile listener for the local store), else (or when that URL fails) through
        the server; resume after network failures. The bytes are hashed as they arrive, once in all.
        Returns (ETag header, hex digest with `algorithm`)."""
        attempts = 0
        direct = True
        hashed = _Hashed(dest, algorithm)
        while True:
            start = dest.stat().st_size if dest.exists() else 0
            try:
                etag = self._download_once(path, job_id, dest, start, progress, direct, hashed, offered)
                return etag, hashed.hexdigest()
            except DirectDownloadFailed as exc:
                self.work.journal(job=job_id, event="direct-download-failed", reason=str(exc))
                if offered is None:
                    direct = False  # the rest of this file comes through the server
                offered = None  # the channel is asked from now on (a fresh redirect first)
            except ChannelError as exc:
                code = "ResourceNotFound" if exc.status == 404 else "InternalServerError"
                raise StepFailed(code, f"download failed: {exc.message}") from exc
            except (httpx.HTTPError, OSError) as exc:
                offered = None  # it may have expired by the next attempt: ask the channel
                attempts += 1
                if attempts > DOWNLOAD_RETRIES:
                    raise StepFailed("InternalServerError", f"download kept failing: {exc!r}") from exc
                if self._abandoned(job_id):
                    raise Abandoned(job_id) from exc
                time.sleep(min(10.0, 0.5 * attempts))

    def _download_once(
        self,
        path: str,
        job_id: str,
        dest: Path,
        start: int,
        progress: bool,
        direct: bool,
        hashed: _Hashed,
        offered: str | None,
    ) -> str:
        """One attempt from `start`; returns the answer's ETag."""
        began, last = time.monotonic(), 0.0

        def report_progress(received: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < PROGRESS_EVERY_SECONDS or not total:
                return
            last = now
            rate = (received - start) / max(now - began, 1e-6)
            self._step(
                job_id,
                "DownloadingExtracting",
                percentDone=round(100.0 * received / total, 1),
                estimatedTimeRemainingSeconds=int((total - received) / rate) if rate else None,
            )

        answer = self.client.download(
            path, job_id, dest, start, direct, offered, report_progress if progress else None, hashed
        )
        # where the bytes came from: the server, or S3 by presigned URL
        source = fetch.without_query(answer.url)
        self.work.journal(job=job_id, event="download", path=path, start=start, source=source)
        return answer.headers.get("etag", "").strip('"')

    def _download_and_extract(self, deployment: dict[str, Any], directory: Path) -> ExtractedBundle:
        job_id = deployment["jobId"]
        archive = directory / "bundle"
        self._fetch_bundle(deployment, archive)
        self._step(job_id, "DownloadingExtracting", percentDone=100.0, estimatedTimeRemainingSeconds=0)
        target = directory / "app"
        remove_tree(target)
        try:
            bundle = extract_bundle(archive, target, cache_dir=self.work.root / "overlay-cache")
        except BundleError as exc:
            raise StepFailed("ExtractingBundleFailure", str(exc)) from exc
        archive.unlink(missing_ok=True)
        return bundle

    def _fetch_bundle(self, deployment: dict[str, Any], archive: Path) -> None:
        """The deployment's bundle into `archive`, verified; StepFailed("EtagMismatch") if it is not the
        object the application version pinned."""
        job_id = deployment["jobId"]
        archive.unlink(missing_ok=True)
        offered = deployment.get("bundleUrl")
        source = deployment["source"]
        # The object must be the one the version pinned (its ETag) and the bytes must be its bytes.
        algorithm = verification_digest(source)
        etag, digest = self._download(
            "/_agent/v1/bundle", job_id, archive, progress=True, offered=offered, algorithm=algorithm
        )
        expected = source["etag"]
        where = f"s3://{source['s3Bucket']}/{source['s3Key']}"
        if etag != expected:
            raise StepFailed(
                "EtagMismatch",
                f"{where} has ETag {etag or '(none)'}, the application version recorded {expected}",
            )
        wanted = source["sha256"] if algorithm == "sha256" else expected
        if (algorithm == "sha256" or "-" not in expected) and digest != wanted:
            name = "SHA-256" if algorithm == "sha256" else "MD5"
            raise StepFailed(
                "EtagMismatch",
                f"the bytes received from {where} ({name} {digest}) are not those of ETag {expected} "
                f"({name} {wanted})",
            )

    def _download_condition(self, deployment: dict[str, Any], directory: Path) -> None:
        condition = deployment.get("downloadConditionFile")
        if not condition:
            return
        script = directory / "condition" / Path(condition["key"]).name
        script.parent.mkdir(parents=True, exist_ok=True)
        script.unlink(missing_ok=True)
        try:
            etag, _ = self._download("/_agent/v1/condition-file", deployment["jobId"], script, progress=False)
        except StepFailed as exc:
            raise StepFailed("DownloadConditionFailed", exc.reason) from exc
        if condition.get("etag") and etag != condition["etag"].strip('"'):
            raise StepFailed(
                "DownloadConditionFailed",
                f"s3://{condition['bucket']}/{condition['key']} has ETag {etag}, the deployment requires "
                f"{condition['etag']}",
            )
        env = clean_environment(self.work.ros, deployment["jobId"], ExtractedBundle("plain", []), {})
        code, tail = self._run(["/bin/bash", str(script)], env, directory, directory / "condition.log")
        if code != 0:
            raise StepFailed(
                "DownloadConditionFailed", f"the download condition script exited {code}: {tail}"
            )

    def _app_for(self, deployment: dict[str, Any], directory: Path, bundle: ExtractedBundle) -> App:
        launch = deployment["launchConfig"]
        extra = {**deployment.get("robotTagEnvironment", {}), **(launch.get("environmentVariables") or {})}
        env = clean_environment(self.work.ros, deployment["jobId"], bundle, extra)
        return App(
            job_id=deployment["jobId"],
            bundle=bundle_record(bundle),
            package=launch["packageName"],
            launch_file=launch["launchFile"],
            suite=deployment["softwareSuite"]["name"],
            env=env,
            log_path=str(directory / "app.log"),
            cwd=str(directory),
        )

    def _script_path(self, bundle: ExtractedBundle, package: str, name: str) -> Path | None:
        # Scripts were installed into the package's share directory (spec §4.5); also accept a path from
        # the package root or the bundle root. Never outside the extracted bundle.
        roots = [*bundle.ros_package_roots, *bundle.prefixes]
        candidates = []
        for root in roots:
            candidates += [root / package / name, root / "share" / package / name, root / name]
            candidates += list(root.glob(f"*/share/{package}/{name}")) + list(
                root.glob(f"*/{package}/{name}")
            )
        for candidate in candidates:
            resolved = candidate.resolve()
            if resolved.is_file() and any(resolved.is_relative_to(r.resolve()) for r in roots):
                return resolved
        return None

    def _run_script(
        self, deployment: dict, bundle: ExtractedBundle, app: App, member: str, code: str
    ) -> None:
        name = deployment["launchConfig"].get(member)
        if not name:
            return
        script = self._script_path(bundle, app.package, name)
        if script is None:
            raise StepFailed(code, f"{member} {name!r} not found in package {app.package}")
        env = dict(app.env)
        if member == "postLaunchFile" and self.supervisor.master_port:
            env["ROS_MASTER_URI"] = f"http://127.0.0.1:{self.supervisor.master_port}"
        argv = sourced_argv(bundle, ["/bin/bash", str(script)])
        result, tail = self._run(argv, env, Path(app.cwd), Path(app.cwd) / f"{member}.log")
        if result != 0:
            raise StepFailed(code, f"{name} exited {result}: {tail}")

    @staticmethod
    def _run(argv: list[str], env: dict, cwd: Path, log_path: Path) -> tuple[int, str]:
        with open(log_path, "wb") as log_file:
            try:
                result = subprocess.run(
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    timeout=SCRIPT_TIMEOUT_SECONDS,
                    start_new_session=True,
                )
                code = result.returncode
            except subprocess.TimeoutExpired:
                code = -1
        tail = log_path.read_text(errors="replace")[-300:].strip()
        return code, tail

    def _launch(self, app: App) -> None:
        Path(app.log_path).write_bytes(b"")
        process = self.supervisor.launch(app)
        port = self.supervisor.master_port
        deadline = time.monotonic() + LAUNCH_MASTER_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            with socket.socket() as sock:
                sock.settimeout(0.5)
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        time.sleep(LAUNCH_SETTLE_SECONDS)
        if process.poll() is None:
            return
        output = Path(app.log_path).read_text(errors="replace")
        code = (
            "MissingRobotDeploymentResource"
            if any(marker in output for marker in MISSING_RESOURCE_MARKERS)
            else "EnvironmentSetupError"
        )
        raise StepFailed(code, f"roslaunch {app.package} {app.launch_file} exited: {output[-300:].strip()}")
