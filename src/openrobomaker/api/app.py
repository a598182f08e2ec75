"""The RoboMaker rest-json front door: routing, auth, validation, dispatch, serialization, errors.

Knows HTTP and the API definitions; hands validated parameters to `services.registry.dispatch` by
operation name and knows nothing of what the operations mean.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
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


class RoboMakerApi:
    def __init__(self, platform: Any, definitions: ApiDefinitions | None = None):
        self.platform = platform
        self.definitions = definitions or load_definitions()
        self.validator = Validator(self.definitions)
        self.lookup: Callable[[str], Credential | None] = self._lookup_credential

    def _lookup_credential(self, access_key_id: str) -> Credential | None:
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

    async def handle(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        started = time.perf_counter()
        operation_name, account, status = "-", "-", 500
        try:
            body = await self._read_body(request)
            raw_path = (
                request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0] or request.url.path
            )
            raw_query = request.scope.get("query_string", b"").decode("latin-1")
            # Signature checks are a few HMACs: cheaper inline than a thread hop.
            identity = verify_request(
                request.method, raw_path, raw_query, request.headers.items(), body, self.lookup
            )
            account = identity.account_id
            operation, labels = self._route(request.method, raw_path)
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
            status = 200
            return Response(
                orjson.dumps(_without_none(result)),
                status_code=200,
                headers={"x-amzn-RequestId": request_id},
                media_type="application/json",
            )
        except AuthError as exc:
            status = exc.status
            return error_response(exc.code, exc.message, exc.status, request_id)
        except WireError as exc:
            status = exc.status
            return error_response(exc.code, exc.message, exc.status, request_id)
        except ApiError as exc:
            code = self._declared_code(operation_name, exc.code)
            status = self.definitions.error_status(code)
            return error_response(code, exc.message, status, request_id)
        except Exception:  # a bug must still answer in the API's format, and be logged with its request id
            log.exception("internal error in %s (request %s)", operation_name, request_id)
            return error_response(
                "InternalServerException", f"Internal error (request {request_id})", 500, request_id
            )
        finally:
            log.info(
                "%s %s %s %d %.1fms account=%s request=%s",
                request.method,
                request.url.path,
                operation_name,
                status,
                (time.perf_counter() - started) * 1000,
                account,
                request_id,
            )

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

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise WireError(
                "InvalidParameterException", f"request body larger than {MAX_BODY_BYTES} bytes", 400
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise WireError(
                    "InvalidParameterException", f"request body larger than {MAX_BODY_BYTES} bytes", 400
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _route(self, method: str, raw_path: str) -> tuple[Operation, dict[str, str]]:
        found = self.definitions.route(method, raw_path)
        if found is None:
            raise WireError(
                "UnknownOperationException", f"no RoboMaker operation at {method} {raw_path}", 404
            )
        return found

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
        if operation.input_shape is None:
            return params
        members = self.definitions.shape(operation.input_shape).get("members", {})
        query = parse_qs(raw_query, keep_blank_values=True) if raw_query else {}
        for name, member in members.items():
            location = member.get("location")
            wire_name = member.get("locationName", name)
            if location == "uri" and wire_name in labels:
                params[name] = labels[wire_name]
            elif location == "querystring" and wire_name in query:
                is_list = self.definitions.shape(member["shape"])["type"] == "list"
                params[name] = query[wire_name] if is_list else query[wire_name][0]
        return params

    def _validate(self, operation: Operation, params: dict[str, Any]) -> None:
        try:
            self.validator.validate(operation.input_shape, params)
        except ValidationFailed as exc:
            raise WireError("InvalidParameterException", str(exc), 400) from exc


def build_app(platform: Any, extra_routes: list | None = None) -> Starlette:
    api = RoboMakerApi(platform)

    async def health(_request: Request) -> Response:
        return Response(orjson.dumps({"status": "ok"}), media_type="application/json")

    async def every_other_path(scope, receive, send) -> None:
        # The router's fallback rather than a catch-all route: it also takes paths Starlette's route
        # patterns cannot match (a percent-encoded newline in a tag ARN), so every request gets API errors.
        response = await api.handle(Request(scope, receive))
        await response(scope, receive, send)

    routes = [Route("/health", health, methods=["GET"]), *(extra_routes or [])]
    app = Starlette(routes=routes)
    app.router.default = every_other_path
    app.state.api = api
    return app
