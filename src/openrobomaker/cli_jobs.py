"""CLI commands that talk to a running server: `openrobomaker logs JOB [--follow]`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from urllib.parse import quote

import botocore.session
import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from openrobomaker.config import DEFAULT_PORT, DEV_ACCESS_KEY, DEV_SECRET_KEY

TERMINAL = {"Completed", "Failed", "Terminated", "Canceled"}


def _credentials(args: argparse.Namespace) -> Credentials:
    found = botocore.session.Session(profile=args.profile).get_credentials() if args.profile else None
    if found is None:
        found = botocore.session.Session().get_credentials()
    return found or Credentials(DEV_ACCESS_KEY, DEV_SECRET_KEY)


def signed_get(url: str, credentials: Credentials, region: str) -> httpx.Response:
    request = AWSRequest(method="GET", url=url)
    SigV4Auth(credentials, "robomaker", region).add_auth(request)
    return httpx.get(url, headers=dict(request.headers.items()), timeout=30)


def _job_id(job: str) -> str:
    return job.rsplit("/", 1)[-1]


def cmd_logs(args: argparse.Namespace) -> int:
    credentials = _credentials(args)
    offsets: dict[str, int] = {}
    base = f"{args.endpoint.rstrip('/')}/_openrobomaker/v1/simulation-jobs/{quote(_job_id(args.job))}/logs"
    while True:
        response = signed_get(f"{base}?offsets={quote(json.dumps(offsets))}", credentials, args.region)
        if response.status_code != 200:
            print(f"openrobomaker: {response.json().get('message', response.text)}", file=sys.stderr)
            return 1
        body = response.json()
        for chunk in body["logs"]:
            offsets[chunk["file"]] = chunk["offset"]
            for line in chunk["data"].splitlines():
                print(f"[{chunk['file'].removesuffix('.log')}] {line}")
        sys.stdout.flush()
        if not args.follow or (body["status"] in TERMINAL and not any(c["data"] for c in body["logs"])):
            return 0
        time.sleep(1)


def add_commands(commands, _add_store_options) -> None:
    logs = commands.add_parser("logs", help="print a simulation job's application logs")
    logs.add_argument("job", help="simulation job ARN or id")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    logs.add_argument("--endpoint", default=f"http://127.0.0.1:{DEFAULT_PORT}")
    logs.add_argument("--region", default="us-east-1")
    logs.add_argument("--profile")
    logs.set_defaults(func=cmd_logs)
