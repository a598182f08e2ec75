"""The agent's HTTP client for the server's agent channel: every request SigV4-signed as the robot."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urljoin

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from openrobomaker.agent import fetch


@dataclass(frozen=True)
class RobotCredentials:
    robot_arn: str
    region: str
    access_key_id: str
    secret_access_key: str
    endpoint: str | None = None

    @classmethod
    def load(cls, path: Path) -> RobotCredentials:
        data = json.loads(path.read_text())
        return cls(
            robot_arn=data["robotArn"],
            region=data["region"],
            access_key_id=data["accessKeyId"],
            secret_access_key=data["secretAccessKey"],
            endpoint=data.get("endpoint"),
        )


class ChannelError(Exception):
    """The server answered with an error (not a network failure): `status` and the API error `code`."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class DirectDownloadFailed(Exception):
    """Fetching from the presigned S3 URL failed; the server can still stream the file."""


REDIRECTS = (301, 302, 303, 307, 308)
DOWNLOAD_TIMEOUT_SECONDS = 60.0  # connect, and the longest silence mid-download


def sign(method: str, url: str, body: bytes, key_id: str, secret: str, region: str) -> dict[str, str]:
    request = AWSRequest(method=method, url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(key_id, secret), "robomaker", region).add_auth(request)
    return dict(request.headers.items())


def _raise_for(response: httpx.Response) -> None:
    _raise_for_status(response.status_code, response.headers, response.content)


def _raise_for_status(status: int, headers, content: bytes) -> None:
    """ChannelError for an error answer; `headers` looked up by lower-case name."""
    if status < 400:
        return
    try:
        body = json.loads(content)
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = headers.get("x-amzn-errortype") or body.get("__type") or "Unknown"
    raise ChannelError(status, code, body.get("message") or content[:200].decode("utf-8", "replace"))


class AgentClient:
    def __init__(self, endpoint: str, creds: RobotCredentials, timeout: float = 10.0):
        self.endpoint = endpoint.rstrip("/")
        self.creds = creds
        self.timeout = timeout
        self._http: httpx.Client | None = None
        self._http_lock = threading.Lock()

    @property
    def http(self) -> httpx.Client:
        """The control requests' client, made on first use (its TLS context costs tens of milliseconds;
        downloads do not need it). Idle connections are dropped before the server's keep-alive (uvicorn:
        5 s) could close one under a request being sent on it."""
        with self._http_lock:  # the agent's poll loop and its outbox thread may both be first
            if self._http is None:
                self._http = httpx.Client(
                    timeout=httpx.Timeout(self.timeout, read=60.0), limits=httpx.Limits(keepalive_expiry=2.0)
                )
            return self._http

    def _signed(
        self, method: str, path: str, body: bytes = b"", query: dict | None = None
    ) -> tuple[str, dict]:
        url = self.endpoint + path
        if query:
            url += "?" + urlencode(query, quote_via=quote, safe="")
        headers = sign(
            method, url, body, self.creds.access_key_id, self.creds.secret_access_key, self.creds.region
        )
        return url, headers

    def post(self, path: str, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        body = json.dumps({"robot": self.creds.robot_arn, **payload}).encode()
        url, headers = self._signed("POST", path, body)
        response = self.http.post(
            url, content=body, headers=headers, timeout=timeout or httpx.USE_CLIENT_DEFAULT
        )
        _raise_for(response)
        return response.json()

    def poll(self, current: str | None, wait: float) -> dict[str, Any]:
        return self.post("/_agent/v1/poll", {"current": current, "wait": wait}, timeout=wait + 15)

    def report(self, report: dict[str, Any]) -> dict[str, Any]:
        return self.post("/_agent/v1/report", report)

    def download(
        self,
        path: str,
        job_id: str,
        dest: Path,
        start: int = 0,
        direct: bool = False,
        offered: str | None = None,
        progress: fetch.Progress | None = None,
        digest: fetch.Digest | None = None,
    ) -> fetch.Answer:
        """The file's bytes from `start` into `dest` (agent/fetch.py). With `direct`, the agent accepts a
        redirect to a presigned S3 URL (or the server's sendfile listener) and fetches from there itself;
        `offered` is such a URL the server already gave (a poll answer's `bundleUrl`), fetched without
        asking the channel. A failure on that leg raises DirectDownloadFailed (ask the channel again, or
        fall back to the server); one on the channel raises OSError (retry) or ChannelError."""
        location = offered
        if location is None:
            query = {"robot": self.creds.robot_arn, "jobId": job_id}
            if direct:
                query["direct"] = "1"
            url, headers = self._signed("GET", path, query=query)
            answer = fetch.get(url, headers, dest, start, DOWNLOAD_TIMEOUT_SECONDS, progress, digest)
            if answer.status not in REDIRECTS or "location" not in answer.headers:
                _raise_for_status(answer.status, answer.headers, answer.body)
                return answer
            location = urljoin(url, answer.headers["location"])
        # A plain GET: the URL carries its own signature or ticket; our SigV4 headers must not go to S3.
        where = fetch.without_query(location)
        try:
            answer = fetch.get(location, {}, dest, start, DOWNLOAD_TIMEOUT_SECONDS, progress, digest)
        except (OSError, ValueError) as exc:
            raise DirectDownloadFailed(f"{where} not reachable: {exc!r}") from exc
        if answer.status >= 300:
            raise DirectDownloadFailed(f"{where} answered {answer.status}")
        return answer

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
