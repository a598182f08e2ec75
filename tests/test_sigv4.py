"""Tests for openrobomaker.api.sigv4: requests are signed by botocore itself, then verified from the wire."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlsplit

import boto3
import botocore.auth
import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from openrobomaker.api import sigv4
from openrobomaker.api.sigv4 import AuthError, Credential, Identity, verify_request

ENDPOINT = "http://localhost:8080"
REGION = "us-west-2"
ACCOUNT_ID = "111122223333"
ACCESS_KEY = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TEMP_KEY = "ASIATEMPEXAMPLE"
TEMP_SECRET = "temporary/secret+key"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE/token+with=specials"
ARN = "arn:aws:robomaker:us-east-1:000000000000:robot-application/hello/1551203427717"
ENCODED_ARN = quote(ARN, safe="")
SIGNED_AT = datetime(2019, 3, 1, 12, 0, 0, tzinfo=UTC)

PERMANENT = Credential(ACCESS_KEY, SECRET, ACCOUNT_ID, principal="user:alice")
TEMPORARY = Credential(TEMP_KEY, TEMP_SECRET, ACCOUNT_ID, session_token=TOKEN, principal="robot:" + ARN)
CREDENTIALS = {c.access_key_id: c for c in (PERMANENT, TEMPORARY)}

MSG_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)
MSG_BAD_TOKEN = "The security token included in the request is invalid."


@dataclass(frozen=True)
class Wire:
    """A request as the server sees it: what urllib3 would put on the socket."""

    method: str
    raw_path: str
    raw_query: str
    headers: list[tuple[str, str]]
    body: bytes


@pytest.fixture(autouse=True)
def frozen_signing_clock(monkeypatch):
    # botocore stamps X-Amz-Date from this function; freezing it makes the expected messages exact.
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: SIGNED_AT.replace(tzinfo=None))


def lookup(access_key_id: str) -> Credential | None:
    return CREDENTIALS.get(access_key_id)


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def wire_from_request(request: AWSRequest, *, keep_repeated_headers: bool = False) -> Wire:
    """Prepare a signed request and return what goes on the wire, adding the Host header urllib3 adds."""
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    source = request.headers.items() if keep_repeated_headers else prepared.headers.items()
    headers = [(name, _text(value)) for name, value in source]
    headers.append(("Host", parts.netloc))
    body = prepared.body or b""
    return Wire(
        prepared.method, parts.path, parts.query, headers, body.encode() if isinstance(body, str) else body
    )


def sign_header(
    method: str,
    path_and_query: str,
    body: bytes = b"",
    *,
    headers: dict[str, str] | HTTPHeaders | None = None,
    key: str = ACCESS_KEY,
    secret: str = SECRET,
    token: str | None = None,
    service: str = "robomaker",
    region: str = REGION,
    context: dict | None = None,
    keep_repeated_headers: bool = False,
) -> Wire:
    request = AWSRequest(method=method, url=ENDPOINT + path_and_query, data=body, headers=headers)
    request.context.update(context or {})
    SigV4Auth(Credentials(key, secret, token), service, region).add_auth(request)
    return wire_from_request(request, keep_repeated_headers=keep_repeated_headers)


def presign(
    method: str,
    path_and_query: str,
    *,
    expires: int = 300,
    key: str = ACCESS_KEY,
    secret: str = SECRET,
    token: str | None = None,
) -> Wire:
    request = AWSRequest(method=method, url=ENDPOINT + path_and_query)
    SigV4QueryAuth(Credentials(key, secret, token), "robomaker", REGION, expires=expires).add_auth(request)
    return wire_from_request(request)


def verify(wire: Wire, **kwargs) -> Identity:
    kwargs.setdefault("now", SIGNED_AT + timedelta(seconds=5))
    return verify_request(
        wire.method, wire.raw_path, wire.raw_query, wire.headers, wire.body, lookup, **kwargs
    )


def assert_rejected(wire: Wire, code: str, message: str | None = None, **kwargs) -> AuthError:
    with pytest.raises(AuthError) as caught:
        verify(wire, **kwargs)
    assert caught.value.code == code
    assert caught.value.status == 403
    if message is not None:
        assert caught.value.message == message
    return caught.value


def with_header(wire: Wire, name: str, value: str | None) -> Wire:
    """Replace (or with None, drop) every header called ``name``."""
    kept = [(n, v) for n, v in wire.headers if n.lower() != name.lower()]
    return replace(wire, headers=kept + ([(name, value)] if value is not None else []))


def header(wire: Wire, name: str) -> str:
    return next(v for n, v in wire.headers if n.lower() == name.lower())


def describe_body() -> bytes:
    return json.dumps({"application": ARN}).encode()


# --------------------------------------------------------------------------------------------------------
# Requests signed by botocore verify
# --------------------------------------------------------------------------------------------------------


def test_post_json_operation_verifies():
    wire = sign_header(
        "POST", "/describeRobotApplication", describe_body(), headers={"Content-Type": "application/json"}
    )
    identity = verify(wire)
    assert identity == Identity(
        account_id=ACCOUNT_ID, region=REGION, access_key_id=ACCESS_KEY, principal="user:alice"
    )


def test_get_tags_with_percent_encoded_arn_verifies():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}")
    assert wire.raw_path == f"/tags/{ENCODED_ARN}"
    assert "%3A" in wire.raw_path and "%2F" in wire.raw_path
    assert verify(wire).account_id == ACCOUNT_ID


def test_delete_tags_with_repeated_keys_and_spaces_verifies():
    wire = sign_header("DELETE", f"/tags/{ENCODED_ARN}?tagKeys=a&tagKeys=b%20c")
    assert wire.raw_query == "tagKeys=a&tagKeys=b%20c"
    identity = verify(wire)
    assert (identity.account_id, identity.region) == (ACCOUNT_ID, REGION)


def test_query_order_on_the_wire_does_not_matter_but_values_do():
    wire = sign_header("DELETE", f"/tags/{ENCODED_ARN}?tagKeys=b%20c&tagKeys=a")
    assert verify(replace(wire, raw_query="tagKeys=a&tagKeys=b%20c")).account_id == ACCOUNT_ID
    assert_rejected(
        replace(wire, raw_query="tagKeys=a&tagKeys=b%20d"), "InvalidSignatureException", MSG_MISMATCH
    )
    assert_rejected(replace(wire, raw_query="tagKeys=a"), "InvalidSignatureException", MSG_MISMATCH)


def test_presigned_get_verifies():
    wire = presign("GET", f"/tags/{ENCODED_ARN}")
    assert "X-Amz-Signature=" in wire.raw_query
    assert not any(name.lower() == "authorization" for name, _ in wire.headers)
    identity = verify(wire)
    assert (identity.account_id, identity.region, identity.access_key_id) == (ACCOUNT_ID, REGION, ACCESS_KEY)


def test_presigned_with_operation_query_and_session_token_verifies():
    wire = presign("DELETE", f"/tags/{ENCODED_ARN}?tagKeys=a", key=TEMP_KEY, secret=TEMP_SECRET, token=TOKEN)
    assert "X-Amz-Security-Token=" in wire.raw_query
    assert verify(wire).principal == "robot:" + ARN


def test_presigned_with_unsigned_payload_verifies():
    # Signers other than botocore (and S3-style presigners) put UNSIGNED-PAYLOAD in the canonical request.
    request = AWSRequest(method="GET", url=f"{ENDPOINT}/tags/{ENCODED_ARN}")
    signer = SigV4QueryAuth(Credentials(ACCESS_KEY, SECRET), "robomaker", REGION, expires=300)
    signer.payload = lambda _request: "UNSIGNED-PAYLOAD"
    signer.add_auth(request)
    assert verify(wire_from_request(request)).account_id == ACCOUNT_ID


def test_headers_may_be_a_case_insensitive_mapping():
    wire = sign_header(
        "POST", "/describeRobotApplication", describe_body(), headers={"Content-Type": "application/json"}
    )
    as_mapping = {name.upper(): value for name, value in wire.headers}
    assert (
        verify_request(
            wire.method, wire.raw_path, wire.raw_query, as_mapping, wire.body, lookup, now=SIGNED_AT
        ).account_id
        == ACCOUNT_ID
    )


def test_repeated_signed_header_values_are_joined_like_botocore():
    headers = HTTPHeaders()
    headers.add_header("X-Amz-Meta-Thing", "one")
    headers.add_header("X-Amz-Meta-Thing", "  two   words ")
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}", headers=headers, keep_repeated_headers=True)
    assert "x-amz-meta-thing" in header(wire, "Authorization")
    assert [v for n, v in wire.headers if n.lower() == "x-amz-meta-thing"] == ["one", "  two   words "]
    assert verify(wire).account_id == ACCOUNT_ID
    swapped = [(n, v) for n, v in wire.headers if n.lower() != "x-amz-meta-thing"]
    swapped += [("X-Amz-Meta-Thing", "  two   words "), ("X-Amz-Meta-Thing", "one")]
    assert_rejected(replace(wire, headers=swapped), "InvalidSignatureException", MSG_MISMATCH)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "",
        "/a/./b/../c//d/",
        "/~user/with%20space/x+y",
        "/tags/" + quote("arn:aws:robomaker:eu-west-1:1:robot/ü é/1", safe=""),
        "/deploymentJobs/%7E%21%2A%27%28%29",
    ],
)
def test_unusual_paths_canonicalise_like_botocore(path):
    wire = sign_header("GET", path)
    assert verify(wire).account_id == ACCOUNT_ID


def test_date_header_instead_of_x_amz_date_verifies():
    # When the request already has a Date header botocore signs with it and sends no X-Amz-Date.
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}", headers={"Date": "placeholder"})
    assert not any(name.lower() == "x-amz-date" for name, _ in wire.headers)
    assert header(wire, "Date") == "Fri, 01 Mar 2019 12:00:00 -0000"
    assert verify(wire).account_id == ACCOUNT_ID


def test_declared_payload_hash_is_honoured():
    body = describe_body()
    wire = sign_header(
        "POST",
        "/describeRobotApplication",
        body,
        headers={
            "Content-Type": "application/json",
            "X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest(),
        },
    )
    assert verify(wire).account_id == ACCOUNT_ID
    tampered = replace(wire, body=body.replace(b"hello", b"evil!"))
    assert_rejected(
        tampered,
        "InvalidSignatureException",
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
    )


def test_unsigned_payload_header_is_accepted():
    # botocore sends UNSIGNED-PAYLOAD when payload signing is disabled for an operation (https only).
    request = AWSRequest(
        method="POST",
        url="https://localhost:8443/describeRobotApplication",
        data=describe_body(),
        headers={"Content-Type": "application/json"},
    )
    request.context["payload_signing_enabled"] = False
    SigV4Auth(Credentials(ACCESS_KEY, SECRET), "robomaker", REGION).add_auth(request)
    wire = wire_from_request(request)
    assert header(wire, "X-Amz-Content-SHA256") == "UNSIGNED-PAYLOAD"
    assert verify(wire).account_id == ACCOUNT_ID


def test_verification_is_within_the_skew_window_on_both_sides():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}")
    assert verify(wire, now=SIGNED_AT + timedelta(minutes=15)).region == REGION
    assert verify(wire, now=SIGNED_AT - timedelta(minutes=15)).region == REGION
    assert verify(wire, now=SIGNED_AT.replace(tzinfo=None)).region == REGION  # naive means UTC


# --------------------------------------------------------------------------------------------------------
# Rejections
# --------------------------------------------------------------------------------------------------------


def test_wrong_secret_is_rejected():
    wire = sign_header("POST", "/describeRobotApplication", describe_body(), secret="not-the-secret")
    assert_rejected(wire, "InvalidSignatureException", MSG_MISMATCH)


def test_unknown_access_key_is_rejected():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}", key="AKIDUNKNOWN")
    assert_rejected(wire, "UnrecognizedClientException", MSG_BAD_TOKEN)


def test_missing_authentication_is_rejected():
    wire = Wire("GET", f"/tags/{ENCODED_ARN}", "", [("Host", "localhost:8080")], b"")
    assert_rejected(wire, "MissingAuthenticationTokenException", "Missing Authentication Token")


def test_request_signed_twenty_minutes_ago_is_expired():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}")
    assert_rejected(
        wire,
        "InvalidSignatureException",
        "Signature expired: 20190301T120000Z is now earlier than 20190301T120500Z (20190301T122000Z - 15 min.)",
        now=SIGNED_AT + timedelta(minutes=20),
    )


def test_request_from_the_future_is_not_yet_current():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}")
    assert_rejected(
        wire,
        "InvalidSignatureException",
        "Signature not yet current: 20190301T120000Z is still later than 20190301T115500Z "
        "(20190301T114000Z + 15 min.)",
        now=SIGNED_AT - timedelta(minutes=20),
    )


def test_custom_skew_window_is_used():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}")
    error = assert_rejected(
        wire, "InvalidSignatureException", now=SIGNED_AT + timedelta(seconds=90), max_skew_seconds=60
    )
    assert error.message.endswith("(20190301T120130Z - 1 min.)")


def test_presigned_url_expires_after_x_amz_expires():
    wire = presign("GET", f"/tags/{ENCODED_ARN}", expires=60)
    assert verify(wire, now=SIGNED_AT + timedelta(seconds=60)).account_id == ACCOUNT_ID
    assert_rejected(
        wire,
        "InvalidSignatureException",
        "Signature expired: 20190301T120000Z is now earlier than 20190301T120001Z (20190301T120101Z - 60 sec.)",
        now=SIGNED_AT + timedelta(seconds=61),
    )


def test_presigned_url_is_still_bound_by_the_skew_window():
    wire = presign("GET", f"/tags/{ENCODED_ARN}", expires=3600)
    error = assert_rejected(wire, "InvalidSignatureException", now=SIGNED_AT + timedelta(minutes=20))
    assert error.message.startswith("Signature expired: 20190301T120000Z")


@pytest.mark.parametrize("expires", ["0", "604801", "-5", "1.5", "abc"])
def test_presigned_url_with_invalid_expires_is_rejected(expires):
    wire = presign("GET", f"/tags/{ENCODED_ARN}")
    raw_query = wire.raw_query.replace("X-Amz-Expires=300", f"X-Amz-Expires={expires}")
    error = assert_rejected(replace(wire, raw_query=raw_query), "IncompleteSignatureException")
    assert "X-Amz-Expires" in error.message


def test_presigned_url_missing_parameters_is_incomplete():
    wire = presign("GET", f"/tags/{ENCODED_ARN}")
    raw_query = "&".join(p for p in wire.raw_query.split("&") if not p.startswith("X-Amz-Signature="))
    assert_rejected(
        replace(wire, raw_query=raw_query),
        "IncompleteSignatureException",
        "AWS query-string parameters must include 'X-Amz-Signature'. Re-examine the query-string parameters.",
    )


def test_tampered_body_is_rejected():
    wire = sign_header(
        "POST", "/describeRobotApplication", describe_body(), headers={"Content-Type": "application/json"}
    )
    assert_rejected(
        replace(wire, body=wire.body.replace(b"hello", b"evil!")), "InvalidSignatureException", MSG_MISMATCH
    )


def test_tampered_path_is_rejected():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}")
    tampered = replace(wire, raw_path=wire.raw_path.replace("hello", "other"))
    assert_rejected(tampered, "InvalidSignatureException", MSG_MISMATCH)


def test_decoded_path_is_not_the_signed_path():
    # The canonical URI is built from the wire form; a decoded path must not be accepted as equivalent.
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}")
    assert_rejected(replace(wire, raw_path=f"/tags/{ARN}"), "InvalidSignatureException", MSG_MISMATCH)


def test_tampered_presigned_query_is_rejected():
    wire = presign("DELETE", f"/tags/{ENCODED_ARN}?tagKeys=a")
    assert_rejected(
        replace(wire, raw_query=wire.raw_query.replace("tagKeys=a", "tagKeys=b")), "InvalidSignatureException"
    )


def test_wrong_service_in_scope_is_rejected():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}", service="lambda")
    assert_rejected(
        wire, "InvalidSignatureException", "Credential should be scoped to correct service: 'robomaker'. "
    )


def test_scope_date_must_match_request_day():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}")
    moved = with_header(wire, "X-Amz-Date", "20190302T000100Z")
    assert_rejected(
        moved,
        "InvalidSignatureException",
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
        "'20190301' != '20190302', from '20190302T000100Z'.",
        now=datetime(2019, 3, 2, 0, 1, tzinfo=UTC),
    )


def test_bad_terminator_and_empty_region_are_reported_together():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}")
    auth = header(wire, "Authorization").replace(
        f"/{REGION}/robomaker/aws4_request", "//robomaker/aws5_request"
    )
    assert_rejected(
        with_header(wire, "Authorization", auth),
        "InvalidSignatureException",
        "Credential should be scoped to a valid region, not ''. "
        "Credential should be scoped with a valid terminator: 'aws4_request', not 'aws5_request'. ",
    )


def test_session_token_matching_the_credential_is_accepted():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}", key=TEMP_KEY, secret=TEMP_SECRET, token=TOKEN)
    identity = verify(wire)
    assert (identity.access_key_id, identity.principal) == (TEMP_KEY, "robot:" + ARN)


def test_session_token_required_but_missing_is_rejected():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}", key=TEMP_KEY, secret=TEMP_SECRET)
    assert_rejected(wire, "UnrecognizedClientException", MSG_BAD_TOKEN)


def test_wrong_session_token_is_rejected():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}", key=TEMP_KEY, secret=TEMP_SECRET, token=TOKEN + "x")
    assert_rejected(wire, "UnrecognizedClientException", MSG_BAD_TOKEN)


def test_session_token_for_a_permanent_key_is_rejected():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}", token=TOKEN)
    assert_rejected(wire, "UnrecognizedClientException", MSG_BAD_TOKEN)


def test_presigned_session_token_must_match():
    wire = presign("GET", f"/tags/{ENCODED_ARN}", key=TEMP_KEY, secret=TEMP_SECRET, token="other-token")
    assert_rejected(wire, "UnrecognizedClientException", MSG_BAD_TOKEN)
    without = presign("GET", f"/tags/{ENCODED_ARN}", key=TEMP_KEY, secret=TEMP_SECRET)
    assert_rejected(without, "UnrecognizedClientException", MSG_BAD_TOKEN)


def test_non_sigv4_authorization_header_is_incomplete():
    wire = with_header(sign_header("GET", f"/tags/{ENCODED_ARN}"), "Authorization", "Bearer abc.def")
    assert_rejected(
        wire,
        "IncompleteSignatureException",
        "'abc.def' not a valid key=value pair (missing equal-sign) in Authorization header: 'Bearer abc.def'.",
    )


def test_authorization_header_missing_parameters_is_incomplete():
    wire = with_header(
        sign_header("GET", f"/tags/{ENCODED_ARN}"), "Authorization", "AWS4-HMAC-SHA256 Credential=x"
    )
    wire = with_header(wire, "X-Amz-Date", None)
    assert_rejected(
        wire,
        "IncompleteSignatureException",
        "Authorization header requires 'SignedHeaders' parameter. "
        "Authorization header requires 'Signature' parameter. "
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. "
        "Authorization=AWS4-HMAC-SHA256 Credential=x",
    )


def test_unsupported_algorithm_is_incomplete():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}")
    auth = header(wire, "Authorization").replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512")
    error = assert_rejected(with_header(wire, "Authorization", auth), "IncompleteSignatureException")
    assert error.message.startswith("Unsupported AWS 'algorithm': 'AWS4-HMAC-SHA512'")


def test_malformed_date_is_incomplete():
    wire = with_header(sign_header("GET", f"/tags/{ENCODED_ARN}"), "X-Amz-Date", "2019-03-01T12:00:00Z")
    error = assert_rejected(wire, "IncompleteSignatureException")
    assert error.message.startswith("Date must be in ISO-8601 'basic format'. Got '2019-03-01T12:00:00Z'.")


def test_credential_without_five_parts_is_incomplete():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}")
    auth = header(wire, "Authorization").replace("/aws4_request", "")
    error = assert_rejected(with_header(wire, "Authorization", auth), "IncompleteSignatureException")
    assert error.message.startswith("Credential must have exactly 5 slash-delimited elements")


def test_unsigned_host_is_rejected():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}")
    auth = header(wire, "Authorization").replace("SignedHeaders=host;", "SignedHeaders=")
    assert_rejected(
        with_header(wire, "Authorization", auth),
        "InvalidSignatureException",
        "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
    )


def test_header_and_query_auth_together_are_rejected():
    presigned = presign("GET", f"/tags/{ENCODED_ARN}")
    signed = sign_header("GET", f"/tags/{ENCODED_ARN}")
    both = replace(
        presigned, headers=presigned.headers + [("Authorization", header(signed, "Authorization"))]
    )
    assert_rejected(
        both,
        "InvalidSignatureException",
        "Found both 'X-Amz-Algorithm' as a query-string param and 'Authorization' as HTTP header.",
    )


def test_changed_signed_header_is_rejected():
    wire = sign_header(
        "POST", "/describeRobotApplication", describe_body(), headers={"Content-Type": "application/json"}
    )
    assert_rejected(
        with_header(wire, "Content-Type", "text/plain"), "InvalidSignatureException", MSG_MISMATCH
    )
    assert_rejected(with_header(wire, "Host", "evil.example:8080"), "InvalidSignatureException", MSG_MISMATCH)


def test_auth_error_carries_code_message_and_status():
    error = AuthError("InvalidSignatureException", "nope")
    assert (error.code, error.message, error.status) == ("InvalidSignatureException", "nope", 403)
    assert "InvalidSignatureException" in str(error)


# --------------------------------------------------------------------------------------------------------
# What a real boto3 client sends
# --------------------------------------------------------------------------------------------------------


class _FakeRaw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_kwargs):
        yield self._body


def test_requests_from_a_real_boto3_client_verify(monkeypatch):
    monkeypatch.undo()  # sign with the real clock, and verify against the real clock (now=None)
    captured: list = []

    def capture_and_answer(request, **_kwargs):
        captured.append(request)
        return AWSResponse(request.url, 200, {"Content-Type": "application/json"}, _FakeRaw(b"{}"))

    client = boto3.client(
        "robomaker",
        region_name="eu-west-1",
        endpoint_url=ENDPOINT,
        aws_access_key_id=TEMP_KEY,
        aws_secret_access_key=TEMP_SECRET,
        aws_session_token=TOKEN,
    )
    client.meta.events.register("before-send", capture_and_answer)
    client.describe_robot_application(application=ARN)
    client.list_tags_for_resource(resourceArn=ARN)
    client.untag_resource(resourceArn=ARN, tagKeys=["a", "b c", "ü/x"])
    client.tag_resource(resourceArn=ARN, tags={"k": "v w"})

    wires = [wire_from_request_prepared(request) for request in captured]
    describe, list_tags, untag, tag = wires
    assert (describe.method, describe.raw_path) == ("POST", "/describeRobotApplication")
    assert (list_tags.method, list_tags.raw_path) == ("GET", f"/tags/{ENCODED_ARN}")
    assert (untag.method, untag.raw_path) == ("DELETE", f"/tags/{ENCODED_ARN}")
    assert untag.raw_query == "tagKeys=a&tagKeys=b%20c&tagKeys=%C3%BC%2Fx"
    assert tag.method == "POST"
    for wire in wires:
        identity = verify_request(wire.method, wire.raw_path, wire.raw_query, wire.headers, wire.body, lookup)
        assert identity == Identity(ACCOUNT_ID, "eu-west-1", TEMP_KEY, "robot:" + ARN)

    stripped = with_header(untag, "X-Amz-Security-Token", None)
    with pytest.raises(AuthError) as caught:
        verify_request(stripped.method, stripped.raw_path, stripped.raw_query, stripped.headers, b"", lookup)
    assert caught.value.code == "InvalidSignatureException"


def wire_from_request_prepared(prepared) -> Wire:
    """The wire form of an AWSPreparedRequest captured from boto3's before-send event."""
    parts = urlsplit(prepared.url)
    headers = [(name, _text(value)) for name, value in prepared.headers.items()]
    headers.append(("Host", parts.netloc))
    body = prepared.body or b""
    return Wire(
        prepared.method, parts.path, parts.query, headers, body.encode() if isinstance(body, str) else body
    )


# --------------------------------------------------------------------------------------------------------
# Caches on the hot path (derived signing keys, parsed dates, canonical paths) never change an answer
# --------------------------------------------------------------------------------------------------------


def test_a_cached_signing_key_does_not_let_another_secret_through():
    good = sign_header("POST", "/describeRobotApplication", describe_body())
    assert verify(good).account_id == ACCOUNT_ID  # derives and caches the key for (SECRET, day, region)
    bad = sign_header("POST", "/describeRobotApplication", describe_body(), secret=SECRET + "x")
    assert_rejected(bad, "InvalidSignatureException", MSG_MISMATCH)
    assert verify(good).account_id == ACCOUNT_ID


def test_signing_keys_are_per_region_and_day():
    assert verify(sign_header("GET", f"/tags/{ENCODED_ARN}", region="eu-west-1")).region == "eu-west-1"
    assert verify(sign_header("GET", f"/tags/{ENCODED_ARN}")).region == REGION
    next_day = SIGNED_AT + timedelta(days=1)
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}")
    later = with_header(wire, "X-Amz-Date", next_day.strftime("%Y%m%dT%H%M%SZ"))
    # The scope still names the first day: refused before any key is derived.
    assert_rejected(later, "InvalidSignatureException", now=next_day)


def test_a_long_region_or_path_is_verified_without_being_cached():
    # Region and path come from the request: long ones must not be able to fill the caches.
    keys, paths = sigv4._cached_signing_key.cache_info, sigv4._cached_canonical_uri.cache_info
    before = keys().currsize, paths().currsize
    region = "r" * 300
    short_path = "/tags/" + quote(ARN + "-short-and-new", safe="")
    identity = verify(sign_header("GET", short_path, region=region))
    assert identity.region == region
    long_path = "/tags/" + quote(ARN + "x" * 300, safe="")
    assert verify(sign_header("GET", long_path, region="eu-central-1")).account_id == ACCOUNT_ID
    assert keys().currsize == before[0] + 1  # eu-central-1 only
    assert paths().currsize == before[1] + 1  # the short path only
    tampered = with_header(sign_header("GET", long_path), "Host", "elsewhere:1")
    assert_rejected(tampered, "InvalidSignatureException", MSG_MISMATCH)


@pytest.mark.parametrize(
    "amz_date", ["20190230T120000Z", "20191301T120000Z", "20190301T240000Z", "20190301T126000Z"]
)
def test_impossible_calendar_dates_are_incomplete(amz_date):
    wire = with_header(sign_header("GET", f"/tags/{ENCODED_ARN}"), "X-Amz-Date", amz_date)
    error = assert_rejected(wire, "IncompleteSignatureException")
    assert error.message.startswith(f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'.")


def test_the_same_date_parses_the_same_for_clock_checks_each_time():
    wire = sign_header("GET", f"/tags/{ENCODED_ARN}")
    for _ in range(3):  # the second and third hit the parsed-date cache
        assert verify(wire).account_id == ACCOUNT_ID
        assert_rejected(wire, "InvalidSignatureException", now=SIGNED_AT + timedelta(minutes=16))
