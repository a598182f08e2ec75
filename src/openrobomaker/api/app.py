"""The RoboMaker rest-json front door: routing, auth, validation, dispatch, serialization, errors.

Knows HTTP and the API definitions; hands validated parameters to `services.registry.dispatch` by
operation name and knows nothing of what the operations mean.

API requests are served by a plain ASGI callable (`RoboMakerApi.serve`): read the body, verify SigV4,
dispatch, answer with two `send` calls. Starlette's request/response objects, router and middleware cost
more per request than the whole describe path's database work, so only the control plane's own routes
(`/health`, the runner and agent channels) go through Starlette.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openrobomaker.api.definitions import ApiDefinitions, Operation, load_definitions
from openrobomaker.api.sigv4 import AuthError, Credential, verify_request
from openrobomaker.api.validation import ValidationFailed, Validator
from openrobomaker.services import identities
from openrobomaker.services.context import RequestContext
from openrobomaker.services.errors import ApiError
from openrobomaker.services.registry import dispatch

log = logging.getLogger("openrobomaker.api")

MAX_BODY_BYTES = 32 * 1024 * 1024
_READ_PREFIXES = ("Describe", "List", "BatchDescribe", "Get")
_ALWAYS_DECLARED = {"InternalServerException", "ServiceUnavailableException", "ThrottlingException"}
_JSON = (b"content-type", b"application/json")
_LOG_FORMAT = "%s %s %s %d %.1fms account=%s request=%s"

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


class WireError(Exception):
    """An error answered before any service runs (auth, routing, parsing)."""

    def __init__(self, code: str, message: str, status: int):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def error_response(code: str, message: str, status: int, request_id: str) -> Response:
    body = orjson.dumps({"__type": code, "message": message})
    headers = {"x-amzn-RequestId": request_id, "x-amzn-ErrorType": code}
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _without_none(value: Any) -> Any:
    # The service omitted members that have no value rather than sending null (spec §7.3).
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


@dataclass(frozen=True)
class _Located:
    """An input member carried in the URI or the query string rather than the JSON body."""

    name: str
    wire_name: str
    in_uri: bool
    is_list: bool


@dataclass
class Answer:
    """What goes back on the wire for one API request."""

    status: int
    body: bytes
    request_id: str
    error_code: str | None = None

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            _JSON,
            (b"content-length", str(len(self.body)).encode()),
            (b"x-amzn-requestid", self.request_id.encode()),
        ]
        if self.error_code is not None:
            headers.append((b"x-amzn-errortype", self.error_code.encode()))
        return headers


def _error(code: str, message: str, status: int, request_id: str) -> Answer:
    return Answer(status, orjson.dumps({"__type": code, "message": message}), request_id, code)


class RoboMakerApi:
    def __init__(self, platform: Any, definitions: ApiDefinitions | None = None):
        self.platform = platform
        self.definitions = definitions or load_definitions()
        self.validator = Validator(self.definitions)
        self.lookup: Callable[[str], Credential | None] = self._lookup_credential
        # Keys from the config file are fixed for the server's life; minted ones (jobs, robots) may be
        # revoked at any time, so those are looked up on every request.
        self._configured: dict[str, Credential] = {
            cred.access_key_id: Credential(
                cred.access_key_id, cred.secret_access_key, cred.account_id, cred.session_token
            )
            for cred in getattr(getattr(platform, "settings", None), "credentials", ())
        }
        self._located: dict[str, tuple[_Located, ...]] = {
            name: self._located_members(operation) for name, operation in self.definitions.operations.items()
        }

    def _lookup_credential(self, access_key_id: str) -> Credential | None:
        configured = self._configured.get(access_key_id)
        if configured is not None:
            return configured
        secret = identities.find_secret(self.platform, access_key_id)
        if secret is None:
            return None
        return Credential(
            access_key_id=secret.access_key_id,
            secret_access_key=secret.secret_access_key,
            account_id=secret.account_id,
            session_token=secret.session_token,
            principal=secret.principal,
        )

    # --- ASGI ---------------------------------------------------------------------------------------

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The whole API request as a raw ASGI exchange."""
        raw_path = scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0] or scope["path"]
        raw_query = scope.get("query_string", b"").decode("latin-1")
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]]
        answer = await self.answer(scope["method"], raw_path, raw_query, headers, receive)
        await send({"type": "http.response.start", "status": answer.status, "headers": answer.raw_headers()})
        await send({"type": "http.response.body", "body": answer.body})

    async def handle(self, request: Request) -> Response:
        """The same exchange for a request that already went through Starlette (the router's fallback)."""
        raw_path = request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0] or request.url.path
        raw_query = request.scope.get("query_string", b"").decode("latin-1")
        headers = list(request.headers.items())
        answer = await self.answer(request.method, raw_path, raw_query, headers, request.receive)
        return Response(
            answer.body,
            status_code=answer.status,
            headers=_header_dict(answer),
            media_type="application/json",
        )

    async def answer(
        self, method: str, raw_path: str, raw_query: str, headers: list[tuple[str, str]], receive: Receive
    ) -> Answer:
        request_id = str(uuid.uuid4())
        started = time.perf_counter()
        operation_name, account, answer = "-", "-", None
        try:
            body = await self._read_body(headers, receive)
            # Signature checks are a few HMACs: cheaper inline than a thread hop.
            identity = verify_request(method, raw_path, raw_query, headers, body, self.lookup)
            account = identity.account_id
            operation, labels = self._route(method, raw_path)
            operation_name = operation.name
            params = self._parse_input(operation, labels, raw_query, body)
            self._validate(operation, params)
            ctx = RequestContext(
                account_id=identity.account_id,
                region=identity.region,
                principal=identity.principal,
                request_id=request_id,
            )
            result = await self._dispatch(operation, ctx, params)
            answer = Answer(200, orjson.dumps(_without_none(result)), request_id)
        except (AuthError, WireError) as exc:
            answer = _error(exc.code, exc.message, exc.status, request_id)
        except ApiError as exc:
            code = self._declared_code(operation_name, exc.code)
            answer = _error(code, exc.message, self.definitions.error_status(code), request_id)
        except Exception:  # a bug must still answer in the API's format, and be logged with its request id
            log.exception("internal error in %s (request %s)", operation_name, request_id)
            answer = _error(
                "InternalServerException", f"Internal error (request {request_id})", 500, request_id
            )
        finally:
            status = answer.status if answer is not None else 500
            elapsed = (time.perf_counter() - started) * 1000
            self._log(method, raw_path, operation_name, status, elapsed, account, request_id)
        return answer

    @staticmethod
    def _log(
        method: str, path: str, operation: str, status: int, ms: float, account: str, request_id: str
    ) -> None:
        """The one info line per request.

        Made and handed to the handlers directly: `log.info` would also walk the stack to find the
        caller's file and line, a third of the line's cost, for fields the format does not show.
        """
        if log.isEnabledFor(logging.INFO):
            args = (method, path, operation, status, ms, account, request_id)
            log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, _LOG_FORMAT, args, None))

    # --- steps --------------------------------------------------------------------------------------

    async def _dispatch(
        self, operation: Operation, ctx: RequestContext, params: dict[str, Any]
    ) -> dict[str, Any]:
        # Reads are a millisecond of local database work: run them inline. Writes may wait on the
        # database lock or an object store, so they go to the thread pool.
        if operation.name.startswith(_READ_PREFIXES):
            return dispatch(self.platform, ctx, operation.name, params)
        return await run_in_threadpool(dispatch, self.platform, ctx, operation.name, params)

    def _declared_code(self, operation_name: str, code: str) -> str:
        """Answer only errors the model declares for the operation: clients catch those by class.

        E.g. DeleteRobotApplication declares no ResourceNotFoundException, so an unknown application is
        an InvalidParameterException there, as the service answered.
        """
        operation = self.definitions.operations.get(operation_name)
        if operation is None or code in operation.errors or code in _ALWAYS_DECLARED:
            return code
        return "InvalidParameterException"

    @staticmethod
    async def _read_body(headers: list[tuple[str, str]], receive: Receive) -> bytes:
        declared = next((value for name, value in headers if name.lower() == "content-length"), None)
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise WireError(
                "InvalidParameterException", f"request body larger than {MAX_BODY_BYTES} bytes", 400
            )
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; what arrived is answered (and the answer dropped)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise WireError(
                    "InvalidParameterException", f"request body larger than {MAX_BODY_BYTES} bytes", 400
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _route(self, method: str, raw_path: str) -> tuple[Operation, dict[str, str]]:
        found = self.definitions.route(method, raw_path)
        if found is None:
            raise WireError(
                "UnknownOperationException", f"no RoboMaker operation at {method} {raw_path}", 404
            )
        return found

    def _located_members(self, operation: Operation) -> tuple[_Located, ...]:
        if operation.input_shape is None:
            return ()
        located = []
        for name, member in self.definitions.shape(operation.input_shape).get("members", {}).items():
            location = member.get("location")
            if location in ("uri", "querystring"):
                is_list = self.definitions.shape(member["shape"])["type"] == "list"
                located.append(_Located(name, member.get("locationName", name), location == "uri", is_list))
        return tuple(located)

    def _parse_input(
        self, operation: Operation, labels: dict[str, str], raw_query: str, body: bytes
    ) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if body.strip():
            try:
                params = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise WireError(
                    "SerializationException", f"the request body is not valid JSON: {exc}", 400
                ) from exc
            if not isinstance(params, dict):
                raise WireError("SerializationException", "the request body must be a JSON object", 400)
        located = self._located.get(operation.name, ())
        if not located:
            return params
        query = parse_qs(raw_query, keep_blank_values=True) if raw_query else {}
        for member in located:
            if member.in_uri:
                if member.wire_name in labels:
                    params[member.name] = labels[member.wire_name]
            elif member.wire_name in query:
                values = query[member.wire_name]
                params[member.name] = values if member.is_list else values[0]
        return params

    def _validate(self, operation: Operation, params: dict[str, Any]) -> None:
        try:
            self.validator.validate(operation.input_shape, params)
        except ValidationFailed as exc:
            raise WireError("InvalidParameterException", str(exc), 400) from exc


def _header_dict(answer: Answer) -> dict[str, str]:
    headers = {"x-amzn-RequestId": answer.request_id}
    if answer.error_code is not None:
        headers["x-amzn-ErrorType"] = answer.error_code
    return headers


class RoboMakerApp(Starlette):
    """Starlette for the control plane's own routes; every other HTTP request goes straight to the API."""

    def __init__(self, api: RoboMakerApi, routes: list):
        super().__init__(routes=routes)
        self.api = api
        self._route_count = -1
        self._starlette_segments: frozenset[str] | None = frozenset()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._is_api_path(scope["path"]):
            await self.api.serve(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def _is_api_path(self, path: str) -> bool:
        segments = self._own_first_segments()
        if segments is None:
            return False  # a route with a parameter up front could match anything: let Starlette decide
        return _first_segment(path) not in segments

    def _own_first_segments(self) -> frozenset[str] | None:
        """First path segments of Starlette's routes (`health`, `_runner`, ...); no API URI starts so."""
        routes = self.router.routes
        if len(routes) != self._route_count:  # recomputed only when a route was added
            firsts = {_first_segment(getattr(route, "path", "")) for route in routes}
            # An empty or parameterised first segment could match anything: then Starlette decides all.
            self._starlette_segments = None if any(not s or "{" in s for s in firsts) else frozenset(firsts)
            self._route_count = len(routes)
        return self._starlette_segments


def _first_segment(path: str) -> str:
    return path.split("/", 2)[1] if path.startswith("/") else ""


def build_app(platform: Any, extra_routes: list | None = None) -> RoboMakerApp:
    api = RoboMakerApi(platform)

    async def health(_request: Request) -> Response:
        return Response(orjson.dumps({"status": "ok"}), media_type="application/json")

    async def every_other_path(scope, receive, send) -> None:
        # The router's fallback rather than a catch-all route: it also takes paths Starlette's route
        # patterns cannot match (a percent-encoded newline in a tag ARN), so every request gets API errors.
        response = await api.handle(Request(scope, receive))
        await response(scope, receive, send)

    routes = [Route("/health", health, methods=["GET"]), *(extra_routes or [])]
    app = RoboMakerApp(api, routes)
    app.router.default = every_other_path
    app.state.api = api
    return app
