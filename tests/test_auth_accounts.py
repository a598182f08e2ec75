"""SigV4 authentication on the live server, accounts and regions (issue 2, items 4 and 5).

One server is configured with the credentials of two accounts (and a temporary key with a session token);
requests are made with boto3's robomaker client, or signed by botocore's SigV4Auth / SigV4QueryAuth and
sent with httpx when the test needs to bend the request (expired, tampered, presigned, unsigned).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import boto3
import botocore.auth
import httpx
import pytest
import yaml
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from helpers import free_port, running_server, stop_process, wait_for_http
from openrobomaker.objectstore import ObjectStoreConfig, open_store

ACCOUNT_A, ACCOUNT_B = "111111111111", "222222222222"
KEY_A = ("AKIDACCOUNTA00000001", "secret-of-account-a")
KEY_B = ("AKIDACCOUNTB00000002", "secret-of-account-b")
KEY_T = ("ASIATEMPORARY0000003", "secret-of-the-temporary-key")
TOKEN_T = "IQoJb3JpZ2luX2VjEXAMPLE/token+with=specials"
CONFIG = {
    "credentials": [
        {"access_key_id": KEY_A[0], "secret_access_key": KEY_A[1], "account_id": ACCOUNT_A},
        {"access_key_id": KEY_B[0], "secret_access_key": KEY_B[1], "account_id": ACCOUNT_B},
        {
            "access_key_id": KEY_T[0],
            "secret_access_key": KEY_T[1],
            "account_id": ACCOUNT_A,
            "session_token": TOKEN_T,
        },
    ]
}
BUCKET = "auth-bundles"
SOURCE = {"s3Bucket": BUCKET, "s3Key": "robot.tar.gz", "architecture": "X86_64"}
SUITE = {"name": "ROS", "version": "Melodic"}


def unique(prefix: str = "auth") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def server():
    with running_server(config=CONFIG) as srv:
        store = open_store(ObjectStoreConfig(kind="local", root=str(srv.data_dir / "objects")))
        store.create_bucket(BUCKET)
        store.put_bytes(BUCKET, "robot.tar.gz", b"bundle for the auth tests")
        yield srv


def client(server, key, region="us-east-1", token=None):
    return boto3.client(
        "robomaker",
        endpoint_url=server.endpoint,
        region_name=region,
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
        aws_session_token=token,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


@pytest.fixture(scope="module")
def a(server):
    return client(server, KEY_A)


@pytest.fixture(scope="module")
def b(server):
    return client(server, KEY_B)


def create_app(rm, name: str | None = None) -> dict:
    return rm.create_robot_application(name=name or unique(), sources=[SOURCE], robotSoftwareSuite=SUITE)


def listed_names(rm) -> set[str]:
    pages = rm.get_paginator("list_robot_applications").paginate()
    return {s["name"] for page in pages for s in page["robotApplicationSummaries"]}


def exists(rm, name: str) -> bool:
    found = rm.list_robot_applications(filters=[{"name": "name", "values": [name]}])
    return bool(found["robotApplicationSummaries"])


def create_body(name: str) -> bytes:
    return json.dumps({"name": name, "sources": [SOURCE], "robotSoftwareSuite": SUITE}).encode()


def sign(server, method: str, path: str, body: bytes = b"", key=KEY_A, region="us-east-1") -> dict[str, str]:
    request = AWSRequest(
        method=method, url=f"{server.endpoint}{path}", data=body, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(*key), "robomaker", region).add_auth(request)
    return dict(request.prepare().headers.items())


def assert_auth_error(response: httpx.Response, code: str, text: str | None = None) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["__type"] == code, body
    assert response.headers["x-amzn-ErrorType"] == code
    if text is not None:
        assert text in body["message"], body


@contextlib.contextmanager
def signing_clock(monkeypatch, offset: timedelta):
    """botocore stamps X-Amz-Date from botocore.auth.get_current_datetime (naive UTC)."""
    moment = (datetime.now(UTC) + offset).replace(tzinfo=None)
    with monkeypatch.context() as patch:
        patch.setattr(botocore.auth, "get_current_datetime", lambda *args, **kwargs: moment)
        yield


# --- accounts -----------------------------------------------------------------------------------------


def test_resources_belong_to_the_account_that_made_them(a, b):
    created = create_app(a)
    assert created["arn"].startswith(f"arn:aws:robomaker:us-east-1:{ACCOUNT_A}:robot-application/")
    a.tag_resource(resourceArn=created["arn"], tags={"owner": "a"})

    with pytest.raises(b.exceptions.ResourceNotFoundException):
        b.describe_robot_application(application=created["arn"])
    with pytest.raises(b.exceptions.ResourceNotFoundException):
        b.update_robot_application(application=created["arn"], sources=[SOURCE], robotSoftwareSuite=SUITE)
    with pytest.raises(b.exceptions.ResourceNotFoundException):
        b.list_tags_for_resource(resourceArn=created["arn"])
    with pytest.raises(b.exceptions.ResourceNotFoundException):
        b.tag_resource(resourceArn=created["arn"], tags={"owner": "b"})
    with pytest.raises(b.exceptions.ResourceNotFoundException):
        b.untag_resource(resourceArn=created["arn"], tagKeys=["owner"])
    # The model gives Delete* and Create*Version no ResourceNotFoundException; either way it must fail.
    with pytest.raises(ClientError) as exc:
        b.delete_robot_application(application=created["arn"])
    assert exc.value.response["Error"]["Code"] in {"ResourceNotFoundException", "InvalidParameterException"}
    with pytest.raises(ClientError) as exc:
        b.create_robot_application_version(application=created["arn"])
    assert exc.value.response["Error"]["Code"] in {"ResourceNotFoundException", "InvalidParameterException"}
    assert created["name"] not in listed_names(b)

    # Nothing B tried had an effect.
    described = a.describe_robot_application(application=created["arn"])
    assert described["revisionId"] == created["revisionId"]
    assert described["tags"] == {"owner": "a"}
    versions = a.list_robot_applications(
        versionQualifier="ALL", filters=[{"name": "name", "values": [created["name"]]}]
    )
    assert [s["version"] for s in versions["robotApplicationSummaries"]] == ["$LATEST"]
    assert created["name"] in listed_names(a)


def test_two_accounts_may_use_the_same_name(a, b):
    name = unique("same")
    in_a = create_app(a, name)
    in_b = create_app(b, name)
    assert in_b["arn"].startswith(f"arn:aws:robomaker:us-east-1:{ACCOUNT_B}:robot-application/{name}/")
    assert in_a["arn"] != in_b["arn"]
    b.delete_robot_application(application=in_b["arn"])
    assert a.describe_robot_application(application=in_a["arn"])["name"] == name


def test_region_comes_from_the_credential_scope(server, a):
    east = create_app(a)
    west_client = client(server, KEY_A, region="us-west-2")
    assert east["name"] not in listed_names(west_client)
    with pytest.raises(west_client.exceptions.ResourceNotFoundException):
        west_client.describe_robot_application(application=east["arn"])

    west = create_app(west_client)
    assert west["arn"].startswith(f"arn:aws:robomaker:us-west-2:{ACCOUNT_A}:robot-application/")
    assert west["name"] not in listed_names(a)
    assert west_client.describe_robot_application(application=west["arn"])["name"] == west["name"]


def test_configured_credentials_replace_the_dev_key(server):
    with pytest.raises(ClientError) as exc:
        client(server, ("test", "test")).list_robot_applications()
    assert exc.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


# --- rejected signatures: 403 and no side effect --------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "code"),
    [
        ((KEY_A[0], "not-the-secret"), "InvalidSignatureException"),
        (("AKIDNOBODYKNOWS00000", "whatever"), "UnrecognizedClientException"),
    ],
    ids=["bad-secret", "unknown-key"],
)
def test_bad_credentials_are_refused_without_side_effect(server, a, key, code):
    name = unique("refused")
    with pytest.raises(ClientError) as exc:
        create_app(client(server, key), name)
    assert exc.value.response["Error"]["Code"] == code
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert exc.value.response["ResponseMetadata"]["RequestId"]
    assert not exists(a, name)


@pytest.mark.parametrize(
    ("offset", "text"),
    [(timedelta(minutes=-20), "Signature expired"), (timedelta(minutes=20), "Signature not yet current")],
    ids=["expired", "future"],
)
def test_signature_outside_the_clock_window_is_refused(server, a, monkeypatch, offset, text):
    name = unique("clock")
    body = create_body(name)
    with signing_clock(monkeypatch, offset):
        headers = sign(server, "POST", "/createRobotApplication", body)
    response = httpx.post(f"{server.endpoint}/createRobotApplication", headers=headers, content=body)
    assert_auth_error(response, "InvalidSignatureException", text)
    assert not exists(a, name)


def test_signature_within_the_clock_window_is_accepted(server, a, monkeypatch):
    name = unique("clock-ok")
    body = create_body(name)
    with signing_clock(monkeypatch, timedelta(minutes=-10)):
        headers = sign(server, "POST", "/createRobotApplication", body)
    response = httpx.post(f"{server.endpoint}/createRobotApplication", headers=headers, content=body)
    assert response.status_code == 200, response.text
    assert exists(a, name)


def test_tampered_body_is_refused(server, a):
    signed_name, sent_name = unique("signed"), unique("sent")
    headers = sign(server, "POST", "/createRobotApplication", create_body(signed_name))
    headers.pop("Content-Length", None)
    response = httpx.post(
        f"{server.endpoint}/createRobotApplication", headers=headers, content=create_body(sent_name)
    )
    assert_auth_error(response, "InvalidSignatureException", "signature")
    assert not exists(a, signed_name)
    assert not exists(a, sent_name)


def test_tampered_path_is_refused(server, a):
    created = create_app(a)
    headers = sign(server, "DELETE", "/tags/" + quote(created["arn"], safe=""))
    response = httpx.delete(
        f"{server.endpoint}/tags/{quote(created['arn'], safe='')}?tagKeys=x", headers=headers
    )
    assert_auth_error(response, "InvalidSignatureException")


def test_credential_scoped_to_another_service_is_refused(server, a):
    name = unique("scope")
    body = create_body(name)
    request = AWSRequest(method="POST", url=f"{server.endpoint}/createRobotApplication", data=body)
    SigV4Auth(Credentials(*KEY_A), "s3", "us-east-1").add_auth(request)
    response = httpx.post(request.url, headers=dict(request.prepare().headers.items()), content=body)
    assert_auth_error(response, "InvalidSignatureException", "robomaker")
    assert not exists(a, name)


def test_missing_authorization_is_refused(server, a):
    name = unique("anonymous")
    response = httpx.post(
        f"{server.endpoint}/createRobotApplication",
        headers={"Content-Type": "application/json"},
        content=create_body(name),
    )
    assert_auth_error(response, "MissingAuthenticationTokenException")
    assert response.headers.get("x-amzn-RequestId")
    assert not exists(a, name)


# --- presigned URLs -------------------------------------------------------------------------------------


def presign(server, arn: str, key=KEY_A, expires: int = 300) -> str:
    request = AWSRequest(method="GET", url=f"{server.endpoint}/tags/{quote(arn, safe='')}")
    SigV4QueryAuth(Credentials(*key), "robomaker", "us-east-1", expires=expires).add_auth(request)
    return request.url


def test_presigned_list_tags_for_resource(server, a, b, monkeypatch):
    created = create_app(a)
    a.tag_resource(resourceArn=created["arn"], tags={"team": "robots"})
    url = presign(server, created["arn"])
    assert "X-Amz-Signature=" in url and "Authorization" not in url
    response = httpx.get(url)
    assert response.status_code == 200, response.text
    assert response.json() == {"tags": {"team": "robots"}}

    # Another account's presigned URL for the same ARN does not see it.
    assert httpx.get(presign(server, created["arn"], key=KEY_B)).status_code == 400

    # botocore appends X-Amz-Signature last; change its final hex digit.
    tampered = url[:-1] + ("1" if url.endswith("0") else "0")
    assert_auth_error(httpx.get(tampered), "InvalidSignatureException")

    with signing_clock(monkeypatch, timedelta(minutes=-5)):
        stale = presign(server, created["arn"], expires=60)
    assert_auth_error(httpx.get(stale), "InvalidSignatureException", "expired")


# --- temporary credentials -------------------------------------------------------------------------------


def test_a_key_with_a_session_token_requires_the_token(server, a):
    name = unique("temporary")
    with pytest.raises(ClientError) as exc:
        create_app(client(server, KEY_T), name)
    assert exc.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as exc:
        create_app(client(server, KEY_T, token="not-the-token"), name)
    assert exc.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert not exists(a, name)

    created = create_app(client(server, KEY_T, token=TOKEN_T), name)
    # The temporary key belongs to account A: A sees the application.
    assert created["arn"].startswith(f"arn:aws:robomaker:us-east-1:{ACCOUNT_A}:")
    assert exists(a, name)


def test_a_token_on_a_permanent_key_is_refused(server):
    with pytest.raises(ClientError) as exc:
        client(server, KEY_A, token="a-token-nobody-issued").list_robot_applications()
    assert exc.value.response["Error"]["Code"] == "UnrecognizedClientException"


# --- binding to a non-loopback address ---------------------------------------------------------------------


def serve_command(port: int, data_dir, config=None) -> list[str]:
    command = [sys.executable, "-m", "openrobomaker.cli", "serve", "--host", "0.0.0.0", "--port", str(port)]
    command += ["--data-dir", str(data_dir)]
    if config is not None:
        command += ["--config", str(config)]
    return command


def test_public_address_without_credentials_refuses_to_start(tmp_path):
    port = free_port()
    result = subprocess.run(
        serve_command(port, tmp_path / "data"), capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "0.0.0.0" in result.stderr and "credentials" in result.stderr
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)


def test_public_address_with_credentials_starts(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"credentials": [CONFIG["credentials"][0]]}))
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            serve_command(port, tmp_path / "data", config),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", process=process)
        rm = boto3.client(
            "robomaker",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id=KEY_A[0],
            aws_secret_access_key=KEY_A[1],
        )
        assert rm.list_robot_applications()["robotApplicationSummaries"] == []
    finally:
        stop_process(process)
