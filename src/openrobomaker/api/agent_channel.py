"""HTTP endpoints for robot agents (what Greengrass was to RoboMaker robots), beside the RoboMaker API.

Every request is SigV4-signed (service `robomaker`) like an API call. The agent signs with its robot's
minted credentials, whose principal `robot:<arn>` must be the robot named in the request: one robot can
neither read another's deployment nor report for it.

- `POST /_agent/v1/credentials` {robot}: mint robot credentials; signed with the account's own keys
  (`openrobomaker robot-credentials`).
- `POST /_agent/v1/poll` {robot, current, wait}: long poll; answers at once when the robot should deploy
  something other than `current` (a job id), else after `wait` seconds (at most 30) with what it has.
- `POST /_agent/v1/report` {robot, jobId, seq, step, percentDone, estimatedTimeRemainingSeconds,
  outcome, failureCode, failureReason}: one step report; replays are acknowledged and ignored.
- `GET /_agent/v1/bundle?robot=&jobId=` and `GET /_agent/v1/condition-file?robot=&jobId=`: the robot's
  bundle / download condition file, streamed from the object store with its `ETag`; `Range: bytes=N-`
  resumes an interrupted download.

Long polls are woken per robot: the rollout controller names the robots whose wave it just started, and
only their polls wake up and answer (no herd of every connected agent re-reading the store). Bundles in
the local object store are read straight from the page cache on the event loop (`preadv` with
`RWF_NOWAIT`, falling back to a worker thread only for bytes not cached yet), in large chunks: no thread
hop per chunk, and the worker threads stay free for the store work of polls and reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import orjson
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from openrobomaker.api.app import error_response
from openrobomaker.api.sigv4 import AuthError, verify_request
from openrobomaker.objectstore import ObjectStoreError
from openrobomaker.services import deployment_jobs as deployments
from openrobomaker.services import robots
from openrobomaker.services.context import RequestContext
from openrobomaker.services.errors import ApiError

AGENT_SIGNAL = "deployment_agents"
MAX_WAIT_SECONDS = 30.0
# Long polls re-read the store this often even without a wake-up, when another control-plane replica
# (PostgreSQL deployments) may have started the robot's wave. With SQLite the controller is in this process
# and wakes the polls itself, so they re-read only when woken.
RECHECK_SECONDS = 5.0
CHUNK = 1024 * 1024
_NOWAIT = getattr(os, "RWF_NOWAIT", None)


class AgentWaiters:
    """Long polls waiting for something new for their robot. `wake(robot_arns)` wakes those robots' polls,
    `wake()` every poll; both are safe to call from any thread (the controller runs in a worker thread)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[str, set[asyncio.Event]] = {}

    def wake(self, robot_arns: Iterable[str] | None = None) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._fire, None if robot_arns is None else list(robot_arns))

    def _fire(self, robot_arns: list[str] | None) -> None:
        if robot_arns is None:
            groups = list(self._waiting.values())
        else:
            groups = [self._waiting[arn] for arn in robot_arns if arn in self._waiting]
        for events in groups:
            for event in events:
                event.set()

    @contextlib.contextmanager
    def registered(self, robot_arn: str) -> Iterator[asyncio.Event]:
        """Register before reading the store, so that a wave started in between is not missed."""
        self._loop = self._loop or asyncio.get_running_loop()
        event = asyncio.Event()
        self._waiting.setdefault(robot_arn, set()).add(event)
        try:
            yield event
        finally:
            events = self._waiting.get(robot_arn)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiting[robot_arn]

    @property
    def waiting(self) -> int:
        return sum(len(events) for events in self._waiting.values())


class _BadRequest(Exception):
    pass


async def _authenticate(request: Request, body: bytes) -> RequestContext:
    api = request.app.state.api
    raw_path = request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0] or request.url.path
    raw_query = request.scope.get("query_string", b"").decode("latin-1")
    identity = await run_in_threadpool(
        verify_request, request.method, raw_path, raw_query, request.headers.items(), body, api.lookup
    )
    return RequestContext(identity.account_id, identity.region, identity.principal)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _BadRequest(f"the body is not JSON: {exc}") from exc
    if not isinstance(value, dict) or not isinstance(value.get("robot"), str):
        raise _BadRequest("the body must be a JSON object naming the robot")
    return value


def _json(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status, media_type="application/json")


def _guarded(handler):
    """Turn the channel's failures into API-style error answers."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except AuthError as exc:
            return error_response(exc.code, exc.message, exc.status, "-")
        except deployments.AgentDenied as exc:
            return error_response("AccessDeniedException", str(exc), 403, "-")
        except _BadRequest as exc:
            return error_response("InvalidParameterException", str(exc), 400, "-")
        except ApiError as exc:
            status = 404 if exc.code == "ResourceNotFoundException" else 400
            return error_response(exc.code, exc.message, status, "-")

    return wrapped


def _parse_range(header: str | None) -> int:
    if not header or not header.startswith("bytes=") or not header.endswith("-"):
        return 0
    start = header[len("bytes=") : -1]
    return int(start) if start.isdigit() else 0


def _stream(objects: Any, bucket: str, key: str, start: int) -> Iterator[bytes]:
    """Any object store (S3: a botocore body): a sync iterator, read in a worker thread."""
    with contextlib.closing(objects.open(bucket, key)) as stream:
        if start:
            if getattr(stream, "seekable", lambda: False)():
                stream.seek(start)
            else:
                remaining = start
                while remaining > 0:
                    skipped = stream.read(min(CHUNK, remaining))
                    if not skipped:
                        return
                    remaining -= len(skipped)
        while chunk := stream.read(CHUNK):
            yield chunk


def _cached_read(fd: int, size: int, offset: int) -> memoryview | None:
    """What of [offset, offset+size) is in the page cache, read without blocking; None when none is."""
    if _NOWAIT is None:
        return None
    buffer = bytearray(size)
    try:
        count = os.preadv(fd, [buffer], offset, _NOWAIT)
    except (BlockingIOError, OSError):  # EAGAIN: not cached; EOPNOTSUPP: no RWF_NOWAIT on this filesystem
        return None
    return memoryview(buffer)[:count] if count else None


async def _file_chunks(handle: Any, start: int, size: int) -> AsyncIterator[memoryview | bytes]:
    """A local file from `start` to `size`: cached bytes on the event loop, the rest in a worker thread."""
    try:
        fd, offset = handle.fileno(), start
        while offset < size:
            wanted = min(CHUNK, size - offset)
            chunk = _cached_read(fd, wanted, offset)
            if chunk is None:
                chunk = await run_in_threadpool(os.pread, fd, wanted, offset)
                if not chunk:
                    return  # the file shrank under us: the answer ends short and the agent retries
            offset += len(chunk)
            yield chunk
    finally:
        handle.close()


def _local_file(objects: Any, bucket: str, key: str) -> Any | None:
    """The object's open file when the store keeps it on this machine's disk, else None."""
    handle = objects.open(bucket, key)
    try:
        handle.fileno()
    except (AttributeError, OSError, ValueError):
        handle.close()
        return None
    return handle


def extra_routes(platform: Any) -> list[Route]:
    waiters = AgentWaiters()
    # notify(AGENT_SIGNAL) wakes every poll; the rollout controller calls it with the robots it started.
    platform.signals[AGENT_SIGNAL] = waiters.wake
    recheck = MAX_WAIT_SECONDS if platform.db.is_sqlite else RECHECK_SECONDS

    @_guarded
    async def credentials(request: Request) -> Response:
        body = await request.body()
        ctx = await _authenticate(request, body)
        wanted = _json_object(body)
        return _json(await run_in_threadpool(robots.mint_robot_credentials, platform, ctx, wanted["robot"]))

    @_guarded
    async def poll(request: Request) -> Response:
        body = await request.body()
        ctx = await _authenticate(request, body)
        wanted = _json_object(body)
        robot_arn, current = wanted["robot"], wanted.get("current")
        wait = max(0.0, min(float(wanted.get("wait") or 0), MAX_WAIT_SECONDS))
        with waiters.registered(robot_arn) as woken:
            answer = await run_in_threadpool(deployments.agent_poll, platform, ctx, robot_arn)
            deadline = time.monotonic() + wait
            # Nothing new for the robot: no deployment, or the one it already has. Hold the request until
            # that changes or `wait` runs out.
            while _job_id(answer) in (None, current) and (remaining := deadline - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(remaining, recheck))
                woken.clear()
                if await run_in_threadpool(deployments.agent_wants_poll, platform, robot_arn) not in (
                    None,
                    current,
                ):
                    answer = await run_in_threadpool(deployments.agent_poll, platform, ctx, robot_arn)
        return _json(answer)

    @_guarded
    async def report(request: Request) -> Response:
        body = await request.body()
        ctx = await _authenticate(request, body)
        wanted = _json_object(body)
        answer = await run_in_threadpool(
            deployments.record_agent_report, platform, ctx, wanted["robot"], wanted
        )
        return _json(answer)

    def _download(locate):
        @_guarded
        async def handler(request: Request) -> Response:
            ctx = await _authenticate(request, b"")
            robot_arn = request.query_params.get("robot", "")
            job_id = request.query_params.get("jobId", "")
            bucket, key = await run_in_threadpool(locate, platform, ctx, robot_arn, job_id)
            try:
                info = await run_in_threadpool(platform.objects.head, bucket, key)
            except ObjectStoreError as exc:
                return error_response("ResourceNotFoundException", f"s3://{bucket}/{key}: {exc}", 404, "-")
            start = min(_parse_range(request.headers.get("range")), info.size)
            headers = {"ETag": f'"{info.etag}"', "Content-Length": str(info.size - start)}
            if start:
                headers["Content-Range"] = f"bytes {start}-{info.size - 1}/{info.size}"
            try:
                handle = await run_in_threadpool(_local_file, platform.objects, bucket, key)
            except ObjectStoreError as exc:
                return error_response("ResourceNotFoundException", f"s3://{bucket}/{key}: {exc}", 404, "-")
            if handle is not None:
                chunks = _file_chunks(handle, start, info.size)
            else:
                chunks = iterate_in_threadpool(_stream(platform.objects, bucket, key, start))
            return StreamingResponse(
                chunks,
                status_code=206 if start else 200,
                headers=headers,
                media_type="application/octet-stream",
            )

        return handler

    return [
        Route("/_agent/v1/credentials", credentials, methods=["POST"]),
        Route("/_agent/v1/poll", poll, methods=["POST"]),
        Route("/_agent/v1/report", report, methods=["POST"]),
        Route("/_agent/v1/bundle", _download(deployments.bundle_location), methods=["GET"]),
        Route("/_agent/v1/condition-file", _download(deployments.condition_file_location), methods=["GET"]),
    ]


def _job_id(answer: dict[str, Any]) -> str | None:
    deployment = answer.get("deployment")
    return deployment["jobId"] if deployment else None
