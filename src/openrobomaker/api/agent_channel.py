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
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
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
# Long polls re-read the store this often even without a wake-up: another control-plane replica
# (PostgreSQL deployments) may have started the robot's wave.
RECHECK_SECONDS = 5.0
CHUNK = 1024 * 1024


class Broadcast:
    """Wakes every waiting long poll at once; safe to fire from the controller's thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def _current(self) -> asyncio.Event:
        if self._event is None:
            self._loop = asyncio.get_running_loop()
            self._event = asyncio.Event()
        return self._event

    def _fire(self) -> None:
        event, self._event = self._event, asyncio.Event()
        if event is not None:
            event.set()

    def wake(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._fire)

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._current().wait(), timeout)


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


def extra_routes(platform: Any) -> list[Route]:
    broadcast = Broadcast()
    platform.signals[AGENT_SIGNAL] = broadcast.wake

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
        answer = await run_in_threadpool(deployments.agent_poll, platform, ctx, robot_arn)
        deadline = time.monotonic() + wait
        # Nothing new for the robot: no deployment, or the one it already has. Hold the request until
        # that changes or `wait` runs out.
        while _job_id(answer) in (None, current) and (remaining := deadline - time.monotonic()) > 0:
            await broadcast.wait(min(remaining, RECHECK_SECONDS))
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
