"""HTTP endpoints for robot agents (what Greengrass was to RoboMaker robots), beside the RoboMaker API.

Every request is SigV4-signed (service `robomaker`) like an API call. The agent signs with its robot's
minted credentials, whose principal `robot:<arn>` must be the robot named in the request: one robot can
neither read another's deployment nor report for it.

- `POST /_agent/v1/credentials` {robot}: mint robot credentials; signed with the account's own keys
  (`openrobomaker robot-credentials`).
- `POST /_agent/v1/poll` {robot, current, wait}: long poll; answers at once when the robot should deploy
  something other than `current` (a job id), else after `wait` seconds (at most 30) with what it has. An
  answer that hands over a new deployment of a local-store bundle carries `deployment.bundleUrl`, a ticket
  on the sendfile listener (below), so that the agent's first fetch needs no request to the channel.
- `POST /_agent/v1/report` {robot, jobId, seq, step, percentDone, estimatedTimeRemainingSeconds,
  outcome, failureCode, failureReason}: one step report; replays are acknowledged and ignored.
- `GET /_agent/v1/bundle?robot=&jobId=` and `GET /_agent/v1/condition-file?robot=&jobId=`: the robot's
  bundle / download condition file, streamed from the object store with its `ETag`; `Range: bytes=N-`
  resumes an interrupted download. With `&direct=1` the answer is a `307` instead: to a presigned S3 URL
  with an S3 object store, to a one-minute ticket on the `sendfile` listener (`api/agent_blobs.py`) with
  the local store. The agent then fetches the bytes there, and falls back to `direct=0` when it cannot.

What keeps a wave of robots cheap (issue 5's deployment benchmark):

- long polls are woken per robot: the rollout controller names the robots whose wave it just started, and
  only their polls wake up (no herd of every connected agent re-reading the store);
- polls answered and reports recorded at the same moment go to the store together (`Batcher`: one read,
  one transaction for many robots, instead of one each behind the SQLite writer);
- robots' keys, once found in the store, are kept for a minute (`RobotKeys`), so a signature is checked on
  the event loop without a store read;
- bundle bytes do not go through Python: with `direct=1` (what the agent asks first) the kernel sends
  local files (`sendfile`, see `api/agent_blobs.py`) and S3 serves its own. With `direct=0` (the
  fallback) local files are read straight from the page cache on the event loop (`preadv` with
  `RWF_NOWAIT`, a worker thread only for bytes not cached yet), in 1 MiB chunks.

On shutdown (SIGINT / SIGTERM) waiting long polls answer at once with what they have, so the server does
not wait out its graceful-shutdown timeout and then cancel them mid-request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from openrobomaker.api.agent_blobs import AgentBlobs
from openrobomaker.api.app import error_response
from openrobomaker.api.sigv4 import AuthError, verify_request
from openrobomaker.objectstore import ObjectStoreError
from openrobomaker.objectstore.local import LocalObjectStore
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
KEY_CACHE_SECONDS = 60.0
KEY_CACHE_SIZE = 10_000
PRESIGNED_URL_SECONDS = 3600
_NOWAIT = getattr(os, "RWF_NOWAIT", None)
_SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class AgentWaiters:
    """Long polls waiting for something new for their robot. `wake(robot_arns)` wakes those robots' polls,
    `wake()` every poll; both are safe to call from any thread (the controller runs in a worker thread)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self.closing = False  # the server is shutting down: polls answer at once

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

    def close(self) -> None:
        """End every long poll (and the ones that come after) at once: the server is shutting down."""
        self.closing = True
        self.wake()

    def _watch_shutdown(self) -> None:
        """Chain to the server's SIGINT/SIGTERM handlers (uvicorn's, installed once it serves), so that
        long polls end when shutdown starts, not when uvicorn's graceful timeout cancels them."""
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in _SHUTDOWN_SIGNALS:
            previous = signal.getsignal(signum)
            if not callable(previous):
                continue  # no Python handler (not under uvicorn): the default action ends the process anyway

            def handler(sig: int, frame: Any, previous: Any = previous) -> None:
                self.close()
                previous(sig, frame)

            signal.signal(signum, handler)

    @contextlib.contextmanager
    def registered(self, robot_arn: str) -> Iterator[asyncio.Event]:
        """Register before reading the store, so that a wave started in between is not missed."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._watch_shutdown()
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


class Batcher:
    """Group commit for the agent channel: calls that arrive while a batch is being handled wait and go
    together in the next one (`handle(items) -> one answer or exception per item`, in a worker thread).
    No timer: a lone call goes at once; under load, batches grow by themselves."""

    def __init__(self, handle: Any, max_batch: int = 256):
        self._handle = handle
        self._max_batch = max_batch
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None

    async def submit(self, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                try:
                    answers = await run_in_threadpool(self._handle, [item for item, _ in batch])
                except Exception as exc:  # the whole batch failed (store error): every caller gets it
                    answers = [exc] * len(batch)
                for (_, future), answer in zip(batch, answers, strict=True):
                    if future.done():
                        continue  # its request went away; what it reported is applied all the same
                    if isinstance(answer, BaseException):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        finally:
            self._drainer = None


class _BadRequest(Exception):
    pass


class _NotCached(Exception):
    pass


class RobotKeys:
    """Robot credentials the store confirmed in the last KEY_CACHE_SECONDS, so that an agent's requests are
    verified on the event loop (a few HMACs) without a store read and a thread hop each. Only robots' keys
    are kept: they are revoked only when their robot is deleted, and every agent request also checks that
    its robot exists, so a key still cached for a deleted robot opens nothing."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[float, Any]] = {}

    def cached(self, access_key_id: str) -> Any:
        hit = self._keys.get(access_key_id)
        if hit is None or time.monotonic() - hit[0] > KEY_CACHE_SECONDS:
            raise _NotCached
        return hit[1]

    def remembering(self, lookup: Any) -> Any:
        """`lookup` (the API's credential lookup, a store read), remembering robots' keys."""

        def looked_up(access_key_id: str) -> Any:
            credential = lookup(access_key_id)
            if credential is not None and (credential.principal or "").startswith("robot:"):
                if len(self._keys) >= KEY_CACHE_SIZE:
                    self._keys.pop(next(iter(self._keys)))
                self._keys[access_key_id] = (time.monotonic(), credential)
            return credential

        return looked_up


async def _authenticate(request: Request, body: bytes, keys: RobotKeys) -> RequestContext:
    raw_path = request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0] or request.url.path
    raw_query = request.scope.get("query_string", b"").decode("latin-1")
    args = (request.method, raw_path, raw_query, request.headers.items(), body)
    try:
        identity = verify_request(*args, keys.cached)
    except _NotCached:
        lookup = keys.remembering(request.app.state.api.lookup)
        identity = await run_in_threadpool(verify_request, *args, lookup)
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
    if not isinstance(objects, LocalObjectStore):
        return None
    handle = objects.open(bucket, key)
    try:
        handle.fileno()
    except (AttributeError, OSError, ValueError):
        handle.close()
        return None
    return handle


def _presigned_url(objects: Any, bucket: str, key: str) -> str | None:
    """A time-limited GET URL straight to the object, when the store is S3 (else None)."""
    client = getattr(objects, "client", None)
    if client is None or not hasattr(client, "generate_presigned_url"):
        return None
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=PRESIGNED_URL_SECONDS
    )


def extra_routes(platform: Any) -> list[Route]:
    waiters = AgentWaiters()
    # notify(AGENT_SIGNAL) wakes every poll; the rollout controller calls it with the robots it started.
    platform.signals[AGENT_SIGNAL] = waiters.wake
    recheck = MAX_WAIT_SECONDS if platform.db.is_sqlite else RECHECK_SECONDS
    keys = RobotKeys()
    reports = Batcher(lambda items: deployments.record_agent_reports(platform, items))
    blobs = (
        AgentBlobs(platform.settings.host, platform.settings.bundle_port)
        if isinstance(platform.objects, LocalObjectStore)
        else None
    )
    public_url = getattr(platform.settings, "public_url", None)
    public_host = urlsplit(public_url).hostname if public_url else None

    def answer_polls(items: list[tuple[RequestContext, str, Any, str]]) -> list[Any]:
        """Poll answers for several robots (one store read). One that hands a robot a new deployment of a
        local-store bundle also carries `bundleUrl`, a sendfile ticket for it: the agent's first fetch
        skips a round trip through the channel (it asks the channel again if the ticket fails)."""
        answers = deployments.agent_polls(platform, [(ctx, robot_arn) for ctx, robot_arn, _, _ in items])
        for answer, (_, _, current, host) in zip(answers, items, strict=True):
            if blobs is None or isinstance(answer, Exception) or _job_id(answer) in (None, current):
                continue
            source = answer["deployment"].get("source") or {}
            with contextlib.suppress(ObjectStoreError, OSError, KeyError):
                info = platform.objects.head(source["s3Bucket"], source["s3Key"])
                path = platform.objects.local_path(info.bucket, info.key)
                answer["deployment"]["bundleUrl"] = blobs.url(public_host or host, path, info.etag)
        return answers

    polls = Batcher(answer_polls)

    @_guarded
    async def credentials(request: Request) -> Response:
        body = await request.body()
        ctx = await _authenticate(request, body, keys)
        wanted = _json_object(body)
        return _json(await run_in_threadpool(robots.mint_robot_credentials, platform, ctx, wanted["robot"]))

    @_guarded
    async def poll(request: Request) -> Response:
        body = await request.body()
        ctx = await _authenticate(request, body, keys)
        wanted = _json_object(body)
        robot_arn, current = wanted["robot"], wanted.get("current")
        wait = max(0.0, min(float(wanted.get("wait") or 0), MAX_WAIT_SECONDS))
        asked = (ctx, robot_arn, current, request.url.hostname or "127.0.0.1")
        with waiters.registered(robot_arn) as woken:
            answer = await polls.submit(asked)
            with contextlib.suppress(asyncio.CancelledError):
                answer = await _held(asked, answer, woken, wait)
        return _json(answer)

    async def _held(asked: tuple, answer: dict, woken: asyncio.Event, wait: float) -> dict:
        """Nothing new for the robot (no deployment, or the one it already has): hold the poll until that
        changes, `wait` runs out or the server shuts down, then answer the latest. A cancelled wait (the
        server's graceful shutdown timed out) also answers what it has: no traceback in the server's log,
        and the agent simply polls again."""
        _, robot_arn, current, _ = asked
        deadline = time.monotonic() + wait
        while (
            _job_id(answer) in (None, current)
            and not waiters.closing
            and (remaining := deadline - time.monotonic()) > 0
        ):
            try:
                await asyncio.wait_for(woken.wait(), min(remaining, recheck))
            except TimeoutError:
                if remaining <= recheck:
                    break  # `wait` is over: answer what we have, the agent polls again at once
                # a periodic recheck (another replica may have started the wave): one cheap read
                wants = await run_in_threadpool(deployments.agent_wants_poll, platform, robot_arn)
                if wants in (None, current):
                    continue
            woken.clear()
            if waiters.closing:
                break
            answer = await polls.submit(asked)
        return answer

    @_guarded
    async def report(request: Request) -> Response:
        body = await request.body()
        ctx = await _authenticate(request, body, keys)
        wanted = _json_object(body)
        return _json(await reports.submit((ctx, wanted["robot"], wanted)))

    def _open(
        locate, ctx: RequestContext, robot_arn: str, job_id: str, direct: bool, host: str
    ) -> tuple[Any, Any, Any]:
        """Everything before the first byte in one worker-thread hop: where, what (size, ETag), and the
        local file, or a URL the agent fetches the bytes from itself (S3 presigned; local: a sendfile
        ticket)."""
        bucket, key = locate(platform, ctx, robot_arn, job_id)
        info = platform.objects.head(bucket, key)
        url = None
        if direct and blobs is not None:
            with contextlib.suppress(OSError):  # no listener (cannot bind): stream through this port
                url = blobs.url(public_host or host, platform.objects.local_path(bucket, key), info.etag)
        elif direct:
            url = _presigned_url(platform.objects, bucket, key)
        return info, (None if url else _local_file(platform.objects, bucket, key)), url

    def _download(locate):
        @_guarded
        async def handler(request: Request) -> Response:
            ctx = await _authenticate(request, b"", keys)
            robot_arn = request.query_params.get("robot", "")
            job_id = request.query_params.get("jobId", "")
            direct = request.query_params.get("direct") == "1"
            try:
                info, handle, url = await run_in_threadpool(
                    _open, locate, ctx, robot_arn, job_id, direct, request.url.hostname or "127.0.0.1"
                )
            except ObjectStoreError as exc:
                return error_response("ResourceNotFoundException", f"object store: {exc}", 404, "-")
            if url is not None:
                # S3 or the kernel (sendfile) serves the bytes: Python is out of the data path. Agents
                # fall back to `direct=0` when they cannot reach that URL.
                headers = {"Location": url, "ETag": f'"{info.etag}"', "Cache-Control": "no-store"}
                return Response(status_code=307, headers=headers)
            start = min(_parse_range(request.headers.get("range")), info.size)
            headers = {"ETag": f'"{info.etag}"', "Content-Length": str(info.size - start)}
            if start:
                headers["Content-Range"] = f"bytes {start}-{info.size - 1}/{info.size}"
            if handle is not None:
                chunks = _file_chunks(handle, start, info.size)
            else:
                chunks = iterate_in_threadpool(_stream(platform.objects, info.bucket, info.key, start))
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
