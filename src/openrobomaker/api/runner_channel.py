"""HTTP endpoints for the control plane's own processes, beside the RoboMaker API.

- `POST /_runner/v1/jobs/{jobId}/report`: a simulation job runner reports (bearer token per job run).
- `GET /_openrobomaker/v1/simulation-jobs/{jobId}/logs`: application logs of a job, SigV4-signed like the API.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openrobomaker.api.app import error_response
from openrobomaker.api.sigv4 import AuthError, verify_request
from openrobomaker.services import job_logs
from openrobomaker.services.context import RequestContext
from openrobomaker.services.errors import ApiError
from openrobomaker.services.simulation_jobs import RunnerAuthError, record_runner_report


def extra_routes(platform: Any) -> list[Route]:
    async def report(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        try:
            body = orjson.loads(await request.body())
            if not isinstance(body, dict):
                raise ValueError("report must be an object")
        except ValueError as exc:
            return error_response("InvalidParameterException", f"bad report: {exc}", 400, "-")
        try:
            answer = await run_in_threadpool(
                record_runner_report, platform, request.path_params["job_id"], token, body
            )
        except RunnerAuthError:
            return error_response("AccessDeniedException", "unknown job or wrong runner token", 403, "-")
        return Response(orjson.dumps(answer), media_type="application/json")

    async def logs(request: Request) -> Response:
        api = request.app.state.api
        raw_path = request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0]
        raw_query = request.scope.get("query_string", b"").decode("latin-1")
        try:
            identity = await run_in_threadpool(
                verify_request, request.method, raw_path, raw_query, request.headers.items(), b"", api.lookup
            )
            ctx = RequestContext(identity.account_id, identity.region, identity.principal)
            offsets = orjson.loads(request.query_params.get("offsets") or "{}")
            result = await run_in_threadpool(
                job_logs.read_logs, platform, ctx, request.path_params["job_id"], offsets
            )
        except AuthError as exc:
            return error_response(exc.code, exc.message, exc.status, "-")
        except ApiError as exc:
            return error_response(exc.code, exc.message, 400, "-")
        except ValueError:
            return error_response("InvalidParameterException", "offsets must be a JSON object", 400, "-")
        return Response(orjson.dumps(result), media_type="application/json")

    return [
        Route("/_runner/v1/jobs/{job_id}/report", report, methods=["POST"]),
        Route("/_openrobomaker/v1/simulation-jobs/{job_id}/logs", logs, methods=["GET"]),
    ]
