"""Server-side verification of AWS Signature Version 4 (SigV4) requests.

``verify_request`` takes a request exactly as it arrived on the wire (method, percent-encoded path, raw
query string, headers, body bytes), rebuilds the canonical request the way botocore's ``SigV4Auth`` /
``SigV4QueryAuth`` (botocore 1.40.59) built it on the client, and checks the HMAC. It is pure: no I/O,
no clock reads when ``now`` is given, no logging; the only outside call is ``lookup``.

Canonicalisation (what botocore does for a rest-json, non-S3 service):

* Canonical URI: ``quote(normalize_url_path(path), safe='/~')`` applied to the already percent-encoded
  wire path, i.e. each ``%`` is encoded again (``%3A`` -> ``%253A``). This double encoding is what
  ``SigV4Auth._normalize_url_path`` does for every service except S3.
* Canonical query: the raw ``key=value`` pairs of the wire query, *not* re-encoded, sorted as
  ``(key, value)`` tuples and joined with ``&`` (``SigV4Auth._canonical_query_string_url``). For a
  presigned URL the ``X-Amz-Signature`` pair is left out, because botocore appends it after signing.
* Canonical headers: the headers named in ``SignedHeaders``, in that order, each value whitespace-collapsed
  (``' '.join(v.split())``) and repeated values joined with ``,``.
* Payload hash: the ``X-Amz-Content-Sha256`` header verbatim when present (botocore does the same), else
  the SHA-256 of the body. A presigned URL may also have been signed with ``UNSIGNED-PAYLOAD``.

Time rules: the request time (``X-Amz-Date``, else an RFC 1123 ``Date`` header) must lie within
``max_skew_seconds`` of ``now``, for both forms (the non-S3 AWS front door applies the 15 minute window to
presigned requests as well, see aws/aws-sdk-go#2167 about STS). A presigned URL is additionally expired once ``now`` passes
``X-Amz-Date + X-Amz-Expires``; ``X-Amz-Expires`` must be 1..604800.

Errors. Every failure raises ``AuthError(code, message, status)`` with HTTP 403. The codes and messages are
the ones the AWS front door returns for JSON/rest-json services (Lambda, API Gateway, DynamoDB, ...);
sources: AWS responses recorded in mhart/dynalite ``index.js`` (which also documents AWS's check order),
API Gateway "Gateway response types" docs (MISSING_AUTHENTICATION_TOKEN, INVALID_SIGNATURE,
EXPIRED_TOKEN are 403), the AWS SigV4 troubleshooting guide, and client reports (aws/chalice#828,
iann0036/cloud9-sync#10, iann0036/iamlive#58, aws/aws-sdk-js#254, aws/aws-sdk-go#1850). Some of those
services answered 400 for the "incomplete" cases; we use 403 throughout because API Gateway does and our
API contract requires 403 for any authentication failure.

Which code for which case (all HTTP 403):

* no ``Authorization`` header and no ``X-Amz-Algorithm`` query parameter:
  ``MissingAuthenticationTokenException`` "Missing Authentication Token".
* both an ``Authorization`` header and ``X-Amz-Algorithm``: ``InvalidSignatureException``
  "Found both 'X-Amz-Algorithm' as a query-string param and 'Authorization' as HTTP header.".
* the request is signed but its signature parameters are malformed -- ``Authorization`` not made of
  ``key=value`` pairs, a required parameter or the date missing, an algorithm other than AWS4-HMAC-SHA256,
  a date not in ISO-8601 basic format, a credential without exactly 5 ``/`` parts, a bad ``X-Amz-Expires``:
  ``IncompleteSignatureException`` with AWS's wording ("Authorization header requires 'Credential'
  parameter. ...", "AWS query-string parameters must include ...", "Unsupported AWS 'algorithm': ...",
  "Date must be in ISO-8601 'basic format'. ...", "Credential must have exactly 5 slash-delimited ...").
* ``host`` missing from the signed headers, or a credential scope with the wrong service, an empty region,
  a terminator other than ``aws4_request`` or a date other than the request's day:
  ``InvalidSignatureException`` ("'Host' or ':authority' must be a 'SignedHeader' ...",
  "Credential should be scoped to correct service: 'robomaker'. ", "Date in Credential scope does not
  match YYYYMMDD from ISO-8601 version of date from HTTP: ...").
* request time outside the clock-skew window: ``InvalidSignatureException`` "Signature expired:
  20190101T000000Z is now earlier than 20190101T001500Z (20190101T003000Z - 15 min.)" or "Signature not
  yet current: ... is still later than ... (... + 15 min.)".
* presigned URL past ``X-Amz-Date + X-Amz-Expires``: ``InvalidSignatureException`` "Signature expired:
  <X-Amz-Date> is now earlier than <now - expires> (<now> - <expires> sec.)".
* unknown access key, or a session token that is missing, wrong, or present for a permanent key:
  ``UnrecognizedClientException`` "The security token included in the request is invalid.".
* ``X-Amz-Content-Sha256`` that is neither ``UNSIGNED-PAYLOAD`` nor the body's SHA-256:
  ``InvalidSignatureException`` "The provided 'x-amz-content-sha256' header does not match what was
  computed.".
* anything else that makes the HMAC differ (wrong secret, tampered path/query/headers/body):
  ``InvalidSignatureException`` "The request signature we calculated does not match the signature you
  provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for
  details.".

The presigned-expiry message has no recorded AWS sample for non-S3 services; it follows the shape of the
clock-skew message. The body-hash message is S3's ``XAmzContentSHA256Mismatch`` text under the
``InvalidSignatureException`` code, since the rest-json front door has no dedicated code for it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import NamedTuple
from urllib.parse import unquote

from botocore.auth import SIGV4_TIMESTAMP, UNSIGNED_PAYLOAD
from botocore.compat import quote
from botocore.utils import normalize_url_path

__all__ = ["AuthError", "Credential", "Identity", "verify_request"]

ALGORITHM = "AWS4-HMAC-SHA256"
SCOPE_TERMINATOR = "aws4_request"
MAX_PRESIGN_EXPIRES = 604800  # one week: the SigV4 signing key is only valid that long
_CACHED_MAX_LEN = 256  # longest path or region whose derived value is cached

MISSING_AUTH = "MissingAuthenticationTokenException"
INCOMPLETE = "IncompleteSignatureException"
INVALID_SIGNATURE = "InvalidSignatureException"
UNRECOGNIZED_CLIENT = "UnrecognizedClientException"

MSG_MISSING_AUTH = "Missing Authentication Token"
MSG_INVALID_TOKEN = "The security token included in the request is invalid."
MSG_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)
MSG_BOTH_MECHANISMS = (
    "Found both 'X-Amz-Algorithm' as a query-string param and 'Authorization' as HTTP header."
)
MSG_HOST_NOT_SIGNED = "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
MSG_PAYLOAD_HASH_MISMATCH = "The provided 'x-amz-content-sha256' header does not match what was computed."

_AMZ_DATE_RE = re.compile(r"^\d{8}T\d{6}Z$")
_HEADER_PARAMS = ("Credential", "SignedHeaders", "Signature")
_QUERY_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-SignedHeaders",
    "X-Amz-Date",
)

Headers = Mapping[str, str] | Iterable[tuple[str, str]]
QueryPairs = list[tuple[str, str]]


@dataclass(frozen=True)
class Credential:
    access_key_id: str
    secret_access_key: str
    account_id: str
    session_token: str | None = None  # when set, the request must carry this exact X-Amz-Security-Token
    principal: str | None = None  # free text, e.g. "robot:<arn>" or "job:<arn>"; just carried through


@dataclass(frozen=True)
class Identity:
    account_id: str
    region: str  # from the credential scope
    access_key_id: str
    principal: str | None


class AuthError(Exception):
    """An authentication failure, carrying the AWS error code, message and HTTP status to answer with."""

    def __init__(self, code: str, message: str, status: int = 403) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class _Auth(NamedTuple):
    """The signature parameters of one request, from the Authorization header or the presigned query.

    A NamedTuple rather than a frozen dataclass: made on every request, at a sixth of the cost.
    """

    presigned: bool
    access_key_id: str
    scope_date: str
    region: str
    service: str
    terminator: str
    signed_headers: str  # verbatim: it is part of the canonical request
    signature: str
    amz_date: str  # the request time as it goes into the string to sign (yyyymmddThhmmssZ)
    security_token: str | None
    expires: int | None  # presigned only


# --------------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------------


def verify_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Headers,
    body: bytes,
    lookup: Callable[[str], Credential | None],
    *,
    service: str = "robomaker",
    now: datetime | None = None,
    max_skew_seconds: int = 900,
) -> Identity:
    """Verify a SigV4-signed request as received on the wire; return who sent it or raise ``AuthError``.

    The checks run in the order the AWS front door runs them, so a request with several problems gets the
    same error AWS would give: auth syntax, date, scope, clock, access key, payload hash, signature, token.
    """
    header_map = _normalize_headers(headers)
    query_pairs = _split_query(raw_query)
    current = _as_utc(now or datetime.now(UTC))

    auth = _parse_auth(header_map, query_pairs)
    _check_host_is_signed(auth.signed_headers)
    _check_scope(auth, service)
    _check_clock(auth, current, max_skew_seconds)
    credential = lookup(auth.access_key_id)
    if credential is None:
        raise AuthError(UNRECOGNIZED_CLIENT, MSG_INVALID_TOKEN)

    canonical_prefix = _canonical_request_without_payload(method, raw_path, query_pairs, header_map, auth)
    signing_key = _signing_key(credential.secret_access_key, auth.scope_date, auth.region, auth.service)
    payload_hashes = _payload_hash_candidates(header_map, query_pairs, body, auth.presigned)
    if not any(_signature_matches(canonical_prefix, h, auth, signing_key) for h in payload_hashes):
        raise AuthError(INVALID_SIGNATURE, MSG_SIGNATURE_MISMATCH)

    _check_session_token(credential, auth.security_token)
    return Identity(
        account_id=credential.account_id,
        region=auth.region,
        access_key_id=auth.access_key_id,
        principal=credential.principal,
    )


# --------------------------------------------------------------------------------------------------------
# Wire input normalisation
# --------------------------------------------------------------------------------------------------------


def _normalize_headers(headers: Headers) -> dict[str, list[str]]:
    """Lower-cased header name -> every value in arrival order (repeats matter for canonical headers)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    result: dict[str, list[str]] = {}
    for name, value in pairs:
        result.setdefault(name.strip().lower(), []).append(value)
    return result


def _split_query(raw_query: str) -> QueryPairs:
    """Raw ``(key, value)`` pairs, still percent-encoded, exactly as botocore splits ``urlsplit().query``."""
    if not raw_query:
        return []
    return [(key, value) for key, _, value in (pair.partition("=") for pair in raw_query.split("&"))]


def _as_utc(moment: datetime) -> datetime:
    # A naive datetime is taken to be UTC, the convention botocore itself uses.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _single_header(header_map: dict[str, list[str]], name: str) -> str | None:
    values = header_map.get(name)
    # Repeated values are joined so that a duplicated singleton header fails validation instead of one
    # copy being silently picked.
    return ",".join(values) if values else None


def _query_values(query_pairs: QueryPairs, key: str) -> list[str]:
    return [unquote(value) for name, value in query_pairs if name == key]


# --------------------------------------------------------------------------------------------------------
# Parsing the signature parameters
# --------------------------------------------------------------------------------------------------------


def _parse_auth(header_map: dict[str, list[str]], query_pairs: QueryPairs) -> _Auth:
    authorization = _single_header(header_map, "authorization")
    presigned = any(name == "X-Amz-Algorithm" for name, _ in query_pairs)
    if authorization is not None and presigned:
        raise AuthError(INVALID_SIGNATURE, MSG_BOTH_MECHANISMS)
    if authorization is not None:
        return _parse_authorization_header(authorization, header_map)
    if presigned:
        return _parse_presigned_query(query_pairs, header_map)
    raise AuthError(MISSING_AUTH, MSG_MISSING_AUTH)


def _parse_authorization_header(authorization: str, header_map: dict[str, list[str]]) -> _Auth:
    algorithm, _, rest = authorization.strip().partition(" ")
    params = _authorization_params(rest, authorization)
    _require_header_params(params, "x-amz-date" in header_map or "date" in header_map, authorization)
    _check_algorithm(algorithm)
    amz_date = _header_amz_date(header_map)
    key_id, scope_date, region, service, terminator = _split_credential(params["Credential"])
    return _Auth(
        presigned=False,
        access_key_id=key_id,
        scope_date=scope_date,
        region=region,
        service=service,
        terminator=terminator,
        signed_headers=params["SignedHeaders"],
        signature=params["Signature"],
        amz_date=amz_date,
        security_token=_single_header(header_map, "x-amz-security-token"),
        expires=None,
    )


def _authorization_params(rest: str, authorization: str) -> dict[str, str]:
    # AWS tokenises on commas *and* whitespace, which is why a stray space inside "Credential= AKID/..."
    # is reported as a missing equal-sign rather than silently accepted.
    params: dict[str, str] = {}
    for token in filter(None, re.split(r"[,\s]+", rest)):
        name, equals, value = token.partition("=")
        if not equals:
            raise AuthError(
                INCOMPLETE,
                f"'{token}' not a valid key=value pair (missing equal-sign) in Authorization header: "
                f"'{authorization}'.",
            )
        if name in params:
            raise AuthError(
                INCOMPLETE, f"Duplicate '{name}' parameter in Authorization header: '{authorization}'."
            )
        params[name] = value
    return params


def _require_header_params(params: dict[str, str], has_date: bool, authorization: str) -> None:
    problems = [
        f"Authorization header requires '{name}' parameter. "
        for name in _HEADER_PARAMS
        if not params.get(name)
    ]
    if not has_date:
        problems.append(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. "
        )
    if problems:
        raise AuthError(INCOMPLETE, "".join(problems) + f"Authorization={authorization}")


def _header_amz_date(header_map: dict[str, list[str]]) -> str:
    """The timestamp botocore put in the string to sign: X-Amz-Date, else the Date header re-formatted."""
    amz_date = _single_header(header_map, "x-amz-date")
    if amz_date is not None:
        return _validated_amz_date(amz_date)
    # botocore signs with X-Amz-Date unless the request already had a Date header; then it rewrites Date
    # (RFC 1123) from the very timestamp it signs.
    raw_date = _single_header(header_map, "date") or ""
    try:
        parsed = parsedate_to_datetime(raw_date)
    except (TypeError, ValueError, IndexError):
        raise _bad_date(raw_date) from None
    return _as_utc(parsed).strftime(SIGV4_TIMESTAMP)


def _validated_amz_date(raw_date: str) -> str:
    if not _AMZ_DATE_RE.match(raw_date):
        raise _bad_date(raw_date)
    try:
        _parse_amz_date(raw_date)
    except ValueError:
        raise _bad_date(raw_date) from None
    return raw_date


@functools.lru_cache(maxsize=256)
def _parse_amz_date(amz_date: str) -> datetime:
    """yyyymmddThhmmssZ (already matched by _AMZ_DATE_RE) as an aware UTC datetime.

    The datetime constructor checks the calendar as strptime does, at a fifth of the cost; requests
    signed in the same second share one entry.
    """
    return datetime(
        int(amz_date[0:4]),
        int(amz_date[4:6]),
        int(amz_date[6:8]),
        int(amz_date[9:11]),
        int(amz_date[11:13]),
        int(amz_date[13:15]),
        tzinfo=UTC,
    )


def _bad_date(raw_date: str) -> AuthError:
    return AuthError(
        INCOMPLETE,
        f"Date must be in ISO-8601 'basic format'. Got '{raw_date}'. See http://en.wikipedia.org/wiki/ISO_8601",
    )


def _check_algorithm(algorithm: str) -> None:
    if algorithm != ALGORITHM:
        raise AuthError(
            INCOMPLETE, f"Unsupported AWS 'algorithm': '{algorithm}' (only {ALGORITHM} for now). "
        )


def _split_credential(credential: str) -> tuple[str, str, str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5:
        raise AuthError(
            INCOMPLETE,
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, "
            f"got '{credential}'",
        )
    key_id, scope_date, region, service, terminator = parts
    return key_id, scope_date, region, service, terminator


def _parse_presigned_query(query_pairs: QueryPairs, header_map: dict[str, list[str]]) -> _Auth:
    params = _presigned_params(query_pairs)
    _check_algorithm(params["X-Amz-Algorithm"])
    amz_date = _validated_amz_date(params["X-Amz-Date"])
    key_id, scope_date, region, service, terminator = _split_credential(params["X-Amz-Credential"])
    token = params.get("X-Amz-Security-Token")
    return _Auth(
        presigned=True,
        access_key_id=key_id,
        scope_date=scope_date,
        region=region,
        service=service,
        terminator=terminator,
        signed_headers=params["X-Amz-SignedHeaders"],
        signature=params["X-Amz-Signature"],
        amz_date=amz_date,
        security_token=token if token is not None else _single_header(header_map, "x-amz-security-token"),
        expires=_parse_expires(params.get("X-Amz-Expires")),
    )


def _presigned_params(query_pairs: QueryPairs) -> dict[str, str]:
    """The single, decoded value of each X-Amz-* auth parameter; an ambiguous repeat is rejected."""
    names = (*_QUERY_PARAMS, "X-Amz-Expires", "X-Amz-Security-Token")
    params: dict[str, str] = {}
    for name in names:
        values = _query_values(query_pairs, name)
        if len(values) > 1:
            raise AuthError(
                INCOMPLETE,
                f"Duplicate query-string parameter '{name}'. Re-examine the query-string parameters.",
            )
        if values:
            params[name] = values[0]
    missing = [
        f"AWS query-string parameters must include '{n}'. " for n in _QUERY_PARAMS if not params.get(n)
    ]
    if missing:
        raise AuthError(INCOMPLETE, "".join(missing) + "Re-examine the query-string parameters.")
    return params


def _parse_expires(raw: str | None) -> int:
    if raw is None:
        raise AuthError(
            INCOMPLETE,
            "AWS query-string parameters must include 'X-Amz-Expires'. Re-examine the query-string parameters.",
        )
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_PRESIGN_EXPIRES:
        raise AuthError(
            INCOMPLETE,
            f"X-Amz-Expires must be an integer number of seconds from 1 to {MAX_PRESIGN_EXPIRES}, got '{raw}'.",
        )
    return int(raw)


# --------------------------------------------------------------------------------------------------------
# Checks that need no secret
# --------------------------------------------------------------------------------------------------------


def _check_host_is_signed(signed_headers: str) -> None:
    # Without the host in the signature a request could be replayed against another endpoint.
    if "host" not in signed_headers.lower().split(";"):
        raise AuthError(INVALID_SIGNATURE, MSG_HOST_NOT_SIGNED)


def _check_scope(auth: _Auth, service: str) -> None:
    # AWS reports every scope problem at once, in this order, each sentence ending in ". ".
    problems = []
    if not auth.region:
        problems.append(f"Credential should be scoped to a valid region, not '{auth.region}'. ")
    if auth.service != service:
        problems.append(f"Credential should be scoped to correct service: '{service}'. ")
    if auth.terminator != SCOPE_TERMINATOR:
        problems.append(
            f"Credential should be scoped with a valid terminator: '{SCOPE_TERMINATOR}', not '{auth.terminator}'. "
        )
    if auth.scope_date != auth.amz_date[:8]:
        problems.append(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{auth.scope_date}' != '{auth.amz_date[:8]}', from '{auth.amz_date}'."
        )
    if problems:
        raise AuthError(INVALID_SIGNATURE, "".join(problems))


def _check_clock(auth: _Auth, now: datetime, max_skew_seconds: int) -> None:
    signed_at = _parse_amz_date(auth.amz_date)
    skew = timedelta(seconds=max_skew_seconds)
    window = _describe_seconds(max_skew_seconds)
    if signed_at < now - skew:
        raise _expired(auth.amz_date, now - skew, f"{_fmt(now)} - {window}")
    if signed_at > now + skew:
        raise AuthError(
            INVALID_SIGNATURE,
            f"Signature not yet current: {auth.amz_date} is still later than {_fmt(now + skew)} "
            f"({_fmt(now)} + {window}.)",
        )
    if auth.expires is not None and now > signed_at + timedelta(seconds=auth.expires):
        raise _expired(
            auth.amz_date, now - timedelta(seconds=auth.expires), f"{_fmt(now)} - {auth.expires} sec"
        )


def _expired(amz_date: str, earliest: datetime, explanation: str) -> AuthError:
    return AuthError(
        INVALID_SIGNATURE,
        f"Signature expired: {amz_date} is now earlier than {_fmt(earliest)} ({explanation}.)",
    )


def _describe_seconds(seconds: int) -> str:
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} sec"


def _fmt(moment: datetime) -> str:
    return moment.strftime(SIGV4_TIMESTAMP)


def _check_session_token(credential: Credential, presented: str | None) -> None:
    # A temporary credential is only valid together with its token, and a permanent one never carries a
    # token, so any disagreement means the caller is not who the access key says.
    expected = credential.session_token
    if expected is None and presented is None:
        return
    if expected is None or presented is None or not _constant_time_equal(expected, presented):
        raise AuthError(UNRECOGNIZED_CLIENT, MSG_INVALID_TOKEN)


# --------------------------------------------------------------------------------------------------------
# Canonical request, string to sign, signature
# --------------------------------------------------------------------------------------------------------


def _canonical_request_without_payload(
    method: str, raw_path: str, query_pairs: QueryPairs, header_map: dict[str, list[str]], auth: _Auth
) -> str:
    """Every line of the canonical request except the payload hash, which may have more than one candidate."""
    signed_pairs = (
        [pair for pair in query_pairs if pair[0] != "X-Amz-Signature"] if auth.presigned else query_pairs
    )
    return "\n".join(
        [
            method.upper(),
            _canonical_uri(raw_path),
            _canonical_query(signed_pairs),
            _canonical_headers(header_map, auth.signed_headers) + "\n",
            auth.signed_headers,
        ]
    )


def _canonical_uri(raw_path: str) -> str:
    # The paths of the API repeat; the cache holds only short ones, so that odd requests cannot fill it.
    return _cached_canonical_uri(raw_path) if len(raw_path) <= _CACHED_MAX_LEN else _encode_uri(raw_path)


@functools.lru_cache(maxsize=1024)
def _cached_canonical_uri(raw_path: str) -> str:
    return _encode_uri(raw_path)


def _encode_uri(raw_path: str) -> str:
    # Same expression as SigV4Auth._normalize_url_path on the already-encoded URL path: '%' is encoded
    # again, so "/tags/arn%3Aaws" becomes "/tags/arn%253Aaws".
    return quote(normalize_url_path(raw_path), safe="/~")


def _canonical_query(query_pairs: QueryPairs) -> str:
    # botocore sorts the raw (already encoded) pairs as tuples, i.e. by key then value, without decoding.
    return "&".join(f"{key}={value}" for key, value in sorted(query_pairs))


def _canonical_headers(header_map: dict[str, list[str]], signed_headers: str) -> str:
    lines = []
    for name in signed_headers.split(";"):
        values = header_map.get(name.lower(), [])
        lines.append(f"{name}:" + ",".join(" ".join(value.split()) for value in values))
    return "\n".join(lines)


def _payload_hash_candidates(
    header_map: dict[str, list[str]], query_pairs: QueryPairs, body: bytes, presigned: bool
) -> list[str]:
    """The payload hash(es) the client may have signed with, after checking any declared hash."""
    body_hash = hashlib.sha256(body).hexdigest()
    declared = _single_header(header_map, "x-amz-content-sha256")
    if declared is None and presigned:
        declared_in_query = _query_values(query_pairs, "X-Amz-Content-Sha256")
        declared = declared_in_query[0] if len(declared_in_query) == 1 else None
    if declared is not None:
        if declared != UNSIGNED_PAYLOAD and not _constant_time_equal(declared.lower(), body_hash):
            raise AuthError(INVALID_SIGNATURE, MSG_PAYLOAD_HASH_MISMATCH)
        return [declared]  # botocore puts the header value itself into the canonical request
    # A presigned URL carries no body hash of its own; botocore hashes the (normally empty) body, while
    # other signers use UNSIGNED-PAYLOAD.
    return [body_hash, UNSIGNED_PAYLOAD] if presigned else [body_hash]


def _signature_matches(canonical_prefix: str, payload_hash: str, auth: _Auth, signing_key: bytes) -> bool:
    canonical_request = f"{canonical_prefix}\n{payload_hash}"
    expected = _hmac(signing_key, _string_to_sign(canonical_request, auth)).hex()
    return _constant_time_equal(expected, auth.signature)


def _string_to_sign(canonical_request: str, auth: _Auth) -> str:
    scope = f"{auth.scope_date}/{auth.region}/{auth.service}/{auth.terminator}"
    digest = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    return "\n".join([ALGORITHM, auth.amz_date, scope, digest])


def _signing_key(secret_access_key: str, scope_date: str, region: str, service: str) -> bytes:
    # The derived key changes once a day per (secret, region, service): four HMACs saved per request.
    # The region comes from the request, so only short ones are cached.
    if len(region) > _CACHED_MAX_LEN:
        return _derive_signing_key(secret_access_key, scope_date, region, service)
    return _cached_signing_key(secret_access_key, scope_date, region, service)


@functools.lru_cache(maxsize=1024)
def _cached_signing_key(secret_access_key: str, scope_date: str, region: str, service: str) -> bytes:
    return _derive_signing_key(secret_access_key, scope_date, region, service)


def _derive_signing_key(secret_access_key: str, scope_date: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret_access_key}".encode()
    for part in (scope_date, region, service, SCOPE_TERMINATOR):
        key = _hmac(key, part)
    return key


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def _constant_time_equal(left: str, right: str) -> bool:
    # compare_digest only accepts ASCII str; header values can hold any character, so compare bytes.
    return hmac.compare_digest(left.encode("utf-8"), right.encode("utf-8"))
