"""The rest-json wire protocol (spec §7): request ids, error format, routing, timestamps, health.

Raw requests are signed with botocore's own SigV4Auth and sent with httpx, so that the test sees exactly
the bytes and headers the server answers with.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from urllib.parse import quote

import botocore.session
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from openrobomaker.config import build_settings
from openrobomaker.objectstore import ObjectStoreConfig, open_store
from openrobomaker.server import build_server_app

BUCKET = "protocol-bundles"
SUITE = {"name": "ROS", "version": "Melodic"}
UNKNOWN_ARN = "arn:aws:robomaker:us-east-1:000000000000:robot-application/nothing-here/1551203427717"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def signed(
    endpoint: str,
    method: str,
    path: str,
    body: bytes | None = None,
    query: str = "",
    key: tuple[str, str] = ("test", "test"),
    region: str = "us-east-1",
) -> httpx.Response:
    """Sign with botocore's SigV4Auth exactly as the robomaker client does, then send with httpx."""
    url = f"{endpoint}{path}" + (f"?{query}" if query else "")
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = AWSRequest(method=method, url=url, data=body or b"", headers=headers)
    SigV4Auth(Credentials(*key), "robomaker", region).add_auth(request)
    prepared = request.prepare()
    return httpx.request(method, url, headers=dict(prepared.headers.items()), content=body or b"", timeout=10)


def assert_error_format(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) >= {"__type", "message"}
    assert isinstance(body["message"], str) and body["message"]
    assert response.headers["x-amzn-ErrorType"] == body["__type"]
    assert response.headers.get("x-amzn-RequestId")
    if code is not None:
        assert body["__type"] == code
    return body


@pytest.fixture(scope="module")
def app_arn(server):
    store = open_store(ObjectStoreConfig(kind="local", root=str(server.data_dir / "objects")))
    store.create_bucket(BUCKET)
    store.put_bytes(BUCKET, "robot.tar.gz", b"protocol bundle")
    created = server.client().create_robot_application(
        name=f"protocol-{uuid.uuid4().hex[:8]}",
        sources=[{"s3Bucket": BUCKET, "s3Key": "robot.tar.gz", "architecture": "X86_64"}],
        robotSoftwareSuite=SUITE,
        tags={"a": "b"},
    )
    return created["arn"]


# --- request ids ------------------------------------------------------------------------------------


def test_every_response_carries_a_request_id(rm, app_arn):
    ids = []
    ids.append(rm.list_robot_applications()["ResponseMetadata"]["RequestId"])
    ids.append(rm.describe_robot_application(application=app_arn)["ResponseMetadata"]["RequestId"])
    ids.append(rm.list_tags_for_resource(resourceArn=app_arn)["ResponseMetadata"]["RequestId"])
    with pytest.raises(ClientError) as exc:
        rm.describe_robot_application(application=UNKNOWN_ARN)
    ids.append(exc.value.response["ResponseMetadata"]["RequestId"])
    with pytest.raises(ClientError) as exc:
        rm.describe_robot_application(application="x")
    ids.append(exc.value.response["ResponseMetadata"]["RequestId"])
    assert all(ids), ids
    assert len(set(ids)) == len(ids), "request ids must be unique"


def test_request_id_on_auth_failures_and_unknown_paths(server):
    unsigned = httpx.post(f"{server.endpoint}/listRobotApplications", content=b"{}")
    assert unsigned.status_code == 403
    assert unsigned.headers.get("x-amzn-RequestId")
    assert signed(server.endpoint, "POST", "/noSuchOperation", b"{}").headers.get("x-amzn-RequestId")


# --- errors -----------------------------------------------------------------------------------------


def test_model_error_statuses_match_the_model():
    model = botocore.session.get_session().get_service_model("robomaker")
    statuses = {shape.name: shape.metadata["error"]["httpStatusCode"] for shape in model.error_shapes}
    assert statuses["InvalidParameterException"] == 400
    assert statuses["ResourceNotFoundException"] == 400


def test_invalid_parameter_error_format(server):
    response = signed(
        server.endpoint, "POST", "/describeRobotApplication", json.dumps({"application": "x"}).encode()
    )
    body = assert_error_format(response, 400, "InvalidParameterException")
    assert "application" in body["message"]


def test_missing_required_member_error_format(server):
    response = signed(server.endpoint, "POST", "/describeRobotApplication", b"{}")
    body = assert_error_format(response, 400, "InvalidParameterException")
    assert "application" in body["message"]


def test_resource_not_found_error_format(server):
    response = signed(
        server.endpoint,
        "POST",
        "/describeRobotApplication",
        json.dumps({"application": UNKNOWN_ARN}).encode(),
    )
    assert_error_format(response, 400, "ResourceNotFoundException")
    tags = signed(server.endpoint, "GET", "/tags/" + quote(UNKNOWN_ARN, safe=""))
    assert_error_format(tags, 400, "ResourceNotFoundException")


def test_botocore_maps_errors_to_its_exception_classes(rm):
    with pytest.raises(rm.exceptions.ResourceNotFoundException) as exc:
        rm.describe_robot_application(application=UNKNOWN_ARN)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert exc.value.response["Error"]["Message"]
    with pytest.raises(rm.exceptions.InvalidParameterException):
        rm.list_robot_applications(versionQualifier="SOME")


@pytest.mark.parametrize(("method", "path"), [("POST", "/noSuchOperation"), ("GET", "/"), ("POST", "/tags")])
def test_unknown_path_is_a_404_in_the_api_error_format(server, method, path):
    response = signed(server.endpoint, method, path, b"{}" if method == "POST" else None)
    assert_error_format(response, 404)


def test_wrong_method_on_a_known_path_is_a_client_error(server):
    response = signed(server.endpoint, "GET", "/listRobotApplications")
    assert 400 <= response.status_code < 500
    assert_error_format(response, response.status_code)


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2, 3]", b'"a string"', b"\xff\xfe\x00garbage", b'{"maxResults": 1', b"null"],
    ids=["broken", "array", "string", "binary", "truncated", "null"],
)
def test_malformed_json_is_a_client_error(server, body):
    response = signed(server.endpoint, "POST", "/listRobotApplications", body)
    assert 400 <= response.status_code < 500, response.text
    assert_error_format(response, response.status_code)


def test_wrong_json_types_are_invalid_parameters(server):
    body = json.dumps({"maxResults": "ten", "filters": {"name": "name"}}).encode()
    response = signed(server.endpoint, "POST", "/listRobotApplications", body)
    message = assert_error_format(response, 400, "InvalidParameterException")["message"]
    assert "maxResults" in message and "filters" in message


def _unimplemented_operation_without_required_input() -> str | None:
    from openrobomaker.services.registry import implemented_operations

    model = botocore.session.get_session().get_service_model("robomaker")
    implemented = implemented_operations()
    preferred = ["ListWorldTemplates", "ListFleets", "ListWorlds", "ListSimulationJobBatches"]
    candidates = preferred + list(model.operation_names)
    for name in candidates:
        operation = model.operation_model(name)
        if (
            name not in implemented
            and operation.input_shape is not None
            and not operation.input_shape.required_members
        ):
            return name
    return None


def test_an_operation_not_available_yet_says_so(rm):
    name = _unimplemented_operation_without_required_input()
    if name is None:
        pytest.skip("every operation without required input is implemented")
    method = getattr(rm, botocore.xform_name(name))
    with pytest.raises(ClientError) as exc:
        method()
    assert exc.value.response["Error"]["Code"] == "InvalidParameterException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "not available" in exc.value.response["Error"]["Message"]
    assert name in exc.value.response["Error"]["Message"]

    # Its input is still validated first: a bad input gets the validation error, not "not available".
    with pytest.raises(ClientError) as exc:
        method(nextToken="!not a token!")
    assert exc.value.response["Error"]["Code"] == "InvalidParameterException"
    assert "nextToken" in exc.value.response["Error"]["Message"]
    assert "not available" not in exc.value.response["Error"]["Message"]


def test_create_world_template_is_routed_and_answers_with_a_modeled_error_or_success(rm):
    try:
        rm.create_world_template(name="t", templateBody="{}")
    except ClientError as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert exc.response["Error"]["Code"] in {
            "InvalidParameterException",
            "ResourceAlreadyExistsException",
            "ResourceNotFoundException",
            "LimitExceededException",
            "ThrottlingException",
        }


# --- health, timestamps, bodies ---------------------------------------------------------------------


def test_health_needs_no_signature(server):
    response = httpx.get(f"{server.endpoint}/health")
    assert response.status_code == 200


def _walk(value):
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def test_timestamps_are_epoch_seconds_as_json_numbers(server, app_arn):
    response = signed(
        server.endpoint, "POST", "/describeRobotApplication", json.dumps({"application": app_arn}).encode()
    )
    assert response.status_code == 200
    body = response.json()
    stamp = body["lastUpdatedAt"]
    assert isinstance(stamp, int | float) and not isinstance(stamp, bool)
    assert abs(stamp - time.time()) < 3600, "epoch seconds, not milliseconds"
    # The ARN carries the same instant in milliseconds.
    created_ms = int(app_arn.rsplit("/", 1)[1])
    assert abs(stamp * 1000 - created_ms) < 1000

    listed = signed(server.endpoint, "POST", "/listRobotApplications", b"{}").json()
    for summary in listed["robotApplicationSummaries"]:
        assert isinstance(summary["lastUpdatedAt"], int | float)
        assert abs(summary["lastUpdatedAt"] - time.time()) < 86400


def test_responses_omit_members_without_value(server, app_arn):
    for path, body in [
        ("/describeRobotApplication", {"application": app_arn}),
        ("/listRobotApplications", {"versionQualifier": "ALL"}),
    ]:
        response = signed(server.endpoint, "POST", path, json.dumps(body).encode())
        assert response.status_code == 200
        assert None not in list(_walk(response.json())), response.text


def test_tag_paths_use_the_percent_encoded_arn(server, app_arn):
    path = "/tags/" + quote(app_arn, safe="")
    assert signed(server.endpoint, "GET", path).json() == {"tags": {"a": "b"}}
    tagged = signed(server.endpoint, "POST", path, json.dumps({"tags": {"c d": "e"}}).encode())
    assert tagged.status_code == 200
    untagged = signed(server.endpoint, "DELETE", path, query="tagKeys=c%20d&tagKeys=zzz")
    assert untagged.status_code == 200
    assert signed(server.endpoint, "GET", path).json() == {"tags": {"a": "b"}}


def test_an_empty_body_counts_as_an_empty_input(server):
    response = signed(server.endpoint, "POST", "/listRobotApplications", b"")
    assert response.status_code == 200
    assert "robotApplicationSummaries" in response.json()


@pytest.mark.parametrize(
    "path",
    [
        "/tags/" + quote(UNKNOWN_ARN.replace("/nothing", "/nothing\n"), safe=""),
        "/tags/%0A0",
        "/noSuch%0AOperation",
    ],
    ids=["arn-with-newline", "newline-label", "unknown-path-with-newline"],
)
def test_a_percent_encoded_newline_in_the_path_gets_an_api_error(server, path):
    # Every path, whatever bytes it decodes to, is answered in the API's error format.
    response = signed(server.endpoint, "GET", path)
    assert response.status_code in (400, 404), response.text
    assert_error_format(response, response.status_code)
    if path.startswith("/tags/"):
        assert response.json()["__type"] == "InvalidParameterException"
        assert "resourceArn" in response.json()["message"]


# --- the raw ASGI fast path ---------------------------------------------------------------------------


def test_a_success_carries_json_length_and_request_id_headers(server, app_arn):
    response = signed(
        server.endpoint, "POST", "/describeRobotApplication", json.dumps({"application": app_arn}).encode()
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    assert UUID_RE.match(response.headers["x-amzn-RequestId"])
    assert "x-amzn-ErrorType" not in response.headers


def test_a_chunked_request_body_is_read_whole(server, app_arn):
    body = json.dumps({"application": app_arn}).encode()
    request = AWSRequest(
        method="POST",
        url=f"{server.endpoint}/describeRobotApplication",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    SigV4Auth(Credentials("test", "test"), "robomaker", "us-east-1").add_auth(request)
    headers = dict(request.prepare().headers.items())
    headers.pop("Content-Length", None)

    def pieces():  # a generator body goes out with Transfer-Encoding: chunked, in several chunks
        yield body[:10]
        yield body[10:]

    response = httpx.post(request.url, headers=headers, content=pieces(), timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["arn"] == app_arn


def test_control_plane_paths_keep_their_starlette_answers(server):
    assert httpx.get(f"{server.endpoint}/health").json() == {"status": "ok"}
    # No route of the runner channel matches: the router's fallback still answers in the API's format.
    missing = signed(server.endpoint, "POST", "/_runner/v1/nothing", b"{}")
    assert_error_format(missing, 404, "UnknownOperationException")


def _asgi_call(app, method: str, path: str) -> int:
    """One request through the ASGI app in process; returns the status it answered with."""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"]


def test_api_requests_skip_starlette_and_control_plane_routes_do_not(tmp_path, monkeypatch):
    app = build_server_app(build_settings(None, data_dir=tmp_path, host="127.0.0.1", port=1))
    seen_by_starlette: list[str] = []
    original = Starlette.__call__

    async def spy(self, scope, receive, send):
        seen_by_starlette.append(scope["path"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(Starlette, "__call__", spy)
    try:
        assert _asgi_call(app, "POST", "/listRobotApplications") == 403  # unsigned, answered by the API
        assert _asgi_call(app, "GET", "/noSuchOperation") == 403
        assert seen_by_starlette == []
        assert _asgi_call(app, "GET", "/health") == 200
        assert _asgi_call(app, "POST", "/_runner/v1/jobs/x/report") == 400  # the channel's own answer
        assert seen_by_starlette == ["/health", "/_runner/v1/jobs/x/report"]
        # A route added later (a console, say) is honoured from the next request on.
        app.router.routes.append(Route("/console", lambda _request: Response("hi"), methods=["GET"]))
        assert _asgi_call(app, "GET", "/console") == 200
        assert seen_by_starlette[-1] == "/console"
    finally:
        app.state.platform.db.dispose()
